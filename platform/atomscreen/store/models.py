"""SQLAlchemy ORM models: the schema of the atomscreen store.

Arrays (numbers, positions, cells, trajectory frames) are compressed blobs
(:class:`~atomscreen.store.arrays.NDArray`); everything a person filters or
sorts on is a column. Every change here needs an Alembic revision in
``migrations/versions`` (a test compares the two).
"""

from __future__ import annotations

from datetime import datetime, timezone
from enum import StrEnum
from typing import Any, Optional

import numpy as np
from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Double,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

from atomscreen.store.arrays import NDArray

# Deterministic constraint names, so migrations can refer to them on every backend.
NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}



class TaskState(StrEnum):
    """task.status"""

    PENDING = "pending"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"


class CampaignState(StrEnum):
    """campaign.status"""

    PENDING = "pending"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"


def utcnow() -> datetime:
    """Timezone-aware current time (stored as UTC)."""
    return datetime.now(timezone.utc)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class Campaign(Base):
    """One submitted campaign.yaml: its text, hash and life cycle."""

    __tablename__ = "campaign"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    spec: Mapped[str] = mapped_column(Text)
    spec_hash: Mapped[str] = mapped_column(String(64))
    # the YAML file as submitted: relative paths in the spec resolve against its folder on resume
    source: Mapped[Optional[str]] = mapped_column(Text)
    status: Mapped[str] = mapped_column(String(16), default="pending")
    error: Mapped[Optional[str]] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow, onupdate=utcnow)
    finished_at: Mapped[Optional[datetime]] = mapped_column(DateTime(timezone=True))
    # the campaign's default model (the first of campaign_model), kept for SQL written against revision 0002
    model_id: Mapped[Optional[int]] = mapped_column(ForeignKey("model.id"))

    tasks: Mapped[list["Task"]] = relationship(back_populates="campaign")


