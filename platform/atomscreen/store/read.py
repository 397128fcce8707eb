"""Every SELECT of the store: campaigns, models, tasks, structures as ASE Atoms, rankings, hulls, report rows.

Functions take an explicit session (see :func:`atomscreen.store.engine.transaction`) and return plain data:
ASE Atoms with their ids in ``info``, or the records of :mod:`atomscreen.store.records`, never ORM rows.
"""

from __future__ import annotations

from collections import Counter
from typing import Any, Sequence

from ase import Atoms
from sqlalchemy import func, select
from sqlalchemy.orm import Session, selectinload

from atomscreen.store.models import (
    Campaign,
    CampaignModel,
    Composition,
    Energy,
    Model,
    MoleculeCheck,
    Ranking,
    Structure,
    Task,
    TaskState,
    Trajectory,
)
from atomscreen.store.records import AnalysisRow, CampaignSummary, StoredModel, TrajectoryRecord

# --- campaigns, models, tasks --------------------------------------------------------------------------------------


def get_campaign(session: Session, name: str) -> Campaign | None:
    """The campaign called ``name``, or None (its id, name, spec, source and status are what callers read)."""
    return session.scalar(select(Campaign).where(Campaign.name == name))


def campaign_names(session: Session) -> list[str]:
    """Every campaign's name, oldest first."""
    return list(session.scalars(select(Campaign.name).order_by(Campaign.id)))


def _stored(row: Model) -> StoredModel:
    return StoredModel(row.id, row.kind, row.sha256, dict(row.hyperparameters), row.weights, dict(row.training_data))


def campaign_models(session: Session, campaign_id: int) -> dict[str, StoredModel]:
    """The models linked to a campaign, by name."""
    rows = session.execute(select(CampaignModel.name, Model).join(Model, Model.id == CampaignModel.model_id)
                           .where(CampaignModel.campaign_id == campaign_id)).all()
    return {name: _stored(model) for name, model in rows}


def model_by_recipe(session: Session, kind: str, recipe: str) -> StoredModel | None:
    """The first stored model of ``kind`` trained by ``recipe`` (sha256 of its data, hyperparameters and seed)."""
    for row in session.scalars(select(Model).where(Model.kind == kind).order_by(Model.id)):
        if row.training_data.get("recipe") == recipe:
            return _stored(row)
    return None


def count_tasks(session: Session, campaign_id: int, kinds: Sequence[str], *, not_done: bool = False) -> int:
    """How many tasks of these kinds the campaign has (only those not done, if asked)."""
    query = select(func.count(Task.id)).where(Task.campaign_id == campaign_id, Task.kind.in_(kinds))
    if not_done:
        query = query.where(Task.status != TaskState.DONE)
    return session.scalar(query) or 0


def task_states(session: Session, campaign_id: int) -> dict[str, int]:
    """Number of tasks per status."""
    return dict(session.execute(select(Task.status, func.count()).where(Task.campaign_id == campaign_id)
                                .group_by(Task.status)).all())


def open_payloads(session: Session, campaign_id: int, kind: str) -> list[dict[str, Any]]:
    """Payloads of the campaign's tasks of ``kind`` that are not done."""
    return list(session.scalars(select(Task.payload).where(Task.campaign_id == campaign_id, Task.kind == kind,
                                                           Task.status != TaskState.DONE)))


def campaign_summaries(session: Session, name: str | None = None) -> list[CampaignSummary]:
    """Task counts by state, structure count and task failures for one campaign or all of them."""
    query = select(Campaign).order_by(Campaign.id)
    if name is not None:
        query = query.where(Campaign.name == name)
    summaries = []
    for campaign in session.scalars(query):
        n_structures = session.scalar(select(func.count(Structure.id)).where(Structure.campaign_id == campaign.id))
        failures = session.execute(select(Task.key, Task.error).where(Task.campaign_id == campaign.id,
                                                                      Task.status == TaskState.FAILED)
                                   .order_by(Task.id)).all()
        summaries.append(CampaignSummary(campaign.name, campaign.status,
                                         dict(Counter(task_states(session, campaign.id))), n_structures or 0,
                                         [(key, error or "") for key, error in failures], campaign.error))
    return summaries


# --- structures ----------------------------------------------------------------------------------------------------

def to_atoms(row: Structure) -> Atoms:
    """The ASE Atoms of a structure row, with its ids, origin, formula and energies in ``info``."""
    atoms = Atoms(numbers=row.numbers, positions=row.positions, cell=row.cell, pbc=[c == "T" for c in row.pbc])
    atoms.info.update(row.info or {})
    atoms.info.update(structure_id=row.id, campaign_id=row.campaign_id, parent_id=row.parent_id, origin=row.origin,
                      model_id=row.model_id, formula=row.composition.formula,
                      energies={e.method: e.total for e in row.energies})
    return atoms


