"""Hybrid generation with an explicit energy model (Cho et al. 2023): reverse diffusion with optional energy guidance
(diffusion.guidance), then the stability test (§4.2: optimise on the energy model; accept only if the energy falls
monotonically and by at most a threshold, else restart that molecule from new noise), then post-relaxation (§4.3)
of each accepted molecule to a force threshold.

Choices the paper leaves open, made here: the test optimises with L-BFGS and a backtracking line search (every
accepted step lowers the energy, so a trace that rises or a line search that finds no descent marks a molecule
whose energy and forces disagree, not a trust-radius artefact) for at most ``steps`` steps, and stops as soon as
the drop exceeds the threshold; restarts are capped (``max_restarts``) and counted; restarted molecules re-enter the
next batch beside molecules not yet started, so the batch stays full while work remains. Noise is keyed by each
molecule's seed and attempt (forward.keyed_noise), so a molecule's result never depends on its batch.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

import numpy as np
import torch

from atomscreen.diffusion.forward import centre, keyed_noise
from atomscreen.diffusion.guidance import Guide
from atomscreen.diffusion.hybrid_settings import AcceptSettings, GuidanceSettings, PostRelaxSettings
from atomscreen.diffusion.painn import Denoiser
from atomscreen.diffusion.sample import SAMPLERS, sample
from atomscreen.diffusion.schedule import Schedule
from atomscreen.relax.lbfgs import BatchEnergy
from atomscreen.relax.minimise import minimise


@dataclass
class Verdict:
    """The stability test of one molecule: accepted, why not, the drop (meV/atom) and the optimizer steps."""

    accepted: bool
    reason: str | None
    drop_mev_per_atom: float | None
    steps: int


def verdict(trace: list[float], n_atoms: int, settings: AcceptSettings, error: str | None = None,
            converged: bool = True) -> Verdict:
    """Accept a molecule from its energy trace (eV) during the test optimisation: monotonic (rises below the
    tolerance) and a total drop of at most the threshold per atom."""
    if error is not None and error != "no_descent":
        return Verdict(False, f"energy model failed: {error}", None, max(len(trace) - 1, 0))
    if not trace:
        return Verdict(False, "no energy", None, 0)
    drop = (trace[0] - trace[-1]) / n_atoms * 1000.0
    if error == "no_descent":
        return Verdict(False, "line search found no descent", drop, len(trace) - 1)
    rises = np.diff(np.asarray(trace)) > settings.rise_tolerance_ev
    if rises.any():
        return Verdict(False, "energy rose during the optimisation", drop, len(trace) - 1)
    if drop > settings.threshold_mev_per_atom:
        return Verdict(False, f"energy fell {drop:.1f} meV/atom, more than {settings.threshold_mev_per_atom:g}",
                       drop, len(trace) - 1)
    return Verdict(True, None, drop, len(trace) - 1)


@dataclass
class Hybrid:
    """One molecule of a hybrid run: its generated positions (the accepted attempt, or the last one), attempts,
    reverse steps, guidance record, test verdict and post-relaxation."""

    numbers: np.ndarray
    positions: np.ndarray
    restarts: int = 0
    reverse_steps: int = 0
    converged: bool = True
    final_t: int | None = None
    interventions: int = 0
    guidance_steps: int = 0
    guidance_dropped: str | None = None
    guidance_seconds: float = 0.0  # its share of its batch's time inside guidance (all its attempts)
    verdict: Verdict | None = None
    post_positions: np.ndarray | None = None
    post_energy: float | None = None
    post_fmax: float | None = None
    post_steps: int = 0
    post_converged: bool = False
    post_error: str | None = None
    post_frames: list[tuple[int, np.ndarray]] = field(default_factory=list)
    post_trace: list[float] = field(default_factory=list)
    frames: list[tuple[int, np.ndarray]] = field(default_factory=list)  # the accepted (or last) reverse run

    @property
    def accepted(self) -> bool | None:
        return None if self.verdict is None else self.verdict.accepted


@dataclass(frozen=True)
class HybridEnergies:
    """The energy model of each strategy (None: that strategy is off)."""

    guidance: BatchEnergy | None = None
    accept: BatchEnergy | None = None
    post_relax: BatchEnergy | None = None


def attempt_seeds(seeds: torch.Tensor, attempts: torch.Tensor) -> torch.Tensor:
    """The noise seed of each molecule's attempt (0: first try), distinct across molecules and attempts."""
    return seeds * 64 + attempts  # seeds < 2**56 (molecule_seed keeps them below 2**62 // 64)


