"""Relaxation by reverse diffusion: a structure is read as a noisy sample of the training equilibria, its diffusion
step is predicted, and the reverse process runs from there (MoreRed, Kahouli et al. 2024, §2.3 and Algorithm 2); and
diffusion polish, the last n reverse steps from a given geometry (Rothchild et al. 2024, §4.2.1 and §5.1).

- morered-itp: the step t̂_0 predicted once, then the fixed schedule t̂_0, ..., 1 (eq. 5);
- morered-as: the step predicted at every iteration by a time model and fed to the denoiser (eq. 8);
- morered-jt: step and noise from one joint model at every iteration (eq. 8);
- polish: the fixed schedule n, ..., 1 from the input, with no forward noise added first.

ITP and AS take their time from ``time_model`` (MoreRed: a separate predictor); without one they use the denoiser's
own time head. Each molecule has its own time and stops on its own. The reverse noise is keyed by each molecule's
seed and its own step count (forward.keyed_noise), so a molecule relaxes the same alone or in any batch. Positions
come back in the input's frame (its centre of geometry restored).
"""

from __future__ import annotations

from typing import Callable

import torch

from atomscreen.diffusion.forward import centre, keyed_noise
from atomscreen.diffusion.painn import Denoiser, molecule_time
from atomscreen.diffusion.sample import Sampled, adaptive, net_dtype, scheduled
from atomscreen.diffusion.schedule import Schedule

METHODS = ("morered-itp", "morered-as", "morered-jt")


@torch.no_grad()
def predicted_step(timer: Denoiser, schedule: Schedule, species: torch.Tensor, x: torch.Tensor, mol: torch.Tensor,
                   n_mol: int) -> torch.Tensor:
    """Each molecule's diffusion step read from its geometry (the time head's per-atom t/T clamped to [0, 1],
    averaged, times T, rounded: the MoreRed code's mapping): how far it looks from the training equilibria."""
    s, _ = timer.backbone(species, x.to(net_dtype(timer)), mol, n_mol)
    return torch.round(molecule_time(timer.time(s).to(torch.float64), mol, n_mol) * schedule.T).long()


def _keyed(seeds: torch.Tensor):
    return lambda index, steps, mol, n_mol: keyed_noise(seeds[index], steps, mol, n_mol)


def _seeds(seeds: torch.Tensor | int, n_mol: int, device) -> torch.Tensor:
    seeds = torch.as_tensor(seeds, dtype=torch.int64, device=device)
    if seeds.ndim == 0:
        return seeds + torch.arange(n_mol, device=device)
    if seeds.shape != (n_mol,):
        raise ValueError(f"seeds must be one integer or one per molecule ({n_mol}), got shape {tuple(seeds.shape)}")
    return seeds


def _centred(x: torch.Tensor, mol: torch.Tensor, n_mol: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(x centred per molecule in float64, each molecule's centre of geometry [n_mol, 3])."""
    x = x.to(torch.float64)
    centred = centre(x, mol, n_mol)
    origin = torch.zeros(n_mol, 3, dtype=torch.float64, device=x.device).index_add_(0, mol, x - centred)
    return centred, origin / torch.bincount(mol, minlength=n_mol).clamp(min=1)[:, None]


def _in_frame(out: Sampled, origin: torch.Tensor, mol: torch.Tensor) -> Sampled:
    shift = origin[mol]
    out.positions = out.positions + shift
    out.frames = [(k, x + shift) for k, x in out.frames]
    return out


@torch.no_grad()
def relax(model: Denoiser, schedule: Schedule, species: torch.Tensor, mol: torch.Tensor, n_mol: int,
          x: torch.Tensor, *, method: str = "morered-jt", seeds: torch.Tensor | int = 0, max_steps: int = 1000,
          stop_at: int = 0, time_model: Denoiser | None = None, record_every: int = 0,
          progress: Callable[[int, int], None] | None = None) -> Sampled:
    """Relax molecules (positions x [N, 3], Å) by reverse diffusion; ``seeds``: one per molecule, or one integer
    (then seed + molecule index). A molecule converges when its step reaches ``stop_at`` (0: MoreRed's criterion)
    within ``max_steps`` (MoreRed: 1000); ``times`` holds the step before every reverse step."""
    if method not in METHODS:
        raise ValueError(f"relaxation method must be one of {', '.join(METHODS)}, got {method!r}")
    centred, origin = _centred(x, mol, n_mol)
    if method == "morered-jt" and time_model is not None:
        raise ValueError("morered-jt takes its time from the denoiser's own head: time_model goes with itp or as")
    noise = _keyed(_seeds(seeds, n_mol, x.device))
    timer = time_model if time_model is not None else model
    if method == "morered-itp":
        start = predicted_step(timer, schedule, species, centred, mol, n_mol)
        out = scheduled(model, schedule, species, mol, n_mol, centred, start, max_steps, noise, record_every,
                        progress, stop_at=stop_at)
    else:
        out = adaptive(model, timer, schedule, species, mol, n_mol, centred, max_steps, noise,
                       joint=method == "morered-jt", stop_at=stop_at,
                       record_every=record_every, progress=progress)
    return _in_frame(out, origin, mol)


@torch.no_grad()
def polish(model: Denoiser, schedule: Schedule, species: torch.Tensor, mol: torch.Tensor, n_mol: int,
           x: torch.Tensor, *, steps: int, seeds: torch.Tensor | int = 0, record_every: int = 0) -> Sampled:
    """The last ``steps`` reverse steps (t = steps, ..., 1) from geometry x, atom types fixed (Rothchild et al.:
    n = 20 or 50 before a quantum-chemical relaxation)."""
    if not 1 <= steps <= schedule.T:
        raise ValueError(f"polish steps must lie in [1, {schedule.T}], got {steps}")
    centred, origin = _centred(x, mol, n_mol)
    start = torch.full((n_mol,), steps, dtype=torch.long, device=x.device)
    out = scheduled(model, schedule, species, mol, n_mol, centred, start, steps,
                    _keyed(_seeds(seeds, n_mol, x.device)), record_every)
    return _in_frame(out, origin, mol)
