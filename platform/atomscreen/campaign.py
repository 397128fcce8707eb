"""campaign.yaml as pydantic models; every problem is reported with its field path, value and what is allowed.

Relative file paths in a campaign resolve against the directory of the YAML
file. Units: volume Å^3/atom, distances Å, fmax eV/Å, pressure GPa (converted
to eV/Å^3 where used).
"""

from __future__ import annotations

import difflib
import itertools
import re
import reprlib
import types
import typing
from dataclasses import dataclass
from math import comb
from pathlib import Path
from typing import Annotated, Any, Literal, Union

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    NonNegativeFloat,
    NonNegativeInt,
    PositiveFloat,
    PositiveInt,
    Tag,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from atomscreen.chem import ELEMENTS, hill_formula, parse_formula
from atomscreen.errors import AtomscreenError
from atomscreen.names import pseudo_method
from atomscreen.store.engine import DatabaseURLError, normalize_url

__all__ = ["CampaignError", "CampaignSpec", "hill_formula", "load_campaign", "parse_campaign", "parse_formula"]
MAX_GRID_COMPOSITIONS = 10_000
RESCORING_METHODS = ("xtb", "chgnet", "dft")
DATASET_FORMATS = ("auto", "extxyz", "ase", "cif", "cdvae-csv", "qm9", "ase-collection")
ASE_COLLECTIONS = ("g2", "s22", "dcdft")
_DOTTED = re.compile(r"[A-Za-z_][\w.]*:[A-Za-z_]\w*")


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a campaign file."""

    field: str
    value: Any
    message: str

    def __str__(self) -> str:
        shown = "" if self.value is _MISSING else f" = {_SHORT.repr(self.value)}"
        return f"{self.field or '<file>'}{shown}: {self.message}"


_MISSING = object()
_SHORT = reprlib.Repr()  # values in messages are cut short: a problem's value may be a huge or deep structure
_SHORT.maxlevel, _SHORT.maxdict, _SHORT.maxlist, _SHORT.maxstring, _SHORT.maxother = 3, 6, 6, 80, 80


class CampaignError(AtomscreenError, ValueError):
    """A campaign file with problems; ``problems`` lists every one of them."""

    def __init__(self, source: str, problems: list[Problem]):
        self.source = source
        self.problems = problems
        lines = "\n".join(f"  {p}" for p in problems)
        # one problem, one line; several: a count, then one line each
        super().__init__(f"{source}: {problems[0]}" if len(problems) == 1 else
                         f"{source}: {len(problems)} problem(s)\n{lines}")


def _element(symbol: str) -> str:
    if symbol not in ELEMENTS:
        close = difflib.get_close_matches(symbol, sorted(ELEMENTS), n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise ValueError(f"{symbol!r} is not an element symbol (allowed: H, He, Li, ... Og){hint}")
    return symbol


def _existing_file(value: str, info: ValidationInfo) -> str:
    base = Path((info.context or {}).get("base_dir", "."))
    path = Path(value).expanduser()
    resolved = path if path.is_absolute() else (base / path)
    if not resolved.is_file():
        hint = "" if path.is_absolute() else " (relative paths are taken from the campaign file's folder)"
        raise ValueError(f"file not found: {resolved}{hint}")
    return str(resolved.resolve())


Element = Annotated[str, AfterValidator(_element)]


def _formula_within_limit(text: str, info: ValidationInfo) -> str:
    n = sum(parse_formula(text).values())
    max_atoms = info.data.get("max_atoms")
    if max_atoms is not None and n > max_atoms:
        raise ValueError(f"{n} atoms is over the atom limit compositions.max_atoms = {max_atoms}")
    return text


# bounds that keep a typo from hanging the planner or the machine (each error states the range)
Seed = Annotated[int, Field(ge=0, lt=2**63, description="0 <= seed < 2^63")]
Samples = Annotated[int, Field(gt=0, le=10_000_000, description="at most 1e7 per composition and block")]


class Spec(BaseModel):
    """Base of every campaign block: unknown keys are errors."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class TLSSpec(Spec):
    """Client credentials for a tls:// scheduler (PEM files; relative paths from the campaign file's folder)."""

    ca_file: str = Field(description="the certificate authority that signed the scheduler's certificate")
    cert: str = Field(description="this client's certificate")
    key: str | None = Field(default=None, description="its private key (omit when inside the cert file)")

    @field_validator("ca_file", "cert", "key")
    @classmethod
    def _exists(cls, value: str | None, info: ValidationInfo) -> str | None:
        if value is None:
            return value
        path = Path(value)
        if not path.is_absolute():
            path = Path((info.context or {}).get("base_dir", ".")) / path
        if not path.is_file():
            raise ValueError(f"no file at {path}")
        return str(path)


class ClusterSpec(Spec):
    """Where tasks run: an existing Dask scheduler, or a LocalCluster of this size."""

    scheduler: str | None = Field(default=None, description="address of an existing scheduler, e.g. tcp://host:8786")
    n_workers: PositiveInt | None = Field(default=None, le=1024, description="local workers (default: one per core)")
    threads_per_worker: PositiveInt = Field(default=1, le=256)
    gpus: int = Field(default=0, ge=0, le=64, description="GPUs to use on the local cluster (one worker each)")
    tls: TLSSpec | None = Field(default=None, description="credentials for a tls:// scheduler (else Dask's own "
                                                          "distributed.comm.tls configuration)")

    @field_validator("scheduler")
    @classmethod
    def _scheduler_address(cls, value: str | None) -> str | None:
        if value is not None and not re.fullmatch(r"(tcp|tls|inproc|ucx|ws|wss)://\S+", value):
            raise ValueError("scheduler must be an address such as tcp://host:8786 "
                             "(schemes: tcp, tls, ws, wss, ucx, inproc)")
        return value

    @model_validator(mode="after")
    def _local_or_remote(self) -> ClusterSpec:
        local = {"n_workers", "threads_per_worker", "gpus"} & self.model_fields_set
        if self.scheduler is not None and local:
            raise ValueError(f"{', '.join(sorted(local))} describe a local cluster and cannot be set together "
                             "with scheduler")
        return self


class GridSpec(Spec):
    """Every composition of ``elements`` with between ``min_atoms`` and the compositions' ``max_atoms`` atoms."""

    elements: list[Element] = Field(min_length=1)
    min_atoms: PositiveInt = 1

    @field_validator("elements")
    @classmethod
    def _unique(cls, value: list[str]) -> list[str]:
        duplicates = sorted({e for e in value if value.count(e) > 1})
        if duplicates:
            raise ValueError(f"elements listed twice: {', '.join(duplicates)}")
        return value