def _noise(keyed: torch.Tensor):
    return lambda index, steps, mol, n_mol: keyed_noise(keyed[index], steps, mol, n_mol)


def generate(model: Denoiser, schedule: Schedule, numbers: list[np.ndarray], seeds: list[int], *,
             sampler: str = "ddpm", max_steps: int | None = None, stop_at: int = 0,
             time_model: Denoiser | None = None, guidance: GuidanceSettings | None = None,
             accept: AcceptSettings | None = None, post_relax: PostRelaxSettings | None = None,
             energies: HybridEnergies = HybridEnergies(), slots: int = 64, device: str = "cpu",
             first_attempts: list[int] | None = None, record_every: int = 0, progress=None) -> list[Hybrid]:
    """Generate one molecule per entry of ``numbers`` (atomic numbers) with the strategies given (each None: off),
    ``slots`` molecules at a time; ``seeds`` one per molecule; ``first_attempts`` (default 0) the attempt each
    molecule starts at (an ablation that already holds attempt 0 of a molecule continues from 1). With every
    strategy off this is plain reverse diffusion with keyed noise."""
    if sampler not in SAMPLERS:
        raise ValueError(f"sampler must be one of {', '.join(SAMPLERS)}, got {sampler!r}")
    if len(numbers) != len(seeds):
        raise ValueError(f"one seed per molecule: {len(numbers)} molecules, {len(seeds)} seeds")
    for what, settings, energy in (("guidance", guidance, energies.guidance), ("accept", accept, energies.accept),
                                   ("post_relax", post_relax, energies.post_relax)):
        if settings is not None and energy is None:
            raise ValueError(f"{what} is on but has no energy model")
    if slots < 1:
        raise ValueError(f"slots must be at least 1, got {slots}")
    results: list[Hybrid | None] = [None] * len(numbers)
    attempts = list(first_attempts) if first_attempts is not None else [0] * len(numbers)
    if len(attempts) != len(numbers) or min(attempts, default=0) < 0:
        raise ValueError(f"first_attempts needs one attempt >= 0 per molecule, got {first_attempts}")
    pending = deque(range(len(numbers)))
    spent: dict[int, float] = {}  # guidance seconds of the earlier attempts
    while pending:
        take = [pending.popleft() for _ in range(min(slots, len(pending)))]
        batch = _attempt(model, schedule, [numbers[i] for i in take],
                         attempt_seeds(torch.tensor([seeds[i] for i in take], dtype=torch.int64),
                                       torch.tensor([attempts[i] for i in take], dtype=torch.int64)),
                         sampler, max_steps, stop_at, time_model, guidance, accept, energies, device, record_every)
        for i, out in zip(take, batch):
            out.restarts = attempts[i]
            out.guidance_seconds += spent.get(i, 0.0)
            spent[i] = out.guidance_seconds
            if out.verdict is not None and not out.verdict.accepted and attempts[i] < accept.max_restarts:
                attempts[i] += 1
                pending.append(i)
            else:
                results[i] = out
        if progress is not None:
            progress(sum(r is not None for r in results), len(numbers))
    done = [r for r in results if r is not None]
    if post_relax is not None:
        chosen = [r for r in done if r.accepted is not False]
        post_relax_all(chosen, post_relax, energies.post_relax, device, slots)
    return done


def post_relax_all(chosen: list[Hybrid], settings: PostRelaxSettings, energy: BatchEnergy, device: str = "cpu",
                   slots: int = 64) -> None:
    """Post-relax molecules in place, ``slots`` at a time (Cho et al. §4.3)."""
    for k in range(0, len(chosen), slots):
        _post_relax(chosen[k:k + slots], settings, energy, device)


