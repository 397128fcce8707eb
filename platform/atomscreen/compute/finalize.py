"""After the stages: dedupe, rank and hull every energy method; novelty of molecules; reference matching; the final
status. Also single points of a real method along stored trajectories (`platform trajectory-energies`)."""

from __future__ import annotations

import math
from functools import partial
from typing import Callable, Sequence

import numpy as np
from ase import Atoms
from sqlalchemy.engine import Engine

from atomscreen.campaign import CampaignSpec, DedupeSpec
from atomscreen.compute.dispatch import Cluster, map_chunks, map_with_driver
from atomscreen.compute.plan import read_references
from atomscreen.errors import AtomscreenError
from atomscreen.jobs import PSEUDO, Origin
from atomscreen.store import (
    AnalysisRow,
    MatchRow,
    MethodAnalysis,
    TrajectoryRecord,
    add_analysis,
    add_trajectory,
    analysis_rows,
    clear_analysis,
    get_campaign,
    replace_matches,
    set_campaign_status,
    set_novelty,
    set_qm9_novelty,
    structures,
    task_states,
    top_candidates,
    trajectory,
    transaction,
)

Mapper = Callable[[Callable, Sequence[tuple]], list]


def analyse_method(method: str, rows: Sequence[AnalysisRow], is_reference: Sequence[bool],
                   load: Callable[[list[int]], list[Atoms]], dedupe: DedupeSpec = DedupeSpec(),
                   mapper: Mapper | None = None) -> tuple[MethodAnalysis, list[str]]:
    """Dedupe the lowest ``dedupe.top_k`` candidates of each composition, rank every candidate, and hull them
    together with the references. Structures are read (``load``: ids -> Atoms) only for the ones compared;
    ``mapper(func, argument_lists)`` runs the compositions' comparisons (serially if None)."""
    from atomscreen.analysis import pseudo_hulls, rank

    per_atom = [r.energies_per_atom[method] for r in rows]
    ids = [r.structure_id for r in rows]
    candidates = [i for i in range(len(rows)) if not is_reference[i]]
    duplicates, n_left = _duplicates(rows, candidates, per_atom, load, dedupe, mapper)
    unique = [i for i in candidates if ids[i] not in duplicates]
    within, overall = rank([rows[i].formula for i in unique], [per_atom[i] for i in unique])
    rankings = []
    for j, i in enumerate(unique):
        rankings += [(ids[i], "composition", within[j], per_atom[i]), (ids[i], "overall", overall[j], per_atom[i])]
    on_hull = unique + [i for i in range(len(rows)) if is_reference[i]]
    points, skipped = pseudo_hulls([rows[i].formula for i in on_hull], [per_atom[i] for i in on_hull])
    hull = [(ids[on_hull[p.index]], p.formation_energy_per_atom, p.e_above_hull, p.is_stable) for p in points]
    notes = [f"{method}: {s}" for s in skipped]
    if duplicates:
        notes.append(f"{method}: {len(duplicates)} of {len(candidates)} structures are duplicates of lower-energy "
                     "ones")
    if n_left:
        notes.append(f"{method}: {n_left} crystals above the lowest {dedupe.top_k} of their composition were not "
                     "compared for duplicates (dedupe.top_k)")
    return MethodAnalysis(method, duplicates, rankings, hull), notes


def _serial(func: Callable, argument_lists: Sequence[tuple]) -> list:
    return [func(*args) for args in argument_lists]


def _duplicates(rows: Sequence[AnalysisRow], candidates: list[int], per_atom: list[float],
                load: Callable[[list[int]], list[Atoms]], dedupe: DedupeSpec,
                mapper: Mapper | None) -> tuple[dict[int, int], int]:
    """structure id -> id of its representative among the lowest ``dedupe.top_k`` crystals of each composition (one
    ``mapper`` job per composition), and how many crystals were left uncompared."""
    from atomscreen.analysis import MatchSettings, representatives

    by_formula: dict[str, list[int]] = {}
    for i in candidates:
        if rows[i].periodic:  # molecules are not deduplicated
            by_formula.setdefault(rows[i].formula, []).append(i)
    groups = [members if dedupe.top_k is None else members[:dedupe.top_k]
              for members in (sorted(m, key=lambda i: (per_atom[i], i)) for m in by_formula.values())]
    compared = sorted(i for group in groups for i in group)
    loaded = {a.info["structure_id"]: a for a in load([rows[i].structure_id for i in compared])}
    settings = MatchSettings(dedupe.ltol, dedupe.stol, dedupe.angle_tol, dedupe.energy_tol)
    work = [([loaded[rows[i].structure_id] for i in group], [per_atom[i] for i in group], settings)
            for group in groups]
    duplicates = {}
    for group, reps in zip(groups, (mapper or _serial)(representatives, work)):
        duplicates.update({rows[group[k]].structure_id: rows[group[r]].structure_id
                           for k, r in enumerate(reps) if r != k})
    return duplicates, sum(map(len, by_formula.values())) - len(compared)


