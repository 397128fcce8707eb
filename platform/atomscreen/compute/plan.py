"""Expand a validated campaign into tasks: compositions x generators x samples, in batches of ``batch_size``.

Each task's payload holds everything its function needs (no spec, no database),
so `resume` can run it again from the task row alone. Seeds derive from the
campaign seed and the composition, never from the batching.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

from ase import Atoms
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


def _relax_settings(spec: CampaignSpec, max_systems: int) -> dict[str, Any]:
    r = spec.relaxation
    return {"fmax": r.fmax, "max_steps": r.max_steps, "cell": r.cell, "constant_volume": r.constant_volume,
            "pressure": r.pressure_gpa * GPa, "trajectory_every": r.trajectory_every, "max_systems": max_systems}


def plan_tasks(spec: CampaignSpec, element_volumes: Mapping[str, float] | None, *, training_periodic: bool = True) -> list[TaskPlan]:
    """All tasks of a campaign, in a stable order; molecules (``rss.periodic`` false, or a molecular training set when
    it is unset) are placed in a box without periodicity and relaxed without a cell."""
    tasks = []
    rss = spec.generators.rss
    if rss is not None:
        periodic = training_periodic if rss.periodic is None else rss.periodic
        relax = _relax_settings(spec, rss.batch_size)
        if not periodic:
            relax.update(cell=False, constant_volume=False, pressure=0.0)
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
                                "(a checkpoint trained outside atomscreen, or on molecules only: for molecules it sets the box, "
                                "e.g. 10 Å^3/atom): set it in the campaign")
            composition_seed = zlib.crc32(formula.encode())
            separation = rss.min_separation if isinstance(rss.min_separation, float) else dict(rss.min_separation)
            for start in range(0, rss.samples_per_composition, rss.batch_size):
                count = min(rss.batch_size, rss.samples_per_composition - start)
                payload = {
                    "formula": formula, "counts": counts, "start": start, "count": count,
                    "seed": spec.seed, "composition_seed": composition_seed, "symprec": SYMPREC,
                    "random": {"volume_per_atom": volume, "volume_factor": list(rss.volume_factor), "min_separation": separation,
                               "periodic": periodic},
                    "relax": relax,
                    "kick": None if rss.kick is None else {"displacement": rss.kick.displacement, "rounds": rss.kick.rounds},
                }
                tasks.append(TaskPlan("rss", f"rss/{formula}/{start}", (spec.seed * 1_000_003 + composition_seed + start) % 2**62, payload))
    return tasks


def read_references(references: Any, spec: CampaignSpec) -> tuple[str, list[Atoms]]:
    """The structures of a ``references`` block ('training' or a data set) and a label naming their source."""
    from atomscreen.data import read_dataset

    dataset = spec.model.train.dataset if references == "training" else references
    label = "training" if references == "training" else (dataset.path or f"{dataset.format}:{dataset.name or ''}")
    return label, read_dataset(dataset.format, dataset.path, name=dataset.name, limit=dataset.limit, skip=dataset.skip)


def campaign_elements(spec: CampaignSpec) -> list[frozenset[str]]:
    """The element sets of the campaign's compositions (its chemical systems)."""
    return [frozenset(parse_formula(f)) for f in spec.compositions.expand()]


def hull_references(spec: CampaignSpec) -> list[Atoms]:
    """Reference structures whose elements lie inside one of the campaign's chemical systems (they join every hull)."""
    if spec.hull.references is None:
        return []
    label, structures = read_references(spec.hull.references, spec)
    systems = campaign_elements(spec)
    return [a for a in structures if any(set(a.get_chemical_symbols()) <= s for s in systems)]


def plan_reference_tasks(spec: CampaignSpec, references: Sequence[Atoms]) -> list[TaskPlan]:
    """Tasks that relax the hull references on the pseudo potential (no cell constraint: they are equilibrium phases)."""
    from atomscreen.compute.tasks import structure_payload

    rss = spec.generators.rss
    size = rss.batch_size if rss is not None else 64
    relax = _relax_settings(spec, size)
    tasks = []
    for start in range(0, len(references), size):
        chunk = references[start:start + size]
        structures = [structure_payload(a, info={k: v for k, v in a.info.items() if isinstance(v, (int, float, str))}) for a in chunk]
        payload = {"structures": structures, "start": start, "count": len(chunk), "symprec": SYMPREC, "relax": relax}
        tasks.append(TaskPlan("reference", f"reference/{start}", (spec.seed * 1_000_003 + start) % 2**62, payload))
    return tasks


def plan_rescore_tasks(spec: CampaignSpec, candidates: Sequence[tuple[str, int, Atoms]]) -> list[TaskPlan]:
    """Re-scoring tasks: ``candidates`` are (group, parent structure id, structure), batched per group (a formula, or 'reference')."""
    from atomscreen.compute.tasks import structure_payload

    block = spec.rescore
    settings = {"relax": block.relax, "cell": block.cell, "fmax": block.fmax, "max_steps": block.max_steps,
                "optimizer": block.optimizer, "trajectory_every": block.trajectory_every}
    groups: dict[str, list[tuple[int, Atoms]]] = {}
    for group, parent_id, atoms in candidates:
        groups.setdefault(group, []).append((parent_id, atoms))
    tasks = []
    for group, members in groups.items():
        for start in range(0, len(members), block.batch_size):
            chunk = members[start:start + block.batch_size]
            payload = {"method": block.method or block.calculator, "energy_method": block.energy_method, "settings": settings,
                       "symprec": SYMPREC, "formula": group, "count": len(chunk),
                       "structures": [structure_payload(a, parent_id=pid) for pid, a in chunk]}
            key = f"rescore/{group}/{start}"
            tasks.append(TaskPlan("rescore", key, (spec.seed * 1_000_003 + zlib.crc32(key.encode())) % 2**62, payload))
    return tasks
