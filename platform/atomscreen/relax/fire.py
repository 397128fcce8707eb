"""FIRE (Bitzek et al., PRL 97, 170201 (2006)) for many systems at once, step for step as ASE's FIRE.

Every FIRE variable (velocity, dt, alpha, the count of downhill steps) is per
system; the degrees of freedom of a system are its atom rows plus, with a cell
filter, three cell rows. The step is pure: it returns new tensors.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class FireParams:
    """ASE's defaults and names."""

    dt: float = 0.1
    maxstep: float = 0.2
    dtmax: float = 1.0
    Nmin: int = 5
    finc: float = 1.1
    fdec: float = 0.5
    astart: float = 0.1
    fa: float = 0.99
    a: float = 0.1


def per_system_sum(values: torch.Tensor, system: torch.Tensor, n_systems: int) -> torch.Tensor:
    """Sum of per-row values [R] into their systems [B]."""
    return torch.zeros(n_systems, dtype=values.dtype, device=values.device).index_add_(0, system, values)


def fire_step(
    x: torch.Tensor,
    v: torch.Tensor,
    f: torch.Tensor,
    rows_system: torch.Tensor,
    dt: torch.Tensor,
    a: torch.Tensor,
    n_downhill: torch.Tensor,
    started: torch.Tensor,
    params: FireParams = FireParams(),
):
    """One FIRE step for rows x [R,3] with velocities v and forces f; dt, a, n_downhill, started are [B].

    Returns (x, v, dt, a, n_downhill); every system counts as started afterwards.
    """
    n_systems = dt.shape[0]
    vf = per_system_sum((f * v).sum(dim=1), rows_system, n_systems)
    f_norm = per_system_sum(f.square().sum(dim=1), rows_system, n_systems).sqrt()
    v_norm = per_system_sum(v.square().sum(dim=1), rows_system, n_systems).sqrt()
    downhill = started & (vf > 0)
    reset = started & ~(vf > 0)

    a_row = a[rows_system, None]
    mixed = (1 - a_row) * v + a_row * f / torch.where(f_norm > 0, f_norm, 1.0)[rows_system, None] * v_norm[rows_system, None]
    v = torch.where(downhill[rows_system, None], mixed, v)
    v = torch.where(reset[rows_system, None], torch.zeros_like(v), v)

    accelerate = downhill & (n_downhill > params.Nmin)
    dt = torch.where(accelerate, torch.clamp(dt * params.finc, max=params.dtmax), dt)
    a = torch.where(accelerate, a * params.fa, a)
    n_downhill = torch.where(downhill, n_downhill + 1, n_downhill)
    a = torch.where(reset, torch.full_like(a, params.astart), a)
    dt = torch.where(reset, dt * params.fdec, dt)
    n_downhill = torch.where(reset, torch.zeros_like(n_downhill), n_downhill)

    v = v + dt[rows_system, None] * f
    dr = dt[rows_system, None] * v
    dr_norm = per_system_sum(dr.square().sum(dim=1), rows_system, n_systems).sqrt()
    scale = torch.where(dr_norm > params.maxstep, params.maxstep / torch.where(dr_norm > 0, dr_norm, 1.0), torch.ones_like(dr_norm))
    return x + dr * scale[rows_system, None], v, dt, a, n_downhill
