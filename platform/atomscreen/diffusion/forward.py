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
