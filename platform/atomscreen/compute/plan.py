"""Planners: the spec and the store's state in, typed jobs out (one planner per stage).

Each job holds everything its task function needs (no spec, no database), so
`resume` can run it again from the task row alone. Seeds derive from the
campaign seed and the composition, never from the batching. Campaign units
become science units here, in :func:`relax_settings` and :func:`calc_settings`
only: pressure GPa -> eV/Å^3, batch size -> systems relaxed together.
"""

from __future__ import annotations

import dataclasses
import zlib
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import numpy as np
from ase import Atoms
from ase.units import GPa

from atomscreen.atoms.random import RandomSpec, volume_per_atom
from atomscreen.campaign import CampaignSpec, DiffusionSpec, RSSSpec
from atomscreen.chem import parse_formula
from atomscreen.diffusion.hybrid_settings import AcceptSettings, GuidanceSettings, PostRelaxSettings
from atomscreen.errors import AtomscreenError
from atomscreen.jobs import (
    DiffusionJob,
    DiffusionRelaxJob,
    EnergyRef,
    HybridJob,
    Job,
    KickSettings,
    PolishSettings,
    ReferenceJob,
    RescoreJob,
    RssJob,
    StructureIn,
    ValidityJob,
    to_json,
)
from atomscreen.relax.ase_relax import CalcSettings
from atomscreen.relax.loop import RelaxSettings
from atomscreen.relax.schedule import RelaxStage
from atomscreen.store.records import NewTask

SYMPREC = 0.1  # Å, spglib tolerance for the stored space group of relaxed structures
REFERENCE_BATCH = 64  # reference structures per task when the campaign has no RSS batch size


class PlanError(AtomscreenError, ValueError):
    """A campaign that cannot be expanded into tasks (e.g. no volume for an element)."""


@dataclass(frozen=True)
class PlannedTask:
    """A job with the task key and seed it is stored under."""

    key: str
    seed: int
    job: Job

    def new_task(self) -> NewTask:
        """The task row to create."""
        return NewTask(str(self.job.kind), self.key, self.seed, to_json(self.job), getattr(self.job, "formula", None))


def relax_settings(spec: CampaignSpec, *, periodic: bool, max_systems: int) -> RelaxSettings:
    """The campaign's relaxation block in science units; molecules relax without a cell and without pressure."""
    r = spec.relaxation
    loop = {"check_every": r.check_every, "skin": r.skin}
    if not periodic:
        return RelaxSettings(fmax=r.fmax, max_steps=r.max_steps, trajectory_every=r.trajectory_every,
                             max_systems=max_systems, **loop)
    return RelaxSettings(fmax=r.fmax, max_steps=r.max_steps, cell=r.cell, constant_volume=r.constant_volume,
                         pressure=r.pressure_gpa * GPa, trajectory_every=r.trajectory_every, max_systems=max_systems,
                         **loop)


def calc_settings(spec: CampaignSpec) -> CalcSettings:
    """The re-scoring block in science units, at the campaign's pressure (cells of periodic structures only)."""
    b = spec.rescore
    return CalcSettings(relax=b.relax, cell=b.cell, pressure=spec.relaxation.pressure_gpa * GPa, fmax=b.fmax,
                        max_steps=b.max_steps, optimizer=b.optimizer, trajectory_every=b.trajectory_every)


def _volume(formula: str, rss: RSSSpec, element_volumes: Mapping[str, float] | None) -> float:
    if rss.volume_per_atom is not None:
        return rss.volume_per_atom
    if rss.box is not None:  # a fixed molecule box: its volume per atom, for the record
        return float(np.prod(rss.box)) / sum(parse_formula(formula).values())
    if not element_volumes:
        raise PlanError("generators.rss.volume_per_atom is not set and the model carries no fitted element volumes "
                        "(a checkpoint trained outside atomscreen, or on molecules only: for molecules it sets the "
                        "box, e.g. 10 Å^3/atom): set it in the campaign")
    try:
        return volume_per_atom(parse_formula(formula), element_volumes)
    except ValueError as exc:
        raise PlanError(f"{formula}: {exc}; set generators.rss.volume_per_atom") from None


def rss_tasks(spec: CampaignSpec, rss: RSSSpec, training: Mapping[str, Any]) -> list[PlannedTask]:
    """The tasks of one RSS generator block over every composition; ``training`` is the training-set description of
    its model (fitted element volumes; a training set with no periodic structure makes the search one for molecules
    unless rss.periodic says otherwise)."""
    periodic = bool(training.get("periodic", 1)) if rss.periodic is None else rss.periodic
    relax = relax_settings(spec, periodic=periodic, max_systems=rss.batch_size)
    kick = None if rss.kick is None else KickSettings(rss.kick.displacement, rss.kick.rounds)
    seed = spec.seed if rss.seed is None else rss.seed
    separation = rss.min_separation if isinstance(rss.min_separation, float) else dict(rss.min_separation)
    stages = tuple(RelaxStage(s.fmax, s.max_steps, s.kick) for s in rss.stages)
    box = {} if periodic else {k: tuple(v) for k, v in (("box", rss.box), ("box_aspect", rss.box_aspect)) if v}
    tasks = []
    for formula in spec.compositions.expand():
        random = RandomSpec(volume_per_atom=_volume(formula, rss, training.get("element_volumes")),
                            volume_factor=tuple(rss.volume_factor), min_separation=separation, periodic=periodic,
                            **box)
        composition_seed = zlib.crc32(formula.encode())
        for start in range(0, rss.samples_per_composition, rss.batch_size):
            count = min(rss.batch_size, rss.samples_per_composition - start)
            job = RssJob(formula, parse_formula(formula), start, count, seed, composition_seed, SYMPREC, random, relax,
                         kick, rss.model, stages, rss.select)
            task_seed = (seed * 1_000_003 + composition_seed + start) % 2**62
            tasks.append(PlannedTask(f"{rss.name}/{formula}/{start}", task_seed, job))
    return tasks