def _batch(numbers: list[np.ndarray], device: str):
    z = torch.tensor(np.concatenate(numbers), dtype=torch.long, device=device)
    mol = torch.repeat_interleave(torch.arange(len(numbers), device=device),
                                  torch.tensor([len(n) for n in numbers], device=device))
    return z, mol


def _attempt(model, schedule, numbers, keyed, sampler, max_steps, stop_at, time_model, guidance, accept, energies,
             device, record_every=0) -> list[Hybrid]:
    """One reverse run of a batch of molecules, then the stability test of each."""
    z, mol = _batch(numbers, device)
    n_mol = len(numbers)
    keyed = keyed.to(device)
    x = centre(keyed_noise(keyed, torch.full((n_mol,), -1, dtype=torch.int64, device=device), mol, n_mol), mol,
               n_mol)
    guide = Guide(guidance, energies.guidance, z, mol, n_mol, schedule) if guidance is not None else None
    out = sample(model, schedule, model.species(z), mol, n_mol, sampler=sampler, max_steps=max_steps, x=x,
                 time_model=time_model, stop_at=stop_at, guide=guide, noise=_noise(keyed), record_every=record_every)
    positions, mol_np = out.positions.cpu().numpy(), mol.cpu().numpy()
    frames = [(step, f.cpu().numpy()) for step, f in out.frames]
    made = []
    for k in range(n_mol):
        h = Hybrid(numbers[k], positions[mol_np == k], reverse_steps=int(out.steps[k]),
                   converged=bool(out.converged[k]),
                   final_t=None if out.final_time is None else int(out.final_time[k]),
                   frames=[(step, f[mol_np == k]) for step, f in frames])
        if guide is not None:
            h.interventions, h.guidance_steps = int(guide.interventions[k]), int(guide.optimizer_steps[k])
            h.guidance_dropped = guide.dropped[k]
            h.guidance_seconds = guide.seconds / n_mol
        made.append(h)
    if accept is not None:
        for h, v in zip(made, stability_test(energies.accept, z, out.positions, mol, n_mol, accept)):
            h.verdict = v
    return made


def stability_test(energy: BatchEnergy, numbers: torch.Tensor, x: torch.Tensor, mol: torch.Tensor, n_mol: int,
                   settings: AcceptSettings) -> list[Verdict]:
    """Cho et al. §4.2 on a batch: optimise (L-BFGS, line search) until converged, ``steps`` steps, or a drop past
    the threshold, and judge each molecule's trace."""
    sizes = torch.bincount(mol, minlength=n_mol)
    threshold = settings.threshold_mev_per_atom / 1000.0 * sizes.to(torch.float64)
    test = minimise(energy, numbers, x, mol, n_mol, fmax=settings.fmax, max_steps=settings.steps,
                    stop=lambda start, e: start - e > threshold)
    return [verdict(test.trace[k], int(sizes[k]), settings, test.errors[k]) for k in range(n_mol)]


def _post_relax(chosen: list[Hybrid], settings: PostRelaxSettings, energy: BatchEnergy, device: str) -> None:
    z, mol = _batch([h.numbers for h in chosen], device)
    x = torch.tensor(np.concatenate([h.positions for h in chosen]), dtype=torch.float64, device=device)
    out = minimise(energy, z, x, mol, len(chosen), optimizer=settings.optimizer, fmax=settings.fmax,
                   max_steps=settings.max_steps, record_every=settings.record_every)
    positions, mol_np = out.positions.cpu().numpy(), mol.cpu().numpy()
    frames = [(step, f.cpu().numpy()) for step, f in out.frames]
    for k, h in enumerate(chosen):
        atoms = mol_np == k
        h.post_positions = positions[atoms]
        h.post_energy = float(out.energy[k])
        h.post_fmax = float(out.fmax[k])
        h.post_steps = int(out.steps[k])
        h.post_converged = bool(out.converged[k])
        h.post_error = out.errors[k]
        h.post_trace = out.trace[k]
        kept = [(s, f[atoms]) for s, f in frames if s <= h.post_steps]
        if frames and kept[-1][0] != h.post_steps:
            kept.append((h.post_steps, positions[atoms]))
        h.post_frames = kept
