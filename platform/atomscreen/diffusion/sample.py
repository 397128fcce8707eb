"""Reverse diffusion over a batch of molecules of different sizes: DDPM (MoreRed eq. 5, T fixed steps) and the
adaptive MoreRed samplers (Algorithm 2, eq. 8: the time is predicted at every step; each molecule stops on its own when
its rounded predicted step reaches 0, or at max_steps).

Diffusion arithmetic is float64; the network runs in its own dtype. Positions and noise are re-centred after every
step (MoreRed §2.2). MoreRed-JT takes time and noise from one model; MoreRed-AS takes the time from a separate time
model (its time head) and feeds it to the denoiser.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch

from atomscreen.diffusion.forward import centre, centred_noise
from atomscreen.diffusion.painn import Denoiser, molecule_time
from atomscreen.diffusion.schedule import Schedule

SAMPLERS = ("ddpm", "morered-jt", "morered-as")


@dataclass
class Sampled:
    """Generated positions and how each molecule got there."""

    positions: torch.Tensor  # [N, 3] float64, Å, centred
    steps: torch.Tensor  # [n_mol] reverse steps taken
    converged: torch.Tensor  # [n_mol] bool: DDPM always; adaptive: predicted step reached 0 before max_steps
    frames: list[tuple[int, torch.Tensor]] = field(default_factory=list)  # (step, positions [N, 3]) subsampled
    final_time: torch.Tensor | None = None  # [n_mol] last predicted t (adaptive samplers)


def _step(x, eps_hat, t, mol, n_mol, schedule: Schedule, generator):
    """x_{t-1} from x_t by MoreRed eq. 5 with per-molecule steps t [n_mol] (>= 1)."""
    abar, beta, var = (a.to(x.device)[t][mol][:, None] for a in
                       (schedule.alpha_bar, schedule.beta, schedule.posterior_variance))
    mean = (x - beta / (1.0 - abar).sqrt() * centre(eps_hat, mol, n_mol)) / (1.0 - beta).sqrt()
    noise = centred_noise(mol, n_mol, generator=generator, dtype=x.dtype, device=x.device)
    return centre(mean + var.sqrt() * noise, mol, n_mol)


def _net_dtype(model: torch.nn.Module) -> torch.dtype:
    return next(model.parameters()).dtype


def _subset(species, mol, active):
    """Atoms of the active molecules and their molecule index renumbered 0..k-1."""
    atom_mask = active[mol]
    remap = torch.cumsum(active.long(), 0) - 1
    return atom_mask, species[atom_mask], remap[mol[atom_mask]], int(active.sum())


@torch.no_grad()
def sample(model: Denoiser, schedule: Schedule, species: torch.Tensor, mol: torch.Tensor, n_mol: int, *,
           sampler: str = "ddpm", max_steps: int | None = None, generator: torch.Generator | None = None,
           x: torch.Tensor | None = None, time_model: Denoiser | None = None, record_every: int = 0,
           stop_at: int = 0, progress: Callable[[int, int], None] | None = None) -> Sampled:
    """Reverse diffusion from x (default: x_T ~ N(0, I), centred) for molecules given by species and mol; the
    adaptive samplers stop a molecule when its rounded predicted step is <= ``stop_at`` (0: MoreRed's criterion)."""
    if sampler not in SAMPLERS:
        raise ValueError(f"sampler must be one of {', '.join(SAMPLERS)}, got {sampler!r}")
    device = species.device
    if x is None:
        x = centred_noise(mol, n_mol, generator=generator, dtype=torch.float64, device=device)
    x = centre(x.to(torch.float64), mol, n_mol)
    frames = [(0, x.clone())] if record_every else []
    if sampler == "ddpm":
        return _ddpm(model, schedule, species, mol, n_mol, x, generator, record_every, frames, progress)
    cap = max_steps if max_steps is not None else 2 * schedule.T
    if cap < 1:
        raise ValueError(f"max_steps must be at least 1, got {cap}")
    timer = time_model if sampler == "morered-as" else model
    if timer is None:
        raise ValueError("morered-as needs a separate time model (time_model)")
    if not 0 <= stop_at < schedule.T:
        raise ValueError(f"stop_at must lie in [0, {schedule.T}), got {stop_at}")
    return _adaptive(model, timer, schedule, species, mol, n_mol, x, cap, generator, record_every, frames,
                     progress, joint=sampler == "morered-jt", stop_at=stop_at)


def _ddpm(model, schedule, species, mol, n_mol, x, generator, record_every, frames, progress) -> Sampled:
    dtype = _net_dtype(model)
    for k, t in enumerate(range(schedule.T, 0, -1), start=1):
        steps = torch.full((n_mol,), t, dtype=torch.long, device=x.device)
        eps_hat, _ = model(species, x.to(dtype), mol, n_mol, time=steps.to(dtype) / schedule.T)
        x = _step(x, eps_hat.to(torch.float64), steps, mol, n_mol, schedule, generator)
        if record_every and (k % record_every == 0 or t == 1):
            frames.append((k, x.clone()))
        if progress is not None:
            progress(k, schedule.T)
    steps = torch.full((n_mol,), schedule.T, dtype=torch.long, device=x.device)
    return Sampled(x, steps, torch.ones(n_mol, dtype=torch.bool, device=x.device), frames)


def _adaptive(model, timer, schedule, species, mol, n_mol, x, cap, generator, record_every, frames, progress,
              joint: bool, stop_at: int = 0) -> Sampled:
    dtype = _net_dtype(model)
    steps = torch.zeros(n_mol, dtype=torch.long, device=x.device)
    active = torch.ones(n_mol, dtype=torch.bool, device=x.device)
    converged = torch.zeros(n_mol, dtype=torch.bool, device=x.device)
    last_t = torch.full((n_mol,), schedule.T, dtype=torch.long, device=x.device)
    for k in range(1, cap + 1):
        atom_mask, sp, sub_mol, n_sub = _subset(species, mol, active)
        xs = x[atom_mask]
        if joint:
            eps_hat, tau = model(sp, xs.to(dtype), sub_mol, n_sub)
        else:
            s, _ = timer.backbone(sp, xs.to(dtype), sub_mol, n_sub)
            tau = timer.time(s)
        t_hat = torch.round(molecule_time(tau.to(torch.float64), sub_mol, n_sub) * schedule.T).long()
        index = torch.nonzero(active).squeeze(1)
        last_t[index] = t_hat
        done = t_hat <= stop_at
        converged[index[done]] = True
        t_step = t_hat.clamp(min=1)
        if not joint:
            eps_hat, _ = model(sp, xs.to(dtype), sub_mol, n_sub, time=t_step.to(dtype) / schedule.T)
        moved = _step(xs, eps_hat.to(torch.float64), t_step, sub_mol, n_sub, schedule, generator)
        keep = ~done[sub_mol]
        x[atom_mask] = torch.where(keep[:, None], moved, xs)
        steps[index[~done]] += 1
        active[index[done]] = False
        if record_every and k % record_every == 0:
            frames.append((k, x.clone()))
        if progress is not None:
            progress(k, cap)
        if not bool(active.any()):
            break
    if record_every and frames[-1][0] != k:
        frames.append((k, x.clone()))
    return Sampled(x, steps, converged, frames, last_t)
