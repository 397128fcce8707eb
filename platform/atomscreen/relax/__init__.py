"""Batched relaxation: FIRE over positions and cell, with in-flight batching."""

from atomscreen.relax.fire import FireParams, fire_step
from atomscreen.relax.loop import RelaxResult, RelaxSettings, Trajectory, relax

__all__ = ["FireParams", "RelaxResult", "RelaxSettings", "Trajectory", "fire_step", "relax"]
