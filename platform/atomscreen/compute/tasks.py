"""Pure task functions run on Dask workers: a typed job (and a model) in, a :class:`TaskResult` out.

Same job and model, same result; they never open the database. Models arrive
as :class:`ModelRef` (scattered to every worker once) and are built once per
worker process, cached by the sha256 of their weights.
"""

from __future__ import annotations

import dataclasses
import time
import warnings
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import spglib

from atomscreen.atoms.random import random_structure
from atomscreen.jobs import (
    CheckOut,
    DiffusionJob,
    DiffusionRelaxJob,
    ReferenceJob,
    RescoreJob,
    RssJob,
    StructureOut,
    TaskKind,
    TaskResult,
    ValidityJob,
)
from atomscreen.relax.trajectory import RelaxStatus

_MODELS: dict[tuple[str, str], Any] = {}


@dataclass(frozen=True)
class ModelRef:
    """What a worker needs to rebuild a stored model (an RM potential, or a denoiser with its schedule)."""

    sha256: str
    config: dict[str, Any]
    weights: bytes
    kind: str = "rm_potential"
    schedule: dict[str, Any] | None = None  # denoisers


def _device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def _model(ref: ModelRef, device: str):
    key = (ref.sha256, device)
    if key not in _MODELS:
        import torch

        if ref.kind == "denoiser":
            from atomscreen.diffusion.checkpoint import load_denoiser
            from atomscreen.diffusion.schedule import schedule_from_dict

            _MODELS[key] = (load_denoiser(ref.config, ref.weights, device=device), schedule_from_dict(ref.schedule))
        else:
            from atomscreen.potentials.train import load_model

            _MODELS[key] = load_model(ref.config, ref.weights, dtype=torch.float64, device=device)
    return _MODELS[key]


def worker_threads() -> int:
    """The Dask worker's thread count (1 off a worker); torch uses as many (one process per worker)."""
    try:
        from distributed import get_worker

        return max(1, get_worker().state.nthreads)
    except ValueError:  # not on a Dask worker
        return 1


def _use_worker_threads() -> None:
    """On a Dask worker, torch gets the worker's thread count (no oversubscription); elsewhere it is left alone."""
    import torch

    try:
        from distributed import get_worker

        torch.set_num_threads(max(1, get_worker().state.nthreads))
    except ValueError:  # not on a Dask worker
        pass


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
        polished = _polished(job, starts, model, device)
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


def molecule_seed(seed: int, structure_id: int) -> int:
    """The reverse-noise seed of one stored molecule: the same in any batch, task split or re-run."""
    return (seed * 1_000_003 + structure_id) % 2**62


def _batched(atoms_list, denoiser, device):
    """(species, positions [N, 3] float64, molecule index) of molecules for the denoiser."""
    import torch

    numbers = torch.tensor(np.concatenate([a.numbers for a in atoms_list]), device=device)
    x = torch.tensor(np.concatenate([a.positions for a in atoms_list]), dtype=torch.float64, device=device)
    sizes = torch.tensor([len(a) for a in atoms_list], device=device)
    mol = torch.repeat_interleave(torch.arange(len(atoms_list), device=device), sizes)
    return denoiser.species(numbers), x, mol


def _polished(job: RescoreJob, starts, model: ModelRef, device: str):
    """The candidates after the last ``polish.steps`` reverse steps (Rothchild et al.), atom types and cells kept."""
    import torch

    from atomscreen.diffusion.relax import polish

    denoiser, schedule = _model(model, device)
    species, x, mol = _batched(starts, denoiser, device)
    seeds = torch.tensor([molecule_seed(job.polish.seed, s.parent_id or 0) for s in job.structures], device=device)
    out = polish(denoiser, schedule, species, mol, len(starts), x, steps=job.polish.steps, seeds=seeds)
    positions = out.positions.cpu().numpy()
    offsets = np.cumsum([0] + [len(a) for a in starts])
    polished = []
    for k, a in enumerate(starts):
        b = a.copy()
        b.positions = positions[offsets[k]:offsets[k + 1]]
        polished.append(b)
    return polished


def diffusion_relax_task(job: DiffusionRelaxJob, model: ModelRef, time_model: ModelRef | None = None) -> TaskResult:
    """Stored molecules relaxed together by reverse diffusion (MoreRed), each with its own predicted time and its own
    stopping step; the predicted step before every reverse step, the step count and subsampled frames come back."""
    import torch

    from atomscreen.diffusion.relax import relax

    t0 = time.perf_counter()
    _use_worker_threads()
    device = _device()
    denoiser, schedule = _model(model, device)
    timer = _model(time_model, device)[0] if time_model is not None else None
    starts = [s.to_atoms() for s in job.structures]
    species, x, mol = _batched(starts, denoiser, device)
    seeds = torch.tensor([molecule_seed(job.seed, s.parent_id) for s in job.structures], device=device)
    out = relax(denoiser, schedule, species, mol, job.count, x, method=job.method, seeds=seeds,
                max_steps=job.max_steps, stop_at=job.stop_at, time_model=timer, record_every=job.trajectory_every)
    positions, mol_np = out.positions.cpu().numpy(), mol.cpu().numpy()
    frames = [(step, f.cpu().numpy()) for step, f in out.frames]
    times = out.times.cpu().numpy()
    results = []
    for k, (s, a) in enumerate(zip(job.structures, starts)):
        atoms = mol_np == k
        steps, converged = int(out.steps[k]), bool(out.converged[k])
        predicted = [int(t) for t in times[:, k] if t >= 0]
        info = {"sampler": job.method, "reverse_steps": steps, "converged": converged, "t0": predicted[0],
                "predicted_steps": predicted,
                "displacement_rmsd": float(np.sqrt(((positions[atoms] - a.positions) ** 2).sum(1).mean()))}
        if out.final_time is not None:
            info["final_t"] = int(out.final_time[k])
        results.append(StructureOut(np.asarray(a.numbers), positions[atoms], np.asarray(a.cell.array),
                                    np.asarray(a.pbc), None, None, steps,
                                    RelaxStatus.CONVERGED if converged else RelaxStatus.NOT_CONVERGED,
                                    trajectory=_own_trajectory(frames, atoms, steps, positions[atoms]),
                                    parent_id=s.parent_id, info=info))
    return TaskResult(time.perf_counter() - t0, results, device=device)


