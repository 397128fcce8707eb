"""Relax (or single-point) one structure with any ASE calculator and an ASE optimizer, never raising.

Used to re-score candidates with real physics: the outcome is a
:class:`CalcResult` whose ``status`` is ``converged``, ``not_converged``,
``single_point`` or ``failed`` (with the error text), so one structure that
breaks a calculator cannot stop the others. Cells are relaxed through ASE's
FrechetCellFilter for fully periodic structures when ``cell`` is set.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import numpy as np
from ase import Atoms

from atomscreen.errors import error_text
from atomscreen.relax.trajectory import RelaxStatus, Trajectory

OPTIMIZERS = ("fire", "bfgs", "lbfgs", "bfgs_linesearch", "lbfgs_linesearch")


@dataclass(frozen=True)
class CalcSettings:
    """fmax in eV/Å (on atoms and, through the cell filter, on the cell); pressure in eV/Å^3 (cell relaxation
    minimises the enthalpy E + pV; the energy stored is E); ``relax=False`` means a single point."""

    relax: bool = True
    cell: bool = True
    pressure: float = 0.0
    fmax: float = 0.05
    max_steps: int = 300
    optimizer: str = "fire"
    trajectory_every: int = 10  # record every k-th step and the last one; 0 records nothing

    def __post_init__(self) -> None:
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer = {self.optimizer!r}; allowed: {', '.join(OPTIMIZERS)}")
        if self.fmax <= 0 or self.max_steps < 0 or self.trajectory_every < 0:
            raise ValueError(f"need fmax > 0, max_steps >= 0, trajectory_every >= 0, got {self}")


@dataclass
class CalcResult:
    """The relaxed structure (or the input, on failure), energy in eV, fmax in eV/Å; status one of RelaxStatus."""

    atoms: Atoms
    status: RelaxStatus
    energy: float | None
    fmax: float | None
    n_steps: int
    wall_time_s: float
    error: str | None = None
    trajectory: Trajectory | None = None


def _optimizer(name: str):
    from ase.optimize import BFGS, FIRE, LBFGS, BFGSLineSearch, LBFGSLineSearch

    choices = {"fire": FIRE, "bfgs": BFGS, "lbfgs": LBFGS, "bfgs_linesearch": BFGSLineSearch,
               "lbfgs_linesearch": LBFGSLineSearch}
    return choices[name]


def _checked(atoms: Atoms) -> tuple[float, float]:
    energy = float(atoms.get_potential_energy())
    forces = np.asarray(atoms.get_forces())
    if not math.isfinite(energy) or not np.isfinite(forces).all():
        raise FloatingPointError(f"the calculator returned a non-finite energy or forces (energy {energy})")
    return energy, float(np.linalg.norm(forces, axis=1).max()) if len(forces) else 0.0


def calculate(atoms: Atoms, calc, settings: CalcSettings = CalcSettings()) -> CalcResult:
    """Energy of ``atoms`` with ``calc`` after relaxing it as ``settings`` say; failures come back as status
    'failed'."""
    t0 = time.perf_counter()
    work = atoms.copy()
    work.calc = calc
    frames: list[tuple[int, float, float, np.ndarray, np.ndarray]] = []
    steps = 0

    def record(step: int) -> None:
        e, f = _checked(work)
        frames.append((step, e, f, work.positions.copy(), work.cell.array.copy()))

    try:
        converged = None
        if settings.relax and settings.max_steps > 0:
            from ase.filters import FrechetCellFilter

            cell = settings.cell and work.pbc.all()
            target = FrechetCellFilter(work, scalar_pressure=settings.pressure) if cell else work
            opt = _optimizer(settings.optimizer)(target, logfile=None)
            if settings.trajectory_every:
                opt.attach(lambda: record(opt.nsteps), interval=settings.trajectory_every)
            converged = bool(opt.run(fmax=settings.fmax, steps=settings.max_steps))
            steps = int(opt.nsteps)
        energy, fmax = _checked(work)
        if settings.trajectory_every and (not frames or frames[-1][0] != steps):
            frames.append((steps, energy, fmax, work.positions.copy(), work.cell.array.copy()))
    except Exception as exc:  # any calculator or optimizer error belongs to this structure only
        return CalcResult(atoms.copy(), RelaxStatus.FAILED, None, None, steps, time.perf_counter() - t0,
                          error=error_text(exc, 2000))
    return _result(work, converged, energy, fmax, steps, frames, time.perf_counter() - t0)


def _result(work: Atoms, converged: bool | None, energy: float, fmax: float, steps: int, frames: list,
            wall_time_s: float) -> CalcResult:
    """The CalcResult of a finished calculation (``converged`` None: a single point)."""
    if converged is None:
        status = RelaxStatus.SINGLE_POINT
    else:
        status = RelaxStatus.CONVERGED if converged else RelaxStatus.NOT_CONVERGED
    out = Atoms(numbers=work.numbers, positions=work.positions, cell=work.cell.array, pbc=work.pbc)
    trajectory = None
    if frames:
        steps_, energies, fmaxes, positions, cells = zip(*frames)
        trajectory = Trajectory(np.array(steps_), np.array(energies), np.array(fmaxes), np.stack(positions),
                                np.stack(cells))
    return CalcResult(out, status, energy, fmax, steps, wall_time_s, trajectory=trajectory)