class CompositionsSpec(Spec):
    """Explicit formulas and/or a grid over elements; no composition may exceed ``max_atoms``."""

    max_atoms: PositiveInt = Field(default=64, le=1000, description="atoms per structure, at most 1000")
    formulas: list[Annotated[str, AfterValidator(_formula_within_limit)]] = Field(default_factory=list)
    grid: GridSpec | None = None
    from_training: NonNegativeInt = Field(
        default=0, description="also the K most common compositions of the model's training set")

    @model_validator(mode="before")
    @classmethod
    def _plain_list(cls, value: Any) -> Any:
        return {"formulas": value} if isinstance(value, list) else value

    @field_validator("formulas")
    @classmethod
    def _no_repeats(cls, value: list[str]) -> list[str]:
        hill = [hill_formula(parse_formula(f)) for f in value]
        repeated = sorted({f for f in hill if hill.count(f) > 1})
        if repeated:
            raise ValueError(f"formulas listed more than once: {', '.join(repeated)}")
        return value

    @model_validator(mode="after")
    def _something(self) -> CompositionsSpec:
        if not self.formulas and self.grid is None and not self.from_training:
            raise ValueError("give formulas (a list such as [C8, Li4S2]), a grid (elements + max_atoms) "
                             "and/or from_training: K")
        if self.grid is not None:
            if self.grid.min_atoms > self.max_atoms:
                raise ValueError(f"grid.min_atoms = {self.grid.min_atoms} is above max_atoms = {self.max_atoms}")
            n = _grid_size(len(self.grid.elements), self.grid.min_atoms, self.max_atoms)
            if n > MAX_GRID_COMPOSITIONS:
                raise ValueError(
                    f"grid expands to {n} compositions; at most {MAX_GRID_COMPOSITIONS} allowed: "
                    "lower max_atoms or use fewer elements"
                )
        return self

    def expand(self) -> list[str]:
        """All compositions as Hill formulas: explicit ones first (in order), then the grid's, without repeats (those
        drawn from the training set are added by the runner, which knows it: :func:`with_training_compositions`)."""
        out = [hill_formula(parse_formula(f)) for f in self.formulas]
        if self.grid is not None:
            elements = self.grid.elements
            for total in range(self.grid.min_atoms, self.max_atoms + 1):
                for counts in _partitions(total, len(elements)):
                    out.append(hill_formula({e: c for e, c in zip(elements, counts) if c > 0}))
        return list(dict.fromkeys(out))


def with_training_compositions(spec: "CampaignSpec", histogram: dict[str, int]) -> "CampaignSpec":
    """``spec`` with its ``from_training`` compositions (the K most common of the training set's ``histogram``, Hill
    formulas most frequent first, at most ``max_atoms`` atoms) appended to ``formulas``."""
    block = spec.compositions
    if not block.from_training:
        return spec
    if not histogram:
        raise ValueError("compositions.from_training: the model carries no composition histogram (a checkpoint trained "
                         "outside this version); list formulas instead")
    known = set(block.expand())
    drawn = [f for f in sorted(histogram, key=lambda f: (-histogram[f], f))
             if f not in known and sum(parse_formula(f).values()) <= block.max_atoms][:block.from_training]
    resolved = block.model_copy(update={"formulas": list(block.formulas) + drawn, "from_training": 0})
    return spec.model_copy(update={"compositions": resolved})


def _partitions(total: int, k: int):
    """Non-negative integer vectors of length k summing to total (stars and bars)."""
    for bars in itertools.combinations(range(total + k - 1), k - 1):
        edges = (-1, *bars, total + k - 1)
        yield tuple(edges[i + 1] - edges[i] - 1 for i in range(k))


def _grid_size(k: int, lo: int, hi: int) -> int:
    return sum(comb(n + k - 1, k - 1) for n in range(lo, hi + 1))


class DatasetSpec(Spec):
    """A training set: a file (extxyz/ASE-readable, CIF, CDVAE CSV), QM9 from qm9pack, or an ASE collection."""

    format: Literal["auto", "extxyz", "ase", "cif", "cdvae-csv", "qm9", "ase-collection"] = "auto"
    path: Annotated[str, AfterValidator(_existing_file)] | None = None
    name: str | None = Field(default=None, description="ASE collection name (g2, s22, dcdft)")
    limit: PositiveInt | None = None
    skip: NonNegativeInt = Field(
        default=0, description="structures skipped before reading (QM9 is ordered by size: skip to reach the "
                               "9-heavy-atom molecules)")
    max_heavy_atoms: PositiveInt | None = Field(
        default=None, description="keep only structures with at most this many non-hydrogen atoms (QM9 with 7: a "
                                  "QM7b-like set; applied after skip and limit)")

    @model_validator(mode="after")
    def _source(self) -> DatasetSpec:
        if self.format == "qm9":
            if self.path is not None:
                raise ValueError("format qm9 reads the qm9pack package; leave path out")
        elif self.format == "ase-collection":
            if self.name not in ASE_COLLECTIONS:
                raise ValueError(f"format ase-collection needs name, one of {', '.join(ASE_COLLECTIONS)} "
                                 f"(got {self.name!r})")
        elif self.path is None:
            raise ValueError(f"format {self.format} needs a path")
        return self

    @property
    def label(self) -> str:
        """Where the structures come from: the file, or format:name."""
        return self.path or f"{self.format}:{self.name or ''}"

    def read(self) -> list:
        """The data set's structures as ASE Atoms (the one place a campaign reads a data set)."""
        from atomscreen.data import read_dataset

        structures = read_dataset(self.format, self.path, name=self.name, limit=self.limit, skip=self.skip)
        if self.max_heavy_atoms is None:
            return structures
        return [a for a in structures if int((a.numbers > 1).sum()) <= self.max_heavy_atoms]


def _hyperparameters(value: dict[str, Any]) -> dict[str, Any]:
    from atomscreen.potentials.train import split_hyperparameters

    split_hyperparameters(value)
    return value


class TrainSpec(Spec):
    """Train an RM potential on a dataset; hyperparameters are the fields of RMConfig, ResponseConfig and
    TrainConfig."""

    dataset: DatasetSpec
    hyperparameters: Annotated[dict[str, Any], AfterValidator(_hyperparameters)] = Field(default_factory=dict)
    seed: Seed = 0


class SplitSpec(Spec):
    """A seeded random split of the data set (denoisers; MoreRed App. B.1: 55k / 10k / the rest)."""

    train: PositiveInt = 55000
    validation: PositiveInt = 10000