def read_references(references: Any, spec: CampaignSpec) -> tuple[str, list[Atoms]]:
    """The structures of a ``references`` block ('training': the default model's training set, or a data set) and a
    label naming their source."""
    dataset = spec.training_dataset() if references == "training" else references
    return ("training" if references == "training" else dataset.label), dataset.read()


def hull_references(spec: CampaignSpec) -> list[Atoms]:
    """Reference structures whose elements lie inside one of the campaign's chemical systems (they join every hull)."""
    if spec.hull.references is None:
        return []
    _, structures = read_references(spec.hull.references, spec)
    systems = [frozenset(parse_formula(f)) for f in spec.compositions.expand()]
    return [a for a in structures if any(set(a.get_chemical_symbols()) <= s for s in systems)]


def reference_tasks(spec: CampaignSpec, references: Sequence[Atoms]) -> list[PlannedTask]:
    """Tasks that relax the hull references on the first generator's model (no cell constraint: they are equilibrium
    phases)."""
    blocks = spec.generators.rss_blocks
    size = blocks[0].batch_size if blocks else REFERENCE_BATCH
    model = blocks[0].model if blocks else spec.model_names[0]
    relax = dataclasses.replace(relax_settings(spec, periodic=True, max_systems=size), constant_volume=False)
    tasks = []
    for start in range(0, len(references), size):
        chunk = references[start:start + size]
        structures = tuple(
            StructureIn.from_atoms(a, info={k: v for k, v in a.info.items() if isinstance(v, (int, float, str))})
            for a in chunk
        )
        job = ReferenceJob(structures, start, len(chunk), SYMPREC, relax, model)
        tasks.append(PlannedTask(f"reference/{start}", (spec.seed * 1_000_003 + start) % 2**62, job))
    return tasks


def diffusion_tasks(spec: CampaignSpec, block: DiffusionSpec) -> list[PlannedTask]:
    """The tasks of one diffusion block: batch_size molecules of a composition per task, seeded per composition."""
    seed = spec.seed if block.seed is None else block.seed
    tasks = []
    for formula in spec.compositions.expand():
        composition_seed = zlib.crc32(formula.encode())
        for start in range(0, block.samples_per_composition, block.batch_size):
            count = min(block.batch_size, block.samples_per_composition - start)
            job = DiffusionJob(formula, parse_formula(formula), start, count, seed, composition_seed, block.sampler,
                               block.max_steps, block.trajectory_every, block.model, block.time_model,
                               block.stop_at, hybrid_job(spec, block))
            task_seed = (seed * 1_000_003 + composition_seed + start) % 2**62
            tasks.append(PlannedTask(f"{block.name}/{formula}/{start}", task_seed, job))
    return tasks


def _energy_ref(spec: CampaignSpec, chosen: tuple[str, dict] | None) -> EnergyRef | None:
    if chosen is None:
        return None
    name, options = chosen
    return EnergyRef(name, options, model=name in spec.model_specs())


def hybrid_job(spec: CampaignSpec, block) -> HybridJob | None:
    """The energy-model strategies of a diffusion block as job settings (None when it has none)."""
    if not block.hybrid:
        return None
    g, a, p = block.guidance, block.accept, block.post_relax
    return HybridJob(
        guidance=None if g is None else GuidanceSettings(g.start, g.every, g.iterations, g.target, g.optimizer, g.fmax),
        guidance_energy=_energy_ref(spec, block.energy_of("guidance")),
        accept=None if a is None else AcceptSettings(a.threshold_mev_per_atom, a.max_restarts, a.steps, a.fmax),
        accept_energy=_energy_ref(spec, block.energy_of("accept")),
        post_relax=None if p is None else PostRelaxSettings(p.fmax, p.max_steps, p.optimizer, p.trajectory_every),
        post_energy=_energy_ref(spec, block.energy_of("post_relax")),
        slots=block.batch_size)


def generation_tasks(spec: CampaignSpec, training: Mapping[str, Mapping[str, Any]]) -> list[PlannedTask]:
    """Every RSS block's tasks, every diffusion block's, then the hull references'; ``training`` maps model names
    to their training data."""
    tasks = [t for rss in spec.generators.rss_blocks for t in rss_tasks(spec, rss, training[rss.model])]
    tasks += [t for block in spec.generators.diffusion_blocks for t in diffusion_tasks(spec, block)]
    return tasks + reference_tasks(spec, hull_references(spec))


