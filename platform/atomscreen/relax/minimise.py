"""Minimise many molecules on a batched energy function with L-BFGS (line search, relax.lbfgs) or FIRE (relax.fire,
ASE's parameters): the one entry point of guidance, accept/reject and post-relaxation."""

from __future__ import annotations

import torch

from atomscreen.relax.fire import FireParams, fire_init, fire_step
from atomscreen.relax.lbfgs import BatchEnergy, LbfgsResult, _largest_force, evaluate_subset, lbfgs, start_state

OPTIMIZERS = ("lbfgs", "fire")


def minimise(energy_fn: BatchEnergy, numbers: torch.Tensor, x: torch.Tensor, mol: torch.Tensor, n_mol: int, *,
             keys: torch.Tensor | None = None, optimizer: str = "lbfgs", fmax: float = 0.05, max_steps: int = 100,
             maxstep: float = 0.2, stop=None, record_every: int = 0) -> LbfgsResult:
    """Relax each molecule until its largest force is <= fmax (eV/Å) or after max_steps steps (see lbfgs)."""
    if optimizer == "lbfgs":
        return lbfgs(energy_fn, numbers, x, mol, n_mol, keys=keys, fmax=fmax, max_steps=max_steps, maxstep=maxstep,
                     stop=stop, record_every=record_every)
    if optimizer == "fire":
        return fire(energy_fn, numbers, x, mol, n_mol, keys=keys, fmax=fmax, max_steps=max_steps, maxstep=maxstep,
                    record_every=record_every)
    raise ValueError(f"optimizer must be one of {', '.join(OPTIMIZERS)}, got {optimizer!r}")


def fire(energy_fn: BatchEnergy, numbers: torch.Tensor, x: torch.Tensor, mol: torch.Tensor, n_mol: int, *,
         keys: torch.Tensor | None = None, fmax: float = 0.05, max_steps: int = 100, maxstep: float = 0.2,
         record_every: int = 0) -> LbfgsResult:
    """Batched FIRE (no line search: its energy may rise between steps). A molecule whose energy model fails keeps
    its positions before the failing step."""
    x = x.to(torch.float64).clone()
    keys = torch.arange(n_mol, device=x.device) if keys is None else keys
    params = FireParams(maxstep=maxstep)
    state = fire_init(x, mol, n_mol, params)
    first = start_state(energy_fn, numbers, x, mol, n_mol, keys)
    energy, forces, errors, failed, trace = first.energy, first.forces, first.errors, first.failed, first.trace
    first_failed = failed.clone()
    steps = torch.zeros(n_mol, dtype=torch.long, device=x.device)
    frames = [(0, x.clone())] if record_every else []
    calls = 1
    for k in range(1, max_steps + 1):
        active = ~failed & (_largest_force(forces, mol, n_mol) > fmax)
        if not bool(active.any()):
            break
        moved_x, state = fire_step(state, x, torch.where(active[mol, None], forces, torch.zeros_like(forces)), mol,
                                   params)
        trial = torch.where(active[mol, None], moved_x, x)
        index, atoms, _, ev = evaluate_subset(energy_fn, numbers, trial[active[mol]], mol, active, keys)
        calls += 1
        bad = torch.zeros(n_mol, dtype=torch.bool, device=x.device)
        for i, err in zip(index.tolist(), ev.errors):
            if err is not None:
                errors[i], bad[i] = err, True
        failed |= bad
        good = active & ~bad
        new_e, new_f = energy.clone(), forces.clone()
        new_e[index] = ev.energy.to(torch.float64)
        new_f[atoms] = ev.forces.to(torch.float64)
        x = torch.where(good[mol, None], trial, x)
        energy = torch.where(good, new_e, energy)
        forces = torch.where(good[mol, None], new_f, forces)
        steps += good.long()
        for i in torch.nonzero(good).squeeze(1).tolist():
            trace[i].append(float(energy[i]))
        if record_every and k % record_every == 0:
            frames.append((k, x.clone()))
    f_max = _largest_force(forces, mol, n_mol)
    energy = torch.where(first_failed, torch.full_like(energy, float("nan")), energy)
    return LbfgsResult(x, energy, f_max, steps, ~failed & (f_max <= fmax), errors, trace, calls, frames)
