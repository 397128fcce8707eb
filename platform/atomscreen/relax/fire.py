"""FIRE (Bitzek et al., PRL 97, 170201 (2006)) for many systems at once, step for step as ASE's FIRE.

Every FIRE variable (velocity, dt, alpha, the count of downhill steps) is per
system; the degrees of freedom of a system are rows (its atoms plus, with a
cell filter, three cell rows), grouped system by system. The step is pure: it
returns new tensors and a new state.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from atomscreen.atoms.batch import per_atom, per_system


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


@dataclass(frozen=True)
class FireState:
    """Velocities per row [R,3]; time step, mixing alpha, downhill-step count and started flag per system [B]."""

    v: torch.Tensor = per_atom()
    dt: torch.Tensor = per_system()
    a: torch.Tensor = per_system()
    n_downhill: torch.Tensor = per_system()
    started: torch.Tensor = per_system()


def per_system_sum(values: torch.Tensor, system: torch.Tensor, n_systems: int) -> torch.Tensor:
    """Sum of per-row values [R] into their systems [B]."""
    return torch.zeros(n_systems, dtype=values.dtype, device=values.device).index_add_(0, system, values)


def fire_init(
    x: torch.Tensor, rows_system: torch.Tensor, n_systems: int, params: FireParams = FireParams()
) -> FireState:
    """FIRE at rest for rows x [R,3]: zero velocities, ASE's starting dt and alpha, nothing started."""
    return FireState(
        v=torch.zeros_like(x),
        dt=torch.full((n_systems,), params.dt, dtype=x.dtype, device=x.device),
        a=torch.full((n_systems,), params.a, dtype=x.dtype, device=x.device),
        n_downhill=torch.zeros(n_systems, dtype=torch.long, device=x.device),
        started=torch.zeros(n_systems, dtype=torch.bool, device=x.device),
    )


def fire_step(
    state: FireState, x: torch.Tensor, f: torch.Tensor, rows_system: torch.Tensor, params: FireParams = FireParams()
) -> tuple[torch.Tensor, FireState]:
    """One FIRE step for rows x [R,3] under forces f [R,3]; returns the moved rows and the new state."""
    n_systems = state.dt.shape[0]
    vf = per_system_sum((f * state.v).sum(dim=1), rows_system, n_systems)
    # ASE FIRE: a system that moved uphill (P = F·v <= 0) stops and slows down; only started systems have a velocity
    downhill = state.started & (vf > 0)
    reset = state.started & ~(vf > 0)
    v = _mix(state, f, rows_system, downhill, reset)
    dt, a, n_downhill = _adapt(state, downhill, reset, params)
    v = v + dt[rows_system, None] * f
    dr = dt[rows_system, None] * v
    x_new = x + _capped(dr, rows_system, n_systems, params.maxstep)
    return x_new, FireState(v=v, dt=dt, a=a, n_downhill=n_downhill, started=torch.ones_like(state.started))


def _mix(state: FireState, f, rows_system, downhill, reset) -> torch.Tensor:
    """v <- (1 - a) v + a |v| F/|F| where downhill, 0 where reset (norms over the whole system)."""
    n_systems = state.dt.shape[0]
    v = state.v
    f_norm = per_system_sum(f.square().sum(dim=1), rows_system, n_systems).sqrt()
    v_norm = per_system_sum(v.square().sum(dim=1), rows_system, n_systems).sqrt()
    a_row = state.a[rows_system, None]
    a_along_f = a_row * f / torch.where(f_norm > 0, f_norm, 1.0)[rows_system, None]
    mixed = (1 - a_row) * v + a_along_f * v_norm[rows_system, None]
    v = torch.where(downhill[rows_system, None], mixed, v)
    return torch.where(reset[rows_system, None], torch.zeros_like(v), v)


def _adapt(state: FireState, downhill, reset, params: FireParams):
    """New (dt, a, n_downhill): grow dt and shrink a after Nmin downhill steps; start over after an uphill one."""
    accelerate = downhill & (state.n_downhill > params.Nmin)
    dt = torch.where(accelerate, torch.clamp(state.dt * params.finc, max=params.dtmax), state.dt)
    a = torch.where(accelerate, state.a * params.fa, state.a)
    n_downhill = torch.where(downhill, state.n_downhill + 1, state.n_downhill)
    a = torch.where(reset, torch.full_like(a, params.astart), a)
    dt = torch.where(reset, dt * params.fdec, dt)
    n_downhill = torch.where(reset, torch.zeros_like(n_downhill), n_downhill)
    return dt, a, n_downhill


def _capped(dr: torch.Tensor, rows_system: torch.Tensor, n_systems: int, maxstep: float) -> torch.Tensor:
    """The move dr scaled down per system so its norm (over all the system's rows) is at most maxstep."""
    dr_norm = per_system_sum(dr.square().sum(dim=1), rows_system, n_systems).sqrt()
    too_far = dr_norm > maxstep
    scale = torch.where(too_far, maxstep / torch.where(dr_norm > 0, dr_norm, 1.0), torch.ones_like(dr_norm))
    return dr * scale[rows_system, None]
