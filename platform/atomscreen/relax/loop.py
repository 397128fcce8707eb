"""The batched relaxation loop, written once: convergence, in-flight refill, trajectories, failure flags.

Up to ``max_systems`` structures are relaxed together. A structure leaves the
batch when it converges (largest force row, atoms and cell rows, below fmax;
ASE's criterion), reaches max_steps, or explodes (non-finite or huge forces);
a waiting structure then takes its place, so a batch of mixed difficulty keeps
the device busy. Step counting follows ASE's Optimizer.run: the structure is
checked before each step, and n_steps is the number of FIRE steps taken.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Callable, Sequence

import numpy as np
import torch
from ase import Atoms

from atomscreen.atoms.batch import AtomsBatch
from atomscreen.potentials.forces import EnergyModel, compute
from atomscreen.relax.cell_filter import cell_forces, deformation
from atomscreen.relax.fire import FireParams, fire_step
from atomscreen.relax.trajectory import Trajectory


@dataclass(frozen=True)
class RelaxSettings:
    """fmax eV/Å; pressure eV/Å^3; cell relaxation applies to fully periodic structures only."""

    fmax: float = 0.05
    max_steps: int = 500
    cell: bool = False
    constant_volume: bool = False
    pressure: float = 0.0
    trajectory_every: int = 10  # record every k-th step and the last one; 0 records nothing
    max_systems: int = 256
    explode_fmax: float = 1e6
    fire: FireParams = field(default_factory=FireParams)


@dataclass
class RelaxResult:
    """Outcome for input structure ``index``; status is 'converged', 'max_steps' or 'exploded'."""

    index: int
    atoms: Atoms
    energy: float
    fmax: float
    n_steps: int
    status: str
    trajectory: Trajectory | None

    @property
    def converged(self) -> bool:
        return self.status == "converged"


@dataclass
class _State:
    """Systems in flight. Per-atom fields first; the rest are per system."""

    u: torch.Tensor  # atom coordinates in the reference cell [N,3]
    v: torch.Tensor
    numbers: torch.Tensor
    system: torch.Tensor
    cell_x: torch.Tensor  # c log F [B,3,3]
    cell_v: torch.Tensor
    orig_cell: torch.Tensor
    pbc: torch.Tensor
    relax_cell: torch.Tensor
    cell_factor: torch.Tensor
    dt: torch.Tensor
    a: torch.Tensor
    n_downhill: torch.Tensor
    started: torch.Tensor
    steps: torch.Tensor
    index: torch.Tensor


_ATOM_FIELDS = ("u", "v", "numbers", "system")


def _new_state(structures: Sequence[Atoms], indices: Sequence[int], settings: RelaxSettings, device, dtype) -> _State:
    n = [len(a) for a in structures]
    B = len(structures)
    pbc = torch.as_tensor(np.stack([a.pbc for a in structures]), device=device)
    fire = settings.fire
    full = lambda value, dt=dtype: torch.full((B,), value, dtype=dt, device=device)
    return _State(
        u=torch.as_tensor(np.concatenate([a.positions for a in structures]), dtype=dtype, device=device),
        v=torch.zeros(sum(n), 3, dtype=dtype, device=device),
        numbers=torch.as_tensor(np.concatenate([a.numbers for a in structures]), dtype=torch.long, device=device),
        system=torch.as_tensor(np.repeat(np.arange(B), n), dtype=torch.long, device=device),
        cell_x=torch.zeros(B, 3, 3, dtype=dtype, device=device),
        cell_v=torch.zeros(B, 3, 3, dtype=dtype, device=device),
        orig_cell=torch.as_tensor(np.stack([a.cell.array for a in structures]), dtype=dtype, device=device),
        pbc=pbc,
        relax_cell=pbc.all(dim=1) & settings.cell,
        cell_factor=torch.as_tensor(n, dtype=dtype, device=device),
        dt=full(fire.dt),
        a=full(fire.a),
        n_downhill=full(0, torch.long),
        started=full(False, torch.bool),
        steps=full(0, torch.long),
        index=torch.as_tensor(list(indices), dtype=torch.long, device=device),
    )


def _select(state: _State, keep: torch.Tensor) -> _State:
    atom_keep = keep[state.system]
    renumber = torch.cumsum(keep.long(), 0) - 1
    out = {}
    for f in fields(state):
        value = getattr(state, f.name)
        if f.name == "system":
            out[f.name] = renumber[value[atom_keep]]
        else:
            out[f.name] = value[atom_keep] if f.name in _ATOM_FIELDS else value[keep]
    return _State(**out)


def _concat(a: _State, b: _State) -> _State:
    joined = {f.name: torch.cat([getattr(a, f.name), getattr(b, f.name)]) for f in fields(a)}
    joined["system"] = torch.cat([a.system, b.system + a.cell_x.shape[0]])
    return _State(**joined)


def _geometry(state: _State):
    F = deformation(state.cell_x, state.cell_factor)
    cell = state.orig_cell @ F.transpose(1, 2)
    positions = torch.einsum("nj,nkj->nk", state.u, F[state.system])  # u F^T
    return F, positions, cell


def relax(
    model: EnergyModel,
    structures: Sequence[Atoms],
    settings: RelaxSettings = RelaxSettings(),
    *,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float64,
    progress: Callable[[int, int], None] | None = None,
) -> list[RelaxResult]:
    """Relax every structure (positions, and the cell if settings.cell); results in input order."""
    if len(structures) == 0:
        return []
    if settings.fmax <= 0 or settings.max_steps < 0 or settings.max_systems < 1:
        raise ValueError(f"need fmax > 0, max_steps >= 0 and max_systems >= 1, got {settings}")
    queue = list(range(len(structures)))
    results: dict[int, RelaxResult] = {}
    frames: dict[int, list] = {}
    state = None

    def admit(state):
        room = settings.max_systems - (0 if state is None else state.cell_x.shape[0])
        take, queue[:] = queue[:room], queue[room:]
        if not take:
            return state
        new = _new_state([structures[i] for i in take], take, settings, device, dtype)
        return new if state is None else _concat(state, new)

    state = admit(state)
    while state is not None and state.cell_x.shape[0] > 0:
        B = state.cell_x.shape[0]
        F, positions, cell = _geometry(state)
        batch = AtomsBatch(positions=positions, numbers=state.numbers, system=state.system, cell=cell, pbc=state.pbc)
        response = compute(model, batch, stress=bool(state.relax_cell.any()))
        f_atoms = torch.einsum("nj,njk->nk", response.forces, F[state.system])  # f F
        f_cell = cell_forces(response.stress, batch.volume(), F, state.cell_x, state.cell_factor, settings.pressure, settings.constant_volume)
        f_cell = torch.where(state.relax_cell[:, None, None], f_cell, torch.zeros_like(f_cell))
        row_norm = torch.linalg.norm(f_atoms, dim=1)
        fmax = torch.zeros(B, dtype=dtype, device=row_norm.device).scatter_reduce(0, state.system, row_norm, "amax", include_self=True)
        fmax = torch.maximum(fmax, torch.linalg.norm(f_cell, dim=2).amax(dim=1))
        exploded = ~torch.isfinite(response.energy) | ~torch.isfinite(fmax) | (fmax > settings.explode_fmax)
        converged = (fmax < settings.fmax) & ~exploded
        done = converged | exploded | (state.steps >= settings.max_steps)

        if settings.trajectory_every:
            record = done | (state.steps % settings.trajectory_every == 0)
            _record(frames, state, record, response.energy, fmax, positions, cell)
        if bool(done.any()):
            status = torch.where(converged, 0, torch.where(exploded, 2, 1))
            _finish(results, frames, state, done, status, response.energy, fmax, positions, cell, settings)
            if progress is not None:
                progress(len(results), len(structures))
            keep = ~done
            f_atoms, f_cell = f_atoms[keep[state.system]], f_cell[keep]
            state = _select(state, keep)
        if state.cell_x.shape[0] > 0:
            state = _step(state, f_atoms, f_cell, settings.fire)
        state = admit(state)
    return [results[i] for i in range(len(structures))]


def _step(state: _State, f_atoms: torch.Tensor, f_cell: torch.Tensor, params: FireParams) -> _State:
    B, N = state.cell_x.shape[0], state.u.shape[0]
    rows_system = torch.cat([state.system, torch.arange(B, device=state.system.device).repeat_interleave(3)])
    x = torch.cat([state.u, state.cell_x.reshape(-1, 3)])
    v = torch.cat([state.v, state.cell_v.reshape(-1, 3)])
    f = torch.cat([f_atoms, f_cell.reshape(-1, 3)])
    x, v, dt, a, n_downhill = fire_step(x, v, f, rows_system, state.dt, state.a, state.n_downhill, state.started, params)
    return _State(
        **{
            **{f.name: getattr(state, f.name) for f in fields(state)},
            "u": x[:N],
            "v": v[:N],
            "cell_x": x[N:].reshape(B, 3, 3),
            "cell_v": v[N:].reshape(B, 3, 3),
            "dt": dt,
            "a": a,
            "n_downhill": n_downhill,
            "started": torch.ones_like(state.started),
            "steps": state.steps + 1,
        }
    )


def _split(system: torch.Tensor, values: torch.Tensor, B: int) -> list[np.ndarray]:
    counts = torch.bincount(system, minlength=B).tolist()
    return [p.numpy() for p in torch.split(values.detach().cpu().double(), counts)]


def _record(frames, state, mask, energy, fmax, positions, cell) -> None:
    if not bool(mask.any()):
        return
    B = state.cell_x.shape[0]
    pos = _split(state.system, positions, B)
    idx, steps = state.index.tolist(), state.steps.tolist()
    e, fm, c = energy.detach().cpu().double().numpy(), fmax.detach().cpu().double().numpy(), cell.detach().cpu().double().numpy()
    for b in torch.nonzero(mask).flatten().tolist():
        frames.setdefault(idx[b], []).append((steps[b], e[b], fm[b], pos[b], c[b]))


def _finish(results, frames, state, done, status, energy, fmax, positions, cell, settings) -> None:
    B = state.cell_x.shape[0]
    pos = _split(state.system, positions, B)
    numbers = _split(state.system, state.numbers, B)
    names = ("converged", "max_steps", "exploded")
    for b in torch.nonzero(done).flatten().tolist():
        i = int(state.index[b])
        atoms = Atoms(numbers=numbers[b].astype(int), positions=pos[b], cell=cell[b].detach().cpu().double().numpy(), pbc=state.pbc[b].cpu().numpy())
        trajectory = None
        if settings.trajectory_every:
            steps, es, fms, ps, cs = zip(*frames.pop(i))
            trajectory = Trajectory(np.array(steps), np.array(es), np.array(fms), np.stack(ps), np.stack(cs))
        results[i] = RelaxResult(
            index=i,
            atoms=atoms,
            energy=float(energy[b]),
            fmax=float(fmax[b]),
            n_steps=int(state.steps[b]),
            status=names[int(status[b])],
            trajectory=trajectory,
        )