class TrainFileSpec(Spec):
    """A `platform train` file: what to train on, how, and where the checkpoint goes."""

    name: str
    kind: Literal["rm_potential", "denoiser"] = Field(
        default="rm_potential", description="an RM pseudo potential, or a diffusion denoiser (MoreRed joint loss)")
    database: str | None = None
    dataset: DatasetSpec
    split: SplitSpec | None = Field(default=None, description="denoisers: train / validation sizes (test: the rest)")
    hyperparameters: dict[str, Any] = Field(default_factory=dict)
    seed: Seed = 0
    output: str | None = Field(default=None, description="checkpoint file to write (relative to this file's folder)")

    @model_validator(mode="after")
    def _kind_hyperparameters(self) -> TrainFileSpec:
        if self.kind == "denoiser":
            from atomscreen.diffusion.train import split_denoiser_hyperparameters

            split_denoiser_hyperparameters(self.hyperparameters)
            if self.split is None:
                self.split = SplitSpec()
        else:
            if self.split is not None:
                raise ValueError("split is for denoisers (kind: denoiser); an RM potential trains on the whole set")
            _hyperparameters(self.hyperparameters)
        return self


class ModelSpec(Spec):
    """A model of the campaign: exactly one of a checkpoint file or a training block."""

    kind: Literal["rm_potential", "denoiser"] = Field(
        default="rm_potential", description="what the model is: an RM pseudo potential, or a diffusion denoiser "
                                            "(a checkpoint from `platform train` with kind: denoiser)")
    checkpoint: Annotated[str, AfterValidator(_existing_file)] | None = None
    train: TrainSpec | None = None

    @model_validator(mode="after")
    def _one(self) -> ModelSpec:
        if (self.checkpoint is None) == (self.train is None):
            raise ValueError("give exactly one of checkpoint (a file) or train (a dataset and hyperparameters)")
        if self.kind == "denoiser" and self.train is not None:
            raise ValueError("a denoiser is trained by `platform train` (kind: denoiser); give its checkpoint here")
        return self


def _block_name(value: str) -> str:
    if not re.fullmatch(r"[A-Za-z][A-Za-z0-9_.-]{0,63}", value):
        raise ValueError("a name starts with a letter and uses only letters, digits, '_', '.' and '-' (at most 64)")
    return value


def _pair(key: str) -> str:
    parts = key.split("-")
    if len(parts) != 2:
        raise ValueError(f"min_separation key {key!r} must be a pair of elements such as C-C or Li-S")
    for symbol in parts:
        _element(symbol)
    return "-".join(sorted(parts))


class KickSpec(Spec):
    """After relaxing, displace every atom at random (uniform in ±displacement per component) and relax again; the
    lower of the two minima is kept (a cheap way out of shallow minima)."""

    displacement: PositiveFloat = Field(default=0.3, description="Å")
    rounds: PositiveInt = 1


class StageSpec(Spec):
    """One stage of a staged relaxation: displace every atom by up to ``kick`` Å per component first (0: no kick),
    then relax to ``fmax`` in at most ``max_steps`` (default: what the earlier stages left of relaxation.max_steps)."""

    fmax: PositiveFloat = Field(description="eV/Å")
    max_steps: NonNegativeInt | None = None
    kick: float = Field(default=0.0, ge=0.0, description="Å, uniform in ±kick per Cartesian component")


class RSSSpec(Spec):
    """Random structure search: random cells of each composition, relaxed on the pseudo potential named ``model``."""

    name: Annotated[str, AfterValidator(_block_name)] = Field(default="rss", description="names this block's tasks")
    model: str = Field(default="default", description="the model (a name under models:, or default for model:)")
    seed: Seed | None = Field(default=None, description="seed of the random starts (default: the campaign's seed)")
    samples_per_composition: Samples
    volume_per_atom: PositiveFloat | None = Field(
        default=None, description="Å^3/atom; default: fitted on the training set")
    volume_factor: tuple[PositiveFloat, PositiveFloat] = (0.8, 1.2)
    min_separation: PositiveFloat | dict[str, PositiveFloat] = Field(
        default=0.7, description="Å, global or per element pair")
    batch_size: PositiveInt = 64
    periodic: bool | None = Field(
        default=None, description="crystals (true) or molecules in a box (false); default: like the training set, "
                                  "else true")
    kick: KickSpec | None = None
    box: tuple[PositiveFloat, PositiveFloat, PositiveFloat] | None = Field(
        default=None, description="molecules: a fixed orthorhombic box, Å (e.g. [10, 5, 5], the RM authors')")
    box_aspect: tuple[PositiveFloat, PositiveFloat, PositiveFloat] | None = Field(
        default=None, description="molecules: edge ratios of the box of volume_per_atom x atoms (default a cube)")
    stages: list[StageSpec] = Field(
        default_factory=list, description="relax in stages sharing relaxation.max_steps, e.g. [{fmax: 0.001, "
                                          "max_steps: 500}, {kick: 0.75, fmax: 0.0002}] (default: one relaxation)")
    select: Literal["all", "converged"] = Field(
        default="all", description="candidates for ranking and re-scoring: all structures that did not explode, or "
                                   "only those converged (validity is judged on all, and reported both ways)")

    @model_validator(mode="after")
    def _molecule_box(self) -> RSSSpec:
        if self.box is not None and self.box_aspect is not None:
            raise ValueError("give box (a fixed box) or box_aspect (ratios of a box sized by volume_per_atom), "
                             "not both")
        if (self.box is not None or self.box_aspect is not None) and self.periodic is True:
            raise ValueError("box and box_aspect shape a molecule's box: they need periodic: false (or unset)")
        if self.kick is not None and self.stages:
            raise ValueError("kick (keep the lower of two minima) and stages (kicks between stages) are two protocols: "
                             "use one")
        return self

    @field_validator("volume_factor")
    @classmethod
    def _ordered(cls, value: tuple[float, float]) -> tuple[float, float]:
        if value[0] > value[1]:
            raise ValueError(f"volume_factor must be [low, high] with low <= high, got {list(value)}")
        return value

    @field_validator("min_separation")
    @classmethod
    def _pairs(cls, value: float | dict[str, float]) -> float | dict[str, float]:
        if isinstance(value, dict):
            return {_pair(k): v for k, v in value.items()}
        return value


SAMPLERS = ("ddpm", "morered-jt", "morered-as")


ENERGY_MODELS = ("xtb_gfn2", "xtb_gfnff", "chgnet", "dft")


def _energy_name(value: str) -> str:
    if value in ENERGY_MODELS or _DOTTED.fullmatch(value) or re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,199}", value):
        return value
    raise ValueError(f"an energy model is one of {', '.join(ENERGY_MODELS)}, the name of an RM model under models:, "
                     "or an ASE calculator factory 'module.path:function'")


