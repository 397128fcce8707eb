"""Batched relaxation: FIRE over positions and cell, with in-flight batching; and single structures with ASE.

Names are imported on first use, so a process that only needs the ASE path (a re-scoring child process) does not
load torch.
"""

from importlib import import_module

_NAMES = {
    "RelaxStage": "schedule",
    "StagedResult": "schedule",
    "relax_in_stages": "schedule",
    "FIRE": "loop",
    "FireParams": "fire",
    "FireState": "fire",
    "OPTIMIZERS": "loop",
    "Optimizer": "loop",
    "RelaxResult": "loop",
    "RelaxSettings": "loop",
    "RelaxStatus": "trajectory",
    "Trajectory": "trajectory",
    "fire_init": "fire",
    "fire_step": "fire",
    "relax": "loop",
    "relax_with": "loop",
}

__all__ = sorted(_NAMES)


def __getattr__(name: str):
    if name in _NAMES:
        return getattr(import_module(f"atomscreen.relax.{_NAMES[name]}"), name)
    raise AttributeError(f"module 'atomscreen.relax' has no attribute {name!r}")
