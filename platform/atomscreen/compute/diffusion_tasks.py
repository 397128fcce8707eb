"""Diffusion task functions on Dask workers: generation from noise (DDPM, MoreRed-JT/-AS), relaxation of stored
molecules by reverse diffusion (MoreRed ITP/AS/JT), and the diffusion polish of re-scoring candidates."""

from __future__ import annotations

import time

import numpy as np

from atomscreen.compute.workers import ModelRef, _device, _model, _use_worker_threads
from atomscreen.jobs import DiffusionJob, DiffusionRelaxJob, RescoreJob, StructureOut, TaskResult, worker_models
from atomscreen.relax.trajectory import RelaxStatus


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


def polished_molecules(job: RescoreJob, starts, model: ModelRef, device: str):
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
    stopping step. info.predicted_steps: the step before every reverse step (AS / JT: the rounded prediction, plus
    the stopping reading when converged; ITP: t̂0 and then its fixed schedule), with the step count and frames."""
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
                "predicted_steps": predicted, "settings": {"max_steps": job.max_steps, "stop_at": job.stop_at,
                                                           "seed": job.seed, "time_model": job.time_model},
                "displacement_rmsd": float(np.sqrt(((positions[atoms] - a.positions) ** 2).sum(1).mean()))}
        if out.final_time is not None:
            info["final_t"] = int(out.final_time[k])
        results.append(StructureOut(np.asarray(a.numbers), positions[atoms], np.asarray(a.cell.array),
                                    np.asarray(a.pbc), None, None, steps,
                                    RelaxStatus.CONVERGED if converged else RelaxStatus.NOT_CONVERGED,
                                    trajectory=_own_trajectory(frames, atoms, steps, positions[atoms]),
                                    parent_id=s.parent_id, info=info))
    return TaskResult(time.perf_counter() - t0, results, device=device)


def diffusion_task(job: DiffusionJob, model: ModelRef, *others: ModelRef) -> TaskResult:
    """Molecules of one composition generated from noise by reverse diffusion (seeded by composition and start, so
    the same molecules however the samples are split into tasks), with their subsampled reverse trajectories;
    ``others``: the time model and the RM energy models, in the order of jobs.worker_models. With energy-model
    strategies (job.hybrid), the hybrid generator of diffusion.hybrid."""
    import torch

    from atomscreen.diffusion.sample import sample

    t0 = time.perf_counter()
    _use_worker_threads()
    device = _device()
    denoiser, schedule = _model(model, device)
    refs = dict(zip(worker_models(job)[1:], others))
    timer = _model(refs[job.time_model], device)[0] if job.time_model is not None else None
    if job.hybrid is not None:
        return _hybrid_task(job, denoiser, schedule, timer, refs, device, t0)
    numbers = torch.tensor([z for _ in range(job.count) for z in _numbers(job.counts)], device=device)
    mol = torch.repeat_interleave(torch.arange(job.count, device=device), len(numbers) // job.count)
    generator = torch.Generator(device=device).manual_seed(
        (job.seed * 1_000_003 + job.composition_seed * 7919 + job.start) % 2**63)
    out = sample(denoiser, schedule, denoiser.species(numbers), mol, job.count, sampler=job.sampler,
                 max_steps=job.max_steps, generator=generator, time_model=timer, record_every=job.trajectory_every,
                 stop_at=job.stop_at)
    return TaskResult(time.perf_counter() - t0, _generated(job, numbers.cpu().numpy(), mol.cpu().numpy(), out),
                      device=device)


def hybrid_seed(job: DiffusionJob, k: int) -> int:
    """The noise seed of molecule ``start + k`` of a composition: the same however samples are split into tasks."""
    return (job.seed * 1_000_003 + job.composition_seed * 7919 + job.start + k) % 2**56


def _energy(ref, refs: dict[str, ModelRef], device: str):
    from atomscreen.evaluate.energy_models import ase_energy, rm_energy

    if ref.model:
        return rm_energy(_model(refs[ref.name], device))
    return ase_energy(ref.name, ref.options, device)


def _hybrid_task(job: DiffusionJob, denoiser, schedule, timer, refs: dict[str, ModelRef], device: str,
                 t0: float) -> TaskResult:
    """Generation with guidance, accept/reject and post-relaxation (Cho et al. 2023): each molecule a structure
    (origin diffusion) with its restarts and test verdict in info, its post-relaxation a child (origin post_relax)
    with the energy model's energy and trajectory."""
    from atomscreen.diffusion.hybrid import HybridEnergies, generate

    h = job.hybrid
    made = {}  # one energy function per (model, options), shared by the strategies that use it
    for e in h.energies():
        key = (e.name, repr(e.options))
        if key not in made:
            made[key] = _energy(e, refs, device)
    energies = HybridEnergies(*(None if e is None else made[(e.name, repr(e.options))]
                                for e in (h.guidance_energy, h.accept_energy, h.post_energy)))
    numbers = np.array(_numbers(job.counts))
    out = generate(denoiser, schedule, [numbers] * job.count, [hybrid_seed(job, k) for k in range(job.count)],
                   sampler=job.sampler, max_steps=job.max_steps, stop_at=job.stop_at, time_model=timer,
                   guidance=h.guidance, accept=h.accept, post_relax=h.post_relax, energies=energies,
                   slots=h.slots, device=device, record_every=job.trajectory_every)
    results = []
    for m in out:
        info = {"sampler": job.sampler, "reverse_steps": m.reverse_steps, "converged": m.converged,
                "restarts": m.restarts, "hybrid": _hybrid_info(m, h)}
        if m.final_t is not None:
            info["final_t"] = m.final_t
        if m.verdict is not None:
            info["accepted"] = m.verdict.accepted
        trajectory = _own_trajectory(m.frames, np.ones(len(numbers), dtype=bool), m.reverse_steps, m.positions) \
            if m.frames else None
        s = StructureOut(numbers, m.positions, np.zeros((3, 3)), np.zeros(3, dtype=bool), None, None,
                         m.reverse_steps, RelaxStatus.CONVERGED if m.converged else RelaxStatus.NOT_CONVERGED,
                         trajectory=trajectory, info=info)
        if m.post_positions is not None:
            s.children.append(_post_out(m, h))
            s.child_method = h.post_energy.method
        results.append(s)
    return TaskResult(time.perf_counter() - t0, results, device=device)


