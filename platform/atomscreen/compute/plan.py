"""Expand a validated campaign into tasks: compositions x generators x samples, in batches of ``batch_size``.

Each task's payload holds everything its function needs (no spec, no database),
so `resume` can run it again from the task row alone. Seeds derive from the
campaign seed and the composition, never from the batching.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from typing import Any, Mapping

from ase.units import GPa

from atomscreen.atoms.random import volume_per_atom
from atomscreen.campaign import CampaignSpec, parse_formula

SYMPREC = 0.1  # Å, spglib tolerance for the stored space group of relaxed structures


@dataclass(frozen=True)
class TaskPlan:
    """A task row to create."""

    kind: str
    key: str
    seed: int
    payload: dict[str, Any]


class PlanError(ValueError):
    """A campaign that cannot be expanded into tasks (e.g. no volume for an element)."""


def plan_tasks(spec: CampaignSpec, element_volumes: Mapping[str, float] | None) -> list[TaskPlan]:
    """All tasks of a campaign, in a stable order."""
    tasks = []
    rss = spec.generators.rss
    if rss is not None:
        relax = {
            "fmax": spec.relaxation.fmax, "max_steps": spec.relaxation.max_steps, "cell": spec.relaxation.cell,
            "constant_volume": spec.relaxation.constant_volume, "pressure": spec.relaxation.pressure_gpa * GPa,
            "trajectory_every": spec.relaxation.trajectory_every, "max_systems": rss.batch_size,
        }
        for formula in spec.compositions.expand():
            counts = parse_formula(formula)
            if rss.volume_per_atom is not None:
                volume = rss.volume_per_atom
            elif element_volumes:
                try:
                    volume = volume_per_atom(counts, element_volumes)
                except ValueError as exc:
                    raise PlanError(f"{formula}: {exc}; set generators.rss.volume_per_atom") from None
            else:
                raise PlanError("generators.rss.volume_per_atom is not set and the model carries no fitted element volumes "
                                "(a checkpoint trained outside atomscreen, or on molecules only): set it in the campaign")
            composition_seed = zlib.crc32(formula.encode())
            separation = rss.min_separation if isinstance(rss.min_separation, float) else dict(rss.min_separation)
            for start in range(0, rss.samples_per_composition, rss.batch_size):
                count = min(rss.batch_size, rss.samples_per_composition - start)
                payload = {
                    "formula": formula, "counts": counts, "start": start, "count": count,
                    "seed": spec.seed, "composition_seed": composition_seed, "symprec": SYMPREC,
                    "random": {"volume_per_atom": volume, "volume_factor": list(rss.volume_factor), "min_separation": separation},
                    "relax": relax,
                }
                tasks.append(TaskPlan("rss", f"rss/{formula}/{start}", (spec.seed * 1_000_003 + composition_seed + start) % 2**62, payload))
    return tasks