def validity_task(job: ValidityJob, model: ModelRef | None = None) -> TaskResult:
    """Chemical validity checks of molecules (each in a child process with a time limit); never raises per molecule."""
    from atomscreen.evaluate.validity import check_molecules

    t0 = time.perf_counter()
    results = check_molecules([s.to_atoms() for s in job.structures], timeout_s=job.timeout_s)
    checks = [CheckOut(s.structure_id, r.status, r.error, r.checks, r.passes_all, r.smiles, r.atoms_stable,
                       r.molecule_stable, r.wall_time_s) for s, r in zip(job.structures, results)]
    return TaskResult(time.perf_counter() - t0, checks=checks)


def diffusion_task(job: DiffusionJob, model: ModelRef, time_model: ModelRef | None = None) -> TaskResult:
    """Molecules of one composition generated from noise by reverse diffusion (seeded by composition and start, so
    the same molecules however the samples are split into tasks), with their subsampled reverse trajectories."""
    import torch

    from atomscreen.diffusion.sample import sample

    t0 = time.perf_counter()
    _use_worker_threads()
    device = _device()
    denoiser, schedule = _model(model, device)
    timer = _model(time_model, device)[0] if time_model is not None else None
    numbers = torch.tensor([z for _ in range(job.count) for z in _numbers(job.counts)], device=device)
    mol = torch.repeat_interleave(torch.arange(job.count, device=device), len(numbers) // job.count)
    generator = torch.Generator(device=device).manual_seed(
        (job.seed * 1_000_003 + job.composition_seed * 7919 + job.start) % 2**63)
    out = sample(denoiser, schedule, denoiser.species(numbers), mol, job.count, sampler=job.sampler,
                 max_steps=job.max_steps, generator=generator, time_model=timer, record_every=job.trajectory_every,
                 stop_at=job.stop_at)
    return TaskResult(time.perf_counter() - t0, _generated(job, numbers.cpu().numpy(), mol.cpu().numpy(), out),
                      device=device)


def _numbers(counts: dict[str, int]) -> list[int]:
    from ase.data import atomic_numbers

    return [atomic_numbers[e] for e, n in counts.items() for _ in range(n)]


def _generated(job: DiffusionJob, numbers: np.ndarray, mol: np.ndarray, out) -> list[StructureOut]:
    """One StructureOut per generated molecule: positions, status, reverse steps, frames (no energies)."""
    positions = out.positions.cpu().numpy()
    frames = [(step, x.cpu().numpy()) for step, x in out.frames]
    results = []
    for k in range(job.count):
        atoms = mol == k
        steps, converged = int(out.steps[k]), bool(out.converged[k])
        trajectory = _own_trajectory(frames, atoms, steps, positions[atoms])
        info = {"sampler": job.sampler, "reverse_steps": steps, "converged": converged}
        if out.final_time is not None:
            info["final_t"] = int(out.final_time[k])
        results.append(StructureOut(numbers[atoms], positions[atoms], np.zeros((3, 3)), np.zeros(3, dtype=bool), None,
                                    None, steps, RelaxStatus.CONVERGED if converged else RelaxStatus.NOT_CONVERGED,
                                    trajectory=trajectory, info=info))
    return results


def _own_trajectory(frames, atoms: np.ndarray, steps: int, last: np.ndarray):
    """One molecule's frames of a batched reverse run (those up to its own stopping step, then its last positions),
    without energies; None if nothing was recorded."""
    from atomscreen.relax.trajectory import Trajectory

    if not frames:
        return None
    kept = [(s, x[atoms]) for s, x in frames if s <= steps]
    if kept[-1][0] != steps:  # the molecule stopped between two recorded frames: its last positions
        kept.append((steps, last))
    return Trajectory(np.array([s for s, _ in kept]), np.full(len(kept), np.nan), np.full(len(kept), np.nan),
                      np.stack([x for _, x in kept]), np.zeros((len(kept), 3, 3)))


TASKS: dict[TaskKind, Callable[..., TaskResult]] = {
    TaskKind.RSS: rss_task, TaskKind.REFERENCE: reference_task, TaskKind.RESCORE: rescore_task,
    TaskKind.VALIDITY: validity_task, TaskKind.DIFFUSION: diffusion_task,
    TaskKind.DIFFUSION_RELAX: diffusion_relax_task,
}
