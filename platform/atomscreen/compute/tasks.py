"""Pure task functions run on Dask workers: a typed job (and a model) in, a :class:`TaskResult` out.

Same job and model, same result; they never open the database. Models arrive
as :class:`ModelRef` (scattered to every worker once) and are built once per
worker process, cached by the sha256 of their weights (workers.py); the
diffusion tasks live in diffusion_tasks.py.
"""

from __future__ import annotations

import dataclasses
import time
import warnings
from typing import Any, Callable

import numpy as np
import spglib

from atomscreen.atoms.random import random_structure
from atomscreen.compute.diffusion_tasks import diffusion_relax_task, diffusion_task, polished_molecules
from atomscreen.compute.workers import ModelRef, _device, _model, _use_worker_threads, worker_threads
from atomscreen.jobs import (
    CheckOut,
    ReferenceJob,
    RescoreJob,
    RssJob,
    StructureOut,
    TaskKind,
    TaskResult,
    ValidityJob,
)
from atomscreen.relax.trajectory import RelaxStatus

__all__ = ["TASKS", "ModelRef", "diffusion_relax_task", "diffusion_task", "reference_task", "rescore_task", "rss_task",
           "spacegroup_number", "structure_rng", "validity_task", "worker_threads"]


def structure_rng(job: RssJob, k: int, round_: int | None = None, *, stage: int | None = None) -> np.random.Generator:
    """The generator of structure ``start + k`` of a composition (of its kick ``round_``, or of the kick before
    relaxation ``stage``): independent of how samples are split into tasks."""
    extra = [] if round_ is None else [1 + round_]
    if stage is not None:
        extra = [1000 + stage]
    return np.random.default_rng([job.seed, job.composition_seed, job.start + k, *extra])


def spacegroup_number(numbers: np.ndarray, positions: np.ndarray, cell: np.ndarray, symprec: float) -> int | None:
    """International space-group number by spglib, None if it finds none."""
    frac = np.linalg.solve(cell.T, positions.T).T
    dataset = spglib.get_symmetry_dataset((cell, frac % 1.0, numbers), symprec=symprec)
    return None if dataset is None else int(dataset.number)


def _out(result, symprec: float, **extra: Any) -> StructureOut:
    """A relaxation outcome (batched FIRE or an ASE calculator) as a StructureOut, with its space group."""
    atoms = result.atoms
    periodic = bool(atoms.pbc.all())
    ok = result.status not in (RelaxStatus.EXPLODED, RelaxStatus.FAILED)
    group = spacegroup_number(atoms.numbers, atoms.positions, atoms.cell.array, symprec) if periodic and ok else None
    return StructureOut(np.asarray(atoms.numbers), np.asarray(atoms.positions), np.asarray(atoms.cell.array),
                        np.asarray(atoms.pbc), result.energy, result.fmax, result.n_steps, RelaxStatus(result.status),
                        group, result.trajectory, **extra)


def _start_volume(atoms) -> float | None:
    return float(atoms.get_volume() / len(atoms)) if atoms.pbc.all() else None


def _kicked(job: RssJob, results, model, device):
    """The kick rounds of an RSS job: displace, relax again, keep the lower of the two minima."""
    from atomscreen.relax import relax

    for round_ in range(job.kick.rounds if job.kick else 0):
        kicked = []
        for k, r in enumerate(results):
            atoms = r.atoms.copy()
            d = job.kick.displacement
            atoms.positions += structure_rng(job, k, round_).uniform(-d, d, size=(len(atoms), 3))
            kicked.append(atoms)
        again = relax(model, kicked, job.relax, device=device)
        results = [b if b.status != RelaxStatus.EXPLODED and (a.status == RelaxStatus.EXPLODED or b.energy < a.energy)
                   else a for a, b in zip(results, again)]
    return results


def rss_task(job: RssJob, model: ModelRef) -> TaskResult:
    """Random structures of one composition relaxed on the pseudo potential (atoms and, if asked, cell), in one
    relaxation (with optional kick rounds) or in stages."""
    from atomscreen.relax import relax, relax_in_stages

    t0 = time.perf_counter()
    _use_worker_threads()
    starts = [random_structure(job.counts, job.random, structure_rng(job, k)) for k in range(job.count)]
    device = _device()
    potential = _model(model, device)
    infos: list[dict] = [{} for _ in starts]
    if job.stages:
        staged = relax_in_stages(potential, starts, job.stages, job.relax,
                                 lambda k, s: structure_rng(job, k, stage=s), device=device)
        results = [st.result for st in staged]
        infos = [{"stage_steps": st.stage_steps, "stage_status": st.stage_status} for st in staged]
    else:
        results = _kicked(job, relax(potential, starts, job.relax, device=device), potential, device)
    if job.select != "all":
        for info, r in zip(infos, results):
            info["selected"] = r.status == RelaxStatus.CONVERGED
    out = [_out(r, job.symprec, start_volume_per_atom=_start_volume(s), info=info)
           for s, r, info in zip(starts, results, infos)]
    return TaskResult(time.perf_counter() - t0, out, device=device)


