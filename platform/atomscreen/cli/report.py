"""`platform report`: per-composition statistics, pseudo vs re-scored energies, reference matches, validity."""

from __future__ import annotations

import argparse

from rich.table import Table

from atomscreen.cli.common import add_db_option, campaign_engine, out, wide
from atomscreen.store.engine import transaction


def add_commands(commands) -> None:
    report = commands.add_parser("report", help="per-composition statistics, pseudo vs re-scored energies, reference "
                                                "matches")
    report.add_argument("name")
    report.add_argument("--format", choices=["table", "json"], default="table")
    add_db_option(report)
    report.set_defaults(func=cmd_report)


def cmd_report(args: argparse.Namespace) -> int:
    from atomscreen.analysis.report import campaign_report
    from atomscreen.store import report_rows

    engine = campaign_engine(args)
    with transaction(engine) as session:
        report = campaign_report(report_rows(session, args.name))
    if args.format == "json":
        import dataclasses
        import json

        print(json.dumps(dataclasses.asdict(report), indent=1))
        return 0
    _composition_table(args.name, report)
    _funnel_lines(report)
    if report.relaxation:
        _relaxation_table(args.name, report.relaxation)
    if report.polish:
        _polish_table(args.name, report.polish)
    if report.guided:
        _guided_table(args.name, report.guided)
    if report.validity:
        _validity_table(args.name, report.validity)
        _denominators_table(args.name, report.validity)
        _table_b1(args.name, report.validity)
    return 0


def _from(origin: str) -> str:
    """How a row's origin is shown: gen. (RSS), resc. (after re-scoring), diffusion:SAMPLER, relaxed:METHOD."""
    if origin.startswith("diffusion_relax:"):
        return "relaxed:" + origin.partition(":")[2]
    return {"rss": "gen.", "rescore": "resc."}.get(origin, origin)


def _relaxation_table(name: str, rows) -> None:
    """MoreRed relaxation of the generated molecules, per composition, source and method."""
    table = Table("formula", "from", "method", "n", "conv. %", "steps", "t̂0", "moved Å",
                  title=f"{name}: relaxation by reverse diffusion (medians: reverse steps, first predicted step t̂0, "
                        "RMSD from the generated geometry); conv.: the predicted step reached the threshold before "
                        "max_steps")
    table.columns[0].no_wrap = table.columns[1].no_wrap = True
    for r in rows:
        table.add_row(r.formula, _from(r.source), r.method, str(r.n), _pct(r.converged, r.n), f"{r.median_steps:.0f}",
                      f"{r.median_t0:.0f}", f"{r.median_displacement:.3f}")
    wide(120).print(table)


def _guided_table(name: str, rows) -> None:
    """Generation with an energy model: acceptance, restarts, guidance, post-relaxation and the judge's figures."""
    judge = next((r.judge for r in rows if r.judge), None)
    table = Table("formula", "from", "n", "accepted", "restarts/acc.", "interv.", "dropped", "post conv.",
                  "judged", "dE med. eV", "dE p90", "dP med. Å", "dP p90",
                  title=f"{name}: generation with an energy model (Cho et al. 2023); judge: "
                        f"{judge or 'none (configure rescore)'} relaxation of the re-scored molecules, energy drop "
                        "dE and mean atomic displacement dP")
    table.columns[0].no_wrap = table.columns[1].no_wrap = True
    for r in rows:
        table.add_row(r.formula, _from(r.source) if r.source else "", str(r.n),
                      "" if r.accepted is None else str(r.accepted), _num(r.restarts_per_accepted, 2),
                      _num(r.interventions, 1), str(r.dropped),
                      f"{r.post_converged}/{r.post_relaxed}" if r.post_relaxed else "", str(r.judged),
                      _num(r.dE_median, 3), _num(r.dE_p90, 3), _num(r.dP_median, 3), _num(r.dP_p90, 3))
    wide(140).print(table)


def _polish_table(name: str, rows) -> None:
    """Diffusion polish before re-scoring: optimizer steps with and without it, the steps saved."""
    table = Table("formula", "n", "polish", "steps", "unpolished", "saved %", "ΔE meV", "pairs",
                  title=f"{name}: diffusion polish before {rows[0].method} (medians: optimizer steps from the polished "
                        "and from the unpolished geometry, per-structure steps saved, final energy polished minus "
                        "unpolished, over pairs where both converged)")
    for r in rows:
        table.add_row(r.formula, str(r.n), str(r.polish_steps), f"{r.median_steps:.0f}",
                      _num(r.median_unpolished_steps, 0), _num(r.median_saved_pct, 1),
                      _num(r.median_energy_change_mev, 1), str(r.compared))
    wide(120).print(table)
    overall = rows[-1]
    if overall.median_saved_pct is not None:
        out.print(f"optimizer steps saved by the polish: {overall.median_saved_pct:.1f}% (median per structure over "
                  f"{overall.compared} pairs; {overall.median_steps:.0f} vs {overall.median_unpolished_steps:.0f} "
                  "steps)")


