"""The task contract: one typed job per task kind, the results that come back, and the one JSON boundary.

A job carries the science settings objects themselves (:class:`RandomSpec`,
:class:`RelaxSettings`, :class:`CalcSettings`), so a setting is spelled once,
in the science module that uses it. Jobs cross to Dask as dataclasses and are
stored in ``task.payload`` as JSON through :func:`to_json` / :func:`from_json`;
nothing else reads a payload. Payloads written before this module existed
(no ``"v"`` key) have the same field names and decode the same way; fields
they lack take their defaults. Results travel back in memory (pickled by Dask),
never through JSON.
"""

from __future__ import annotations

import collections.abc
import dataclasses
import types
import typing
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Union

import numpy as np

from atomscreen.atoms.random import RandomSpec
from atomscreen.diffusion.hybrid_settings import AcceptSettings, GuidanceSettings, PostRelaxSettings
from atomscreen.names import DEFAULT_MODEL, PSEUDO, pseudo_method
from atomscreen.relax.ase_relax import CalcSettings
from atomscreen.relax.loop import RelaxSettings
from atomscreen.relax.schedule import RelaxStage
from atomscreen.relax.trajectory import RelaxStatus, Trajectory

__all__ = ["DEFAULT_MODEL", "PSEUDO", "CheckOut", "DiffusionJob", "DiffusionRelaxJob", "EnergyRef", "HybridJob", "Job",
           "Origin", "PolishSettings", "ReferenceJob", "RescoreJob", "RssJob", "StructureIn", "StructureOut",
           "TaskKind", "TaskResult", "ValidityJob", "from_json", "pseudo_method", "to_json", "worker_models"]

JOB_VERSION = 2


class TaskKind(StrEnum):
    """What a task does (task.kind)."""

    RSS = "rss"
    REFERENCE = "reference"
    RESCORE = "rescore"
    VALIDITY = "validity"
    DIFFUSION = "diffusion"
    DIFFUSION_RELAX = "diffusion_relax"


class Origin(StrEnum):
    """Where a stored structure came from (structure.origin)."""

    RSS = "rss"
    REFERENCE = "reference"
    RESCORE = "rescore"
    IMPORT = "import"
    DIFFUSION = "diffusion"
    DIFFUSION_RELAX = "diffusion_relax"
    POST_RELAX = "post_relax"


@dataclass(frozen=True)
class StructureIn:
    """A structure a job starts from: numbers, positions [N,3] Å, cell [3,3] Å, pbc, and the stored ids it refers to."""

    numbers: tuple[int, ...]
    positions: tuple[tuple[float, ...], ...]
    cell: tuple[tuple[float, ...], ...]
    pbc: tuple[bool, ...]
    parent_id: int | None = None  # re-scoring: the structure the result descends from
    structure_id: int | None = None  # validity: the structure checked
    info: dict[str, Any] = field(default_factory=dict)  # reference structures: their scalar metadata

    @classmethod
    def from_atoms(cls, atoms, **ids: Any) -> StructureIn:
        """A JSON-safe copy of ASE ``atoms`` (exact: floats round-trip through JSON)."""
        return cls(tuple(int(z) for z in atoms.numbers), _rows(atoms.positions), _rows(atoms.cell.array),
                   tuple(bool(p) for p in atoms.pbc), **ids)

    def to_atoms(self):
        """ASE Atoms of this structure."""
        from ase import Atoms

        return Atoms(numbers=list(self.numbers), positions=np.array(self.positions, dtype=float).reshape(-1, 3),
                     cell=np.array(self.cell, dtype=float), pbc=list(self.pbc))


def _rows(array) -> tuple[tuple[float, ...], ...]:
    return tuple(tuple(float(x) for x in row) for row in np.asarray(array))


@dataclass(frozen=True)
class KickSettings:
    """After relaxing, displace every atom uniformly in ±displacement Å per component and relax again, ``rounds`` times;
    the lower minimum is kept."""

    displacement: float = 0.3
    rounds: int = 1


@dataclass(frozen=True)
class RssJob:
    """Random structures ``start .. start+count-1`` of one composition, relaxed on the RM model named ``model``."""

    formula: str
    counts: dict[str, int]
    start: int
    count: int
    seed: int
    composition_seed: int
    symprec: float
    random: RandomSpec
    relax: RelaxSettings
    kick: KickSettings | None = None
    model: str = DEFAULT_MODEL
    stages: tuple[RelaxStage, ...] = ()  # relaxation in stages sharing relax.max_steps (empty: one relaxation)
    select: str = "all"  # which structures are candidates: all (not exploded), or converged (after the last stage)
    kind: TaskKind = TaskKind.RSS

    @property
    def energy_method(self) -> str:
        return pseudo_method(self.model)