EnergyName = Annotated[str, AfterValidator(_energy_name)]
_ENERGY_HELP = ("xtb_gfn2 or xtb_gfnff (xtb-python), chgnet, dft (PySCF), an RM pseudo potential named under models: "
                "(batched on the worker's device), or an ASE calculator factory 'module.path:function'")


class GuidanceSpec(Spec):
    """Energy guidance in the last reverse steps (Cho et al. 2023 §4.1): every `every` steps once the step is at or
    below (1 - start) T, at most `iterations` optimizer steps on `energy`."""

    energy: EnergyName = Field(description=_ENERGY_HELP)
    options: dict[str, Any] = Field(default_factory=dict, description="keyword arguments of the calculator")
    start: float = Field(default=0.8, ge=0.0, lt=1.0, description="fraction of the steps done before guidance")
    every: PositiveInt = Field(default=10, description="reverse steps between two interventions on a molecule")
    iterations: PositiveInt = Field(default=30, description="optimizer steps per intervention (the paper: <= 30)")
    target: Literal["x0", "xt"] = Field(
        default="x0", description="x0: relax the denoised estimate and re-noise it with the same noise estimate; "
                                  "xt: relax x_t rescaled by 1/sqrt(abar_t)")
    optimizer: Literal["lbfgs", "fire"] = "lbfgs"
    fmax: PositiveFloat = Field(default=0.05, description="eV/Å: an intervention stops below this force")


class AcceptSpec(Spec):
    """The stability test after generation (Cho et al. §4.2): L-BFGS with a line search on `energy`; accepted when
    the energy falls monotonically by at most the threshold, else that molecule restarts from new noise."""

    energy: EnergyName | None = Field(default=None, description="default: the guidance's energy model")
    options: dict[str, Any] | None = Field(default=None, description="default: the guidance's options")
    threshold_mev_per_atom: PositiveFloat = Field(default=25.0, description="the paper: 25 meV/atom (~kT at 300 K)")
    max_restarts: NonNegativeInt = Field(default=3, description="new generations per molecule before giving up")
    steps: PositiveInt = Field(default=200, description="optimizer steps of the test")
    fmax: PositiveFloat = Field(default=0.05, description="eV/Å: the test ends when converged")


class PostRelaxSpec(Spec):
    """Post-relaxation of each accepted molecule on `energy` (Cho et al. §4.3), stored as its own structure (origin
    post_relax) with its trajectory and energy."""

    energy: EnergyName | None = Field(default=None, description="default: accept's, else the guidance's")
    options: dict[str, Any] | None = Field(default=None, description="default: those of the energy taken")
    fmax: PositiveFloat = Field(default=0.01, description="eV/Å")
    max_steps: PositiveInt = 1000
    optimizer: Literal["lbfgs", "fire"] = "lbfgs"
    trajectory_every: NonNegativeInt = Field(default=10, description="steps between stored frames (0: none)")


class DiffusionSpec(Spec):
    """Molecules generated from noise for each composition by reverse diffusion on the denoiser named ``model``."""

    name: Annotated[str, AfterValidator(_block_name)] = Field(default="diffusion", description="names the tasks")
    model: str = Field(default="default", description="a model of kind denoiser (a name under models:)")
    sampler: Literal["ddpm", "morered-jt", "morered-as"] = Field(
        default="morered-jt", description="ddpm: T fixed steps; morered-jt / morered-as: the time predicted at every "
                                          "step, each molecule stops when it reaches 0 (or at max_steps)")
    time_model: str | None = Field(default=None, description="morered-as: the denoiser whose time head sets the step")
    samples_per_composition: Samples
    max_steps: PositiveInt = Field(default=2000, description="adaptive samplers' cap (MoreRed App. B.5: 2000)")
    stop_at: NonNegativeInt = Field(
        default=0, description="adaptive samplers: a molecule stops when its rounded predicted step is <= this "
                               "(0: MoreRed's criterion; a looser stop saves steps, design spec pitfall 3)")
    batch_size: PositiveInt = Field(default=64, description="molecules per task, sampled together")
    trajectory_every: NonNegativeInt = Field(default=100, description="reverse steps between stored frames (0: none)")
    seed: Seed | None = Field(default=None, description="default: the campaign's seed")
    guidance: GuidanceSpec | None = Field(default=None, description="energy guidance of the last reverse steps")
    accept: AcceptSpec | None = Field(default=None, description="accept/reject with bounded restarts")
    post_relax: PostRelaxSpec | None = Field(default=None, description="post-relaxation of accepted molecules")

    @model_validator(mode="after")
    def _time_model(self) -> DiffusionSpec:
        if (self.sampler == "morered-as") != (self.time_model is not None):
            raise ValueError("time_model (the separate time predictor) goes with sampler morered-as, and only with it")
        for what in ("accept", "post_relax"):
            block = getattr(self, what)
            if block is not None and block.options is not None and block.energy is None:
                raise ValueError(f"{what}.options belong to an energy model: give {what}.energy with them")
            if block is not None and self.energy_of(what) is None:
                raise ValueError(f"{what}.energy: give the energy model (there is no guidance block to take it from)")
        for what in ("guidance", "accept", "post_relax"):
            chosen = self.energy_of(what)
            if chosen is not None and chosen[1] and chosen[0] not in ENERGY_MODELS and not _DOTTED.fullmatch(chosen[0]):
                raise ValueError(f"{what}: the RM model {chosen[0]!r} takes no options")
            if chosen is not None and chosen[0] in ("xtb_gfn2", "xtb_gfnff", "dft"):
                from atomscreen.evaluate.calculators import XTB_OPTIONS
                from atomscreen.evaluate.dft import DFT_OPTIONS

                allowed = DFT_OPTIONS if chosen[0] == "dft" else XTB_OPTIONS
                unknown = sorted(set(chosen[1]) - set(allowed))
                if unknown:
                    raise ValueError(f"{what}: options {unknown} are not {chosen[0]} options; allowed: "
                                     f"{', '.join(allowed)}")
        return self

    @property
    def hybrid(self) -> bool:
        """Generation with an energy model (guidance, accept/reject or post-relaxation)."""
        return any(b is not None for b in (self.guidance, self.accept, self.post_relax))

    def energy_of(self, what: str) -> tuple[str, dict[str, Any]] | None:
        """(energy model, options) of a strategy: its own, else accept's (post_relax), else the guidance's."""
        chain = {"guidance": ["guidance"], "accept": ["accept", "guidance"],
                 "post_relax": ["post_relax", "accept", "guidance"]}[what]
        if getattr(self, what) is None:
            return None
        for name in chain:
            block = getattr(self, name)
            if block is not None and block.energy is not None:
                return block.energy, dict(block.options or {})
        return None

    def energy_models(self) -> list[str]:
        """Names of the energy models the strategies use, each once."""
        return list(dict.fromkeys(e[0] for e in map(self.energy_of, ("guidance", "accept", "post_relax")) if e))


