"""Campaign statistics for `platform report`, computed from the store's plain report rows (no SQL here).

Per composition: structures generated, converged, unique, matched to a reference, best pseudo energy, re-scored,
calculator failures, best re-scored energy, task time, and the Pearson R of pseudo vs re-scored energy per atom;
whether the lowest structure by each method is the lowest-energy reference; for molecules, validity rates.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from atomscreen.names import PSEUDO


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
    """Whether the lowest unique candidate of a reduced composition by ``method`` matches the lowest-energy
    reference."""

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
    # the two denominators of a pass rate: every trial (structure made, exploded ones included) and the converged ones
    trials: int = 0
    converged: int = 0
    sanitized_converged: int = 0  # converged molecules that RDKit sanitises
    passes_all_converged: int = 0
    # the Open Babel checker (bonds by Open Babel, PoseBusters' 2024 checks): over checked and over converged molecules
    ob_sanitized: int = 0
    ob_passes_all: int = 0
    ob_sanitized_converged: int = 0
    ob_passes_all_converged: int = 0
    # MoreRed Table B1 (G-SchNet's rule on Open Babel bonds): valid; valid with distinct SMILES; and those not in QM9
    valid: int = 0
    valid_unique: int = 0
    valid_unique_novel: int | None = None  # None: novelty against QM9 not assessed


@dataclass
class RelaxationStats:
    """MoreRed relaxation of one composition's generated molecules from one source (rss, diffusion:SAMPLER): how
    many, how many reached the stopping step, median reverse steps, first predicted step and displacement (Å)."""

    formula: str
    source: str
    method: str
    n: int
    converged: int
    median_steps: float
    median_t0: float
    median_displacement: float


@dataclass
class PolishStats:
    """Diffusion polish before the calculator's relaxation, per composition (and 'all'): median optimizer steps from
    the polished and (compare: true) the unpolished geometry, the median per-structure saving (%), the median final
    energy of polished minus unpolished (meV per molecule) over the ``compared`` pairs where both converged."""

    formula: str
    method: str
    polish_steps: int
    n: int
    median_steps: float
    median_unpolished_steps: float | None
    median_saved_pct: float | None
    median_energy_change_mev: float | None
    compared: int


@dataclass
class GuidedStats:
    """Generation with an energy model, per composition and source (diffusion:SAMPLER, and 'all'): molecules,
    accepted ones and restarts per accepted one (accept/reject), mean guidance interventions and molecules whose
    guidance was dropped, post-relaxations and how many converged; and the judge (the re-scoring calculator's
    relaxation of the re-scored ones): median and 90th percentile of its energy drop dE (eV per molecule) and of the
    mean atomic displacement dP (Å)."""

    formula: str
    source: str
    n: int
    accepted: int | None
    restarts_per_accepted: float | None
    interventions: float | None
    dropped: int
    post_relaxed: int
    post_converged: int
    judge: str | None
    judged: int
    dE_median: float | None
    dE_p90: float | None
    dP_median: float | None
    dP_p90: float | None


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
    relaxation: list[RelaxationStats] = field(default_factory=list)
    polish: list[PolishStats] = field(default_factory=list)
    guided: list[GuidedStats] = field(default_factory=list)


def pearson(pairs: list[tuple[int, float, float]]) -> float | None:
    """Pearson R of the (pseudo, re-scored) energies of ``pairs``; None for fewer than 3 pairs or a constant side."""
    if len(pairs) < 3:
        return None
    x, y = np.array([p[1] for p in pairs]), np.array([p[2] for p in pairs])
    if x.std() == 0 or y.std() == 0:
        return None
    return float(np.corrcoef(x, y)[0, 1])


def campaign_report(rows: Any) -> CampaignReport:
    """The report of a campaign from its :class:`atomscreen.store.ReportRows`."""
    info, energy, rankings = rows.structures, rows.energies, rows.rankings
    methods = sorted({m for _, m, _ in rankings if not m.startswith(PSEUDO)})
    rescore_method = methods[0] if methods else None
    pairs = _pairs(info, energy, rescore_method)
    stats = [_composition(formula, rows, rescore_method, pairs)
             for formula in sorted({f for o, _, f, _ in info.values() if o == "rss"}, key=lambda f: (len(f), f))]
    matched_unique = sum(1 for s, m, _ in rankings if m == PSEUDO and s in rows.matches)
    return CampaignReport(stats, rescore_method, pearson(pairs), len(pairs), pairs, matched_unique,
                          _lowest(rows, [PSEUDO] + methods), list(rows.failures), _validity(rows), _relaxation(rows),
                          _polish(rows, rescore_method), _guided(rows, rescore_method))


def _generated_parent(info, sid: int | None) -> int | None:
    """The generated structure a structure descends from: through a MoreRed relaxation to the molecule it relaxed."""
    while sid in info and info[sid][0].startswith("diffusion_relax"):
        sid = info[sid][1]
    return sid


def _relaxation(rows: Any) -> list[RelaxationStats]:
    groups: dict[tuple[str, str, str], list[dict]] = {}
    for sid, values in rows.relaxed.items():
        origin, parent, formula, _ = rows.structures[sid]
        source = rows.structures[parent][0] if parent in rows.structures else "?"
        groups.setdefault((formula, source, origin.partition(":")[2]), []).append(values)
    out = []
    for (formula, source, method), members in sorted(groups.items(), key=lambda g: (len(g[0][0]), g[0])):
        out.append(RelaxationStats(formula, source, method, len(members), sum(bool(m["converged"]) for m in members),
                                   float(np.median([m["reverse_steps"] for m in members])),
                                   float(np.median([m["t0"] for m in members])),
                                   float(np.median([m["displacement_rmsd"] for m in members]))))
    return out


def _polish(rows: Any, method: str | None) -> list[PolishStats]:
    groups: dict[str, list[dict]] = {}
    for sid, values in rows.polished.items():
        if values["method"] == method:
            groups.setdefault(rows.structures[sid][2], []).append(values)
    ordered = sorted(groups.items(), key=lambda g: (len(g[0]), g[0]))
    if len(groups) > 1:
        ordered.append(("all", [m for _, members in ordered for m in members]))
    out = []
    for formula, members in ordered:
        both = [m for m in members if m["unpolished_steps"] is not None and m["unpolished_status"] == "converged"
                and m["unpolished_energy"] is not None and m["steps"] is not None and m["converged"]]
        unpolished = [m["unpolished_steps"] for m in members if m["unpolished_steps"] is not None]
        saved = [100.0 * (m["unpolished_steps"] - m["steps"]) / m["unpolished_steps"] for m in both
                 if m["unpolished_steps"]]
        change = [1000.0 * (m["energy"] - m["unpolished_energy"]) for m in both]
        out.append(PolishStats(formula, method or "?", int(members[0]["polish_steps"]), len(members),
                               float(np.median([m["steps"] for m in members if m["steps"] is not None] or [np.nan])),
                               float(np.median(unpolished)) if unpolished else None,
                               float(np.median(saved)) if saved else None,
                               float(np.median(change)) if change else None, len(both)))
    return out


def _guided(rows: Any, method: str | None) -> list[GuidedStats]:
    if not rows.hybrid:
        return []
    groups: dict[tuple[str, str], list[int]] = {}
    for sid in rows.hybrid:
        origin, _, formula, _ = rows.structures[sid]
        groups.setdefault((formula, origin), []).append(sid)
    ordered = sorted(groups.items(), key=lambda g: (len(g[0][0]), g[0]))
    if len(groups) > 1:
        ordered.append((("all", ""), [sid for _, members in ordered for sid in members]))
    post_of = {p["parent"]: sid for sid, p in rows.post_relaxed.items()}
    out = []
    for (formula, source), members in ordered:
        made = [rows.hybrid[sid] for sid in members]
        tested = [m for m in made if m["accepted"] is not None]
        accepted = sum(bool(m["accepted"]) for m in tested) if tested else None
        guided = [m["interventions"] for m in made if m["interventions"] is not None]
        posts = [rows.post_relaxed[post_of[sid]] for sid in members if sid in post_of]
        judged = [j for j in rows.judged.values() if j["generated"] in set(members) and j["method"] == method]
        de, dp = np.array([j["dE"] for j in judged]), np.array([j["dP"] for j in judged])
        q = (lambda v, p: float(np.quantile(v, p)) if v.size else None)  # noqa: E731
        out.append(GuidedStats(formula, source, len(made), accepted,
                               sum(m["restarts"] for m in made) / accepted if accepted else None,
                               float(np.mean(guided)) if guided else None, sum(m["dropped"] is not None for m in made),
                               len(posts), sum(p["converged"] for p in posts), method if judged else None,
                               len(judged), q(de, 0.5), q(de, 0.9), q(dp, 0.5), q(dp, 0.9)))
    return out


def _pairs(info, energy, method: str | None) -> list[tuple[int, float, float]]:
    """(re-scored id, pseudo energy of its parent, re-scored energy) of every re-scored generated structure."""
    if method is None:
        return []
    out = []
    for sid, (origin, parent, _, _) in info.items():
        parent = _generated_parent(info, parent)
        if origin == "rescore" and parent in info and info[parent][0] != "reference" and (sid, method) in energy \
                and (parent, PSEUDO) in energy:
            out.append((sid, energy[(parent, PSEUDO)][0], energy[(sid, method)][0]))
    return out


def _composition(formula: str, rows: Any, method: str | None, pairs) -> CompositionStats:
    info, energy, rankings = rows.structures, rows.energies, rows.rankings
    generated = [s for s, (o, _, f, _) in info.items() if o == "rss" and f == formula]
    unique = [s for s, m, _ in rankings if m == PSEUDO and info[s][2] == formula]
    pseudo = [score for s, m, score in rankings if m == PSEUDO and info[s][2] == formula]
    rescored = [s for s, (o, p, f, _) in info.items() if o == "rescore" and f == formula and p in info
                and info[p][0] != "reference"]
    best = [score for s, m, score in rankings if m == method and info[s][2] == formula]
    converged = sum(bool(energy.get((s, PSEUDO), (None, False))[1]) for s in generated)
    failed = sum(1 for s, _, _ in rows.failures if info.get(s, ("", None, ""))[2] == formula)
    return CompositionStats(formula, len(generated), converged, len(unique), sum(s in rows.matches for s in unique),
                            min(pseudo) if pseudo else None, len(rescored), failed, min(best) if best else None,
                            rows.task_times.get(formula, 0.0), pearson([p for p in pairs if info[p[0]][2] == formula]))


def _lowest(rows: Any, methods: list[str]) -> list[LowestCheck]:
    out = []
    for method in methods:
        best: dict[str, tuple[float, int]] = {}
        for s, m, score in rows.rankings:
            reduced = rows.structures[s][3]
            if m == method and (reduced not in best or (score, s) < best[reduced]):
                best[reduced] = (score, s)
        for reduced, (score, s) in sorted(best.items()):
            name, rank = rows.matches.get(s, (None, None))
            out.append(LowestCheck(reduced, method, s, rows.structures[s][2], score, name, rank))
    return out


def _validity(rows: Any) -> list[ValidityStats]:
    from atomscreen.evaluate.validity import CHECKS

    converged = _converged(rows)
    groups: dict[tuple[str, str], list[dict]] = {}
    for check in rows.checks:
        origin, _, formula, _ = rows.structures[check["structure_id"]]
        groups.setdefault((formula, origin), []).append(check)
    out = []
    for (formula, origin), members in sorted(groups.items(), key=lambda g: (g[0][1] != "rss", len(g[0][0]), g[0][0])):
        smiles = {m["smiles"] for m in members if m["smiles"]}
        novel = [m["novel"] for m in members if m["smiles"]]
        novel_smiles = None if not novel or any(n is None for n in novel) else len({m["smiles"] for m in members
                                                                                    if m["novel"]})
        stable = [m["atoms_stable"] for m in members if m["atoms_stable"] is not None]
        trials = [s for s, (o, _, f, _) in rows.structures.items() if o == origin and f == formula]
        kept = [m for m in members if converged.get(m["structure_id"])]
        out.append(ValidityStats(
            formula, origin, len(members), {c: sum(m[c] is True for m in members) for c in CHECKS},
            {c: sum(m[c] is not None for m in members) for c in CHECKS}, sum(bool(m["passes_all"]) for m in members),
            sum(m["status"] == "timeout" for m in members), len(smiles), novel_smiles,
            sum(bool(m["molecule_stable"]) for m in members), float(np.mean(stable)) if stable else None,
            len(trials), sum(bool(converged.get(s)) for s in trials), sum(m["sanitization"] is True for m in kept),
            sum(bool(m["passes_all"]) for m in kept), *_openbabel(members), *_openbabel(kept), *_table_b1(members)))
    return out


def _table_b1(members: list[dict]) -> tuple[int, int, int | None]:
    """(valid, valid with distinct SMILES, those also absent from QM9; None if not assessed) by MoreRed's rule."""
    valid = [m for m in members if m.get("connected_valence") is True and m.get("ob_smiles")]
    unique = {m["ob_smiles"]: m for m in valid}
    novel = None if any(m.get("ob_novel") is None for m in unique.values()) or not unique else \
        sum(bool(m["ob_novel"]) for m in unique.values())
    return sum(m.get("connected_valence") is True for m in members), len(unique), novel


def _openbabel(members: list[dict]) -> tuple[int, int]:
    """(sanitised, passing every check) by the Open Babel checker."""
    sanitized = sum(m.get("ob_sanitization") is True for m in members)
    return sanitized, sum(m.get("ob_passes_all") is True for m in members)


def _converged(rows: Any) -> dict[int, bool]:
    """Whether each structure's own relaxation converged (its pseudo energy for generated structures, its
    re-scoring energy for re-scored ones)."""
    out: dict[int, bool] = dict(rows.generated_converged)
    for (sid, method), (_, conv) in rows.energies.items():
        origin = rows.structures[sid][0]
        if (origin == "rescore") != method.startswith(PSEUDO):
            out[sid] = bool(conv)
    return out
