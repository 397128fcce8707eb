"""L-BFGS with a backtracking (Armijo) line search for many molecules at once, on any batched energy function.

Nocedal & Wright, Numerical Optimization (2006), Algorithm 7.4 (two-loop recursion, eq. 7.20 for the initial
inverse Hessian) and Algorithm 3.1 (backtracking). Every accepted step lowers the energy by at least
c1 * a * <g, d>, so a molecule's energy trace falls monotonically; a molecule whose line search finds no decrease
along a descent direction (energy and forces that disagree, or a noisy SCF) stops and is flagged ``no_descent``.
Used for energy guidance, the accept/reject test and post-relaxation of generated molecules (Cho et al. 2023).
All arithmetic is float64; positions in Å, energies in eV, forces in eV/Å.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Protocol

import torch

from atomscreen.relax.fire import per_system_sum


@dataclass
class Evaluation:
    """Energies [k] (eV) and forces [atoms of the k molecules, 3] (eV/Å); errors[i] is why molecule i failed."""

    energy: torch.Tensor
    forces: torch.Tensor
    errors: list[str | None]


class BatchEnergy(Protocol):
    """(atomic numbers [N], positions [N, 3] float64 Å, molecule index 0..k-1 [N], k, keys [k]) -> Evaluation.
    ``keys`` name the molecules (stable across calls) for energy models that keep per-molecule state."""

    def __call__(self, numbers: torch.Tensor, positions: torch.Tensor, mol: torch.Tensor, n_mol: int,
                 keys: torch.Tensor) -> Evaluation: ...


@dataclass
class LbfgsResult:
    """Per molecule: final positions, energy (eV), largest force (eV/Å), accepted steps, converged, failure reason
    (None, 'no_descent' or the energy model's error), and its energy after every accepted step (trace[0]: start)."""

    positions: torch.Tensor
    energy: torch.Tensor
    fmax: torch.Tensor
    steps: torch.Tensor
    converged: torch.Tensor
    errors: list[str | None]
    trace: list[list[float]]
    calls: int = 0
    frames: list[tuple[int, torch.Tensor]] = field(default_factory=list)


def checked(evaluation: Evaluation, mol: torch.Tensor, n_mol: int) -> Evaluation:
    """The evaluation with a non-finite energy or force recorded as that molecule's error."""
    bad_force = per_system_sum((~torch.isfinite(evaluation.forces)).any(1).to(torch.float64), mol, n_mol) > 0
    errors = list(evaluation.errors)
    for i in torch.nonzero(bad_force | ~torch.isfinite(evaluation.energy)).squeeze(1).tolist():
        errors[i] = errors[i] or "non-finite energy or forces"
    return Evaluation(evaluation.energy, evaluation.forces, errors)


@dataclass
class _Start:
    """Both optimizers' state after the first evaluation: failed molecules carry zero energy and forces."""

    energy: torch.Tensor
    forces: torch.Tensor
    errors: list[str | None]
    failed: torch.Tensor
    trace: list[list[float]]


def start_state(energy_fn: BatchEnergy, numbers, x: torch.Tensor, mol: torch.Tensor, n_mol: int,
                keys: torch.Tensor) -> _Start:
    """The first evaluation of every molecule, failures recorded (the trace of a failed molecule is empty)."""
    first = checked(energy_fn(numbers, x, mol, n_mol, keys), mol, n_mol)
    failed = torch.tensor([e is not None for e in first.errors], dtype=torch.bool, device=x.device)
    energy = torch.where(failed, torch.zeros_like(first.energy), first.energy).to(torch.float64)
    forces = torch.where(failed[mol, None], torch.zeros_like(x), first.forces.to(torch.float64))
    trace = [[float(e)] if not f else [] for e, f in zip(energy.tolist(), failed.tolist())]
    return _Start(energy, forces, list(first.errors), failed, trace)


def evaluate_subset(energy_fn: BatchEnergy, numbers, x: torch.Tensor, mol: torch.Tensor, chosen: torch.Tensor,
                    keys: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, Evaluation]:
    """(molecule indices, atom mask, their molecule index renumbered 0..k-1, checked evaluation) of the ``chosen``
    molecules [n_mol] bool at positions x [atoms of the chosen molecules, 3]."""
    index, atoms = torch.nonzero(chosen).squeeze(1), chosen[mol]
    sub_mol = (torch.cumsum(chosen.long(), 0) - 1)[mol[atoms]]
    ev = checked(energy_fn(numbers[atoms], x, sub_mol, index.numel(), keys[index]), sub_mol, index.numel())
    return index, atoms, sub_mol, ev


def _dot(a: torch.Tensor, b: torch.Tensor, mol: torch.Tensor, n_mol: int) -> torch.Tensor:
    return per_system_sum((a * b).sum(1), mol, n_mol)


def _largest_force(forces: torch.Tensor, mol: torch.Tensor, n_mol: int) -> torch.Tensor:
    norms = forces.norm(dim=1)
    return torch.zeros(n_mol, dtype=forces.dtype, device=forces.device).scatter_reduce_(
        0, mol, norms, reduce="amax", include_self=True)


def _direction(g: torch.Tensor, s_hist: list, y_hist: list, mol, n_mol) -> torch.Tensor:
    """-H g by the two-loop recursion, per molecule (pairs with rho = 0 are empty slots and act as identity)."""
    q = g.clone()
    alphas = []
    rhos = []
    for s, y in zip(reversed(s_hist), reversed(y_hist)):
        sy = _dot(s, y, mol, n_mol)
        rho = torch.where(sy > 0, 1.0 / torch.where(sy > 0, sy, 1.0), torch.zeros_like(sy))
        alpha = rho * _dot(s, q, mol, n_mol)
        q = q - alpha[mol, None] * y
        alphas.append(alpha)
        rhos.append(rho)
    if s_hist:
        s, y = s_hist[-1], y_hist[-1]
        sy, yy = _dot(s, y, mol, n_mol), _dot(y, y, mol, n_mol)
        gamma = torch.where((sy > 0) & (yy > 0), sy / torch.where(yy > 0, yy, 1.0), torch.full_like(sy, 0.01))
    else:
        gamma = torch.full((n_mol,), 0.01, dtype=g.dtype, device=g.device)  # Å^2/eV: a 0.01 Å step per eV/Å first
    r = gamma[mol, None] * q
    for (s, y), alpha, rho in zip(zip(s_hist, y_hist), reversed(alphas), reversed(rhos)):
        beta = rho * _dot(y, r, mol, n_mol)
        r = r + (alpha - beta)[mol, None] * s
    return -r


def lbfgs(energy_fn: BatchEnergy, numbers: torch.Tensor, x: torch.Tensor, mol: torch.Tensor, n_mol: int, *,
          keys: torch.Tensor | None = None, fmax: float = 0.05, max_steps: int = 100, memory: int = 10,
          maxstep: float = 0.2, c1: float = 1e-4, max_backtracks: int = 12, stop: Callable | None = None,
          record_every: int = 0) -> LbfgsResult:
    """Minimise each molecule's energy from positions x [N, 3] (Å) until its largest force is <= ``fmax`` (eV/Å) or
    after ``max_steps`` accepted steps; no atom moves more than ``maxstep`` Å in one trial step. ``stop(start,
    energy) -> bool [n_mol]`` may end a molecule early (the accept/reject test stops once the drop exceeds its
    threshold). A molecule whose energy model fails keeps its last good positions and records the error."""
    if max_steps < 0 or fmax <= 0 or memory < 1:
        raise ValueError(f"L-BFGS needs max_steps >= 0, fmax > 0 and memory >= 1, got {max_steps}, {fmax}, {memory}")
    x = x.to(torch.float64).clone()
    keys = torch.arange(n_mol, device=x.device) if keys is None else keys
    calls = 1
    first = start_state(energy_fn, numbers, x, mol, n_mol, keys)
    energy, forces, errors, failed, trace = first.energy, first.forces, first.errors, first.failed, first.trace
    first_failed = failed.clone()
    start = energy.clone()
    steps = torch.zeros(n_mol, dtype=torch.long, device=x.device)
    s_hist: list[torch.Tensor] = []
    y_hist: list[torch.Tensor] = []
    frames = [(0, x.clone())] if record_every else []
    for k in range(1, max_steps + 1):
        f_max = _largest_force(forces, mol, n_mol)
        active = ~failed & (f_max > fmax)
        if stop is not None:
            active &= ~stop(start, energy)
        if not bool(active.any()):
            break
        g = -forces
        d = _direction(g, s_hist, y_hist, mol, n_mol)
        slope = _dot(g, d, mol, n_mol)
        uphill = slope >= 0  # not a descent direction: steepest descent, history kept for the others
        d = torch.where(uphill[mol, None], -g * 0.01, d)
        slope = torch.where(uphill, _dot(g, -g * 0.01, mol, n_mol), slope)
        longest = torch.zeros(n_mol, dtype=x.dtype, device=x.device).scatter_reduce_(
            0, mol, d.norm(dim=1), reduce="amax", include_self=True)
        a = torch.where(longest > maxstep, maxstep / torch.where(longest > 0, longest, 1.0), torch.ones_like(longest))
        searching = active.clone()
        new_x, new_e, new_f = x.clone(), energy.clone(), forces.clone()
        for _ in range(max_backtracks + 1):
            if not bool(searching.any()):
                break
            atoms = searching[mol]
            trial = x[atoms] + a[mol[atoms], None] * d[atoms]
            index, atoms, sub_mol, ev = evaluate_subset(energy_fn, numbers, trial, mol, searching, keys)
            calls += 1
            ok = torch.tensor([e is None for e in ev.errors], dtype=torch.bool, device=x.device)
            e_trial = torch.where(ok, ev.energy.to(torch.float64), torch.full_like(ev.energy, float("inf"),
                                                                                    dtype=torch.float64))
            sufficient = ok & (e_trial <= energy[index] + c1 * a[index] * slope[index])
            for i, err in zip(index[~ok].tolist(), [e for e in ev.errors if e is not None]):
                errors[i] = err
            failed[index[~ok]] = True
            done = index[sufficient]
            atoms_done = torch.isin(mol, done)
            new_x[atoms_done] = trial[sufficient[sub_mol]]
            new_e[done] = e_trial[sufficient]
            new_f[atoms_done] = ev.forces.to(torch.float64)[sufficient[sub_mol]]
            searching[done] = False
            searching[index[~ok]] = False
            a = torch.where(searching, a * 0.5, a)
        for i in torch.nonzero(searching).squeeze(1).tolist():  # no decrease found after every backtrack
            errors[i] = "no_descent"
        failed |= searching
        moved = active & ~failed
        s = torch.where(moved[mol, None], new_x - x, torch.zeros_like(x))
        y = torch.where(moved[mol, None], forces - new_f, torch.zeros_like(x))  # y = g_new - g_old
        s_hist.append(s)
        y_hist.append(y)
        if len(s_hist) > memory:
            s_hist.pop(0)
            y_hist.pop(0)
        x = torch.where(moved[mol, None], new_x, x)
        energy = torch.where(moved, new_e, energy)
        forces = torch.where(moved[mol, None], new_f, forces)
        steps += moved.long()
        for i in torch.nonzero(moved).squeeze(1).tolist():
            trace[i].append(float(energy[i]))
        if record_every and k % record_every == 0:
            frames.append((k, x.clone()))
    f_max = _largest_force(forces, mol, n_mol)
    if record_every and frames[-1][0] != int(steps.max()):
        frames.append((int(steps.max()), x.clone()))
    energy = torch.where(first_failed, torch.full_like(energy, float("nan")), energy)
    return LbfgsResult(x, energy, f_max, steps, ~failed & (f_max <= fmax), errors, trace, calls, frames)
