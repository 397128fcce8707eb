"""Reverse diffusion over a batch of molecules of different sizes: DDPM (MoreRed eq. 5, T fixed steps) and the
adaptive MoreRed samplers (Algorithm 2, eq. 8: the time is predicted at every step; each molecule stops on its own when
its rounded predicted step reaches 0, or at max_steps).

Diffusion arithmetic is float64; the network runs in its own dtype. Positions and noise are re-centred after every
step (MoreRed §2.2). MoreRed-JT takes time and noise from one model; MoreRed-AS takes the time from a separate time
model (its time head) and feeds it to the denoiser.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable

import torch

from atomscreen.diffusion.forward import centre, centred_noise

if TYPE_CHECKING:
    from atomscreen.diffusion.guidance import Guide
from atomscreen.diffusion.painn import Denoiser, molecule_time
from atomscreen.diffusion.schedule import Schedule

SAMPLERS = ("ddpm", "morered-jt", "morered-as")


@dataclass
class Sampled:
    """Positions after reverse diffusion (generation or relaxation) and how each molecule got there."""

    positions: torch.Tensor  # [N, 3] float64, Å
    steps: torch.Tensor  # [n_mol] reverse steps taken
    converged: torch.Tensor  # [n_mol] bool: schedule ended (DDPM, ITP, polish) or rounded t̂ <= stop_at (AS, JT)
    frames: list[tuple[int, torch.Tensor]] = field(default_factory=list)  # (step, positions [N, 3]) subsampled
    final_time: torch.Tensor | None = None  # [n_mol] last predicted step (adaptive samplers)
    times: torch.Tensor | None = None  # [cap + 1, n_mol] the step before each reverse step (-1: stopped; see loops)


NoiseFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, int], torch.Tensor]
"""(indices of the molecules being moved, their step counts so far, their atoms' molecule index 0..k-1, k) -> centred
noise [atoms, 3] float64 for those atoms."""


def generator_noise(generator: torch.Generator | None, device) -> NoiseFn:
    """Noise drawn from one generator for the whole batch (generation: reproducible per task)."""
    return lambda index, steps, mol, n_mol: centred_noise(mol, n_mol, generator=generator, dtype=torch.float64,
                                                          device=device)


def reverse_step(x: torch.Tensor, eps_hat: torch.Tensor, t: torch.Tensor, mol: torch.Tensor, n_mol: int,
                 schedule: Schedule, noise: torch.Tensor) -> torch.Tensor:
    """x_{t-1} from x_t by MoreRed eq. 5 with per-molecule steps t [n_mol] (>= 1) and centred noise [N, 3]."""
    abar, beta, var = (a.to(x.device)[t][mol][:, None] for a in
                       (schedule.alpha_bar, schedule.beta, schedule.posterior_variance))
    mean = (x - beta / (1.0 - abar).sqrt() * centre(eps_hat, mol, n_mol)) / (1.0 - beta).sqrt()
    return centre(mean + var.sqrt() * noise, mol, n_mol)


def net_dtype(model: torch.nn.Module) -> torch.dtype:
    return next(model.parameters()).dtype


def subset(species, mol, active):
    """Atoms of the active molecules and their molecule index renumbered 0..k-1."""
    atom_mask = active[mol]
    remap = torch.cumsum(active.long(), 0) - 1
    return atom_mask, species[atom_mask], remap[mol[atom_mask]], int(active.sum())


@torch.no_grad()
def sample(model: Denoiser, schedule: Schedule, species: torch.Tensor, mol: torch.Tensor, n_mol: int, *,
           sampler: str = "ddpm", max_steps: int | None = None, generator: torch.Generator | None = None,
           x: torch.Tensor | None = None, time_model: Denoiser | None = None, record_every: int = 0,
           stop_at: int = 0, progress: Callable[[int, int], None] | None = None, guide: Guide | None = None,
           noise: NoiseFn | None = None) -> Sampled:
    """Reverse diffusion from x (default: x_T ~ N(0, I), centred) for molecules given by species and mol; the
    adaptive samplers stop a molecule when its rounded predicted step is <= ``stop_at`` (0: MoreRed's criterion).
    ``guide`` (diffusion.guidance) steers the last steps on an energy model; ``noise`` replaces the generator's."""
    if sampler not in SAMPLERS:
        raise ValueError(f"sampler must be one of {', '.join(SAMPLERS)}, got {sampler!r}")
    device = species.device
    if x is None:
        x = centred_noise(mol, n_mol, generator=generator, dtype=torch.float64, device=device)
    x = centre(x.to(torch.float64), mol, n_mol)
    noise = generator_noise(generator, device) if noise is None else noise
    if sampler == "ddpm":
        start = torch.full((n_mol,), schedule.T, dtype=torch.long, device=device)
        return scheduled(model, schedule, species, mol, n_mol, x, start, schedule.T, noise, record_every, progress,
                         guide=guide)
    cap = max_steps if max_steps is not None else 2 * schedule.T
    timer = time_model if sampler == "morered-as" else model
    if timer is None:
        raise ValueError("morered-as needs a separate time model (time_model)")
    return adaptive(model, timer, schedule, species, mol, n_mol, x, cap, noise, joint=sampler == "morered-jt",
                    stop_at=stop_at, record_every=record_every, progress=progress, guide=guide)


def _active_atoms(species, x, mol, n_mol, active):
    """(atom mask or None for all, species, positions, molecule index, count) of the active molecules."""
    if bool(active.all()):
        return None, species, x, mol, n_mol
    atom_mask, sp, sub_mol, n_sub = subset(species, mol, active)
    return atom_mask, sp, x[atom_mask], sub_mol, n_sub


def _check(cap: int, stop_at: int, schedule: Schedule) -> None:
    if cap < 1:
        raise ValueError(f"max_steps must be at least 1, got {cap}")
    if not 0 <= stop_at < schedule.T:
        raise ValueError(f"stop_at must lie in [0, {schedule.T}), got {stop_at}")


def scheduled(model: Denoiser, schedule: Schedule, species, mol, n_mol: int, x: torch.Tensor, start: torch.Tensor,
              cap: int, noise: NoiseFn, record_every: int = 0, progress=None, stop_at: int = 0,
              guide: Guide | None = None) -> Sampled:
    """The fixed schedule t = start_m, start_m - 1, ..., stop_at + 1 for each molecule m (MoreRed eq. 5; DDPM from T,
    ITP from the predicted t̂_0, polish from n), at most ``cap`` steps. times[k] is each molecule's step after k
    reverse steps."""
    _check(cap, stop_at, schedule)
    dtype = net_dtype(model)
    remaining = start.to(device=x.device, dtype=torch.long).clone()
    steps = torch.zeros(n_mol, dtype=torch.long, device=x.device)
    times = torch.full((cap + 1, n_mol), -1, dtype=torch.long, device=x.device)
    times[0] = remaining
    frames = [(0, x.clone())] if record_every else []
    k = 0
    for k in range(1, cap + 1):
        active = remaining > stop_at
        if not bool(active.any()):
            k -= 1
            break
        index = torch.nonzero(active).squeeze(1)
        atom_mask, sp, xs, sub_mol, n_sub = _active_atoms(species, x, mol, n_mol, active)
        t = remaining[index]
        eps_hat, _ = model(sp, xs.to(dtype), sub_mol, n_sub, time=t.to(dtype) / schedule.T)
        if guide is not None:
            xs = guide(index, t, xs, eps_hat.to(torch.float64), sub_mol, n_sub)
        moved = reverse_step(xs, eps_hat.to(torch.float64), t, sub_mol, n_sub, schedule,
                             noise(index, steps[index], sub_mol, n_sub))
        if atom_mask is None:
            x = moved
        else:
            x[atom_mask] = moved
        remaining[index] -= 1
        steps[index] += 1
        times[k, index] = remaining[index]
        if record_every and k % record_every == 0:
            frames.append((k, x.clone()))
        if progress is not None:
            progress(k, cap)
    if record_every and frames[-1][0] != k:
        frames.append((k, x.clone()))
    return Sampled(x, steps, remaining <= stop_at, frames, times=times)


def adaptive(model: Denoiser, timer: Denoiser, schedule: Schedule, species, mol, n_mol: int, x: torch.Tensor,
             cap: int, noise: NoiseFn, *, joint: bool, stop_at: int = 0, record_every: int = 0,
             progress=None, guide: Guide | None = None) -> Sampled:
    """MoreRed Algorithm 2 (eq. 8): the step predicted at every iteration (joint: by the model's own time head, AS:
    by ``timer``); a molecule stops when its rounded prediction is <= ``stop_at``, or after ``cap`` steps. times[k]
    is the prediction before the (k+1)-th reverse step; a converged molecule's last entry is its stopping one."""
    _check(cap, stop_at, schedule)
    dtype = net_dtype(model)
    steps = torch.zeros(n_mol, dtype=torch.long, device=x.device)
    active = torch.ones(n_mol, dtype=torch.bool, device=x.device)
    converged = torch.zeros(n_mol, dtype=torch.bool, device=x.device)
    last_t = torch.full((n_mol,), schedule.T, dtype=torch.long, device=x.device)
    times = torch.full((cap + 1, n_mol), -1, dtype=torch.long, device=x.device)
    frames = [(0, x.clone())] if record_every else []
    k = 0
    for k in range(1, cap + 1):
        atom_mask, sp, xs, sub_mol, n_sub = _active_atoms(species, x, mol, n_mol, active)
        shared = None
        if joint:
            eps_hat, tau = model(sp, xs.to(dtype), sub_mol, n_sub)
        else:
            s, v = timer.backbone(sp, xs.to(dtype), sub_mol, n_sub)
            tau = timer.time(s)
            shared = (s, v) if timer is model else None  # AS on the model's own time head: one backbone pass
        t_hat = torch.round(molecule_time(tau.to(torch.float64), sub_mol, n_sub) * schedule.T).long()
        index = torch.nonzero(active).squeeze(1)
        last_t[index] = t_hat
        times[k - 1, index] = t_hat
        done = t_hat <= stop_at
        converged[index[done]] = True
        t_step = t_hat.clamp(min=1)
        if shared is not None:
            eps_hat = model.noise(*shared, (t_step.to(dtype) / schedule.T)[sub_mol])
        elif not joint:
            eps_hat, _ = model(sp, xs.to(dtype), sub_mol, n_sub, time=t_step.to(dtype) / schedule.T)
        if guide is not None:
            xs = guide(index, t_step, xs, eps_hat.to(torch.float64), sub_mol, n_sub, eligible=~done)
        moved = reverse_step(xs, eps_hat.to(torch.float64), t_step, sub_mol, n_sub, schedule,
                             noise(index, steps[index], sub_mol, n_sub))
        kept = torch.where((~done[sub_mol])[:, None], moved, xs)
        if atom_mask is None:
            x = kept
        else:
            x[atom_mask] = kept
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
    return Sampled(x, steps, converged, frames, last_t, times)