def _blocks(kind: type) -> Any:
    return Annotated[Union[Annotated[kind, Tag("<one block>")], Annotated[list[kind], Tag("<blocks>")]],
                     Discriminator(lambda v: "<blocks>" if isinstance(v, list) else "<one block>")]


def _listed(value: Any) -> list:
    if value is None:
        return []
    return list(value) if isinstance(value, list) else [value]


class GeneratorsSpec(Spec):
    """Where candidates come from: RSS blocks and/or diffusion blocks (one block or a list, each with its own name
    and model)."""

    rss: _blocks(RSSSpec) | None = None
    diffusion: _blocks(DiffusionSpec) | None = None

    @model_validator(mode="after")
    def _some(self) -> GeneratorsSpec:
        if not self.rss_blocks and not self.diffusion_blocks:
            raise ValueError("give at least one generator (rss or diffusion)")
        names = [b.name for b in self.rss_blocks + self.diffusion_blocks]
        repeated = sorted({n for n in names if names.count(n) > 1})
        if repeated:
            raise ValueError(f"generator blocks need distinct names; repeated: {', '.join(repeated)}")
        return self

    @property
    def diffusion_blocks(self) -> list[DiffusionSpec]:
        """Every diffusion block, in order."""
        return _listed(self.diffusion)

    @property
    def rss_blocks(self) -> list[RSSSpec]:
        """Every RSS block, in order."""
        return _listed(self.rss)


RELAXERS = ("fire", "morered_itp", "morered_as", "morered_jt")


class RelaxationSpec(Spec):
    """How generated structures relax: batched FIRE on the pseudo potential (RSS), then, with a morered_* method,
    every generated molecule (RSS's after FIRE, and diffusion's) again by reverse diffusion on a denoiser."""

    method: Literal["fire", "morered_itp", "morered_as", "morered_jt"] = Field(
        default="fire", description="fire: the generators' structures are final; morered_itp / morered_as / "
                                    "morered_jt (MoreRed): each generated molecule is also relaxed by reverse "
                                    "diffusion on `model` and stored as its child (origin diffusion_relax), which "
                                    "re-scoring then starts from")
    model: str | None = Field(default=None, description="morered_*: the denoiser (a model of kind denoiser)")
    time_model: str | None = Field(
        default=None, description="morered_itp / morered_as: a separate time predictor (a denoiser whose time head "
                                  "reads the step; default: the denoiser's own)")
    fmax: PositiveFloat = Field(default=0.05, description="eV/Å")
    max_steps: PositiveInt = Field(default=500, description="FIRE's step cap")
    reverse_max_steps: PositiveInt = Field(default=1000, description="morered_*: the reverse-step cap (MoreRed §3.2)")
    stop_at: NonNegativeInt = Field(
        default=0, description="morered_*: a molecule has converged when its step is <= this (AS / JT: the rounded "
                               "predicted step; ITP: its scheduled step; 0: MoreRed's criterion)")
    batch_size: PositiveInt = Field(default=64, description="morered_*: molecules per task, relaxed together")
    cell: bool = True
    constant_volume: bool = Field(
        default=False, description="relax the cell shape at fixed volume (energy versus volume scans)")
    pressure_gpa: float = Field(default=0.0, ge=0.0, le=1000.0)
    trajectory_every: int = Field(
        default=10, ge=0, description="record every k-th step and the last one; 0 records nothing")
    check_every: PositiveInt = Field(
        default=1, description="FIRE steps between the host's checks (convergence, refill, frames); results do not "
                               "depend on it, larger values save host synchronisation on a GPU")
    skin: float = Field(default=0.5, ge=0.0, le=5.0,
                        description="Å, the Verlet list's skin (pairs reused, forces exact); 0 searches every step")

    @model_validator(mode="after")
    def _volume_needs_cell(self) -> RelaxationSpec:
        if self.constant_volume and not self.cell:
            raise ValueError("constant_volume relaxes the cell shape: it needs cell: true")
        if self.constant_volume and self.pressure_gpa:
            raise ValueError("pressure_gpa has no effect at constant volume: set one or the other")
        if (self.method == "fire") != (self.model is None):
            raise ValueError(f"method {self.method} " + ("takes no model (FIRE runs on each generator's own model)"
                                                         if self.method == "fire" else
                                                         "needs model: the denoiser that relaxes the molecules"))
        if self.time_model is not None and self.method not in ("morered_itp", "morered_as"):
            raise ValueError(f"time_model (a separate time predictor) needs method morered_itp or morered_as, not "
                             f"{self.method}")
        return self

    @property
    def diffusion_method(self) -> str | None:
        """The science module's name of the MoreRed variant (morered-jt ...), None for FIRE alone."""
        return None if self.method == "fire" else self.method.replace("_", "-")


def _rescore_method(value: str) -> str:
    if value not in RESCORING_METHODS:
        raise ValueError(f"allowed: {', '.join(RESCORING_METHODS)} "
                         "(for another ASE calculator give calculator: 'module.path:function')")
    return value


def _calculator_path(value: str) -> str:
    if not _DOTTED.fullmatch(value):
        raise ValueError("an ASE calculator factory is written 'module.path:function', e.g. 'mace.calculators:mace_mp'")
    return value


class PolishSpec(Spec):
    """Diffusion polish before re-scoring (Rothchild et al. 2024): the last ``steps`` reverse steps on the denoiser
    ``model`` from each candidate's geometry, atom types fixed; molecules only."""

    model: str = Field(description="a model of kind denoiser")
    steps: PositiveInt = Field(default=20, description="reverse steps n, t = n ... 1 (the paper: 20 or 50)")
    compare: bool = Field(
        default=True, description="also relax each candidate unpolished (a second relaxation) so `platform report` "
                                  "shows the optimizer steps and energy the polish saved")


