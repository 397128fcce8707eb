"""SELECTs behind `platform results`, `hull`, `export` and `report`: ranked structures, hull rows, report rows."""

from __future__ import annotations

from typing import Any

import numpy as np
from ase import Atoms
from sqlalchemy import select
from sqlalchemy.orm import Session

from atomscreen.store.models import (
    CalculationFailure,
    Campaign,
    Composition,
    Energy,
    HullEntry,
    MoleculeCheck,
    Ranking,
    Structure,
    StructureMatch,
    Task,
)
from atomscreen.store.read import get_campaign, structures
from atomscreen.store.records import RankedRow, ReportRows


def ranked(session: Session, campaign: str, *, method: str = "rm_pseudo", formula: str | None = None,
           top: int | None = None) -> list[RankedRow]:
    """Unique structures of a campaign in rank order: overall, or within one composition (Hill formula)."""
    scope = "composition" if formula else "overall"
    query = (
        select(Ranking.rank, Structure.id, Composition.formula, Ranking.score, Structure.volume_per_atom,
               Structure.spacegroup, Energy.converged, HullEntry.e_above_hull, HullEntry.is_stable)
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


def ranked_methods(session: Session, campaign: str) -> list[str]:
    """Energy methods with rankings in a campaign, the pseudo energies first."""
    query = (select(Ranking.method).join(Campaign, Campaign.id == Ranking.campaign_id)
             .where(Campaign.name == campaign).distinct())
    return sorted(session.scalars(query), key=lambda m: (not m.startswith("rm_pseudo"), m))


def hull_methods(session: Session, campaign: str) -> list[str]:
    """Energy methods with hull entries in a campaign, the pseudo energies first."""
    query = (select(HullEntry.method).join(Campaign, Campaign.id == HullEntry.campaign_id)
             .where(Campaign.name == campaign).distinct())
    return sorted(session.scalars(query), key=lambda m: (not m.startswith("rm_pseudo"), m))


def hull_rows(session: Session, campaign: str, method: str = "rm_pseudo") -> list[dict[str, Any]]:
    """Hull entries of a campaign with formula, energy and volume, by chemical system then e_above_hull."""
    query = (
        select(Composition.chemsys, Composition.formula, Composition.reduced_formula, HullEntry.structure_id,
               Energy.per_atom, HullEntry.formation_energy_per_atom, HullEntry.e_above_hull, HullEntry.is_stable,
               Structure.volume_per_atom)
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
    in_campaign = Campaign.name == campaign
    rank = dict(session.execute(select(Ranking.structure_id, Ranking.rank)
                                .join(Campaign, Campaign.id == Ranking.campaign_id)
                                .where(in_campaign, Ranking.method == method, Ranking.scope == "overall")).all())
    hull = {sid: (e, stable) for sid, e, stable in session.execute(
        select(HullEntry.structure_id, HullEntry.e_above_hull, HullEntry.is_stable)
        .join(Campaign, Campaign.id == HullEntry.campaign_id).where(in_campaign, HullEntry.method == method)).all()}
    reps = dict(session.execute(select(Structure.id, Structure.representative_id)
                                .join(Campaign, Campaign.id == Structure.campaign_id).where(in_campaign)).all())
    wanted = [sid for sid in reps if (sid in rank or (include_duplicates and reps[sid] is not None))
              and (not stable_only or hull.get(sid, (None, False))[1])]
    frames = {a.info["structure_id"]: a for a in structures(session, ids=wanted)}
    return [_exported(frames[sid], method, rank.get(sid), reps[sid], hull.get(sid))
            for sid in sorted(wanted, key=lambda s: (s not in rank, rank.get(s, 0), s))]


def _exported(atoms: Atoms, method: str, rank: int | None, representative: int | None, hull: tuple | None) -> Atoms:
    energies = atoms.info.pop("energies")
    if method in energies:
        atoms.info["energy_per_atom"] = energies[method] / len(atoms)
        atoms.info["energy"] = energies[method]
    atoms.info.update(method=method, rank=rank, representative_id=representative)
    if hull is not None:
        atoms.info.update(e_above_hull=hull[0], is_stable=bool(hull[1]))
    atoms.info = {k: v for k, v in atoms.info.items() if v is not None}
    return atoms


def report_rows(session: Session, campaign: str) -> ReportRows:
    """Everything `platform report` computes its statistics from, as plain rows (KeyError for an unknown campaign)."""
    row = get_campaign(session, campaign)
    if row is None:
        raise KeyError(f"no campaign named {campaign!r}")
    cid = row.id
    structs = session.execute(
        select(Structure.id, Structure.origin, Structure.parent_id, Composition.formula, Composition.reduced_formula,
               Structure.sampler)
        .join(Composition, Composition.id == Structure.composition_id).where(Structure.campaign_id == cid)).all()
    generated = session.execute(select(Structure.id, Structure.origin, Structure.info).where(
        Structure.campaign_id == cid, Structure.origin.in_(("diffusion", "diffusion_relax")))).all()
    energies = session.execute(select(Energy.structure_id, Energy.method, Energy.per_atom, Energy.converged)
                               .join(Structure, Structure.id == Energy.structure_id)
                               .where(Structure.campaign_id == cid))
    rankings = session.execute(select(Ranking.structure_id, Ranking.method, Ranking.score)
                               .where(Ranking.campaign_id == cid, Ranking.scope == "composition")).all()
    matches = session.execute(select(StructureMatch.structure_id, StructureMatch.reference_name,
                                     StructureMatch.reference_energy_rank)
                              .where(StructureMatch.campaign_id == cid).order_by(StructureMatch.id)).all()
    failures = session.execute(select(CalculationFailure.structure_id, CalculationFailure.method,
                                      CalculationFailure.error)
                               .where(CalculationFailure.campaign_id == cid)
                               .order_by(CalculationFailure.structure_id)).all()
    checks = session.scalars(select(MoleculeCheck).where(MoleculeCheck.campaign_id == cid)
                             .order_by(MoleculeCheck.structure_id)).all()
    return ReportRows(
        # diffusion molecules appear as diffusion:SAMPLER, so each sampler gets its own rows
        structures={sid: (f"{origin}:{sampler}" if sampler else origin, parent, formula, reduced)
                    for sid, origin, parent, formula, reduced, sampler in structs},
        energies={(sid, m): (pa, conv) for sid, m, pa, conv in energies.all()},
        rankings=[tuple(r) for r in rankings], matches={sid: (name, rank) for sid, name, rank in matches},
        failures=[tuple(f) for f in failures], task_times=_task_times(session, cid),
        checks=[{c.name: getattr(check, c.name) for c in MoleculeCheck.__table__.columns} for check in checks],
        generated_converged={sid: info.get("relax_status") == "converged" for sid, _, info in generated},
        relaxed={sid: {k: info.get(k) for k in ("reverse_steps", "converged", "t0", "displacement_rmsd")}
                 for sid, origin, info in generated if origin == "diffusion_relax"},
        polished=_polished(session, cid), **_hybrid(session, cid))


def _task_times(session: Session, cid: int) -> dict[str, float]:
    """Summed task wall time per formula (task group), s."""
    times: dict[str, float] = {}
    for formula, wall in session.execute(select(Task.formula, Task.wall_time_s).where(Task.campaign_id == cid)).all():
        if formula and wall is not None:
            times[formula] = times.get(formula, 0.0) + float(wall)
    return times


def _hybrid(session: Session, cid: int) -> dict[str, dict[int, dict[str, Any]]]:
    """Hybrid generation's records: the generated molecules, their post-relaxations, and the judge's figures for each
    re-scored descendant (its calculator's energy drop over the relaxation and the mean atomic displacement)."""
    from atomscreen.store.read import trajectory

    made = session.execute(select(Structure.id, Structure.info).where(
        Structure.campaign_id == cid, Structure.origin == "diffusion")).all()
    hybrid = {sid: {"restarts": info.get("restarts", 0), "accepted": info.get("accepted"),
                    "interventions": ((info["hybrid"].get("guidance") or {}).get("interventions")),
                    "dropped": ((info["hybrid"].get("guidance") or {}).get("dropped"))}
              for sid, info in made if (info or {}).get("hybrid") is not None}
    if not hybrid:
        return {}
    post = {sid: {"parent": parent, "converged": (info or {}).get("relax_status") == "converged"}
            for sid, parent, info in session.execute(select(Structure.id, Structure.parent_id, Structure.info).where(
                Structure.campaign_id == cid, Structure.origin == "post_relax")).all()}
    rescored = session.execute(select(Structure.id, Structure.parent_id, Energy.method, Energy.total)
                               .join(Energy, Energy.structure_id == Structure.id)
                               .where(Structure.campaign_id == cid, Structure.origin == "rescore")).all()
    rescored = [r for r in rescored if r.parent_id in hybrid or r.parent_id in post]
    atoms = {a.info["structure_id"]: a for a in structures(
        session, ids=sorted({r.id for r in rescored} | {r.parent_id for r in rescored}))} if rescored else {}
    judged = {}
    for sid, parent, method, total in rescored:
        frames = trajectory(session, sid, method)
        if frames is None or not len(frames.energies) or total is None:
            continue
        moved = atoms[sid].positions - atoms[parent].positions
        judged[sid] = {"method": method, "generated": post[parent]["parent"] if parent in post else parent,
                       "after_post_relax": parent in post, "dE": float(frames.energies[0]) - float(total),
                       "dP": float(np.linalg.norm(moved, axis=1).mean())}
    return {"hybrid": hybrid, "post_relaxed": post, "judged": judged}


def _polished(session: Session, cid: int) -> dict[int, dict[str, Any]]:
    """Re-scored structures that were polished first: the polish and both relaxations' steps and energies."""
    rows = session.execute(select(Structure.id, Structure.info, Energy.method, Energy.total, Energy.n_steps,
                                  Energy.converged)
                           .join(Energy, Energy.structure_id == Structure.id)
                           .where(Structure.campaign_id == cid, Structure.origin == "rescore")).all()
    return {sid: {"method": method, "polish_steps": info["polish_steps"], "polish_rmsd": info.get("polish_rmsd"),
                  "steps": steps, "energy": total, "converged": converged,
                  **{k: info.get(k) for k in ("unpolished_steps", "unpolished_energy", "unpolished_status")}}
            for sid, info, method, total, steps, converged in rows if (info or {}).get("polish_steps")}
