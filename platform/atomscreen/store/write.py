"""Every INSERT, UPDATE and DELETE of the store except those of task rows (write_tasks.py): structures, energies,
trajectories, campaigns, models, analysis results.

Functions take an explicit session and never commit: the caller owns the transaction
(:func:`atomscreen.store.engine.transaction`), so what belongs together lands together or not at all.
"""

from __future__ import annotations

import hashlib
import json
import math
from datetime import datetime, timezone
from typing import Any, Sequence

import numpy as np
from ase import Atoms
from sqlalchemy import delete, func, insert, select, update
from sqlalchemy.orm import Session

from atomscreen.chem import composition_fields
from atomscreen.store.models import (
    Campaign,
    CampaignModel,
    CampaignState,
    Composition,
    Energy,
    HullEntry,
    Model,
    MoleculeCheck,
    Ranking,
    Structure,
    StructureMatch,
    Task,
    Trajectory,
)
from atomscreen.store.records import (
    EnergyRecord,
    MatchRow,
    MethodAnalysis,
    NewStructure,
    StoredModel,
    TrajectoryRecord,
)


def now() -> datetime:
    return datetime.now(timezone.utc)


def spec_hash(spec_text: str) -> str:
    """sha256 of a campaign spec as submitted."""
    return hashlib.sha256(spec_text.encode()).hexdigest()


# --- structures ----------------------------------------------------------------------------------------------------

def get_or_create_composition(session: Session, numbers: Sequence[int]) -> Composition:
    """The composition row for these atoms, created if new."""
    fields = composition_fields(numbers)
    row = session.scalar(select(Composition).where(Composition.formula == fields["formula"]))
    if row is None:
        row = Composition(**fields)
        session.add(row)
        session.flush()
    return row


def _jsonable(value: Any) -> Any:
    """A JSON-safe copy of atoms.info values; values that cannot be represented are dropped (None)."""
    if isinstance(value, (str, bool)) or value is None:
        return value
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        return float(value) if math.isfinite(value) else None
    if isinstance(value, np.ndarray):
        return _jsonable(value.tolist())
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    return None


def _info(info: dict[str, Any]) -> dict[str, Any]:
    out = {k: _jsonable(v) for k, v in info.items()}
    return {k: v for k, v in out.items() if v is not None}


def _new(item: Atoms | NewStructure) -> NewStructure:
    if isinstance(item, NewStructure):
        return item
    return NewStructure(item.numbers, item.positions, item.cell.array, item.pbc, item.info)


def _nth(seq: Sequence | None, i: int) -> Any:
    return None if seq is None else seq[i]


def _int_or_none(value: Any) -> int | None:
    return None if value is None else int(value)


def _check_lengths(n: int, **named: Sequence | None) -> None:
    for name, seq in named.items():
        if seq is not None and len(seq) != n:
            raise ValueError(f"{name} has {len(seq)} entries for {n} structures")


def _structure_row(item: NewStructure, composition_id: int, origin: str, **columns: Any) -> dict[str, Any]:
    pbc = np.asarray(item.pbc, dtype=bool)
    n_atoms = len(item.numbers)
    cell = np.asarray(item.cell)
    return dict(composition_id=composition_id, origin=origin, n_atoms=n_atoms,
                pbc="".join("T" if p else "F" for p in pbc), numbers=np.asarray(item.numbers),
                positions=np.asarray(item.positions), cell=cell,
                volume_per_atom=float(abs(np.linalg.det(cell)) / n_atoms) if pbc.all() else None,
                sampler=item.info.get("sampler") if origin in ("diffusion", "diffusion_relax") else None,
                info=_info(item.info), created_at=now(), **columns)


def add_structures(
    session: Session,
    atoms_list: Sequence[Atoms | NewStructure],
    *,
    origin: str,
    campaign_id: int | None = None,
    task_id: int | None = None,
    model_id: int | None = None,
    parent_ids: Sequence[int | None] | None = None,
    task_indices: Sequence[int] | None = None,
    spacegroups: Sequence[int | None] | None = None,
    energies: Sequence[Sequence[EnergyRecord]] | None = None,
    trajectories: Sequence[Sequence[TrajectoryRecord]] | None = None,
) -> list[int]:
    """Store structures (with optional energies and trajectories, one list per structure); returns their ids.
    ``task_indices`` are the structures' positions within task ``task_id``; the pair is unique. Rows go in as one
    multi-row INSERT per table (a task's thousands of structures in milliseconds, not one ORM object each)."""
    n = len(atoms_list)
    _check_lengths(n, parent_ids=parent_ids, task_indices=task_indices, spacegroups=spacegroups, energies=energies,
                   trajectories=trajectories)
    if not n:
        return []
    compositions: dict[str, int] = {}
    rows = []
    for i, item in enumerate(map(_new, atoms_list)):
        formula = composition_fields(item.numbers)["formula"]
        if formula not in compositions:
            compositions[formula] = get_or_create_composition(session, item.numbers).id
        rows.append(_structure_row(item, compositions[formula], origin, campaign_id=campaign_id, task_id=task_id,
                                   model_id=model_id, parent_id=_nth(parent_ids, i),
                                   task_index=_int_or_none(_nth(task_indices, i)),
                                   spacegroup=_int_or_none(_nth(spacegroups, i))))
    ids = list(session.scalars(insert(Structure).returning(Structure.id, sort_by_parameter_order=True), rows))
    _add_energies_and_trajectories(session, ids, [row["n_atoms"] for row in rows], energies, trajectories)
    return ids