def analyse_campaign(engine: Engine, campaign_id: int, dedupe: DedupeSpec = DedupeSpec(),
                     client=None) -> tuple[list[str], bool]:
    """Replace the campaign's rankings and hulls for every energy method: pseudo energies of generated structures
    (hull references join the hulls), then each re-scoring method. With a Dask ``client`` the compositions are
    compared on its workers and here at once. Returns notes and whether any pseudo energy exists."""
    mapper = None if client is None else partial(map_with_driver, client)
    notes: list[str] = []
    with transaction(engine) as session:
        clear_analysis(session, campaign_id)
        everything = analysis_rows(session, campaign_id)
        origin = {r.structure_id: r.origin for r in everything}

        def load(ids: list[int]) -> list[Atoms]:  # in slices: SQL parameter lists have limits
            return [a for k in range(0, len(ids), 5000) for a in structures(session, ids=ids[k:k + 5000])]

        # candidates: generated structures their selection rule keeps (rss.select), and the hull references
        generated = [r for r in everything if r.origin != Origin.RESCORE and r.selected]
        rescored = [r for r in everything if r.origin == Origin.RESCORE]
        pseudo = sorted({m for r in generated for m in r.energies_per_atom}, key=lambda m: (m != PSEUDO, m))
        for method in pseudo:
            members = [r for r in generated if method in r.energies_per_atom]
            analysis, more = analyse_method(method, members, [r.origin == Origin.REFERENCE for r in members], load,
                                            dedupe, mapper)
            add_analysis(session, campaign_id, analysis)
            notes += more
        for method in sorted({m for r in rescored for m in r.energies_per_atom}):
            members = [r for r in rescored if method in r.energies_per_atom]
            reference = [origin.get(r.parent_id) == Origin.REFERENCE for r in members]
            analysis, more = analyse_method(method, members, reference, load, dedupe, mapper)
            add_analysis(session, campaign_id, analysis)
            notes += more
    return notes, bool(pseudo)


def mark_novelty(engine: Engine, campaign_id: int, spec: CampaignSpec) -> list[str]:
    """Set molecule_check.novel: the molecule's canonical SMILES is not among the training set's (QM9 carries SMILES;
    training sets without them leave it NULL)."""
    from atomscreen.evaluate.validity import canonical_smiles

    dataset = spec.training_dataset()
    if dataset is None:
        return ["novelty not assessed: the model was not trained by this campaign (no training set to compare with)"]
    given = [a.info.get("smiles") for a in dataset.read()]
    if not any(given):
        return ["novelty not assessed: the training set carries no SMILES"]
    with transaction(engine) as session:
        n, n_smiles = set_novelty(session, campaign_id, {canonical_smiles(x) for x in given if x})
    return [f"{n} of {n_smiles} sanitisable molecules are not in the training set (canonical SMILES)"]


def _energy_ranks(references: Sequence[Atoms], energy_column: str) -> tuple[list[float], dict[int, int], list[int]]:
    """Reference energies per atom (inf where unknown), each reference's energy rank within its reduced composition,
    and the references in energy order."""
    from pymatgen.core import Composition

    energies = [a.info.get(energy_column) for a in references]
    known = [e if isinstance(e, (int, float)) and math.isfinite(e) else math.inf for e in energies]
    order = sorted(range(len(references)), key=lambda j: (known[j], j))
    ranks: dict[int, int] = {}
    seen: dict[str, int] = {}
    for j in order:
        if math.isfinite(known[j]):
            formula = Composition(references[j].get_chemical_formula()).reduced_formula
            seen[formula] = seen.get(formula, 0) + 1
            ranks[j] = seen[formula]
    return known, ranks, order


def match_campaign(engine: Engine, campaign_id: int, references: list[Atoms], label: str, settings=None, *,
                   top_k: int | None = None, client=None, chunk: int = 8,
                   energy_column: str = "energy_per_atom") -> int:
    """Record which unique structures (of every method; the best ``top_k`` per composition and method if given) match a
    reference; replaces earlier matches against ``label``. With a Dask ``client`` the comparisons run on its workers."""
    from atomscreen.evaluate.match import MatchSettings, match_prepared, prepare_references, reduced_formulas

    settings = settings or MatchSettings()
    known, energy_rank, order = _energy_ranks(references, energy_column)
    with transaction(engine) as session:
        unique = structures(session, ids=top_candidates(session, campaign_id, top_k=top_k, order="id"))
    prepared = prepare_references(references, reduced_formulas(unique), order)
    if client is not None and len(unique) > chunk:
        found = map_chunks(client, _match_chunk, list(enumerate(unique)), prepared, settings, chunk=chunk,
                           tag=f"match-{campaign_id}")
    else:
        found = [(m.index, m.reference) for m in match_prepared(unique, prepared, settings)]
    rows = []
    for index, j in found:
        name = references[j].info.get("material_id", references[j].info.get("name"))
        rows.append(MatchRow(unique[index].info["structure_id"], j, None if name is None else str(name),
                             None if not math.isfinite(known[j]) else float(known[j]), energy_rank.get(j)))
    with transaction(engine) as session:
        replace_matches(session, campaign_id, label, rows)
    return len(rows)