def reference_task(job: ReferenceJob, model: ModelRef) -> TaskResult:
    """Known structures (hull references) relaxed on the pseudo potential, so they join the pseudo hull."""
    from atomscreen.relax import relax

    t0 = time.perf_counter()
    _use_worker_threads()
    starts = [s.to_atoms() for s in job.structures]
    device = _device()
    # references are equilibrium phases: never at constant volume (jobs stored before the contract said so too)
    settings = dataclasses.replace(job.relax, constant_volume=False)
    results = relax(_model(model, device), starts, settings, device=device)
    out = [_out(r, job.symprec, start_volume_per_atom=_start_volume(a), info=dict(s.info))
           for a, s, r in zip(starts, job.structures, results)]
    return TaskResult(time.perf_counter() - t0, out, device=device)


def rescore_task(job: RescoreJob, model: ModelRef | None = None) -> TaskResult:
    """Candidates relaxed (or single-pointed) with a real calculator, after a diffusion polish on ``model`` if the job
    asks (and, to measure what it saves, unpolished too); a structure that fails is reported, not raised."""
    from atomscreen.evaluate.calculators import calculate_all, make_calculator

    t0 = time.perf_counter()
    _use_worker_threads()
    device = _device()
    # chgnet converts a tensor that requires grad to a float on every call: a harmless warning per structure
    warnings.filterwarnings("ignore", message="Converting a tensor with requires_grad=True to a scalar",
                            category=UserWarning)
    if job.timeout_s is None:  # a calculator that cannot be made fails the whole task
        make_calculator(job.method, device=device, options=job.options)
    starts = [s.to_atoms() for s in job.structures]

    def calculate(atoms):
        return calculate_all(atoms, job.method, job.settings, options=job.options, timeout_s=job.timeout_s,
                             device=device, threads=worker_threads())

    infos: list[dict] = [{} for _ in starts]
    if job.polish is not None:
        if model is None:
            raise ValueError("a re-scoring job with polish needs its denoiser")
        polished = polished_molecules(job, starts, model, device)
        if job.polish.compare:
            for info, r in zip(infos, calculate(starts)):
                info.update(unpolished_steps=r.n_steps, unpolished_status=str(r.status),
                            unpolished_energy=r.energy if r.energy is not None and np.isfinite(r.energy) else None)
        for info, a, p in zip(infos, starts, polished):
            info.update(polish_steps=job.polish.steps,
                        polish_rmsd=float(np.sqrt(((a.positions - p.positions) ** 2).sum(1).mean())))
        starts = polished
    results = calculate(starts)
    out = [_out(r, job.symprec, parent_id=s.parent_id, error=r.error, wall_time_s=r.wall_time_s, info=info)
           for s, r, info in zip(job.structures, results, infos)]
    return TaskResult(time.perf_counter() - t0, out, device=device)


def validity_task(job: ValidityJob, model: ModelRef | None = None) -> TaskResult:
    """Chemical validity checks of molecules (each in a child process with a time limit); never raises per molecule."""
    from atomscreen.evaluate.validity import check_molecules

    t0 = time.perf_counter()
    results = check_molecules([s.to_atoms() for s in job.structures], timeout_s=job.timeout_s)
    checks = [CheckOut(s.structure_id, r.status, r.error, r.checks, r.passes_all, r.smiles, r.atoms_stable,
                       r.molecule_stable, r.wall_time_s) for s, r in zip(job.structures, results)]
    return TaskResult(time.perf_counter() - t0, checks=checks)


TASKS: dict[TaskKind, Callable[..., TaskResult]] = {
    TaskKind.RSS: rss_task, TaskKind.REFERENCE: reference_task, TaskKind.RESCORE: rescore_task,
    TaskKind.VALIDITY: validity_task, TaskKind.DIFFUSION: diffusion_task,
    TaskKind.DIFFUSION_RELAX: diffusion_relax_task,
}