class RescoreSpec(Spec):
    """Re-score the top candidates of each composition with real physics (relaxed, or single points)."""

    method: Annotated[str, AfterValidator(_rescore_method)] | None = Field(
        default=None, description="chgnet, xtb or dft (PySCF; options xc, basis, ...: default B3LYP/6-31G(2df,p))")
    calculator: Annotated[str, AfterValidator(_calculator_path)] | None = Field(
        default=None, description="any ASE calculator: a factory 'module.path:function', called with the options")
    top_k: PositiveInt = Field(default=10, description="unique candidates per composition, lowest pseudo energy first")
    relax: bool = True
    cell: bool = Field(default=True, description="relax the cell of periodic structures too")
    fmax: PositiveFloat = Field(default=0.05, description="eV/Å")
    max_steps: PositiveInt = 300
    optimizer: Literal["fire", "bfgs", "lbfgs", "bfgs_linesearch", "lbfgs_linesearch"] = "fire"
    batch_size: PositiveInt = Field(default=4, description="structures per Dask task")
    trajectory_every: int = Field(default=10, ge=0)
    timeout_s: PositiveFloat | None = Field(
        default=None,
        description="seconds per structure: each runs in a child process, stopped and recorded as failed when late")
    options: dict[str, Any] = Field(
        default_factory=dict,
        description="keyword arguments of the calculator (xtb: accuracy, electronic_temperature, max_iterations, "
                    "solvent)")
    polish: PolishSpec | None = Field(
        default=None, description="diffusion polish of each candidate before the calculator (molecules)")

    @model_validator(mode="after")
    def _one(self) -> RescoreSpec:
        if (self.method is None) == (self.calculator is None):
            raise ValueError("give exactly one of method (chgnet, xtb or dft) or calculator ('module.path:function')")
        if self.method in ("xtb", "dft"):
            from atomscreen.evaluate.calculators import XTB_OPTIONS
            from atomscreen.evaluate.dft import DFT_OPTIONS

            allowed = XTB_OPTIONS if self.method == "xtb" else DFT_OPTIONS
            unknown = sorted(set(self.options) - set(allowed))
            if unknown:
                raise ValueError(f"options {unknown} are not {self.method} options; allowed: {', '.join(allowed)}")
        if self.calculator is not None:
            from atomscreen.evaluate.calculators import CalculatorError, check_options

            try:
                check_options(self.calculator, self.options)
            except CalculatorError as exc:
                raise ValueError(str(exc)) from None
        if self.polish is not None and self.polish.compare and not self.relax:
            raise ValueError("polish.compare counts the optimizer steps the polish saves: it needs relax: true (or "
                             "set polish.compare: false)")
        return self

    @property
    def energy_method(self) -> str:
        """The method name its energies are stored under."""
        from atomscreen.evaluate.calculators import method_name

        return method_name(self.method or self.calculator)


References = Union[Literal["training"], DatasetSpec]


class HullSpec(Spec):
    """Which energy `platform results` and `platform hull` show first, and known phases that join every hull."""

    energy: str = "rm_pseudo"
    references: References | None = Field(
        default=None, description="'training' (the model's training set) or a data set: structures of the campaign's "
                                  "chemical systems are relaxed with every method and enter its hull")


class DedupeSpec(Spec):
    """Duplicates within a composition: StructureMatcher tolerances, an energy window, and how many are compared."""

    top_k: PositiveInt | None = Field(
        default=1000, description="compare only the lowest K structures per composition and energy method (null: "
                                  "all); each costs about a millisecond to reduce and half a millisecond per "
                                  "comparison, and a campaign of 1e5 would spend minutes comparing structures nobody "
                                  "ranks that far")
    ltol: PositiveFloat = Field(default=0.2, description="StructureMatcher's fractional length tolerance")
    stol: PositiveFloat = Field(default=0.3, description="StructureMatcher's site tolerance")
    angle_tol: PositiveFloat = Field(default=5.0, description="degrees")
    energy_tol: NonNegativeFloat = Field(default=0.01, description="eV/atom: duplicates lie within this window")


class MatchSpec(Spec):
    """Mark unique structures that match a known structure (StructureMatcher on reduced composition)."""

    references: References
    top_k: PositiveInt | None = Field(
        default=None, description="match only the best K unique structures per composition and method (default: all); "
                                  "each match costs ms per reference")
    energy_column: str = Field(
        default="energy_per_atom",
        description="the references' energy per atom (eV), e.g. heat_ref for perov_5: ranks references so the report "
                    "can say whether the lowest candidate is the lowest-energy reference")
    ltol: PositiveFloat = 0.3
    stol: PositiveFloat = 0.5
    angle_tol: PositiveFloat = 10.0


class ValiditySpec(Spec):
    """Chemical validity of every generated and re-scored molecule
    (RDKit bond perception + PoseBusters + EDM stability)."""

    timeout_s: PositiveFloat = Field(
        default=30.0, description="seconds per molecule; a check past it is stopped and recorded as timeout")
    batch_size: PositiveInt = Field(default=50, description="molecules per Dask task")
    novelty_qm9: bool = Field(
        default=False, description="also mark molecules whose Open Babel SMILES is absent from all of QM9 (MoreRed "
                                   "Table B1's N; the QM9 set is computed once, ~2.5 min, and cached)")