def _add_energies_and_trajectories(session: Session, ids: list[int], n_atoms: list[int],
                                   energies: Sequence[Sequence[EnergyRecord]] | None,
                                   trajectories: Sequence[Sequence[TrajectoryRecord]] | None) -> None:
    n = len(ids)
    energy_rows = [_energy_row(ids[i], n_atoms[i], record) for i in range(n) for record in (_nth(energies, i) or ())]
    trajectory_rows = [_trajectory_row(ids[i], n_atoms[i], record)
                       for i in range(n) for record in (_nth(trajectories, i) or ())]
    if energy_rows:
        session.execute(insert(Energy), energy_rows)
    if trajectory_rows:
        session.execute(insert(Trajectory), trajectory_rows)


def _energy_row(structure_id: int, n_atoms: int, record: EnergyRecord) -> dict[str, Any]:
    if not math.isfinite(record.total):
        raise ValueError(f"energy {record.method!r} of structure {structure_id} is not finite: {record.total}")
    return dict(structure_id=structure_id, method=record.method, model_id=record.model_id, total=float(record.total),
                per_atom=float(record.total) / n_atoms, fmax=record.fmax, converged=record.converged,
                n_steps=record.n_steps, wall_time_s=record.wall_time_s, created_at=now())


def _trajectory_row(structure_id: int, n_atoms: int, record: TrajectoryRecord) -> dict[str, Any]:
    n_frames = len(record.steps)
    expected = {"energies": (n_frames,), "fmax": (n_frames,), "positions": (n_frames, n_atoms, 3),
                "cells": (n_frames, 3, 3)}
    for name, shape in expected.items():
        got = np.shape(getattr(record, name))
        if got != shape:
            raise ValueError(f"trajectory {name} of structure {structure_id} has shape {got}, expected {shape}")
    return dict(structure_id=structure_id, method=record.method, n_frames=n_frames,
                steps=np.asarray(record.steps), energies=np.asarray(record.energies),
                fmax=np.asarray(record.fmax), positions=np.asarray(record.positions),
                cells=np.asarray(record.cells))


def add_energies(session: Session, structure_ids: Sequence[int], records: Sequence[EnergyRecord]) -> None:
    """Store one energy per structure (e.g. a re-scoring single point)."""
    if len(structure_ids) != len(records):
        raise ValueError(f"{len(records)} energies for {len(structure_ids)} structures")
    rows = {s.id: s for s in session.scalars(select(Structure).where(Structure.id.in_(structure_ids)))}
    missing = sorted(set(structure_ids) - set(rows))
    if missing:
        raise KeyError(f"no structure with id {missing}")
    session.execute(insert(Energy), [_energy_row(i, rows[i].n_atoms, r) for i, r in zip(structure_ids, records)])


def add_trajectory(session: Session, structure_id: int, record: TrajectoryRecord) -> None:
    """Store a trajectory for an existing structure; a second trajectory of the same method for it is refused."""
    structure = session.get(Structure, structure_id)
    if structure is None:
        raise KeyError(f"no structure with id {structure_id}")
    exists = session.scalar(select(Trajectory.id).where(Trajectory.structure_id == structure_id,
                                                        Trajectory.method == record.method))
    if exists is not None:
        raise ValueError(f"structure {structure_id} already has a {record.method!r} trajectory")
    session.execute(insert(Trajectory), [_trajectory_row(structure_id, structure.n_atoms, record)])


# --- campaigns and models ------------------------------------------------------------------------------------------

def delete_campaign(session: Session, campaign_id: int) -> dict[str, int]:
    """Remove a campaign and every row that belongs to it (tasks, structures with their energies and trajectories,
    ranks, hulls, checks, matches, model links; the models themselves stay); returns what was removed."""
    counted = {"structures": session.scalar(select(func.count(Structure.id))
                                            .where(Structure.campaign_id == campaign_id)) or 0,
               "tasks": session.scalar(select(func.count(Task.id)).where(Task.campaign_id == campaign_id)) or 0}
    session.execute(delete(Campaign).where(Campaign.id == campaign_id))  # the foreign keys cascade
    return counted


def add_campaign(session: Session, name: str, spec_text: str, source: str | None = None) -> Campaign:
    """Record a new campaign (``source``: the YAML file it came from); a second campaign with the same name is
    refused."""
    if session.scalar(select(Campaign).where(Campaign.name == name)) is not None:
        raise ValueError(f"a campaign named {name!r} already exists")
    row = Campaign(name=name, spec=spec_text, spec_hash=spec_hash(spec_text), status=CampaignState.PENDING,
                   source=source)
    session.add(row)
    session.flush()
    return row