@dataclass(frozen=True)
class ReferenceJob:
    """Known structures (hull references) relaxed on the RM model, so they join its pseudo hull."""

    structures: tuple[StructureIn, ...]
    start: int
    count: int
    symprec: float
    relax: RelaxSettings
    model: str = DEFAULT_MODEL
    kind: TaskKind = TaskKind.REFERENCE

    @property
    def energy_method(self) -> str:
        return pseudo_method(self.model)


@dataclass(frozen=True)
class PolishSettings:
    """Diffusion polish before a calculator (Rothchild et al. 2024): the last ``steps`` reverse steps on the denoiser
    ``model``, each molecule's noise keyed by ``seed`` and its parent id; ``compare``: also relax it unpolished."""

    model: str
    steps: int
    compare: bool = True
    seed: int = 0


@dataclass(frozen=True)
class RescoreJob:
    """Candidates relaxed (or single-pointed) with a real calculator; ``formula`` is the group (or 'reference')."""

    method: str  # chgnet, xtb, or a factory 'module.path:function'
    energy_method: str  # the name its energies are stored under
    settings: CalcSettings
    symprec: float
    formula: str
    count: int
    structures: tuple[StructureIn, ...]
    timeout_s: float | None = None
    options: dict[str, Any] = field(default_factory=dict)
    polish: PolishSettings | None = None
    kind: TaskKind = TaskKind.RESCORE
    model = None  # a calculator, not a stored model (a polish denoiser is not what made the energies)


@dataclass(frozen=True)
class ValidityJob:
    """Chemical validity checks of stored molecules, each with a time limit."""

    formula: str
    count: int
    timeout_s: float
    structures: tuple[StructureIn, ...]
    kind: TaskKind = TaskKind.VALIDITY
    energy_method = None  # checks store no energy
    model = None


@dataclass(frozen=True)
class EnergyRef:
    """An energy model of hybrid generation: an RM pseudo potential named under models: (``model`` true), a built-in
    calculator (xtb_gfn2, xtb_gfnff, chgnet, dft) or an ASE calculator factory 'module.path:function'."""

    name: str
    options: dict[str, Any] = field(default_factory=dict)
    model: bool = False

    @property
    def method(self) -> str:
        """The energy method its energies are stored under (rm_pseudo[:NAME] for an RM model)."""
        return pseudo_method(self.name) if self.model else self.name


@dataclass(frozen=True)
class HybridJob:
    """Generation with an energy model (Cho et al. 2023): each strategy's settings and energy (None: off), and the
    molecules sampled together."""

    guidance: GuidanceSettings | None = None
    guidance_energy: EnergyRef | None = None
    accept: AcceptSettings | None = None
    accept_energy: EnergyRef | None = None
    post_relax: PostRelaxSettings | None = None
    post_energy: EnergyRef | None = None
    slots: int = 64

    def energies(self) -> list[EnergyRef]:
        return [e for e in (self.guidance_energy, self.accept_energy, self.post_energy) if e is not None]


@dataclass(frozen=True)
class DiffusionJob:
    """Molecules ``start .. start+count-1`` of one composition generated from noise by reverse diffusion on the
    denoiser named ``model`` (``time_model``: the time predictor of morered-as)."""

    formula: str
    counts: dict[str, int]
    start: int
    count: int
    seed: int
    composition_seed: int
    sampler: str
    max_steps: int
    trajectory_every: int
    model: str = DEFAULT_MODEL
    time_model: str | None = None
    stop_at: int = 0  # adaptive samplers stop at a rounded predicted step <= this
    hybrid: HybridJob | None = None  # guidance, accept/reject, post-relaxation (None: plain generation)
    kind: TaskKind = TaskKind.DIFFUSION
    energy_method = None  # generated molecules carry no energy


@dataclass(frozen=True)
class DiffusionRelaxJob:
    """Stored molecules of one composition relaxed by reverse diffusion (MoreRed ITP / AS / JT) on the denoiser named
    ``model``; each molecule's noise is keyed by ``seed`` and its parent id, so batching never changes a result."""

    formula: str
    count: int
    method: str  # morered-itp, morered-as, morered-jt
    max_steps: int
    stop_at: int
    trajectory_every: int
    seed: int
    structures: tuple[StructureIn, ...]  # each with parent_id: the stored molecule relaxed
    model: str = DEFAULT_MODEL
    time_model: str | None = None
    kind: TaskKind = TaskKind.DIFFUSION_RELAX
    energy_method = None  # relaxed molecules carry no energy


Job = Union[RssJob, ReferenceJob, RescoreJob, ValidityJob, DiffusionJob, DiffusionRelaxJob]
JOB_TYPES: dict[TaskKind, type] = {TaskKind.RSS: RssJob, TaskKind.REFERENCE: ReferenceJob, TaskKind.RESCORE: RescoreJob,
                                   TaskKind.VALIDITY: ValidityJob, TaskKind.DIFFUSION: DiffusionJob,
                                   TaskKind.DIFFUSION_RELAX: DiffusionRelaxJob}