def _match_chunk(items, prepared, settings) -> list[tuple[int, int]]:
    """Matches of (index, structure) pairs on a worker, as (index, reference) pairs."""
    from atomscreen.evaluate.match import match_prepared

    found = match_prepared([a for _, a in items], prepared, settings)
    return [(items[m.index][0], m.reference) for m in found]


def finish(engine: Engine, campaign_id: int, spec: CampaignSpec, cluster: Cluster) -> list[str]:
    """The final analysis: every method's ranks and hulls, novelty, reference matching, then the campaign's status
    (last: 'done' means everything, matching included, is stored)."""
    notes, any_energy = analyse_campaign(engine, campaign_id, spec.dedupe, cluster.client)
    if spec.validity is not None:
        notes += mark_novelty(engine, campaign_id, spec)
        if spec.validity.novelty_qm9:
            from atomscreen.evaluate.generation import qm9_reference

            with transaction(engine) as session:
                n, n_smiles = set_qm9_novelty(session, campaign_id, qm9_reference())
            notes.append(f"{n} of {n_smiles} molecules with an Open Babel SMILES are not in QM9")
    if spec.match is not None and any_energy:
        from atomscreen.evaluate.match import MatchSettings

        label, references = read_references(spec.match.references, spec)
        settings = MatchSettings(spec.match.ltol, spec.match.stol, spec.match.angle_tol)
        n = match_campaign(engine, campaign_id, references, label, settings, top_k=spec.match.top_k,
                           client=cluster.client, energy_column=spec.match.energy_column)
        notes.append(f"{n} unique structures, generated and re-scored together, match a structure of {label}")
    with transaction(engine) as session:
        # a campaign of diffusion generators alone stores molecules without energies
        expects_energy = bool(spec.generators.rss_blocks)
        status, error = final_status(task_states(session, campaign_id), any_energy or not expects_energy, spec.name)
        set_campaign_status(session, campaign_id, status, error, finished=True)
    return notes


def final_status(states: dict[str, int], any_energy: bool, name: str) -> tuple[str | None, str | None]:
    """The campaign's status and error from its task counts per state."""
    n_tasks, failed = sum(states.values()), states.get("failed", 0)
    if failed:
        return "failed", (f"{failed} of {n_tasks} tasks failed "
                          f"(errors: platform status {name}; retry: platform resume {name})")
    if states.get("done", 0) == n_tasks and not any_energy:
        return "failed", "no structure has a finite energy: every relaxation exploded"
    if states.get("done", 0) == n_tasks:
        return "done", None
    return "pending", f"unfinished tasks: continue with `platform resume {name}`"


def trajectory_energies(engine: Engine, campaign: str, method: str, *, structure_ids: Sequence[int] | None = None,
                        top: int = 3, source: str = PSEUDO, timeout_s: float | None = None,
                        progress: Callable[[int, int, int, int, list[float]], None] = lambda *a: None,
                        ) -> tuple[int, int, int]:
    """Single points of ``method`` at every stored frame of the ``source`` trajectories of the chosen structures (the
    best ``top`` per composition by default), stored as a trajectory of that method on the same structure; a frame the
    method fails on gets NaN. Returns (selected, stored, failed frames)."""
    from atomscreen.evaluate.calculators import method_name, single_points

    target = method_name(method)
    todo = _trajectories_to_score(engine, campaign, target, structure_ids, top, source)
    failures = 0
    for n, (sid, numbers, pbc, rec) in enumerate(todo[1], start=1):
        frames = [Atoms(numbers=numbers, positions=p, cell=c, pbc=pbc) for p, c in zip(rec.positions, rec.cells)]
        energies, fmax, errors = single_points(frames, method, timeout_s=timeout_s)
        failures += sum(e is not None for e in errors)
        with transaction(engine) as session:
            add_trajectory(session, sid, TrajectoryRecord(target, rec.steps, np.asarray(energies), np.asarray(fmax),
                                                          rec.positions, rec.cells))
        progress(n, len(todo[1]), sid, len(frames), energies)
    return todo[0], len(todo[1]), failures


def _trajectories_to_score(engine, campaign, target, structure_ids, top, source):
    with transaction(engine) as session:
        campaign_id = get_campaign(session, campaign).id
        ids = list(structure_ids) if structure_ids else top_candidates(session, campaign_id, method=source, top_k=top,
                                                                        order="id")
        found = {a.info["structure_id"]: a for a in structures(session, ids=ids)}
        todo = []
        for sid in ids:
            rec, atoms = trajectory(session, sid, source), found.get(sid)
            if rec is None or atoms is None or atoms.info["campaign_id"] != campaign_id:
                raise AtomscreenError(f"structure {sid} has no {source} trajectory (trajectory_every was 0, "
                                      f"or the id is not in {campaign!r})")
            if trajectory(session, sid, target) is None:
                todo.append((sid, atoms.numbers, atoms.pbc, rec))
    return len(ids), todo