def structures(session: Session, *, ids: Sequence[int] | None = None, campaign: str | None = None,
               campaign_id: int | None = None, formula: str | None = None, origin: str | None = None,
               limit: int | None = None) -> list[Atoms]:
    """Structures as ASE Atoms, filtered by id, campaign (name or id), Hill formula or origin, in id order."""
    query = (select(Structure).join(Composition)
             .options(selectinload(Structure.composition), selectinload(Structure.energies)).order_by(Structure.id))
    if ids is not None:
        query = query.where(Structure.id.in_(list(ids)))
    if campaign is not None:
        query = query.join(Campaign, Structure.campaign_id == Campaign.id).where(Campaign.name == campaign)
    if campaign_id is not None:
        query = query.where(Structure.campaign_id == campaign_id)
    if formula is not None:
        query = query.where(Composition.formula == formula)
    if origin is not None:
        query = query.where(Structure.origin == origin)
    if limit is not None:
        query = query.limit(limit)
    return [to_atoms(row) for row in session.scalars(query)]


def analysis_rows(session: Session, campaign_id: int) -> list[AnalysisRow]:
    """The campaign's structures as the analysis needs them (no arrays are read: a campaign may hold 1e5), id order."""
    energies: dict[int, dict[str, float]] = {}
    for sid, method, per_atom in session.execute(
            select(Energy.structure_id, Energy.method, Energy.per_atom).join(Structure)
            .where(Structure.campaign_id == campaign_id)):
        energies.setdefault(sid, {})[method] = per_atom
    query = (select(Structure.id, Composition.formula, Structure.origin, Structure.parent_id, Structure.pbc,
                    Structure.info["selected"].as_boolean())
             .join(Composition).where(Structure.campaign_id == campaign_id).order_by(Structure.id))
    return [AnalysisRow(sid, formula, origin, parent, pbc == "TTT", selected is not False, energies.get(sid, {}))
            for sid, formula, origin, parent, pbc, selected in session.execute(query)]


def structure_ids(session: Session, campaign_id: int, origins: Sequence[str], *, unchecked: bool = False) -> list[int]:
    """Ids of the campaign's structures of these origins (only those without a molecule check, if asked)."""
    query = select(Structure.id).where(Structure.campaign_id == campaign_id, Structure.origin.in_(origins))
    if unchecked:
        checked = select(MoleculeCheck.structure_id).where(MoleculeCheck.campaign_id == campaign_id)
        query = query.where(Structure.id.not_in(checked))
    return list(session.scalars(query.order_by(Structure.id)))


def children(session: Session, campaign_id: int, origin: str, *, parents: Sequence[int] | None = None,
             sampler: str | None = None, model_id: int | None = None, from_tasks: bool = False) -> dict[int, int]:
    """parent id -> id of the campaign's structure of ``origin`` made from it (the first, if several), optionally
    only of these ``parents``, made by this ``sampler`` and ``model_id``, or by a campaign task (not a command)."""
    query = select(Structure.parent_id, Structure.id).where(Structure.campaign_id == campaign_id,
                                                            Structure.origin == origin,
                                                            Structure.parent_id.is_not(None))
    if parents is not None:
        query = query.where(Structure.parent_id.in_(list(parents)))
    if sampler is not None:
        query = query.where(Structure.sampler == sampler)
    if model_id is not None:
        query = query.where(Structure.model_id == model_id)
    if from_tasks:
        query = query.where(Structure.task_id.is_not(None))
    out: dict[int, int] = {}
    for parent, sid in session.execute(query.order_by(Structure.id)):
        out.setdefault(parent, sid)
    return out


def top_candidates(session: Session, campaign_id: int, *, method: str | None = None, top_k: int | None = None,
                   order: str = "score") -> list[int]:
    """Ids of the best ``top_k`` unique structures per composition by ``method`` (every method if None): the one
    top-K-per-composition query. ``order``: 'score' (then id) or 'id'."""
    query = select(Ranking.structure_id).where(Ranking.campaign_id == campaign_id, Ranking.scope == "composition")
    if method is not None:
        query = query.where(Ranking.method == method)
    if top_k is not None:
        query = query.where(Ranking.rank <= top_k)
    if order == "score":
        query = query.order_by(Ranking.score, Ranking.structure_id)
    else:
        query = query.order_by(Ranking.structure_id)
    return list(dict.fromkeys(session.scalars(query)))


def trajectory(session: Session, structure_id: int, method: str | None = None) -> TrajectoryRecord | None:
    """The stored trajectory of a structure (the first one if several methods and none is named)."""
    query = select(Trajectory).where(Trajectory.structure_id == structure_id).order_by(Trajectory.id)
    if method is not None:
        query = query.where(Trajectory.method == method)
    row = session.scalars(query).first()
    if row is None:
        return None
    return TrajectoryRecord(row.method, row.steps, row.energies, row.fmax, row.positions, row.cells)
