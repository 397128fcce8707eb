"""The forward process (MoreRed eq. 2) with noise projected to zero centre of geometry per molecule."""

from __future__ import annotations

import torch

from atomscreen.diffusion.schedule import Schedule


def centre(x: torch.Tensor, mol: torch.Tensor, n_mol: int) -> torch.Tensor:
    """x minus its per-molecule centre of geometry (unweighted, as MoreRed and EDM)."""
    counts = torch.bincount(mol, minlength=n_mol).to(x.dtype).clamp(min=1)
    mean = torch.zeros(n_mol, 3, dtype=x.dtype, device=x.device).index_add_(0, mol, x) / counts[:, None]
    return x - mean[mol]


def centred_noise(mol: torch.Tensor, n_mol: int, *, generator: torch.Generator | None = None,
                  dtype=torch.float64, device=None) -> torch.Tensor:
    """Standard normal noise per atom, projected to zero centre of geometry per molecule."""
    eps = torch.randn(mol.shape[0], 3, generator=generator, dtype=dtype, device=device)
    return centre(eps, mol, n_mol)


def noised(x0: torch.Tensor, t: torch.Tensor, mol: torch.Tensor, schedule: Schedule, *,
           generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(x_t, eps): x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps, t [n_mol] integer steps, x0 centred, float64."""
    n_mol = t.shape[0]
    eps = centred_noise(mol, n_mol, generator=generator, dtype=torch.float64, device=x0.device)
    abar = schedule.alpha_bar.to(x0.device)[t][mol][:, None]
    x0 = centre(x0.to(torch.float64), mol, n_mol)
    return abar.sqrt() * x0 + (1.0 - abar).sqrt() * eps, eps


def _signed(value: int) -> int:
    return value - (1 << 64) if value >= 1 << 63 else value


_GOLDEN, _MIX1, _MIX2 = (_signed(c) for c in (0x9E3779B97F4A7C15, 0xBF58476D1CE4E5B9, 0x94D049BB133111EB))


def _shift(z: torch.Tensor, k: int) -> torch.Tensor:
    """Logical right shift of int64 (torch shifts arithmetically)."""
    return (z >> k) & ((1 << (64 - k)) - 1)


def _splitmix(z: torch.Tensor) -> torch.Tensor:
    """SplitMix64 (Steele et al. 2014) on int64 tensors, wrapping arithmetic: a counter-based hash."""
    z = z + _GOLDEN
    z = (z ^ _shift(z, 30)) * _MIX1
    z = (z ^ _shift(z, 27)) * _MIX2
    return z ^ _shift(z, 31)


def keyed_noise(seeds: torch.Tensor, steps: torch.Tensor, mol: torch.Tensor, n_mol: int) -> torch.Tensor:
    """Centred standard normal noise [N, 3] (float64) in which each molecule's draw depends only on its seed
    (``seeds`` [n_mol]), its own step count (``steps`` [n_mol]) and its atoms' order: the same molecule gets the same
    noise in any batch, on any device (Box-Muller on a counter-based hash)."""
    counts = torch.bincount(mol, minlength=n_mol)
    local = torch.arange(mol.shape[0], device=mol.device) - (torch.cumsum(counts, 0) - counts)[mol]
    lane = (local[:, None] * 3 + torch.arange(3, device=mol.device)) * 2  # two uniforms per component
    key = _splitmix(_splitmix(seeds.to(torch.int64))[mol] + steps.to(torch.int64)[mol])[:, None]
    bits = torch.stack([_splitmix(key + lane), _splitmix(key + lane + 1)])
    u1, u2 = (_shift(bits, 11).to(torch.float64) + 0.5) * 2.0 ** -53  # in (0, 1)
    eps = torch.sqrt(-2.0 * torch.log(u1)) * torch.cos(2.0 * torch.pi * u2)
    return centre(eps, mol, n_mol)