def set_campaign_status(session: Session, campaign_id: int, status: str, error: str | None = None, *,
                        finished: bool = False) -> None:
    """Set a campaign's status and error (and its finish time when ``finished``; cleared otherwise)."""
    campaign = session.get(Campaign, campaign_id)
    campaign.status, campaign.error = status, error
    campaign.finished_at = now() if finished else None


def add_model(session: Session, *, kind: str, weights: bytes, hyperparameters: dict[str, Any],
              training_data: dict[str, Any] | None = None, metrics: dict[str, Any] | None = None,
              name: str | None = None) -> StoredModel:
    """Store a model keyed by the sha256 of its weights; storing the same weights again returns the existing row."""
    digest = hashlib.sha256(weights).hexdigest()
    row = session.scalar(select(Model).where(Model.sha256 == digest))
    if row is None:
        json.dumps(hyperparameters)  # fail here, not at flush, on values JSON cannot hold
        row = Model(kind=kind, sha256=digest, name=name, hyperparameters=hyperparameters, weights=weights,
                    training_data=training_data or {}, metrics=metrics or {})
        session.add(row)
        session.flush()
    return StoredModel(row.id, row.kind, row.sha256, dict(row.hyperparameters), row.weights, dict(row.training_data))


def link_model(session: Session, campaign_id: int, name: str, model_id: int) -> None:
    """Record that the campaign's model ``name`` is model ``model_id`` (the first one linked is the campaign's
    default, campaign.model_id)."""
    session.add(CampaignModel(campaign_id=campaign_id, name=name, model_id=model_id))
    campaign = session.get(Campaign, campaign_id)
    if campaign.model_id is None or name == "default":
        campaign.model_id = model_id
    session.flush()


# --- analysis ------------------------------------------------------------------------------------------------------

def clear_analysis(session: Session, campaign_id: int) -> None:
    """Remove a campaign's rankings, hull entries and duplicate marks (before they are computed again)."""
    session.execute(delete(Ranking).where(Ranking.campaign_id == campaign_id))
    session.execute(delete(HullEntry).where(HullEntry.campaign_id == campaign_id))
    session.execute(update(Structure).where(Structure.campaign_id == campaign_id).values(representative_id=None))


def add_analysis(session: Session, campaign_id: int, analysis: MethodAnalysis) -> None:
    """Store one energy method's duplicate marks, rankings and hull entries (bulk statements: 1e5 rows are common)."""
    if analysis.duplicates:
        session.execute(update(Structure), [{"id": sid, "representative_id": rep}
                                            for sid, rep in analysis.duplicates.items()])
    if analysis.rankings:
        session.execute(insert(Ranking), [
            {"campaign_id": campaign_id, "structure_id": sid, "method": analysis.method, "scope": scope, "rank": rank,
             "score": score} for sid, scope, rank, score in analysis.rankings])
    if analysis.hull:
        session.execute(insert(HullEntry), [
            {"campaign_id": campaign_id, "structure_id": sid, "method": analysis.method,
             "formation_energy_per_atom": form, "e_above_hull": above, "is_stable": stable}
            for sid, form, above, stable in analysis.hull])


def replace_matches(session: Session, campaign_id: int, source: str, rows: Sequence[MatchRow]) -> None:
    """Replace the campaign's matches against reference ``source``."""
    session.execute(delete(StructureMatch).where(StructureMatch.campaign_id == campaign_id,
                                                 StructureMatch.reference_source == source))
    session.add_all(StructureMatch(campaign_id=campaign_id, structure_id=r.structure_id, reference_source=source,
                                   reference_index=r.reference_index,
                                   reference_name=None if r.reference_name is None else r.reference_name[:200],
                                   reference_energy_per_atom=r.reference_energy_per_atom,
                                   reference_energy_rank=r.reference_energy_rank) for r in rows)


def set_novelty(session: Session, campaign_id: int, known_smiles: set[str]) -> tuple[int, int]:
    """Mark molecule checks novel when their SMILES is not in ``known_smiles``; returns (novel, with SMILES)."""
    rows = session.scalars(select(MoleculeCheck).where(MoleculeCheck.campaign_id == campaign_id)).all()
    for row in rows:
        row.novel = None if row.smiles is None else row.smiles not in known_smiles
    return sum(bool(r.novel) for r in rows), sum(r.smiles is not None for r in rows)


def set_qm9_novelty(session: Session, campaign_id: int, known_smiles: set[str]) -> tuple[int, int]:
    """Mark molecule checks ob_novel when their Open Babel SMILES is not in ``known_smiles``; (novel, with SMILES)."""
    rows = session.scalars(select(MoleculeCheck).where(MoleculeCheck.campaign_id == campaign_id)).all()
    for row in rows:
        row.ob_novel = None if row.ob_smiles is None else row.ob_smiles not in known_smiles
    return sum(bool(r.ob_novel) for r in rows), sum(r.ob_smiles is not None for r in rows)