class CampaignSpec(Spec):
    """A whole campaign.yaml."""

    name: str
    database: str | None = None
    seed: Seed = 0
    cluster: ClusterSpec = Field(default_factory=ClusterSpec)
    compositions: CompositionsSpec
    model: ModelSpec | None = Field(default=None, description="the model named 'default'")
    models: dict[Annotated[str, AfterValidator(_block_name)], ModelSpec] = Field(
        default_factory=dict, description="named models (stages refer to them by name)")
    generators: GeneratorsSpec
    relaxation: RelaxationSpec = Field(default_factory=RelaxationSpec)
    rescore: RescoreSpec | None = None
    hull: HullSpec = Field(default_factory=HullSpec)
    dedupe: DedupeSpec = Field(default_factory=DedupeSpec)
    match: MatchSpec | None = None
    validity: ValiditySpec | None = None

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,199}", value):
            raise ValueError("a name starts with a letter or digit and uses only letters, digits, '_', '.' and '-' "
                             "(at most 200 characters)")
        return value

    @field_validator("database")
    @classmethod
    def _url(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                normalize_url(value)
            except DatabaseURLError as exc:
                raise ValueError(str(exc)) from None
        return value

    @field_validator("models")
    @classmethod
    def _one_default(cls, value: dict[str, ModelSpec], info: ValidationInfo) -> dict[str, ModelSpec]:
        if "default" in value and info.data.get("model") is not None:
            raise ValueError("model: is the model named 'default': give it under model: or models.default, not both")
        return value

    @field_validator("generators")
    @classmethod
    def _generator_models(cls, value: GeneratorsSpec, info: ValidationInfo) -> GeneratorsSpec:
        known = _model_specs(info.data)
        uses = [("rss", b.name, b.model, "rm_potential") for b in value.rss_blocks]
        uses += [("diffusion", b.name, m, "denoiser") for b in value.diffusion_blocks
                 for m in (b.model, b.time_model) if m is not None]
        uses += [("diffusion", b.name, e, "rm_potential") for b in value.diffusion_blocks for e in b.energy_models()
                 if e not in ENERGY_MODELS and not _DOTTED.fullmatch(e)]
        for generator, name, model, kind in uses if known else ():
            if model not in known:
                raise ValueError(f"{generator} block {name!r} uses model {model!r}, which this campaign does not "
                                 f"define; models here: {', '.join(known)}")
            if known[model].kind != kind:
                raise ValueError(f"{generator} block {name!r} needs a model of kind {kind}; {model!r} is of kind "
                                 f"{known[model].kind}")
        return value

    @field_validator("relaxation")
    @classmethod
    def _relaxation_models(cls, value: RelaxationSpec, info: ValidationInfo) -> RelaxationSpec:
        _denoisers(info.data, [("relaxation.model", value.model), ("relaxation.time_model", value.time_model)])
        if value.diffusion_method is not None:
            _molecules_only(info.data, f"relaxation.method {value.method}")
        return value

    @field_validator("rescore")
    @classmethod
    def _polish_model(cls, value: RescoreSpec | None, info: ValidationInfo) -> RescoreSpec | None:
        if value is not None and value.polish is not None:
            _denoisers(info.data, [("rescore.polish.model", value.polish.model)])
            _molecules_only(info.data, "rescore.polish")
        return value

    @field_validator("hull")
    @classmethod
    def _hull_energy(cls, value: HullSpec, info: ValidationInfo) -> HullSpec:
        rescore, generators = info.data.get("rescore"), info.data.get("generators")
        pseudo = _pseudo_methods(generators) if generators else ["rm_pseudo"]
        allowed = pseudo + ([rescore.energy_method] if rescore else [])
        no_energies = not allowed and value.energy == "rm_pseudo" and value.references is None
        if value.energy not in allowed and not no_energies:  # diffusion alone computes no energy: no hull
            raise ValueError(f"energy = {value.energy!r} is not computed by this campaign; "
                             f"allowed: {', '.join(allowed)}")
        if value.references == "training" and _model_specs(info.data) and _training_dataset(info.data) is None:
            raise ValueError("references: training needs a model trained by this campaign (model.train); "
                             "give a data set instead")
        return value

    @field_validator("match")
    @classmethod
    def _match_training(cls, value: MatchSpec | None, info: ValidationInfo) -> MatchSpec | None:
        if value is not None and value.references == "training" and _model_specs(info.data) \
                and _training_dataset(info.data) is None:
            raise ValueError("references: training needs a model trained by this campaign (model.train); "
                             "give a data set instead")
        return value

    @model_validator(mode="after")
    def _some_model(self) -> CampaignSpec:
        if not self.model_specs():
            raise ValueError("no model: give model: (a checkpoint or a train block) or models: {NAME: {...}, ...}")
        return self

    def model_specs(self) -> dict[str, ModelSpec]:
        """Every model by name: ``model:`` is the one named 'default', listed first."""
        return _model_specs({"model": self.model, "models": self.models})

    @property
    def model_names(self) -> list[str]:
        return list(self.model_specs())

    def training_dataset(self) -> DatasetSpec | None:
        """The training set that `references: training` and novelty mean: the first model's that has a train block."""
        return _training_dataset({"model": self.model, "models": self.models})

    @property
    def pseudo_methods(self) -> list[str]:
        """Energy method names of the pseudo energies the RSS blocks produce (rm_pseudo, rm_pseudo:NAME)."""
        return _pseudo_methods(self.generators)

    @property
    def candidate_methods(self) -> list[str]:
        """The energies re-scoring picks its candidates by: the RSS pseudo energies, then the energy models that
        post-relax diffusion molecules (their post_relax children carry them)."""
        known = self.model_specs()
        post = [(lambda name: pseudo_method(name) if name in known else name)(b.energy_of("post_relax")[0])
                for b in self.generators.diffusion_blocks if b.post_relax is not None]
        return list(dict.fromkeys(self.pseudo_methods + post))


def _molecules_only(data: dict[str, Any], what: str) -> None:
    """Diffusion relaxation and polish treat molecules: no RSS block may make crystals."""
    generators = data.get("generators")
    periodic = [b.name for b in generators.rss_blocks if b.periodic] if generators else []
    if periodic:
        raise ValueError(f"{what} treats molecules, but RSS block(s) {', '.join(periodic)} make crystals "
                         "(periodic: true): set periodic: false, or leave this out")


def _denoisers(data: dict[str, Any], uses: list[tuple[str, str | None]]) -> None:
    """Each named model in ``uses`` ((field, name) pairs) is defined by the campaign and is a denoiser."""
    known = _model_specs(data)
    for where, name in uses:
        if name is None or not known:
            continue
        if name not in known:
            raise ValueError(f"{where} = {name!r} is not a model of this campaign; models here: {', '.join(known)}")
        if known[name].kind != "denoiser":
            raise ValueError(f"{where} needs a model of kind denoiser; {name!r} is of kind {known[name].kind}")


def _model_specs(data: dict[str, Any]) -> dict[str, ModelSpec]:
    default = {"default": data["model"]} if data.get("model") is not None else {}
    return {**default, **dict(data.get("models") or {})}


def _training_dataset(data: dict[str, Any]) -> DatasetSpec | None:
    return next((m.train.dataset for m in _model_specs(data).values() if m.train is not None), None)


def _pseudo_methods(generators: GeneratorsSpec) -> list[str]:
    return list(dict.fromkeys(pseudo_method(b.model) for b in generators.rss_blocks))


def _model_at(loc: tuple, root: type[BaseModel]) -> type[BaseModel] | None:
    """The pydantic model class that owns the last key of ``loc``."""
    model: Any = root
    for part in loc[:-1]:
        if isinstance(part, int) or model is None:
            continue
        field = model.model_fields.get(part)
        if field is None:
            return None
        model = _find_model(field.annotation)
    return model


def _find_model(annotation: Any) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    if typing.get_origin(annotation) in (Union, types.UnionType, list, tuple, dict, Annotated):
        for arg in typing.get_args(annotation):
            found = _find_model(arg)
            if found is not None:
                return found
    return None


def _field_path(loc: tuple) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif (part.startswith(("function-", "tagged-union", "union", "<", "constrained-", "dict[", "list["))
              or part in ("str", "float", "int", "bool")):
            continue  # pydantic's internal branch labels, not user fields
        else:
            out += f".{part}" if out else part
    return out


def _problem(error: dict, root: type[BaseModel]) -> Problem:
    loc = tuple(error["loc"])
    value = error.get("input", _MISSING)
    message = error["msg"].removeprefix("Value error, ")
    if error["type"] == "extra_forbidden":
        model = _model_at(loc, root)
        allowed = sorted(model.model_fields) if model else []
        close = difflib.get_close_matches(str(loc[-1]), allowed, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        message = f"unknown key; allowed keys here: {', '.join(allowed)}{hint}"
    elif error["type"] == "missing":
        value = _MISSING
        message = "required field is missing"
    elif error["type"] == "string_type" and isinstance(value, bool):
        message += " (YAML read this as a boolean: put it in quotes, e.g. 'NO')"
    return Problem(_field_path(loc), value, message)


def parse_campaign(data: Any, *, source: str = "<campaign>", base_dir: Path | str = ".",
                   root: type[Spec] = None) -> Any:
    """Validate a loaded YAML document (a campaign unless ``root`` says otherwise); raises CampaignError listing
    every problem."""
    root = root or CampaignSpec
    if not isinstance(data, dict):
        kind = "empty" if data is None else f"a {type(data).__name__}"
        keys = ", ".join(root.model_fields)
        message = f"the file is {kind}; expected a mapping with keys such as {keys}"
        raise CampaignError(source, [Problem("", _MISSING, message)])
    try:
        return root.model_validate(data, context={"base_dir": Path(base_dir)})
    except ValidationError as exc:
        errors = exc.errors(include_url=False)
        problems = [_problem(e, root) for e in errors]
        # a union (a number or a mapping, ...) reports every branch: where one branch has the value's own type and a
        # real complaint, the "not a mapping" of the other branches is noise
        real = {p.field for p, e in zip(problems, errors) if not e["type"].endswith("_type")}
        problems = [p for p, e in zip(problems, errors) if not (e["type"].endswith("_type") and p.field in real)]
        unique = {str(p): p for p in problems}
        raise CampaignError(source, list(unique.values())) from None


def _read(path: Path) -> Any:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise CampaignError(str(path), [Problem("", _MISSING, f"cannot read the file: {exc.strerror}")]) from None
    except UnicodeDecodeError as exc:
        raise CampaignError(str(path), [Problem("", _MISSING, f"not UTF-8 text: byte 0x{exc.object[exc.start]:02x} "
                                                           f"at offset {exc.start}")]) from None
    return load_yaml(text, str(path))


def load_campaign(path: str | Path, root: type[Spec] = None) -> Any:
    """Read and validate a campaign YAML file (or, with ``root=TrainFileSpec``, a train file)."""
    path = Path(path)
    return parse_campaign(_read(path), source=str(path), base_dir=path.parent, root=root)


def load_spec(path: str | Path) -> Any:
    """A campaign or a train file, told apart by their keys (a train file has `dataset` and no `compositions`)."""
    path = Path(path)
    data = _read(path)
    is_train_file = isinstance(data, dict) and "dataset" in data and "compositions" not in data
    root = TrainFileSpec if is_train_file else CampaignSpec
    return parse_campaign(data, source=str(path), base_dir=path.parent, root=root)


def load_training(path: str | Path) -> tuple[str, TrainSpec]:
    """The training recipe (name, TrainSpec) of a train file, or of a campaign's first model with a train block."""
    spec = load_spec(path)
    if isinstance(spec, TrainFileSpec):
        return spec.name, TrainSpec(dataset=spec.dataset, hyperparameters=spec.hyperparameters, seed=spec.seed)
    train = next((m.train for m in spec.model_specs().values() if m.train is not None), None)
    if train is None:
        raise CampaignError(str(path), [Problem("model", _MISSING, "no model with a train block (this campaign loads "
                                                                   "checkpoints); give its train file instead")])
    return spec.name, train


MAX_FILE_BYTES = 1 << 20  # a campaign file is a page of settings
MAX_NODES = 100_000  # YAML nodes after aliases are expanded (a 650-byte "billion laughs" expands to 387 M)
MAX_DEPTH = 64  # nesting of lists and mappings


class _BoundedLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that refuses duplicate keys (PyYAML keeps the last one silently)."""

    def construct_mapping(self, node, deep=False):
        seen = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(key_node, deep=True)
            try:
                first = seen.setdefault(key, key_node)
            except TypeError:  # an unhashable key: SafeLoader names it
                break
            if first is not key_node:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {key!r} (first on line {first.start_mark.line + 1}); PyYAML would keep "
                    "only the last one", key_node.start_mark)
        return super().construct_mapping(node, deep=deep)


def _expanded_size(node, memo: dict[int, int], depth: int = 0) -> int:
    """Nodes of ``node`` with every alias expanded; refuses deep nesting, recursion and expansions over MAX_NODES."""
    if id(node) in memo:
        if memo[id(node)] < 0:
            raise yaml.YAMLError(f"a recursive alias (line {node.start_mark.line + 1})")
        return memo[id(node)]
    if depth > MAX_DEPTH:
        raise yaml.YAMLError(f"nested deeper than {MAX_DEPTH} levels (line {node.start_mark.line + 1})")
    memo[id(node)] = -1
    children = node.value if isinstance(node, yaml.SequenceNode) else (
        [n for pair in node.value for n in pair] if isinstance(node, yaml.MappingNode) else [])
    size = 1 + sum(_expanded_size(child, memo, depth + 1) for child in children)
    if size > MAX_NODES:
        raise yaml.YAMLError(f"expands to more than {MAX_NODES:,} values (aliases of aliases?); campaign files are "
                             "small")
    memo[id(node)] = size
    return size


def load_yaml(text: str, source: str) -> Any:
    """Safe YAML with bounds (file size, nesting, alias expansion, no duplicate keys); errors become a
    :class:`CampaignError` that names the line."""
    if len(text) > MAX_FILE_BYTES:
        raise CampaignError(source, [Problem("", _MISSING, f"the file has {len(text):,} characters; campaign files "
                                                           f"are at most {MAX_FILE_BYTES:,}")])
    loader = None
    try:
        loader = _BoundedLoader(text)  # its reader already refuses control characters
        node = loader.get_single_node()
        if node is None:
            return None
        _expanded_size(node, {})
        return loader.construct_document(node)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        reason = getattr(exc, "problem", None) or str(exc)
        raise CampaignError(source, [Problem("", _MISSING, f"not valid YAML: {where}{reason}")]) from None
    except RecursionError:
        raise CampaignError(source, [Problem("", _MISSING, f"not valid YAML: nested deeper than {MAX_DEPTH} "
                                                           "levels")]) from None
    finally:
        if loader is not None:
            loader.dispose()
