"""The batched relaxation loop, written once: convergence, in-flight refill, trajectories, failure flags.

Up to ``max_systems`` structures are relaxed together. A structure is done
when it converges (largest force row, atoms and cell rows, below fmax; ASE's
criterion), reaches max_steps, or explodes (non-finite or huge forces); it is
then frozen where it is (no more steps) and, at the next check, leaves the
batch for a waiting structure, so a batch of mixed difficulty keeps the device
busy. Checks (the host reads the device) come every ``check_every`` steps, so
the steps between run without host synchronisation; frozen structures keep
their step count, energy and geometry, so any ``check_every`` gives the results
of checking every step. Step counting follows ASE's Optimizer.run: the
structure is checked before each step, and n_steps is the number of optimizer
steps taken. With ``skin`` > 0 and a model that declares its ``cutoff``, pairs
are taken from a Verlet list (atoms/verlet.py): exact forces, fewer searches.

The optimizer is a pair of pure functions (see Optimizer) over rows: a
system's atom coordinates, then its three cell rows (cell_filter.py), system
by system. Its state is a batched dataclass (atoms/batch.py), so the loop drops
and admits systems without knowing what the state holds.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from functools import partial
from typing import Any, Callable, Sequence

import numpy as np
import torch
from ase import Atoms

from atomscreen.atoms import verlet
from atomscreen.atoms.batch import (
    AtomsBatch,
    concatenate_systems,
    per_atom,
    per_system,
    select_systems,
    system_index,
    where_systems,
)
from atomscreen.potentials.forces import EnergyModel, compute
from atomscreen.relax.cell_filter import cell_forces, deformation
from atomscreen.relax.fire import FireParams, fire_init, fire_step
from atomscreen.relax.trajectory import RelaxStatus, Trajectory


@dataclass(frozen=True)
class Optimizer:
    """A batched optimizer as two pure functions over rows x [R,3] with their systems rows_system [R].

    init(x, rows_system, n_systems, params) -> state; step(state, x, f, rows_system, params) -> (new x, new state).
    The state's fields are declared per_atom (one entry per row) or per_system.
    """

    init: Callable[[torch.Tensor, torch.Tensor, int, Any], Any]
    step: Callable[[Any, torch.Tensor, torch.Tensor, torch.Tensor, Any], tuple[torch.Tensor, Any]]


FIRE = Optimizer(fire_init, fire_step)
OPTIMIZERS: dict[str, Optimizer] = {"fire": FIRE}


@dataclass(frozen=True)
class RelaxSettings:
    """fmax eV/Å; pressure eV/Å^3; cell relaxation applies to fully periodic structures only.

    ``optimizer`` is a key of OPTIMIZERS; that optimizer's parameters are the field of the same name.
    """

    fmax: float = 0.05
    max_steps: int = 500
    cell: bool = False
    constant_volume: bool = False
    pressure: float = 0.0
    trajectory_every: int = 10  # record every k-th step and the last one; 0 records nothing
    max_systems: int = 256  # 0: as many as fit in memory (relax/memory.py, measured on the model)
    check_every: int = 1  # steps between host checks (convergence, refill, frames); results do not depend on it
    skin: float = 0.5  # Å, Verlet list skin for models with a ``cutoff``; 0 searches at every evaluation
    explode_fmax: float = 1e6
    optimizer: str = "fire"
    fire: FireParams = field(default_factory=FireParams)


@dataclass
class RelaxResult:
    """Outcome for input structure ``index``; status is converged, not_converged (max_steps reached) or exploded."""

    index: int
    atoms: Atoms
    energy: float
    fmax: float
    n_steps: int
    status: RelaxStatus
    trajectory: Trajectory | None

    @property
    def converged(self) -> bool:
        return self.status == RelaxStatus.CONVERGED


@dataclass
class _Systems:
    """Structures in flight: atom coordinates u in the reference cell and the cell variable X (cell_filter.py)."""

    u: torch.Tensor = per_atom()  # [N,3]
    numbers: torch.Tensor = per_atom()
    system: torch.Tensor = system_index()
    cell_x: torch.Tensor = per_system()  # c log F [B,3,3]
    orig_cell: torch.Tensor = per_system()
    pbc: torch.Tensor = per_system()
    relax_cell: torch.Tensor = per_system()
    cell_factor: torch.Tensor = per_system()
    steps: torch.Tensor = per_system()
    max_steps: torch.Tensor = per_system()  # the step budget of each structure
    index: torch.Tensor = per_system()  # position in the input list
    frozen: torch.Tensor = per_system()  # done, waiting for the check; no more steps
    final_energy: torch.Tensor = per_system()  # at the evaluation that froze it
    final_fmax: torch.Tensor = per_system()
    converged: torch.Tensor = per_system()
    exploded: torch.Tensor = per_system()


def _new_systems(
    structures: Sequence[Atoms], indices: Sequence[int], settings: RelaxSettings, device, dtype,
    budgets: Sequence[int],
) -> _Systems:
    n = [len(a) for a in structures]
    B = len(structures)
    pbc = torch.as_tensor(np.stack([a.pbc for a in structures]), device=device)
    return _Systems(
        u=torch.as_tensor(np.concatenate([a.positions for a in structures]), dtype=dtype, device=device),
        numbers=torch.as_tensor(np.concatenate([a.numbers for a in structures]), dtype=torch.long, device=device),
        system=torch.as_tensor(np.repeat(np.arange(B), n), dtype=torch.long, device=device),
        cell_x=torch.zeros(B, 3, 3, dtype=dtype, device=device),
        orig_cell=torch.as_tensor(np.stack([a.cell.array for a in structures]), dtype=dtype, device=device),
        pbc=pbc,
        relax_cell=pbc.all(dim=1) & settings.cell,
        cell_factor=torch.as_tensor(n, dtype=dtype, device=device),
        steps=torch.zeros(B, dtype=torch.long, device=device),
        max_steps=torch.as_tensor(list(budgets), dtype=torch.long, device=device),
        index=torch.as_tensor(list(indices), dtype=torch.long, device=device),
        frozen=torch.zeros(B, dtype=torch.bool, device=device),
        final_energy=torch.zeros(B, dtype=dtype, device=device),
        final_fmax=torch.zeros(B, dtype=dtype, device=device),
        converged=torch.zeros(B, dtype=torch.bool, device=device),
        exploded=torch.zeros(B, dtype=torch.bool, device=device),
    )


@dataclass(frozen=True)
class _Rows:
    """The degrees of freedom as rows, system by system: a system's atoms, then its three cell rows."""

    system: torch.Tensor  # [R] system of each row
    order: torch.Tensor  # [R] row r holds entry order[r] of cat([atom rows, cell rows])
    atoms: torch.Tensor  # [N] row of each atom
    cells: torch.Tensor  # [3B] rows of the cells, system by system

    @classmethod
    def of(cls, systems: _Systems) -> _Rows:
        system, B, N = systems.system, systems.cell_x.shape[0], systems.u.shape[0]
        arange = partial(torch.arange, device=system.device)
        n_atoms = torch.zeros(B, dtype=torch.long, device=system.device).index_add_(0, system, torch.ones_like(system))
        atoms = arange(N) + 3 * system
        cells = ((torch.cumsum(n_atoms, 0) + 3 * arange(B))[:, None] + arange(3)).reshape(-1)
        order = torch.empty(N + 3 * B, dtype=torch.long, device=system.device)
        order[atoms], order[cells] = arange(N), arange(N, N + 3 * B)
        rows_system = torch.empty_like(order)
        rows_system[atoms], rows_system[cells] = system, arange(B).repeat_interleave(3)
        return cls(system=rows_system, order=order, atoms=atoms, cells=cells)

    def pack(self, atoms: torch.Tensor, cells: torch.Tensor) -> torch.Tensor:
        """Rows [R,3] from per-atom [N,3] and per-cell [B,3,3] values."""
        return torch.cat([atoms, cells.reshape(-1, 3)])[self.order]

    def unpack(self, rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-atom [N,3] and per-cell [B,3,3] values from rows [R,3]."""
        return rows[self.atoms], rows[self.cells].reshape(-1, 3, 3)


@dataclass(frozen=True)
class _Flight:
    """What the loop carries between steps; rows and the stress flag change only when systems leave or join."""

    systems: _Systems
    state: Any  # the optimizer's
    rows: _Rows
    stress: bool  # some system relaxes its cell
    pairs: verlet.VerletList | None = None

    @classmethod
    def of(cls, systems: _Systems, state: Any, pairs: verlet.VerletList | None = None) -> _Flight:
        return cls(systems, state, _Rows.of(systems), bool(systems.relax_cell.any()), pairs)

    @property
    def n_systems(self) -> int:
        return self.systems.cell_x.shape[0]


@dataclass
class _Evaluation:
    """Energies and fmax [B], forces as rows [R,3], the geometry [N,3] and [B,3,3], and each system's outcome [B]."""

    energy: torch.Tensor
    fmax: torch.Tensor
    forces: torch.Tensor
    positions: torch.Tensor
    cell: torch.Tensor
    converged: torch.Tensor
    exploded: torch.Tensor
    done: torch.Tensor


def relax(
    model: EnergyModel,
    structures: Sequence[Atoms],
    settings: RelaxSettings = RelaxSettings(),
    *,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float64,
    progress: Callable[[int, int], None] | None = None,
    max_steps: Sequence[int] | None = None,
    stats: dict | None = None,
) -> list[RelaxResult]:
    """Relax every structure (positions, and the cell if settings.cell) with settings.optimizer.

    Results come in input order. ``max_steps`` gives each structure its own step budget (default settings.max_steps).
    ``stats``, where given, receives the Verlet list's system searches and system evaluations.
    """
    if settings.optimizer not in OPTIMIZERS:
        raise ValueError(f"optimizer = {settings.optimizer!r}; allowed: {', '.join(OPTIMIZERS)}")
    optimizer, params = OPTIMIZERS[settings.optimizer], getattr(settings, settings.optimizer)
    return relax_with(optimizer, params, model, structures, settings, device=device, dtype=dtype, progress=progress,
                      max_steps=max_steps, stats=stats)


def relax_with(
    optimizer: Optimizer,
    params: Any,
    model: EnergyModel,
    structures: Sequence[Atoms],
    settings: RelaxSettings = RelaxSettings(),
    *,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float64,
    progress: Callable[[int, int], None] | None = None,
    max_steps: Sequence[int] | None = None,
    stats: dict | None = None,
) -> list[RelaxResult]:
    """The relaxation loop with any batched optimizer and its parameters (settings.optimizer is not consulted)."""
    if len(structures) == 0:
        return []
    budgets = _budgets(settings, len(structures), max_steps)
    if settings.max_systems == 0:
        from atomscreen.relax.memory import max_systems as fitting

        settings = replace(settings, max_systems=fitting(model, structures, device=device, dtype=dtype,
                                                         stress=settings.cell))
    queue = list(range(len(structures)))
    results: dict[int, RelaxResult] = {}
    frames: dict[int, list] = {}
    cutoff = getattr(model, "cutoff", None)
    pairs = verlet.VerletList.empty(float(cutoff), settings.skin, device, dtype) \
        if settings.skin > 0 and isinstance(cutoff, (int, float)) else None

    def admit(flight: _Flight | None) -> _Flight:
        take = queue[: settings.max_systems - (0 if flight is None else flight.n_systems)]
        del queue[: len(take)]
        new = _new_systems([structures[i] for i in take], take, settings, device, dtype,
                           [budgets[i] for i in take]) if take else None
        return _join(flight, new, optimizer, params, pairs)

    flight, pending, since_check = admit(None), [], 0
    while flight.n_systems > 0:
        flight, evaluation = _evaluate(model, flight, settings)
        if settings.trajectory_every:
            pending.append(_Snapshot.of(flight.systems, evaluation, settings.trajectory_every))
        flight = replace(flight, systems=_freeze(flight.systems, evaluation))
        since_check += 1
        if since_check >= settings.check_every:
            leaving = _check(results, frames, flight.systems, evaluation, pending, settings)
            pending, since_check = [], 0
            if leaving:
                if progress is not None:
                    progress(len(results), len(structures))
                flight, evaluation.forces = _drop(flight, ~flight.systems.frozen, evaluation.forces)
        if flight.n_systems > 0:
            flight = _step(flight, evaluation.forces, optimizer, params)
        if since_check == 0:
            flight = admit(flight)
    if stats is not None and pairs is not None:
        stats.update(searches=flight.pairs.searches, evaluations=flight.pairs.updates)
    return [results[i] for i in range(len(structures))]


def _budgets(settings: RelaxSettings, n: int, max_steps: Sequence[int] | None) -> list[int]:
    """Each structure's step budget, after checking the settings."""
    if settings.fmax <= 0 or settings.max_steps < 0 or settings.max_systems < 0 or settings.check_every < 1 \
            or settings.skin < 0:
        raise ValueError(f"need fmax > 0, max_steps >= 0, max_systems >= 0, check_every >= 1 and skin >= 0, "
                         f"got {settings}")
    budgets = [settings.max_steps] * n if max_steps is None else [int(b) for b in max_steps]
    if len(budgets) != n or min(budgets) < 0:
        raise ValueError(f"max_steps needs one non-negative budget per structure, got {len(budgets)} for {n}")
    return budgets


def _join(flight: _Flight | None, new: _Systems | None, optimizer: Optimizer, params: Any,
          pairs: verlet.VerletList | None) -> _Flight:
    """``flight`` with the systems ``new`` admitted, their optimizer state freshly initialised."""
    if new is None:
        return flight
    rows = _Rows.of(new)
    state = optimizer.init(rows.pack(new.u, new.cell_x), rows.system, new.cell_x.shape[0], params)
    pairs = pairs if flight is None else flight.pairs
    if pairs is not None:
        pairs = verlet.extend(pairs, new.u.shape[0], new.cell_x.shape[0])
    if flight is None:
        return _Flight.of(new, state, pairs)
    return _Flight.of(concatenate_systems([flight.systems, new]), concatenate_systems([flight.state, state]), pairs)


def _drop(flight: _Flight, keep: torch.Tensor, forces: torch.Tensor) -> tuple[_Flight, torch.Tensor]:
    """The systems where ``keep`` [B], with their force rows."""
    systems = select_systems(flight.systems, keep)
    state = select_systems(flight.state, keep, flight.rows.system)
    pairs = None if flight.pairs is None else verlet.keep_systems(flight.pairs, keep, flight.systems.system)
    return _Flight.of(systems, state, pairs), forces[keep[flight.rows.system]]


def _step(flight: _Flight, forces: torch.Tensor, optimizer: Optimizer, params: Any) -> _Flight:
    """One optimizer step for every system in flight but the frozen ones, which stay as they are."""
    systems, rows = flight.systems, flight.rows
    x = rows.pack(systems.u, systems.cell_x)
    x_new, state = optimizer.step(flight.state, x, forces, rows.system, params)
    frozen = systems.frozen
    x_new = torch.where(frozen[rows.system, None], x, x_new)
    state = where_systems(frozen, flight.state, state, rows.system)
    u, cell_x = flight.rows.unpack(x_new)
    return replace(flight, systems=replace(systems, u=u, cell_x=cell_x, steps=systems.steps + (~frozen).long()),
                   state=state)


def _evaluate(model: EnergyModel, flight: _Flight, settings: RelaxSettings) -> tuple[_Flight, _Evaluation]:
    """Energy, forces on atoms and cell variables (FrechetCellFilter's), fmax and the outcome of every system."""
    s = flight.systems
    F = deformation(s.cell_x, s.cell_factor)
    cell = s.orig_cell @ F.transpose(1, 2)
    positions = torch.einsum("nj,nkj->nk", s.u, F[s.system])  # u F^T
    batch = AtomsBatch(positions=positions, numbers=s.numbers, system=s.system, cell=cell, pbc=s.pbc)
    if flight.pairs is not None:
        pairs, candidates = verlet.update(flight.pairs, batch)
        flight, batch = replace(flight, pairs=pairs), batch.with_(pairs=candidates)
    response = compute(model, batch, stress=flight.stress)
    f_atoms = torch.einsum("nj,njk->nk", response.forces, F[s.system])  # f F
    f_cell = cell_forces(response.stress, batch.volume(), F, s.cell_x, s.cell_factor, settings.pressure,
                         settings.constant_volume)
    f_cell = torch.where(s.relax_cell[:, None, None], f_cell, torch.zeros_like(f_cell))
    row_norm = torch.linalg.norm(f_atoms, dim=1)
    fmax = torch.zeros(flight.n_systems, dtype=row_norm.dtype, device=row_norm.device)
    fmax = fmax.scatter_reduce(0, s.system, row_norm, "amax", include_self=True)
    fmax = torch.maximum(fmax, torch.linalg.norm(f_cell, dim=2).amax(dim=1))
    exploded = ~torch.isfinite(response.energy) | ~torch.isfinite(fmax) | (fmax > settings.explode_fmax)
    converged = (fmax < settings.fmax) & ~exploded
    done = converged | exploded | (s.steps >= s.max_steps)
    return flight, _Evaluation(energy=response.energy, fmax=fmax, forces=flight.rows.pack(f_atoms, f_cell),
                               positions=positions, cell=cell, converged=converged, exploded=exploded, done=done)


def _freeze(systems: _Systems, evaluation: _Evaluation) -> _Systems:
    """Systems done at this evaluation keep its energy, fmax and outcome, and take no more steps."""
    new = evaluation.done & ~systems.frozen
    return replace(systems, frozen=systems.frozen | evaluation.done,
                   final_energy=torch.where(new, evaluation.energy, systems.final_energy),
                   final_fmax=torch.where(new, evaluation.fmax, systems.final_fmax),
                   converged=torch.where(new, evaluation.converged, systems.converged),
                   exploded=torch.where(new, evaluation.exploded, systems.exploded))


@dataclass(frozen=True)
class _Snapshot:
    """One evaluation's frames, kept on the device until the check: which systems record, and what."""

    record: torch.Tensor  # [B]
    steps: torch.Tensor
    energy: torch.Tensor
    fmax: torch.Tensor
    positions: torch.Tensor
    cell: torch.Tensor

    @classmethod
    def of(cls, systems: _Systems, evaluation: _Evaluation, every: int) -> _Snapshot:
        """Every k-th step and the last one, of systems not frozen before this evaluation."""
        record = ~systems.frozen & (evaluation.done | (systems.steps % every == 0))
        return cls(record, systems.steps, evaluation.energy, evaluation.fmax, evaluation.positions, evaluation.cell)


@dataclass(frozen=True)
class _Host:
    """Host copies of the systems in flight, taken once at a check where some system records a frame or leaves."""

    index: list[int]
    steps: list[int]
    bounds: np.ndarray  # where each system's atoms end, but the last
    energy: np.ndarray
    fmax: np.ndarray
    positions: list[np.ndarray]
    cell: np.ndarray

    @classmethod
    def of(cls, systems: _Systems, evaluation: _Evaluation) -> _Host:
        counts = torch.bincount(systems.system, minlength=systems.cell_x.shape[0]).tolist()
        bounds = np.cumsum(counts)[:-1]
        return cls(index=systems.index.tolist(), steps=systems.steps.tolist(), bounds=bounds,
                   energy=_numpy(systems.final_energy), fmax=_numpy(systems.final_fmax),
                   positions=np.split(_numpy(evaluation.positions), bounds), cell=_numpy(evaluation.cell))


def _numpy(values: torch.Tensor) -> np.ndarray:
    return values.detach().cpu().double().numpy()


def _check(results: dict, frames: dict, systems: _Systems, evaluation: _Evaluation, pending: list[_Snapshot],
           settings: RelaxSettings) -> bool:
    """The host's look at the device: record the pending frames, finish the frozen systems; True if any are.

    One sync for the question, one copy for the answers.
    """
    frozen = systems.frozen
    if pending:
        record = torch.stack([p.record for p in pending])
        any_done, any_record = torch.stack([frozen.any(), record.any()]).tolist()
    else:
        any_done, any_record = bool(frozen.any()), False
    if not (any_done or any_record):
        return False
    host = _Host.of(systems, evaluation)
    if any_record:
        _record(frames, host, record, pending)
    if any_done:
        _finish(results, frames, systems, host, settings)
    return any_done


def _record(frames: dict, host: _Host, record: torch.Tensor, pending: list[_Snapshot]) -> None:
    """Trajectory frames of the pending snapshots, in step order."""
    where = torch.nonzero(record).tolist()  # (snapshot, system), snapshot-major: frames come in step order
    used = sorted({k for k, _ in where})
    copies = {k: (pending[k].steps.tolist(), _numpy(pending[k].energy), _numpy(pending[k].fmax),
                  np.split(_numpy(pending[k].positions), host.bounds), _numpy(pending[k].cell)) for k in used}
    for k, b in where:
        steps, energy, fmax, positions, cell = copies[k]
        frames.setdefault(host.index[b], []).append((steps[b], energy[b], fmax[b], positions[b], cell[b]))


def _finish(results: dict, frames: dict, systems: _Systems, host: _Host, settings: RelaxSettings) -> None:
    """A RelaxResult (with its trajectory) for every frozen system."""
    numbers = np.split(systems.numbers.cpu().numpy(), host.bounds)
    pbc = systems.pbc.cpu().numpy()
    converged, exploded = systems.converged.tolist(), systems.exploded.tolist()
    for b in torch.nonzero(systems.frozen).flatten().tolist():
        i = host.index[b]
        if converged[b]:
            status = RelaxStatus.CONVERGED
        else:
            status = RelaxStatus.EXPLODED if exploded[b] else RelaxStatus.NOT_CONVERGED
        atoms = Atoms(numbers=numbers[b].astype(int), positions=host.positions[b], cell=host.cell[b], pbc=pbc[b])
        results[i] = RelaxResult(index=i, atoms=atoms, energy=float(host.energy[b]), fmax=float(host.fmax[b]),
                                 n_steps=host.steps[b], status=status,
                                 trajectory=_trajectory(frames.pop(i)) if settings.trajectory_every else None)


def _trajectory(frames: list[tuple]) -> Trajectory:
    steps, energies, fmax, positions, cells = zip(*frames)
    return Trajectory(np.array(steps), np.array(energies), np.array(fmax), np.stack(positions), np.stack(cells))