class CampaignModel(Base):
    """A model a campaign uses, under the name its stages refer to it by ('default' for the plain `model:` key)."""

    __tablename__ = "campaign_model"
    __table_args__ = (UniqueConstraint("campaign_id", "name"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    campaign_id: Mapped[int] = mapped_column(ForeignKey("campaign.id", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(String(64))
    model_id: Mapped[int] = mapped_column(ForeignKey("model.id"))


class Composition(Base):
    """A composition, e.g. formula ``Li4S2``, reduced ``Li2S``, chemsys ``Li-S``."""

    __tablename__ = "composition"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    # unbounded: a 200-atom cell of mixed elements has a formula longer than any fixed width
    formula: Mapped[str] = mapped_column(String, unique=True)
    reduced_formula: Mapped[str] = mapped_column(String, index=True)
    chemsys: Mapped[str] = mapped_column(String, index=True)
    n_atoms: Mapped[int] = mapped_column(Integer)


class Model(Base):
    """A trained model (RM potential, diffusion net, ...), identified by the sha256 of its weights."""

    __tablename__ = "model"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    kind: Mapped[str] = mapped_column(String(64), index=True)
    sha256: Mapped[str] = mapped_column(String(64), unique=True)
    name: Mapped[Optional[str]] = mapped_column(String(200))
    hyperparameters: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    weights: Mapped[bytes] = mapped_column(LargeBinary)
    training_data: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    metrics: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class Task(Base):
    """One unit of Dask work (a batch of structures); ``key`` is unique per campaign."""

    __tablename__ = "task"
    __table_args__ = (
        UniqueConstraint("campaign_id", "key"),
        Index("ix_task_campaign_id_status", "campaign_id", "status"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    campaign_id: Mapped[int] = mapped_column(ForeignKey("campaign.id", ondelete="CASCADE"))
    kind: Mapped[str] = mapped_column(String(64))
    key: Mapped[str] = mapped_column(String(200))
    seed: Mapped[int] = mapped_column(BigInteger)
    formula: Mapped[Optional[str]] = mapped_column(String)  # the composition (or group) the task works on
    payload: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    status: Mapped[str] = mapped_column(String(16), default="pending")
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    error: Mapped[Optional[str]] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    started_at: Mapped[Optional[datetime]] = mapped_column(DateTime(timezone=True))
    finished_at: Mapped[Optional[datetime]] = mapped_column(DateTime(timezone=True))
    wall_time_s: Mapped[Optional[float]] = mapped_column(Double)

    campaign: Mapped[Campaign] = relationship(back_populates="tasks")


class Structure(Base):
    """An atomic structure; arrays in blobs, searchable properties in columns."""

    __tablename__ = "structure"
    # one row per (task, position in the task): a task result written twice cannot add rows
    __table_args__ = (UniqueConstraint("task_id", "task_index"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    campaign_id: Mapped[Optional[int]] = mapped_column(ForeignKey("campaign.id", ondelete="CASCADE"), index=True)
    task_id: Mapped[Optional[int]] = mapped_column(ForeignKey("task.id", ondelete="SET NULL"), index=True)
    composition_id: Mapped[int] = mapped_column(ForeignKey("composition.id"), index=True)
    task_index: Mapped[Optional[int]] = mapped_column(Integer)
    parent_id: Mapped[Optional[int]] = mapped_column(ForeignKey("structure.id", ondelete="SET NULL"), index=True)
    # dedupe: NULL for a unique structure, else the lowest-energy structure it matches
    representative_id: Mapped[Optional[int]] = mapped_column(ForeignKey("structure.id", ondelete="SET NULL"),
                                                             index=True)
    origin: Mapped[str] = mapped_column(String(32), index=True)
    sampler: Mapped[Optional[str]] = mapped_column(String(32), index=True)  # ddpm, morered-itp/-as/-jt
    model_id: Mapped[Optional[int]] = mapped_column(ForeignKey("model.id"), index=True)  # the model that made it
    n_atoms: Mapped[int] = mapped_column(Integer)
    # pbc along the three cell vectors as 'T'/'F' characters, e.g. 'TTT' or 'FFF'
    pbc: Mapped[str] = mapped_column(String(3))
    numbers: Mapped[np.ndarray] = mapped_column(NDArray)
    positions: Mapped[np.ndarray] = mapped_column(NDArray)  # [n_atoms, 3], Å
    cell: Mapped[np.ndarray] = mapped_column(NDArray)  # [3, 3], Å, rows are lattice vectors
    volume_per_atom: Mapped[Optional[float]] = mapped_column(Double)  # Å^3, NULL unless fully periodic
    spacegroup: Mapped[Optional[int]] = mapped_column(Integer)
    fingerprint: Mapped[Optional[str]] = mapped_column(String(128), index=True)
    info: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)

    composition: Mapped[Composition] = relationship()
    energies: Mapped[list["Energy"]] = relationship(back_populates="structure")


class Trajectory(Base):
    """Subsampled relaxation frames of one structure, stacked into arrays."""

    __tablename__ = "trajectory"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    structure_id: Mapped[int] = mapped_column(ForeignKey("structure.id", ondelete="CASCADE"), index=True)
    method: Mapped[str] = mapped_column(String(64))
    n_frames: Mapped[int] = mapped_column(Integer)
    steps: Mapped[np.ndarray] = mapped_column(NDArray)  # [F] int
    energies: Mapped[np.ndarray] = mapped_column(NDArray)  # [F] eV
    fmax: Mapped[np.ndarray] = mapped_column(NDArray)  # [F] eV/Å
    positions: Mapped[np.ndarray] = mapped_column(NDArray)  # [F, n_atoms, 3] Å
    cells: Mapped[np.ndarray] = mapped_column(NDArray)  # [F, 3, 3] Å


class Energy(Base):
    """An energy of a structure by one method (rm_pseudo, xtb_gfn2, chgnet, ...)."""

    __tablename__ = "energy"
    __table_args__ = (UniqueConstraint("structure_id", "method"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    structure_id: Mapped[int] = mapped_column(ForeignKey("structure.id", ondelete="CASCADE"), index=True)
    method: Mapped[str] = mapped_column(String(64), index=True)
    model_id: Mapped[Optional[int]] = mapped_column(ForeignKey("model.id"), index=True)
    total: Mapped[float] = mapped_column(Double)  # eV
    per_atom: Mapped[float] = mapped_column(Double, index=True)  # eV/atom
    fmax: Mapped[Optional[float]] = mapped_column(Double)  # eV/Å
    converged: Mapped[Optional[bool]] = mapped_column(Boolean)
    n_steps: Mapped[Optional[int]] = mapped_column(Integer)
    wall_time_s: Mapped[Optional[float]] = mapped_column(Double)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)

    structure: Mapped[Structure] = relationship(back_populates="energies")


class HullEntry(Base):
    """A structure's place on the (pseudo) convex hull of its chemical system."""

    __tablename__ = "hull_entry"
    __table_args__ = (
        UniqueConstraint("campaign_id", "structure_id", "method"),
        Index("ix_hull_entry_campaign_id_method", "campaign_id", "method"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    campaign_id: Mapped[int] = mapped_column(ForeignKey("campaign.id", ondelete="CASCADE"))
    structure_id: Mapped[int] = mapped_column(ForeignKey("structure.id", ondelete="CASCADE"), index=True)
    method: Mapped[str] = mapped_column(String(64))
    formation_energy_per_atom: Mapped[float] = mapped_column(Double)  # eV/atom
    e_above_hull: Mapped[float] = mapped_column(Double, index=True)  # eV/atom
    is_stable: Mapped[bool] = mapped_column(Boolean)


class Ranking(Base):
    """Rank of a structure by ``method`` energy, within its composition or overall (``scope``)."""

    __tablename__ = "ranking"
    __table_args__ = (
        UniqueConstraint("campaign_id", "structure_id", "method", "scope"),
        Index("ix_ranking_campaign_id_method_scope_rank", "campaign_id", "method", "scope", "rank"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    campaign_id: Mapped[int] = mapped_column(ForeignKey("campaign.id", ondelete="CASCADE"))
    structure_id: Mapped[int] = mapped_column(ForeignKey("structure.id", ondelete="CASCADE"), index=True)
    method: Mapped[str] = mapped_column(String(64))
    scope: Mapped[str] = mapped_column(String(16))  # 'composition' or 'overall'
    rank: Mapped[int] = mapped_column(Integer)  # 1 = best
    score: Mapped[float] = mapped_column(Double)  # the ranked quantity, eV/atom


class CalculationFailure(Base):
    """A structure that a method (a re-scoring calculator) could not evaluate, and why; the campaign went on."""

    __tablename__ = "calculation_failure"
    __table_args__ = (UniqueConstraint("structure_id", "method"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    campaign_id: Mapped[int] = mapped_column(ForeignKey("campaign.id", ondelete="CASCADE"), index=True)
    structure_id: Mapped[int] = mapped_column(ForeignKey("structure.id", ondelete="CASCADE"), index=True)
    task_id: Mapped[Optional[int]] = mapped_column(ForeignKey("task.id", ondelete="SET NULL"))
    method: Mapped[str] = mapped_column(String(64))
    error: Mapped[str] = mapped_column(Text)
    wall_time_s: Mapped[Optional[float]] = mapped_column(Double)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class StructureMatch(Base):
    """A unique structure that StructureMatcher fits to a known reference structure (``platform match``)."""

    __tablename__ = "structure_match"
    __table_args__ = (UniqueConstraint("campaign_id", "structure_id", "reference_source"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    campaign_id: Mapped[int] = mapped_column(ForeignKey("campaign.id", ondelete="CASCADE"), index=True)
    structure_id: Mapped[int] = mapped_column(ForeignKey("structure.id", ondelete="CASCADE"), index=True)
    reference_source: Mapped[str] = mapped_column(Text)  # the reference file (or 'training')
    reference_index: Mapped[int] = mapped_column(Integer)  # 0-based position in that file
    reference_name: Mapped[Optional[str]] = mapped_column(String(200))  # e.g. material_id
    reference_energy_per_atom: Mapped[Optional[float]] = mapped_column(Double)  # eV/atom as the file gives it
    # 1 = the lowest-energy reference of its reduced composition in the file (NULL without reference energies)
    reference_energy_rank: Mapped[Optional[int]] = mapped_column(Integer)


class MoleculeCheck(Base):
    """Chemical validity of one molecule (RDKit bond perception, the PoseBusters checks, EDM stability): one column per
    check so SQL can filter on it. NULL: the check could not run (a timeout, or nothing to assess)."""

    __tablename__ = "molecule_check"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    campaign_id: Mapped[int] = mapped_column(ForeignKey("campaign.id", ondelete="CASCADE"), index=True)
    structure_id: Mapped[int] = mapped_column(ForeignKey("structure.id", ondelete="CASCADE"), unique=True)
    task_id: Mapped[Optional[int]] = mapped_column(ForeignKey("task.id", ondelete="SET NULL"))
    status: Mapped[str] = mapped_column(String(16))  # ok, error, timeout
    error: Mapped[Optional[str]] = mapped_column(Text)
    bonds_determined: Mapped[Optional[bool]] = mapped_column(Boolean)
    sanitization: Mapped[Optional[bool]] = mapped_column(Boolean)
    inchi_convertible: Mapped[Optional[bool]] = mapped_column(Boolean)
    all_atoms_connected: Mapped[Optional[bool]] = mapped_column(Boolean)
    no_radicals: Mapped[Optional[bool]] = mapped_column(Boolean)
    bond_lengths: Mapped[Optional[bool]] = mapped_column(Boolean)
    bond_angles: Mapped[Optional[bool]] = mapped_column(Boolean)
    internal_steric_clash: Mapped[Optional[bool]] = mapped_column(Boolean)
    aromatic_ring_flatness: Mapped[Optional[bool]] = mapped_column(Boolean)
    nonaromatic_ring_nonflatness: Mapped[Optional[bool]] = mapped_column(Boolean)
    double_bond_flatness: Mapped[Optional[bool]] = mapped_column(Boolean)
    internal_energy: Mapped[Optional[bool]] = mapped_column(Boolean)
    passes_all: Mapped[bool] = mapped_column(Boolean)  # no check failed (a check that could not run does not count)
    smiles: Mapped[Optional[str]] = mapped_column(Text)  # canonical, no stereochemistry; NULL unless sanitisable
    novel: Mapped[Optional[bool]] = mapped_column(Boolean)  # SMILES not among the training set's (NULL: unknown)
    atoms_stable: Mapped[Optional[float]] = mapped_column(Double)  # EDM: fraction of atoms with their usual valence
    molecule_stable: Mapped[Optional[bool]] = mapped_column(Boolean)  # EDM: every atom
    wall_time_s: Mapped[Optional[float]] = mapped_column(Double)
    # the second checker (Open Babel bond perception, PoseBusters' 2024 checks: the RM paper's list); NULL: not run
    ob_sanitization: Mapped[Optional[bool]] = mapped_column(Boolean)
    ob_all_atoms_connected: Mapped[Optional[bool]] = mapped_column(Boolean)
    ob_bond_lengths: Mapped[Optional[bool]] = mapped_column(Boolean)
    ob_bond_angles: Mapped[Optional[bool]] = mapped_column(Boolean)
    ob_internal_steric_clash: Mapped[Optional[bool]] = mapped_column(Boolean)
    ob_aromatic_ring_flatness: Mapped[Optional[bool]] = mapped_column(Boolean)
    ob_double_bond_flatness: Mapped[Optional[bool]] = mapped_column(Boolean)
    ob_internal_energy: Mapped[Optional[bool]] = mapped_column(Boolean)
    ob_passes_all: Mapped[Optional[bool]] = mapped_column(Boolean)
    # MoreRed Table B1 (G-SchNet's rule): one fragment, standard valences on Open Babel's bonds; its canonical SMILES
    # (uniqueness), and whether that SMILES is absent from all of QM9 (novelty; NULL: not assessed)
    connected_valence: Mapped[Optional[bool]] = mapped_column(Boolean)
    ob_smiles: Mapped[Optional[str]] = mapped_column(Text)
    ob_novel: Mapped[Optional[bool]] = mapped_column(Boolean)
