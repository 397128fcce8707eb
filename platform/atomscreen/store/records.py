"""Plain records the store takes and gives back: energies, trajectories, models, claimed tasks, summaries, rows."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from atomscreen.relax.trajectory import Trajectory


@dataclass(frozen=True)
class EnergyRecord:
    """An energy to store with a structure (eV; fmax in eV/Å)."""

    method: str
    total: float
    fmax: float | None = None
    converged: bool | None = None
    n_steps: int | None = None
    wall_time_s: float | None = None
    model_id: int | None = None


@dataclass(frozen=True)
class TrajectoryRecord:
    """A :class:`~atomscreen.relax.trajectory.Trajectory` with the energy method it belongs to: steps [F], energies [F],
    fmax [F], positions [F,N,3], cells [F,3,3]."""

    method: str
    steps: np.ndarray
    energies: np.ndarray
    fmax: np.ndarray
    positions: np.ndarray
    cells: np.ndarray

    @classmethod
    def of(cls, method: str, trajectory: Trajectory) -> TrajectoryRecord:
        return cls(method, trajectory.steps, trajectory.energies, trajectory.fmax, trajectory.positions,
                   trajectory.cells)

    @property
    def trajectory(self) -> Trajectory:
        return Trajectory(self.steps, self.energies, self.fmax, self.positions, self.cells)


@dataclass(frozen=True)
class StoredModel:
    """A model row as the compute side needs it."""

    id: int
    kind: str
    sha256: str
    hyperparameters: dict[str, Any]
    weights: bytes
    training_data: dict[str, Any]


@dataclass(frozen=True)
class NewTask:
    """A task row to create; ``payload`` is the job's JSON (:func:`atomscreen.jobs.to_json`)."""

    kind: str
    key: str
    seed: int
    payload: dict[str, Any]
    formula: str | None = None


@dataclass(frozen=True)
class ClaimedTask:
    """A task marked running, to dispatch."""

    id: int
    key: str
    kind: str
    payload: dict[str, Any]


@dataclass
class CampaignSummary:
    """What `platform status` shows for one campaign."""

    name: str
    status: str
    tasks: dict[str, int]
    n_structures: int
    failures: list[tuple[str, str]] = field(default_factory=list)  # (task key, error)
    error: str | None = None


@dataclass
class RankedRow:
    """One line of `platform results`: a unique structure with its rank, energy and hull position
    (eV/atom, Å^3/atom)."""

    rank: int
    structure_id: int
    formula: str
    energy_per_atom: float
    volume_per_atom: float | None
    spacegroup: int | None
    converged: bool | None
    e_above_hull: float | None
    is_stable: bool | None


@dataclass(frozen=True)
class NewStructure:
    """A structure to store, without building ASE Atoms: arrays (Å), periodicity along the cell vectors, info."""

    numbers: np.ndarray
    positions: np.ndarray
    cell: np.ndarray
    pbc: np.ndarray
    info: dict[str, Any]


@dataclass(frozen=True)
class AnalysisRow:
    """A structure as the analysis reads it, without its arrays: ids, formula, origin and energies per atom (eV)."""

    structure_id: int
    formula: str
    origin: str
    parent_id: int | None
    periodic: bool
    selected: bool  # the generator's selection rule keeps it (rss.select); True where no rule applies
    energies_per_atom: dict[str, float]


@dataclass(frozen=True)
class MethodAnalysis:
    """Dedupe, ranks and hull of one energy method, ready to store (structure ids throughout)."""

    method: str
    duplicates: dict[int, int]  # structure id -> id of the lower-energy structure it duplicates
    rankings: list[tuple[int, str, int, float]]  # (structure id, scope, rank, score eV/atom)
    hull: list[tuple[int, float, float, bool]]  # (structure id, formation eV/atom, e_above_hull eV/atom, stable)


@dataclass(frozen=True)
class MatchRow:
    """A unique structure that matches a reference structure."""

    structure_id: int
    reference_index: int
    reference_name: str | None
    reference_energy_per_atom: float | None
    reference_energy_rank: int | None


@dataclass
class ReportRows:
    """The plain rows a campaign report is computed from (:mod:`atomscreen.analysis.report`)."""

    structures: dict[int, tuple[str, int | None, str, str]]  # id -> (origin, parent id, formula, reduced formula)
    energies: dict[tuple[int, str], tuple[float, bool | None]]  # (id, method) -> (eV/atom, converged)
    rankings: list[tuple[int, str, float]]  # (id, method, score) within composition
    matches: dict[int, tuple[str | None, int | None]]  # id -> (reference name, reference energy rank)
    failures: list[tuple[int, str, str]]  # (id, method, error)
    task_times: dict[str, float]  # formula (task group) -> summed wall time, s
    checks: list[dict[str, Any]]  # molecule_check rows as dicts
    generated_converged: dict[int, bool] = field(default_factory=dict)  # diffusion(_relax): predicted step reached 0
    # diffusion_relax: id -> reverse_steps, converged, t0 (first predicted step), displacement_rmsd (Å)
    relaxed: dict[int, dict[str, Any]] = field(default_factory=dict)
    # re-scored after a polish: id -> method, polish_steps, polish_rmsd, steps, energy (eV) and converged of the
    # calculator's relaxation from the polished geometry; unpolished_steps / _energy / _status from the unpolished one
    polished: dict[int, dict[str, Any]] = field(default_factory=dict)
    # generation with an energy model: diffusion id -> restarts, accepted, interventions, dropped (guidance);
    # post_relax id -> parent, converged; re-scored descendants -> method, generated id, dE (eV, start minus end of
    # the calculator's relaxation) and dP (mean atomic displacement, Å)
    hybrid: dict[int, dict[str, Any]] = field(default_factory=dict)
    post_relaxed: dict[int, dict[str, Any]] = field(default_factory=dict)
    judged: dict[int, dict[str, Any]] = field(default_factory=dict)