def _hybrid_info(m, h) -> dict:
    info = {}
    if h.guidance is not None:
        info["guidance"] = {"energy": h.guidance_energy.method, "interventions": m.interventions,
                            "optimizer_steps": m.guidance_steps, "dropped": m.guidance_dropped,
                            "start": h.guidance.start, "every": h.guidance.every,
                            "iterations": h.guidance.iterations, "target": h.guidance.target}
    if m.verdict is not None:
        info["accept"] = {"energy": h.accept_energy.method, "accepted": m.verdict.accepted,
                          "reason": m.verdict.reason, "drop_mev_per_atom": m.verdict.drop_mev_per_atom,
                          "steps": m.verdict.steps, "threshold_mev_per_atom": h.accept.threshold_mev_per_atom,
                          "max_restarts": h.accept.max_restarts}
    return info


def _post_out(m, h) -> StructureOut:
    """The post-relaxation of one molecule as its child structure; failed when the energy model failed at once."""
    from atomscreen.relax.trajectory import Trajectory

    failed = m.post_energy is None or not np.isfinite(m.post_energy)
    trace = m.post_trace
    frames = m.post_frames
    trajectory = None if not frames else Trajectory(
        np.array([s for s, _ in frames]),
        np.array([trace[s] if s < len(trace) else np.nan for s, _ in frames]),
        np.full(len(frames), np.nan), np.stack([x for _, x in frames]), np.zeros((len(frames), 3, 3)))
    status = RelaxStatus.FAILED if failed else (RelaxStatus.CONVERGED if m.post_converged
                                                else RelaxStatus.NOT_CONVERGED)
    info = {"post_relax": {"energy": h.post_energy.method, "fmax_target": h.post_relax.fmax,
                           "max_steps": h.post_relax.max_steps, "optimizer": h.post_relax.optimizer,
                           "error": m.post_error}}
    return StructureOut(m.numbers, m.post_positions, np.zeros((3, 3)), np.zeros(3, dtype=bool),
                        None if failed else m.post_energy, m.post_fmax, m.post_steps, status, trajectory=trajectory,
                        info=info, error=m.post_error if failed else None)


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