def rescore_tasks(spec: CampaignSpec, candidates: Sequence[tuple[str, int, Atoms]]) -> list[PlannedTask]:
    """Re-scoring tasks: ``candidates`` are (group, parent structure id, structure), batched per group (a formula, or
    'reference')."""
    block = spec.rescore
    settings = calc_settings(spec)
    polish = None
    if block.polish is not None:  # candidates only: hull references are re-scored as they are
        periodic = sorted({a.get_chemical_formula() for g, _, a in candidates if a.pbc.any() and g != "reference"})
        if periodic:
            raise PlanError(f"rescore.polish relaxes molecules by diffusion; candidates {', '.join(periodic)} are "
                            "periodic: remove polish, or generate molecules (generators.rss.periodic: false)")
        polish = PolishSettings(block.polish.model, block.polish.steps, block.polish.compare,
                                (spec.seed * 1_000_003 + zlib.crc32(b"polish")) % 2**62)  # not the relaxation's noise
    groups: dict[str, list[tuple[int, Atoms]]] = {}
    for group, parent_id, atoms in candidates:
        groups.setdefault(group, []).append((parent_id, atoms))
    tasks = []
    for group, members in groups.items():
        for start in range(0, len(members), block.batch_size):
            chunk = members[start:start + block.batch_size]
            structures = tuple(StructureIn.from_atoms(a, parent_id=pid) for pid, a in chunk)
            job = RescoreJob(block.method or block.calculator, block.energy_method, settings, SYMPREC, group,
                             len(chunk), structures, block.timeout_s, dict(block.options),
                             None if group == "reference" else polish)
            key = f"rescore/{group}/{start}"
            tasks.append(PlannedTask(key, (spec.seed * 1_000_003 + zlib.crc32(key.encode())) % 2**62, job))
    return tasks


def diffusion_relax_tasks(spec: CampaignSpec, molecules: Sequence[Atoms]) -> list[PlannedTask]:
    """MoreRed relaxation of stored ``molecules`` (structure ids in info), batched per formula (relaxation.batch_size
    per task); the seed keys each molecule's noise with its id, so the split into tasks never changes a result."""
    r = spec.relaxation
    periodic = sorted({a.get_chemical_formula() for a in molecules if a.pbc.any()})
    if periodic:
        raise PlanError(f"relaxation.method {r.method} relaxes molecules by diffusion; generated structures "
                        f"{', '.join(periodic)} are periodic: use method fire, or generate molecules "
                        "(generators.rss.periodic: false)")
    tasks = []
    for start, job in diffusion_relax_jobs(molecules, r.diffusion_method, max_steps=r.reverse_max_steps,
                                           stop_at=r.stop_at, trajectory_every=r.trajectory_every, seed=spec.seed,
                                           model=r.model, time_model=r.time_model, batch_size=r.batch_size):
        key = f"diffusion_relax/{job.formula}/{start}"
        tasks.append(PlannedTask(key, (spec.seed * 1_000_003 + zlib.crc32(key.encode())) % 2**62, job))
    return tasks


def diffusion_relax_jobs(molecules: Sequence[Atoms], method: str, *, max_steps: int, stop_at: int,
                         trajectory_every: int, seed: int, model: str, time_model: str | None,
                         batch_size: int) -> list[tuple[int, DiffusionRelaxJob]]:
    """(start, job) pairs relaxing stored ``molecules`` (ids in info) by ``method``, ``batch_size`` of one formula
    per job."""
    groups: dict[str, list[Atoms]] = {}
    for a in molecules:
        groups.setdefault(a.info["formula"], []).append(a)
    jobs = []
    for formula, members in sorted(groups.items()):
        for start in range(0, len(members), batch_size):
            chunk = members[start:start + batch_size]
            structures = tuple(StructureIn.from_atoms(a, parent_id=a.info["structure_id"]) for a in chunk)
            jobs.append((start, DiffusionRelaxJob(formula, len(chunk), method, max_steps, stop_at, trajectory_every,
                                                  seed, structures, model, time_model)))
    return jobs


def validity_tasks(spec: CampaignSpec, molecules: Sequence[Atoms], first_index: int) -> list[PlannedTask]:
    """Validity tasks for ``molecules`` (stored, with ids in info), batched per formula; keys count on from
    ``first_index`` (the number of validity tasks the campaign already has)."""
    groups: dict[str, list[Atoms]] = {}
    for a in molecules:
        groups.setdefault(a.info["formula"], []).append(a)
    tasks = []
    size = spec.validity.batch_size
    for formula, members in sorted(groups.items()):
        for start in range(0, len(members), size):
            chunk = members[start:start + size]
            structures = tuple(StructureIn.from_atoms(a, structure_id=a.info["structure_id"]) for a in chunk)
            key = f"validity/{formula}/{first_index + len(tasks)}"
            job = ValidityJob(formula, len(chunk), spec.validity.timeout_s, structures)
            tasks.append(PlannedTask(key, spec.seed, job))
    return tasks
