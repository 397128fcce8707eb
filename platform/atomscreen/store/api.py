"""Read/write API of the store: the only place that turns results into rows and rows into Atoms.

Every function takes an explicit session and never commits: the caller owns the
transaction (see :func:`atomscreen.store.engine.transaction`), so a task's
structures, energies and trajectories land together or not at all.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Iterable, Sequence

import numpy as np
from ase import Atoms
from ase.data import chemical_symbols
from ase.formula import Formula
from sqlalchemy import func, select
from sqlalchemy.orm import Session, selectinload

from atomscreen.store.models import Campaign, Composition, Energy, Model, Structure, Task, Trajectory


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
    """Subsampled frames of a relaxation: steps [F], energies [F], fmax [F], positions [F,N,3], cells [F,3,3]."""

    method: str
    steps: np.ndarray
    energies: np.ndarray
    fmax: np.ndarray
    positions: np.ndarray
    cells: np.ndarray


@dataclass
class CampaignSummary:
    """What `platform status` shows for one campaign."""

    name: str
    status: str
    tasks: dict[str, int]
    n_structures: int
    failures: list[tuple[str, str]] = field(default_factory=list)  # (task key, error)
    error: str | None = None


def composition_fields(numbers: Sequence[int]) -> dict[str, Any]:
    """Hill formula, reduced Hill formula, chemical system and atom count of a list of atomic numbers."""
    if len(numbers) == 0:
        raise ValueError("a structure needs at least one atom")
    formula = Formula.from_list([chemical_symbols[int(z)] for z in numbers])
    reduced, _ = formula.reduce()
    return {
        "formula": formula.format("hill"),
        "reduced_formula": reduced.format("hill"),
        "chemsys": "-".join(sorted(formula.count())),
        "n_atoms": len(numbers),
    }


def get_or_create_composition(session: Session, numbers: Sequence[int]) -> Composition:
    """The composition row for these atoms, created if new."""
    fields = composition_fields(numbers)
    row = session.scalar(select(Composition).where(Composition.formula == fields["formula"]))
    if row is None:
        row = Composition(**fields)
        session.add(row)
        session.flush()
    return row


def _pbc_text(pbc: Iterable[bool]) -> str:
    return "".join("T" if p else "F" for p in pbc)


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


def _info(atoms: Atoms) -> dict[str, Any]:
    info = {k: _jsonable(v) for k, v in atoms.info.items()}
    return {k: v for k, v in info.items() if v is not None}


def add_structures(
    session: Session,
    atoms_list: Sequence[Atoms],
    *,
    origin: str,
    campaign_id: int | None = None,
    task_id: int | None = None,
    parent_ids: Sequence[int | None] | None = None,
    task_indices: Sequence[int] | None = None,
    spacegroups: Sequence[int | None] | None = None,
    energies: Sequence[Sequence[EnergyRecord]] | None = None,
    trajectories: Sequence[Sequence[TrajectoryRecord]] | None = None,
) -> list[int]:
    """Store structures (with optional energies and trajectories, one list per structure); returns their ids.

    ``task_indices`` are the structures' positions within task ``task_id``; the
    pair is unique, so a task's results cannot be stored twice.
    """
    n = len(atoms_list)
    named = (("parent_ids", parent_ids), ("task_indices", task_indices), ("spacegroups", spacegroups),
             ("energies", energies), ("trajectories", trajectories))
    for name, seq in named:
        if seq is not None and len(seq) != n:
            raise ValueError(f"{name} has {len(seq)} entries for {n} structures")
    compositions: dict[str, Composition] = {}
    rows = []
    for i, atoms in enumerate(atoms_list):
        numbers = np.asarray(atoms.numbers)
        key = composition_fields(numbers)["formula"]
        if key not in compositions:
            compositions[key] = get_or_create_composition(session, numbers)
        pbc = np.asarray(atoms.pbc, dtype=bool)
        row = Structure(
            campaign_id=campaign_id,
            task_id=task_id,
            composition_id=compositions[key].id,
            parent_id=None if parent_ids is None else parent_ids[i],
            task_index=None if task_indices is None else int(task_indices[i]),
            spacegroup=None if spacegroups is None or spacegroups[i] is None else int(spacegroups[i]),
            origin=origin,
            n_atoms=len(atoms),
            pbc=_pbc_text(pbc),
            numbers=numbers,
            positions=np.asarray(atoms.positions),
            cell=np.asarray(atoms.cell.array),
            volume_per_atom=float(atoms.get_volume() / len(atoms)) if pbc.all() else None,
            info=_info(atoms),
        )
        rows.append(row)
    session.add_all(rows)
    session.flush()
    for i, row in enumerate(rows):
        for record in energies[i] if energies is not None else ():
            session.add(_energy_row(row, record))
        for record in trajectories[i] if trajectories is not None else ():
            session.add(_trajectory_row(row, record))
    session.flush()
    return [row.id for row in rows]


def _energy_row(structure: Structure, record: EnergyRecord) -> Energy:
    if not math.isfinite(record.total):
        raise ValueError(f"energy {record.method!r} of structure {structure.id} is not finite: {record.total}")
    return Energy(
        structure_id=structure.id,
        method=record.method,
        model_id=record.model_id,
        total=float(record.total),
        per_atom=float(record.total) / structure.n_atoms,
        fmax=record.fmax,
        converged=record.converged,
        n_steps=record.n_steps,
        wall_time_s=record.wall_time_s,
    )


def _trajectory_row(structure: Structure, record: TrajectoryRecord) -> Trajectory:
    n_frames = len(record.steps)
    expected = {
        "energies": (n_frames,),
        "fmax": (n_frames,),
        "positions": (n_frames, structure.n_atoms, 3),
        "cells": (n_frames, 3, 3),
    }
    for name, shape in expected.items():
        got = np.shape(getattr(record, name))
        if got != shape:
            raise ValueError(f"trajectory {name} of structure {structure.id} has shape {got}, expected {shape}")
    return Trajectory(
        structure_id=structure.id,
        method=record.method,
        n_frames=n_frames,
        steps=np.asarray(record.steps),
        energies=np.asarray(record.energies),
        fmax=np.asarray(record.fmax),
        positions=np.asarray(record.positions),
        cells=np.asarray(record.cells),
    )


def add_energies(session: Session, structure_ids: Sequence[int], records: Sequence[EnergyRecord]) -> None:
    """Store one energy per structure (e.g. a re-scoring single point)."""
    if len(structure_ids) != len(records):
        raise ValueError(f"{len(records)} energies for {len(structure_ids)} structures")
    rows = {s.id: s for s in session.scalars(select(Structure).where(Structure.id.in_(structure_ids)))}
    missing = sorted(set(structure_ids) - set(rows))
    if missing:
        raise KeyError(f"no structure with id {missing}")
    session.add_all(_energy_row(rows[i], r) for i, r in zip(structure_ids, records))
    session.flush()


def add_trajectory(session: Session, structure_id: int, record: TrajectoryRecord) -> None:
    """Store a trajectory for an existing structure (e.g. single points of another method along its frames); a second
    trajectory of the same method for the structure is refused."""
    structure = session.get(Structure, structure_id)
    if structure is None:
        raise KeyError(f"no structure with id {structure_id}")
    exists = session.scalar(select(Trajectory.id).where(Trajectory.structure_id == structure_id, Trajectory.method == record.method))
    if exists is not None:
        raise ValueError(f"structure {structure_id} already has a {record.method!r} trajectory")
    session.add(_trajectory_row(structure, record))
    session.flush()


def to_atoms(row: Structure) -> Atoms:
    """The ASE Atoms of a structure row, with its ids, origin, formula and energies in ``info``."""
    atoms = Atoms(numbers=row.numbers, positions=row.positions, cell=row.cell, pbc=[c == "T" for c in row.pbc])
    atoms.info.update(row.info or {})
    atoms.info.update(
        structure_id=row.id,
        campaign_id=row.campaign_id,
        parent_id=row.parent_id,
        origin=row.origin,
        formula=row.composition.formula,
        energies={e.method: e.total for e in row.energies},
    )
    return atoms


def structures(
    session: Session,
    *,
    ids: Sequence[int] | None = None,
    campaign: str | None = None,
    formula: str | None = None,
    origin: str | None = None,
    limit: int | None = None,
) -> list[Atoms]:
    """Structures as ASE Atoms, filtered by id, campaign name, Hill formula or origin, in id order."""
    query = (
        select(Structure)
        .join(Composition)
        .options(selectinload(Structure.composition), selectinload(Structure.energies))
        .order_by(Structure.id)
    )
    if ids is not None:
        query = query.where(Structure.id.in_(list(ids)))
    if campaign is not None:
        query = query.join(Campaign, Structure.campaign_id == Campaign.id).where(Campaign.name == campaign)
    if formula is not None:
        query = query.where(Composition.formula == formula)
    if origin is not None:
        query = query.where(Structure.origin == origin)
    if limit is not None:
        query = query.limit(limit)
    return [to_atoms(row) for row in session.scalars(query)]


def trajectory(session: Session, structure_id: int, method: str | None = None) -> TrajectoryRecord | None:
    """The stored trajectory of a structure (the first one if several methods and none is named)."""
    query = select(Trajectory).where(Trajectory.structure_id == structure_id).order_by(Trajectory.id)
    if method is not None:
        query = query.where(Trajectory.method == method)
    row = session.scalars(query).first()
    if row is None:
        return None
    return TrajectoryRecord(row.method, row.steps, row.energies, row.fmax, row.positions, row.cells)


def spec_hash(spec_text: str) -> str:
    """sha256 of a campaign spec as submitted."""
    return hashlib.sha256(spec_text.encode()).hexdigest()


def add_campaign(session: Session, name: str, spec_text: str, source: str | None = None) -> Campaign:
    """Record a new campaign (``source``: the YAML file it came from); a second campaign with the same name is refused."""
    if session.scalar(select(Campaign).where(Campaign.name == name)) is not None:
        raise ValueError(f"a campaign named {name!r} already exists")
    row = Campaign(name=name, spec=spec_text, spec_hash=spec_hash(spec_text), status="pending", source=source)
    session.add(row)
    session.flush()
    return row


def get_campaign(session: Session, name: str) -> Campaign | None:
    """The campaign called ``name``, or None."""
    return session.scalar(select(Campaign).where(Campaign.name == name))


def add_model(
    session: Session,
    *,
    kind: str,
    weights: bytes,
    hyperparameters: dict[str, Any],
    training_data: dict[str, Any] | None = None,
    metrics: dict[str, Any] | None = None,
    name: str | None = None,
) -> Model:
    """Store a model keyed by the sha256 of its weights; storing the same weights again returns the existing row."""
    digest = hashlib.sha256(weights).hexdigest()
    row = session.scalar(select(Model).where(Model.sha256 == digest))
    if row is not None:
        return row
    json.dumps(hyperparameters)  # fail here, not at flush, on values JSON cannot hold
    row = Model(
        kind=kind,
        sha256=digest,
        name=name,
        hyperparameters=hyperparameters,
        weights=weights,
        training_data=training_data or {},
        metrics=metrics or {},
    )
    session.add(row)
    session.flush()
    return row


def campaign_summaries(session: Session, name: str | None = None) -> list[CampaignSummary]:
    """Task counts by state, structure count and task failures for one campaign or all of them."""
    query = select(Campaign).order_by(Campaign.id)
    if name is not None:
        query = query.where(Campaign.name == name)
    summaries = []
    for campaign in session.scalars(query):
        states = Counter(
            dict(
                session.execute(
                    select(Task.status, func.count()).where(Task.campaign_id == campaign.id).group_by(Task.status)
                ).all()
            )
        )
        n_structures = session.scalar(select(func.count(Structure.id)).where(Structure.campaign_id == campaign.id))
        failures = session.execute(
            select(Task.key, Task.error)
            .where(Task.campaign_id == campaign.id, Task.status == "failed")
            .order_by(Task.id)
        ).all()
        summaries.append(
            CampaignSummary(
                name=campaign.name,
                status=campaign.status,
                tasks=dict(states),
                n_structures=n_structures or 0,
                failures=[(key, error or "") for key, error in failures],
                error=campaign.error,
            )
        )
    return summaries


@dataclass
class RankedRow:
    """One line of `platform results`: a unique structure with its rank, energy and hull position (eV/atom, Å^3/atom)."""

    rank: int
    structure_id: int
    formula: str
    energy_per_atom: float
    volume_per_atom: float | None
    spacegroup: int | None
    converged: bool | None
    e_above_hull: float | None
    is_stable: bool | None


def ranked(session: Session, campaign: str, *, method: str = "rm_pseudo", formula: str | None = None, top: int | None = None) -> list[RankedRow]:
    """Unique structures of a campaign in rank order: overall, or within one composition (Hill formula)."""
    from atomscreen.store.models import HullEntry, Ranking

    scope = "composition" if formula else "overall"
    query = (
        select(Ranking.rank, Structure.id, Composition.formula, Ranking.score, Structure.volume_per_atom, Structure.spacegroup,
               Energy.converged, HullEntry.e_above_hull, HullEntry.is_stable)
        .join(Campaign, Campaign.id == Ranking.campaign_id)
        .join(Structure, Structure.id == Ranking.structure_id)
        .join(Composition, Composition.id == Structure.composition_id)
        .outerjoin(Energy, (Energy.structure_id == Structure.id) & (Energy.method == Ranking.method))
        .outerjoin(HullEntry, (HullEntry.structure_id == Structure.id) & (HullEntry.campaign_id == Ranking.campaign_id)
                   & (HullEntry.method == Ranking.method))
        .where(Campaign.name == campaign, Ranking.method == method, Ranking.scope == scope)
        .order_by(Ranking.rank)
    )
    if formula:
        query = query.where(Composition.formula == formula)
    if top:
        query = query.limit(top)
    return [RankedRow(*row) for row in session.execute(query).all()]


def hull_rows(session: Session, campaign: str, method: str = "rm_pseudo") -> list[dict[str, Any]]:
    """Hull entries of a campaign with formula, energy and volume, by chemical system then e_above_hull."""
    from atomscreen.store.models import HullEntry

    query = (
        select(Composition.chemsys, Composition.formula, Composition.reduced_formula, HullEntry.structure_id, Energy.per_atom,
               HullEntry.formation_energy_per_atom, HullEntry.e_above_hull, HullEntry.is_stable, Structure.volume_per_atom)
        .join(Campaign, Campaign.id == HullEntry.campaign_id)
        .join(Structure, Structure.id == HullEntry.structure_id)
        .join(Composition, Composition.id == Structure.composition_id)
        .join(Energy, (Energy.structure_id == Structure.id) & (Energy.method == HullEntry.method))
        .where(Campaign.name == campaign, HullEntry.method == method)
        .order_by(Composition.chemsys, HullEntry.e_above_hull, HullEntry.structure_id)
    )
    keys = ("chemsys", "formula", "reduced_formula", "structure_id", "energy_per_atom", "formation_energy_per_atom",
            "e_above_hull", "is_stable", "volume_per_atom")
    return [dict(zip(keys, row)) for row in session.execute(query).all()]


def export_structures(session: Session, campaign: str, *, method: str = "rm_pseudo", stable_only: bool = False,
                      include_duplicates: bool = False) -> list[Atoms]:
    """A campaign's structures for writing to files: unique ones in overall rank order (then duplicates if asked),
    with energy per atom, rank, e_above_hull and representative in ``info``."""
    from atomscreen.store.models import HullEntry, Ranking

    rank = dict(session.execute(select(Ranking.structure_id, Ranking.rank).join(Campaign, Campaign.id == Ranking.campaign_id)
                                .where(Campaign.name == campaign, Ranking.method == method, Ranking.scope == "overall")).all())
    hull = {sid: (e, stable) for sid, e, stable in session.execute(
        select(HullEntry.structure_id, HullEntry.e_above_hull, HullEntry.is_stable).join(Campaign, Campaign.id == HullEntry.campaign_id)
        .where(Campaign.name == campaign, HullEntry.method == method)).all()}
    reps = dict(session.execute(select(Structure.id, Structure.representative_id).join(Campaign, Campaign.id == Structure.campaign_id)
                                .where(Campaign.name == campaign)).all())
    wanted = [sid for sid in reps if (sid in rank or (include_duplicates and reps[sid] is not None))
              and (not stable_only or hull.get(sid, (None, False))[1])]
    frames = {a.info["structure_id"]: a for a in structures(session, ids=wanted)}
    out = []
    for sid in sorted(wanted, key=lambda s: (s not in rank, rank.get(s, 0), s)):
        atoms = frames[sid]
        energies = atoms.info.pop("energies")
        if method in energies:
            atoms.info["energy_per_atom"] = energies[method] / len(atoms)
            atoms.info["energy"] = energies[method]
        atoms.info.update(method=method, rank=rank.get(sid), representative_id=reps[sid])
        if sid in hull:
            atoms.info.update(e_above_hull=hull[sid][0], is_stable=bool(hull[sid][1]))
        atoms.info = {k: v for k, v in atoms.info.items() if v is not None}
        out.append(atoms)
    return out


@dataclass
class CompositionStats:
    """One line of `platform report` (energies in eV/atom, time in s summed over the composition's tasks)."""

    formula: str
    generated: int
    converged: int
    unique: int
    matched: int
    best_pseudo: float | None
    rescored: int
    rescore_failed: int
    best_rescored: float | None
    time_s: float
    pearson_r: float | None = None  # pseudo vs re-scored energy per atom within this composition (None below 3 pairs)


@dataclass
class LowestCheck:
    """Whether the lowest unique candidate of a reduced composition by ``method`` matches the lowest-energy reference."""

    reduced_formula: str
    method: str
    structure_id: int
    formula: str
    energy_per_atom: float
    reference_name: str | None
    reference_energy_rank: int | None


@dataclass
class ValidityStats:
    """Validity of the molecules of one composition and origin (rss: as generated; rescore: after re-scoring):
    how many were checked, how many pass each check (by column name), all checks, and the SMILES counts."""

    formula: str
    origin: str
    checked: int
    passed: dict[str, int]
    assessed: dict[str, int]  # molecules on which the check could run
    passes_all: int
    timeouts: int
    unique_smiles: int
    novel_smiles: int | None
    edm_molecule_stable: int
    edm_atoms_stable: float | None


@dataclass
class CampaignReport:
    """Per-composition statistics and the funnel's comparison of pseudo and re-scored energies."""

    rows: list[CompositionStats]
    rescore_method: str | None
    pearson_r: float | None
    n_pairs: int
    pairs: list[tuple[int, float, float]]  # (re-scored structure id, pseudo eV/atom of its parent, re-scored eV/atom)
    matched_unique: int
    lowest: list[LowestCheck]
    failures: list[tuple[int, str, str]]  # (structure id, method, error)
    validity: list[ValidityStats] = field(default_factory=list)


def _pearson(pairs: list[tuple[int, float, float]]) -> float | None:
    """Pearson R of the (pseudo, re-scored) energies of ``pairs``; None for fewer than 3 pairs or a constant side."""
    if len(pairs) < 3:
        return None
    x, y = np.array([p[1] for p in pairs]), np.array([p[2] for p in pairs])
    if x.std() == 0 or y.std() == 0:
        return None
    return float(np.corrcoef(x, y)[0, 1])


def campaign_report(session: Session, campaign: str) -> CampaignReport:
    """Statistics of a campaign for `platform report`: counts per composition, Pearson R of pseudo vs re-scored energies,
    matches to references and whether the lowest candidates are the lowest-energy references."""
    from atomscreen.store.models import CalculationFailure, Ranking, StructureMatch

    row = get_campaign(session, campaign)
    if row is None:
        raise KeyError(f"no campaign named {campaign!r}")
    cid = row.id
    structs = session.execute(
        select(Structure.id, Structure.origin, Structure.parent_id, Composition.formula, Composition.reduced_formula)
        .join(Composition, Composition.id == Structure.composition_id).where(Structure.campaign_id == cid)).all()
    info = {sid: (origin, parent, formula, reduced) for sid, origin, parent, formula, reduced in structs}
    energy = {(sid, m): (pa, conv) for sid, m, pa, conv in session.execute(
        select(Energy.structure_id, Energy.method, Energy.per_atom, Energy.converged).join(Structure, Structure.id == Energy.structure_id)
        .where(Structure.campaign_id == cid)).all()}
    rankings = session.execute(select(Ranking.structure_id, Ranking.method, Ranking.score)
                               .where(Ranking.campaign_id == cid, Ranking.scope == "composition")).all()
    matches = {sid: (name, rank) for sid, name, rank in session.execute(
        select(StructureMatch.structure_id, StructureMatch.reference_name, StructureMatch.reference_energy_rank)
        .where(StructureMatch.campaign_id == cid).order_by(StructureMatch.id)).all()}
    failures = session.execute(select(CalculationFailure.structure_id, CalculationFailure.method, CalculationFailure.error)
                               .where(CalculationFailure.campaign_id == cid).order_by(CalculationFailure.structure_id)).all()
    methods = sorted({m for _, m, _ in rankings if m != "rm_pseudo"})
    rescore_method = methods[0] if methods else None
    times: dict[str, float] = {}
    for kind, payload, wall in session.execute(select(Task.kind, Task.payload, Task.wall_time_s).where(Task.campaign_id == cid)).all():
        formula = (payload or {}).get("formula")
        if formula and wall is not None:
            times[formula] = times.get(formula, 0.0) + float(wall)
    pairs = []
    if rescore_method:
        for sid, (origin, parent, _, _) in info.items():
            if origin == "rescore" and parent in info and info[parent][0] != "reference" and (sid, rescore_method) in energy \
                    and (parent, "rm_pseudo") in energy:
                pairs.append((sid, energy[(parent, "rm_pseudo")][0], energy[(sid, rescore_method)][0]))
    r = _pearson(pairs)
    formulas = sorted({f for origin, _, f, _ in info.values() if origin == "rss"}, key=lambda f: (len(f), f))
    stats = []
    for formula in formulas:
        generated = [s for s, (o, _, f, _) in info.items() if o == "rss" and f == formula]
        unique = [s for s, m, _ in rankings if m == "rm_pseudo" and info[s][2] == formula]
        pseudo = [score for s, m, score in rankings if m == "rm_pseudo" and info[s][2] == formula]
        rescored = [s for s, (o, p, f, _) in info.items() if o == "rescore" and f == formula and p in info and info[p][0] != "reference"]
        best = [score for s, m, score in rankings if m == rescore_method and info[s][2] == formula]
        stats.append(CompositionStats(
            formula, len(generated), sum(bool(energy.get((s, "rm_pseudo"), (None, False))[1]) for s in generated), len(unique),
            sum(s in matches for s in unique), min(pseudo) if pseudo else None, len(rescored),
            sum(1 for s, m, _ in failures if info.get(s, ("", None, ""))[2] == formula), min(best) if best else None, times.get(formula, 0.0),
            _pearson([p for p in pairs if info[p[0]][2] == formula])))
    lowest = []
    for method in ["rm_pseudo"] + methods:
        best: dict[str, tuple[float, int]] = {}
        for s, m, score in rankings:
            if m == method:
                reduced = info[s][3]
                if reduced not in best or (score, s) < best[reduced]:
                    best[reduced] = (score, s)
        for reduced, (score, s) in sorted(best.items()):
            name, rank = matches.get(s, (None, None))
            lowest.append(LowestCheck(reduced, method, s, info[s][2], score, name, rank))
    matched_unique = sum(1 for s, m, _ in rankings if m == "rm_pseudo" and s in matches)
    return CampaignReport(stats, rescore_method, r, len(pairs), pairs, matched_unique, lowest, [tuple(f) for f in failures],
                          _validity_stats(session, cid, info))


def _validity_stats(session: Session, campaign_id: int, info: dict[int, tuple]) -> list[ValidityStats]:
    from atomscreen.evaluate.validity import CHECKS
    from atomscreen.store.models import MoleculeCheck

    rows = session.scalars(select(MoleculeCheck).where(MoleculeCheck.campaign_id == campaign_id).order_by(MoleculeCheck.structure_id)).all()
    groups: dict[tuple[str, str], list[MoleculeCheck]] = {}
    for row in rows:
        origin, _, formula, _ = info[row.structure_id]
        groups.setdefault((formula, origin), []).append(row)
    out = []
    for (formula, origin), members in sorted(groups.items(), key=lambda g: (g[0][1] != "rss", len(g[0][0]), g[0][0])):
        smiles = {m.smiles for m in members if m.smiles}
        novel = [m.novel for m in members if m.smiles]
        novel_smiles = None if not novel or any(n is None for n in novel) else len({m.smiles for m in members if m.novel})
        stable = [m.atoms_stable for m in members if m.atoms_stable is not None]
        out.append(ValidityStats(
            formula, origin, len(members),
            {c: sum(getattr(m, c) is True for m in members) for c in CHECKS},
            {c: sum(getattr(m, c) is not None for m in members) for c in CHECKS},
            sum(m.passes_all for m in members), sum(m.status == "timeout" for m in members), len(smiles), novel_smiles,
            sum(bool(m.molecule_stable) for m in members), float(np.mean(stable)) if stable else None))
    return out