def worker_models(job: Job) -> tuple[str, ...]:
    """Names of the models a job's task function takes after the job, in order: its model and time model, or the
    denoiser a re-scoring job polishes with."""
    if isinstance(job, RescoreJob):
        return () if job.polish is None else (job.polish.model,)
    names = tuple(n for n in (job.model, getattr(job, "time_model", None)) if n is not None)
    hybrid = getattr(job, "hybrid", None)
    if hybrid is not None:  # the RM pseudo potentials its strategies use, each once
        names += tuple(dict.fromkeys(e.name for e in hybrid.energies() if e.model and e.name not in names))
    return names


@dataclass
class StructureOut:
    """A relaxed (or re-scored) structure as a task returns it: arrays, energy eV, fmax eV/Å, status and trajectory."""

    numbers: np.ndarray
    positions: np.ndarray
    cell: np.ndarray
    pbc: np.ndarray
    energy: float | None
    fmax: float | None
    n_steps: int
    status: RelaxStatus
    spacegroup: int | None = None
    trajectory: Trajectory | None = None
    start_volume_per_atom: float | None = None
    parent_id: int | None = None
    info: dict[str, Any] = field(default_factory=dict)
    error: str | None = None
    wall_time_s: float | None = None
    children: list[StructureOut] = field(default_factory=list)  # e.g. its post-relaxation (origin post_relax)
    child_method: str | None = None  # the energy method of the children's energies


@dataclass
class CheckOut:
    """The validity of one stored molecule (check columns of ``molecule_check`` in ``checks``)."""

    structure_id: int
    status: str  # ok, error, timeout
    error: str | None
    checks: dict[str, bool | None]
    passes_all: bool
    smiles: str | None
    atoms_stable: float | None
    molecule_stable: bool | None
    wall_time_s: float | None


@dataclass
class TaskResult:
    """What a task function returns to the driver."""

    wall_time_s: float
    structures: list[StructureOut] = field(default_factory=list)
    checks: list[CheckOut] = field(default_factory=list)
    device: str = "cpu"


# --- the JSON boundary ---------------------------------------------------------------------------------------------

def to_json(job: Job) -> dict[str, Any]:
    """The payload to store for ``job``: plain JSON types, with the contract version under ``"v"``."""
    return {"v": JOB_VERSION, **_encode(job)}


def from_json(kind: str, payload: dict[str, Any]) -> Job:
    """The job stored as ``payload`` for a task of ``kind`` (either contract version)."""
    try:
        cls = JOB_TYPES[TaskKind(kind)]
    except ValueError:
        raise ValueError(f"unknown task kind {kind!r}; known: {', '.join(k.value for k in TaskKind)}") from None
    data = {k: v for k, v in payload.items() if k not in ("v", "kind")}
    return _decode(cls, data)


def _encode(value: Any) -> Any:
    if dataclasses.is_dataclass(value):
        return {f.name: _encode(getattr(value, f.name)) for f in dataclasses.fields(value) if f.name != "kind"}
    if isinstance(value, StrEnum):
        return value.value
    if isinstance(value, (list, tuple)):
        return [_encode(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _encode(v) for k, v in value.items()}
    if isinstance(value, np.generic):
        return value.item()
    return value


def _decode(tp: Any, value: Any) -> Any:
    if value is None:
        return None
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        options = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(options) == 1:
            return _decode(options[0], value)
        for option in options:  # e.g. float | Mapping[str, float]: pick the branch the JSON value has the shape of
            if isinstance(value, dict) == (_is_mapping(option) or dataclasses.is_dataclass(option)):
                return _decode(option, value)
        return value
    if dataclasses.is_dataclass(tp):
        hints = typing.get_type_hints(tp)
        names = {f.name for f in dataclasses.fields(tp) if f.init}
        unknown = sorted(set(value) - names)
        if unknown:
            raise ValueError(f"{tp.__name__}: unknown field(s) {', '.join(unknown)} in a stored task payload")
        return tp(**{k: _decode(hints[k], v) for k, v in value.items()})
    if origin is tuple:
        args = typing.get_args(tp)
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_decode(args[0], v) for v in value)
        return tuple(_decode(a, v) for a, v in zip(args, value))
    if origin is list:
        return [_decode(typing.get_args(tp)[0], v) for v in value]
    if _is_mapping(tp):
        args = typing.get_args(tp)
        return {k: _decode(args[1], v) for k, v in value.items()} if args else dict(value)
    if isinstance(tp, type) and issubclass(tp, StrEnum):
        return tp(value)
    if tp is float and isinstance(value, int):
        return float(value)
    return value


def _is_mapping(tp: Any) -> bool:
    base = typing.get_origin(tp) or tp
    return isinstance(base, type) and issubclass(base, collections.abc.Mapping)