def _table_b1(name: str, rows) -> None:
    """MoreRed's Table B1 layout per composition and generator, with EDM stability, over every molecule checked."""
    table = Table("formula", "from", "n", "conv. %", "V %", "V+U %", "V+U+N %", "EDM atoms %", "EDM mol. %",
                  title=f"{name}: MoreRed Table B1 (valid: one fragment, standard valences on Open Babel bonds; U: "
                        "distinct canonical SMILES; N: not in QM9), % of molecules checked; conv.: relaxation "
                        "converged, or the adaptive sampler's predicted step reached 0 (DDPM: always)")
    table.columns[0].no_wrap = table.columns[1].no_wrap = True
    for r in rows:
        novel = "" if r.valid_unique_novel is None else _pct(r.valid_unique_novel, r.checked)
        atoms = "" if r.edm_atoms_stable is None else f"{100 * r.edm_atoms_stable:.0f}"
        table.add_row(r.formula, _from(r.origin), str(r.checked), _pct(r.converged, r.trials),
                      _pct(r.valid, r.checked), _pct(r.valid_unique, r.checked), novel, atoms,
                      _pct(r.edm_molecule_stable, r.checked))
    wide(140).print(table)


def _composition_table(name: str, report) -> None:
    method = report.rescore_method
    title = (f"{name}: per composition (generated, converged, unique, matching a reference, best pseudo energy, "
             "re-scored, calculator failures, best re-scored energy in eV/atom, Pearson R of pseudo vs re-scored "
             "energy, task time)")
    table = Table("formula", "gen.", "conv.", "uniq.", "match", "best RM", "resc.", "fail",
                  f"best {method or 're-scored'}", "R", "s", title=title)
    for r in report.rows:
        table.add_row(r.formula, str(r.generated), str(r.converged), str(r.unique), str(r.matched),
                      _num(r.best_pseudo, 4), str(r.rescored), str(r.rescore_failed), _num(r.best_rescored, 4),
                      _num(r.pearson_r, 2), f"{r.time_s:.0f}")
    wide(120).print(table)


def _num(value: float | None, digits: int) -> str:
    return "" if value is None else f"{value:.{digits}f}"


def _funnel_lines(report) -> None:
    out.print(f"unique candidates matching a reference structure: {report.matched_unique}")
    if report.rescore_method:
        r = "n/a (fewer than 3 pairs)" if report.pearson_r is None else f"{report.pearson_r:.3f}"
        across = len({c.reduced_formula for c in report.lowest}) > 1
        out.print(f"Pearson R between rm_pseudo and {report.rescore_method} energy per atom over {report.n_pairs} "
                  f"re-scored structures: {r}" + (" (across compositions: composition trends dominate it; R per "
                                                  "composition in the table)" if across else ""))
    for check in report.lowest:
        if check.reference_name is None:
            verdict = "matches no reference structure"
        else:
            rank = check.reference_energy_rank
            lowest = "the lowest-energy reference" if rank == 1 else f"reference energy rank {rank}"
            verdict = f"matches {check.reference_name} ({lowest})"
        out.print(f"lowest {check.reduced_formula} by {check.method}: #{check.structure_id} {check.formula} "
                  f"{check.energy_per_atom:.4f} eV/atom, {verdict}", markup=False)
    for sid, m, error in report.failures:
        out.print(f"[red]{m} failed[/red] on structure {sid}: {error.splitlines()[-1] if error else ''}")


def _validity_table(name: str, rows) -> None:
    """The validity table: % passing each check (of the molecules it could run on), all checks, SMILES, EDM."""
    from atomscreen.evaluate.validity import CHECK_LABELS

    title = (f"{name}: chemical validity, % of molecules passing (RDKit bond perception, PoseBusters 'mol' checks); "
             "from: generated (gen.) or after re-scoring (resc.); unique / novel: distinct canonical SMILES, and those "
             "not in the training set; EDM: valence stability")
    table = Table("formula", "from", "n", *CHECK_LABELS.values(), "all", "unique", "novel", "EDM stable", "timeout",
                  title=title)
    table.columns[0].no_wrap = table.columns[1].no_wrap = True
    for r in rows:
        rates = [("" if r.assessed[c] == 0 else f"{100 * r.passed[c] / r.assessed[c]:.0f}") for c in CHECK_LABELS]
        table.add_row(r.formula, _from(r.origin), str(r.checked), *rates,
                      f"{100 * r.passes_all / r.checked:.0f}", str(r.unique_smiles),
                      "" if r.novel_smiles is None else str(r.novel_smiles),
                      f"{100 * r.edm_molecule_stable / r.checked:.0f}", str(r.timeouts))
    wide(200).print(table)


def _pct(n: int, d: int) -> str:
    return "" if d == 0 else f"{100 * n / d:.0f}"


def _denominators_table(name: str, rows) -> None:
    """Pass rates over converged molecules (the RM paper's denominator) and over all trials (the yield)."""
    table = Table("formula", "from", "trials", "conv. %", "sanit. % conv.", "all % conv.", "sanit. % trials",
                  "all % trials", "OB sanit. % conv.", "OB all % conv.", "OB sanit. % trials",
                  title=f"{name}: RDKit sanitisation and all checks, over converged molecules (the RM paper counts "
                        "only these) and over every trial (exploded and unconverged ones included); OB: the second "
                        "checker (Open Babel bonds, PoseBusters' 2024 checks, the paper's list)")
    table.columns[0].no_wrap = table.columns[1].no_wrap = True
    for r in rows:
        sanitized = r.passed.get("sanitization", 0)
        table.add_row(r.formula, _from(r.origin), str(r.trials), _pct(r.converged, r.trials),
                      _pct(r.sanitized_converged, r.converged), _pct(r.passes_all_converged, r.converged),
                      _pct(sanitized, r.trials), _pct(r.passes_all, r.trials),
                      _pct(r.ob_sanitized_converged, r.converged), _pct(r.ob_passes_all_converged, r.converged),
                      _pct(r.ob_sanitized, r.trials))
    wide(160).print(table)
