"""The `platform` command: validate campaigns, manage the database, show campaign status."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Sequence

from rich.console import Console
from rich.table import Table
from sqlalchemy.exc import OperationalError, ProgrammingError

import atomscreen
from atomscreen.campaign import CampaignError, load_campaign
from atomscreen.store.engine import DatabaseURLError, make_engine, resolve_url, sqlite_path, transaction

out = Console(highlight=False, soft_wrap=True)
err = Console(stderr=True, highlight=False, soft_wrap=True)


class CLIError(Exception):
    """An error to print as one clear line, with exit code 1."""


def _engine(url: str, *, must_exist: bool):
    path = sqlite_path(url)
    if path is not None:
        if must_exist and not path.exists():
            raise CLIError(f"no database at {path}; create it with: platform db upgrade --db {url}")
        path.parent.mkdir(parents=True, exist_ok=True)
    return make_engine(url)


def _redact(url: str) -> str:
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True)


def cmd_validate(args: argparse.Namespace) -> int:
    from atomscreen.campaign import TrainFileSpec, load_spec

    bad = 0
    for path in args.campaigns:
        try:
            spec = load_spec(path)
        except CampaignError as exc:
            bad += 1
            err.print(f"[red]✗[/red] {exc.source}: {len(exc.problems)} problem(s)")
            for problem in exc.problems:
                err.print(f"    {problem}", markup=False)
            continue
        if isinstance(spec, TrainFileSpec):
            source = spec.dataset.path or spec.dataset.format
            out.print(f"[green]✓[/green] {path}: train file {spec.name!r} on {source}")
            continue
        formulas = spec.compositions.expand()
        shown = ", ".join(formulas[:8]) + (f", ... ({len(formulas)} in all)" if len(formulas) > 8 else "")
        if spec.compositions.from_training:
            shown += f"{'; ' if formulas else ''}and the {spec.compositions.from_training} most common of the training set"
        generators = ", ".join(name for name, block in spec.generators if block is not None)
        out.print(f"[green]✓[/green] {path}: campaign {spec.name!r}, {len(formulas)} composition(s) ({shown}); generators: {generators}")
    return 1 if bad else 0


def cmd_db_upgrade(args: argparse.Namespace) -> int:
    from atomscreen.store import migrate

    url = resolve_url(args.db)
    engine = _engine(url, must_exist=False)
    before = migrate.current_revision(engine)
    migrate.upgrade(engine, args.revision)
    after = migrate.current_revision(engine)
    action = "already at" if before == after else f"upgraded from {before or 'empty'} to"
    out.print(f"{_redact(url)}: {action} revision {after}")
    return 0


def cmd_db_downgrade(args: argparse.Namespace) -> int:
    from atomscreen.store import migrate

    url = resolve_url(args.db)
    engine = _engine(url, must_exist=True)
    migrate.downgrade(engine, args.revision)
    out.print(f"{_redact(url)}: now at revision {migrate.current_revision(engine) or 'base (empty)'}")
    return 0


def cmd_db_current(args: argparse.Namespace) -> int:
    from atomscreen.store import migrate

    url = resolve_url(args.db)
    current = migrate.current_revision(_engine(url, must_exist=True))
    head = migrate.head_revision()
    note = "(head)" if current == head else f"(head is {head}: run platform db upgrade)"
    out.print(f"{current or 'none'} {note}")
    return 0


def _require_head(engine) -> None:
    from atomscreen.store import migrate

    try:
        migrate.require_head(engine)
    except migrate.SchemaError as exc:
        raise CLIError(str(exc)) from None


def cmd_status(args: argparse.Namespace) -> int:
    from atomscreen.store.api import campaign_summaries

    name, campaign_db = args.campaign, None
    if name and (name.endswith((".yaml", ".yml")) or Path(name).is_file()):
        spec = load_campaign(name)
        name, campaign_db = spec.name, spec.database
    engine = _engine(resolve_url(args.db, campaign_db), must_exist=True)
    _require_head(engine)
    with transaction(engine) as session:
        summaries = campaign_summaries(session, name)
    if not summaries:
        if name:
            raise CLIError(f"no campaign named {name!r} in {_redact(str(engine.url))}")
        out.print("no campaigns yet")
        return 0
    table = Table("campaign", "status", "pending", "running", "done", "failed", "structures")
    for s in summaries:
        table.add_row(
            s.name, s.status, *(str(s.tasks.get(state, 0)) for state in ("pending", "running", "done", "failed")), str(s.n_structures)
        )
    out.print(table)
    for s in summaries:
        if s.error:
            out.print(f"[red]{s.name}: {s.error}[/red]")
        for key, error in s.failures:
            out.print(f"  [red]failed[/red] {s.name} task {key}: {error}", markup=True)
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    import dataclasses

    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    from atomscreen.campaign import TrainFileSpec
    from atomscreen.data import read_dataset
    from atomscreen.potentials.train import split_hyperparameters, train
    from atomscreen.store import add_model, migrate

    spec = load_campaign(args.config, root=TrainFileSpec)
    model_cfg, response_cfg, train_cfg = split_hyperparameters(spec.hyperparameters)
    overrides = {"seed": spec.seed} if "seed" not in spec.hyperparameters else {}
    if args.device:
        overrides["device"] = args.device
    train_cfg = dataclasses.replace(train_cfg, **overrides)
    dataset = spec.dataset
    structures = read_dataset(dataset.format, dataset.path, name=dataset.name, limit=dataset.limit, skip=dataset.skip)
    source = dataset.path or f"{dataset.format}:{dataset.name or ''}"
    out.print(f"training {spec.name!r} on {len(structures)} structures from {source} ({train_cfg.epochs} epochs, {train_cfg.device})")
    engine = _engine(resolve_url(args.db, spec.database), must_exist=False)
    migrate.upgrade(engine)
    with Progress(TextColumn("epoch {task.completed}/{task.total}"), BarColumn(), TextColumn("{task.fields[loss]}"),
                  TimeElapsedColumn(), TimeRemainingColumn(), console=err, disable=args.quiet) as bar:
        task = bar.add_task("train", total=train_cfg.epochs, loss="")
        checkpoint = train(structures, model_cfg, response_cfg, train_cfg, source=str(source),
                           progress=lambda epoch, r: bar.update(task, completed=epoch, loss=f"val loss {r['val_loss']:.4g}"))
    with transaction(engine) as session:
        row = add_model(session, kind=checkpoint.kind, weights=checkpoint.weights_bytes(), hyperparameters=checkpoint.hyperparameters(),
                        training_data=checkpoint.training_data, metrics=checkpoint.metrics, name=spec.name)
        model_id, sha = row.id, row.sha256
    output = args.output or spec.output
    if output:
        path = Path(output) if args.output or Path(output).is_absolute() else Path(args.config).parent / output
        checkpoint.save(path)
        out.print(f"checkpoint written to {path}")
    m = checkpoint.metrics
    out.print(f"model {model_id} sha256 {sha}: {m['n_parameters']} parameters, validation loss {m['val_loss']:.4g} "
              f"(force MSE {m['val_force_mse']:.4g} (eV/Å)^2, stress MSE {m['val_stress_mse']:.4g}), {m['train_time_s']:.0f} s")
    return 0


def _progress_reporter(quiet: bool):
    """A rich progress display for training epochs and tasks, plus the Reporter that drives it."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    from atomscreen.compute.runner import Reporter

    bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[info]}"),
                   TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(), console=err, disable=quiet, transient=False)
    state: dict = {}

    def training(epoch: int, epochs: int, loss: float) -> None:
        if "train" not in state:
            state["train"] = bar.add_task("training epochs", total=epochs, info="")
        bar.update(state["train"], completed=epoch, info=f"val loss {loss:.4g}")

    def started(total: int, done: int, n_structures: int, stage: str = "generation") -> None:
        state["structures"] = 0
        state["tasks"] = bar.add_task(f"{stage} tasks", total=total, completed=done, info=f"0/{n_structures} structures")
        state["expected"] = n_structures

    def finished(key: str, ok: bool, n: int) -> None:
        state["structures"] += n
        bar.update(state["tasks"], advance=1, info=f"{state['structures']}/{state['expected']} structures")
        if not ok:
            bar.console.print(f"[red]task {key} failed[/red] (error stored; see platform status)")

    reporter = Reporter(message=lambda text: bar.console.print(text, markup=False, highlight=False), training=training,
                        tasks_started=started, task_finished=finished)
    return bar, reporter


def _report(outcome) -> int:
    tasks = ", ".join(f"{n} {state}" for state, n in sorted(outcome.tasks.items()))
    colour = "green" if outcome.status == "done" else "red"
    for note in outcome.notes:
        out.print(f"note: {note}", markup=False)
    out.print(f"campaign {outcome.name!r}: [{colour}]{outcome.status}[/{colour}] ({tasks}; {outcome.n_structures} structures)")
    if outcome.status == "done":
        out.print(f"next: platform results {outcome.name} --top 10 | platform hull {outcome.name} --plot hull.png")
    else:
        out.print(f"errors: platform status {outcome.name}; retry: platform resume {outcome.name}")
    return 0 if outcome.status == "done" else 1


def cmd_submit(args: argparse.Namespace) -> int:
    from atomscreen.compute.runner import submit

    spec = load_campaign(args.campaign)
    url = resolve_url(args.db, spec.database)
    engine = _engine(url, must_exist=False)
    out.print(f"database: {_redact(url)}")
    bar, reporter = _progress_reporter(args.quiet)
    with bar:
        outcome = submit(args.campaign, engine, scheduler=args.scheduler, reporter=reporter, dashboard_address=args.dashboard_address)
    return _report(outcome)


def cmd_resume(args: argparse.Namespace) -> int:
    from atomscreen.compute.runner import resume

    engine = _engine(resolve_url(args.db), must_exist=True)
    bar, reporter = _progress_reporter(args.quiet)
    with bar:
        outcome = resume(args.name, engine, scheduler=args.scheduler, reporter=reporter, dashboard_address=args.dashboard_address)
    return _report(outcome)


def _campaign_engine(args):
    engine = _engine(resolve_url(args.db), must_exist=True)
    _require_head(engine)
    from atomscreen.store import get_campaign

    with transaction(engine) as session:
        if get_campaign(session, args.name) is None:
            raise CLIError(f"no campaign named {args.name!r} in {_redact(str(engine.url))}")
    return engine


def _symbol(number: int | None) -> str:
    if number is None:
        return ""
    from ase.spacegroup import Spacegroup

    return f"{Spacegroup(int(number)).symbol.replace(' ', '')} ({number})"


def cmd_results(args: argparse.Namespace) -> int:
    import csv
    import json

    from atomscreen.campaign import hill_formula, parse_formula
    from atomscreen.store import ranked

    engine = _campaign_engine(args)
    formula = None
    if args.composition:
        try:
            formula = hill_formula(parse_formula(args.composition))
        except ValueError as exc:
            raise CLIError(f"--composition {args.composition!r}: {exc}") from None
    with transaction(engine) as session:
        rows = ranked(session, args.name, method=args.method, formula=formula, top=args.top)
    if not rows:
        raise CLIError(f"campaign {args.name!r} has no structures ranked by {args.method}" + (f" of {formula}" if formula else "")
                       + f"; see platform status {args.name}")
    fields = ["rank", "structure_id", "formula", "energy_per_atom", "volume_per_atom", "spacegroup", "e_above_hull", "is_stable", "converged"]
    records = [{**{f: getattr(r, f) for f in fields if f != "spacegroup"}, "spacegroup": _symbol(r.spacegroup)} for r in rows]
    if args.format == "json":
        print(json.dumps([{f: rec[f] for f in fields} for rec in records], indent=1))
    elif args.format == "csv":
        writer = csv.DictWriter(sys.stdout, fieldnames=fields)
        writer.writeheader()
        writer.writerows(records)
    else:
        table = Table("rank", "id", "formula", "eV/atom", "Å³/atom", "space group", "above hull", "conv.",
                      title=f"{args.name}: {'rank within ' + formula if formula else 'overall rank'} by {args.method} energy per atom")
        for r in records:
            table.add_row(str(r["rank"]), str(r["structure_id"]), r["formula"], f"{r['energy_per_atom']:.5f}",
                          "" if r["volume_per_atom"] is None else f"{r['volume_per_atom']:.3f}", r["spacegroup"],
                          "" if r["e_above_hull"] is None else f"{r['e_above_hull']:.4f}", {True: "yes", False: "no"}.get(r["converged"], ""))
        out.print(table)
    return 0


def _hull_methods(session, name: str) -> list[str]:
    """Energy methods with hull entries in campaign ``name``, rm_pseudo first."""
    from sqlalchemy import select

    from atomscreen.store.models import Campaign, HullEntry

    query = select(HullEntry.method).join(Campaign, Campaign.id == HullEntry.campaign_id).where(Campaign.name == name).distinct()
    return sorted(session.scalars(query).all(), key=lambda m: (m != "rm_pseudo", m))


def cmd_hull(args: argparse.Namespace) -> int:
    from pymatgen.core import Composition

    from atomscreen.analysis.plots import hull_plot
    from atomscreen.store import ranked
    from atomscreen.store.api import hull_rows

    engine = _campaign_engine(args)
    with transaction(engine) as session:
        available = _hull_methods(session, args.name)
        methods = available if args.method == "all" else [args.method]
        by_method = {m: hull_rows(session, args.name, method=m) for m in methods}
        off_hull = [r.formula for r in ranked(session, args.name) if r.e_above_hull is None]
    for chemsys in sorted({"-".join(sorted(str(e) for e in Composition(f).elements)) for f in off_hull}):
        out.print(f"note: no hull for structures in {chemsys}: an element of it has no pure-element structure in this campaign "
                  "to serve as reference", markup=False)
    if not any(by_method.values()):
        raise CLIError(f"campaign {args.name!r} has no {args.method} hull entries (hulls here: {', '.join(available) or 'none'}; "
                       "no finished structures, or every system lacked an elemental reference)")
    for method, rows in by_method.items():
        kind = "pseudo hull" if method == "rm_pseudo" else "hull"
        table = Table("chemsys", "formula", "id", "eV/atom", "formation", "above hull", "stable", title=f"{args.name}: {kind} ({method})")
        shown = [r for r in rows if r["is_stable"] or r["e_above_hull"] <= args.within]
        for r in shown:
            table.add_row(r["chemsys"], r["formula"], str(r["structure_id"]), f"{r['energy_per_atom']:.5f}", f"{r['formation_energy_per_atom']:.5f}",
                          f"{r['e_above_hull']:.4f}", "yes" if r["is_stable"] else "")
        out.print(table)
        out.print(f"{method}: {sum(r['is_stable'] for r in rows)} stable of {len(rows)} structures; showing those within {args.within} eV/atom of the hull")
    if args.plot:
        written = hull_plot({m: rows for m, rows in by_method.items() if rows}, args.plot, title=args.name)
        out.print(f"figure(s) written: {', '.join(str(w) for w in written)}")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    import json

    from atomscreen.store.api import campaign_report

    engine = _campaign_engine(args)
    with transaction(engine) as session:
        report = campaign_report(session, args.name)
    if args.format == "json":
        import dataclasses

        print(json.dumps(dataclasses.asdict(report), indent=1))
        return 0
    method = report.rescore_method
    table = Table("formula", "gen.", "conv.", "uniq.", "match", "best RM", "resc.", "fail", f"best {method or 're-scored'}", "R", "s",
                  title=f"{args.name}: per composition (generated, converged, unique, matching a reference, best pseudo "
                        f"energy, re-scored, calculator failures, best re-scored energy in eV/atom, Pearson R of pseudo vs "
                        f"re-scored energy, task time)")
    for r in report.rows:
        table.add_row(r.formula, str(r.generated), str(r.converged), str(r.unique), str(r.matched),
                      "" if r.best_pseudo is None else f"{r.best_pseudo:.4f}", str(r.rescored), str(r.rescore_failed),
                      "" if r.best_rescored is None else f"{r.best_rescored:.4f}", "" if r.pearson_r is None else f"{r.pearson_r:.2f}",
                      f"{r.time_s:.0f}")
    (out if out.is_terminal else Console(highlight=False, width=120)).print(table)  # pipes get 120 columns, not 80
    out.print(f"unique candidates matching a reference structure: {report.matched_unique}")
    if method:
        r = "n/a (fewer than 3 pairs)" if report.pearson_r is None else f"{report.pearson_r:.3f}"
        across = len({c.reduced_formula for c in report.lowest}) > 1
        out.print(f"Pearson R between rm_pseudo and {method} energy per atom over {report.n_pairs} re-scored structures: {r}"
                  + (" (across compositions: composition trends dominate it; R per composition in the table)" if across else ""))
    for check in report.lowest:
        if check.reference_name is None:
            verdict = "matches no reference structure"
        else:
            lowest = "the lowest-energy reference" if check.reference_energy_rank == 1 else f"reference energy rank {check.reference_energy_rank}"
            verdict = f"matches {check.reference_name} ({lowest})"
        out.print(f"lowest {check.reduced_formula} by {check.method}: #{check.structure_id} {check.formula} "
                  f"{check.energy_per_atom:.4f} eV/atom, {verdict}", markup=False)
    for sid, m, error in report.failures:
        out.print(f"[red]{m} failed[/red] on structure {sid}: {error.splitlines()[-1] if error else ''}")
    if report.validity:
        _print_validity(args.name, report.validity)
    return 0


_CHECK_HEADERS = {"bonds_determined": "bonds", "sanitization": "sanit.", "inchi_convertible": "InChI", "all_atoms_connected": "conn.",
                  "no_radicals": "no rad.", "bond_lengths": "lengths", "bond_angles": "angles", "internal_steric_clash": "clash",
                  "aromatic_ring_flatness": "arom. flat", "nonaromatic_ring_nonflatness": "ring pucker",
                  "double_bond_flatness": "C=C flat", "internal_energy": "energy"}


def _print_validity(name: str, rows) -> None:
    """The validity table: % passing each check (of the molecules it could run on), all checks, SMILES, EDM."""
    table = Table("formula", "from", "n", *_CHECK_HEADERS.values(), "all", "unique", "novel", "EDM stable", "timeout",
                  title=f"{name}: chemical validity, % of molecules passing (RDKit bond perception, PoseBusters 'mol' checks); "
                        f"from: generated (gen.) or after re-scoring (resc.); unique / novel: distinct canonical SMILES, and those "
                        f"not in the training set; EDM: valence stability")
    table.columns[0].no_wrap = True
    for r in rows:
        rates = [("" if r.assessed[c] == 0 else f"{100 * r.passed[c] / r.assessed[c]:.0f}") for c in _CHECK_HEADERS]
        table.add_row(r.formula, "gen." if r.origin == "rss" else "resc.", str(r.checked), *rates,
                      f"{100 * r.passes_all / r.checked:.0f}", str(r.unique_smiles), "" if r.novel_smiles is None else str(r.novel_smiles),
                      f"{100 * r.edm_molecule_stable / r.checked:.0f}", str(r.timeouts))
    (out if out.is_terminal else Console(highlight=False, width=200)).print(table)


def cmd_match(args: argparse.Namespace) -> int:
    from atomscreen.compute.runner import match_campaign
    from atomscreen.data import read_dataset
    from atomscreen.evaluate.match import MatchSettings
    from atomscreen.store import get_campaign

    engine = _campaign_engine(args)
    path = Path(args.references)
    if not path.is_file():
        raise CLIError(f"--references {args.references}: no such file")
    references = read_dataset(args.format, str(path))
    with transaction(engine) as session:
        campaign_id = get_campaign(session, args.name).id
    settings = MatchSettings(args.ltol, args.stol, args.angle_tol)
    handle = None
    if args.workers > 1:
        from atomscreen.campaign import ClusterSpec
        from atomscreen.compute.cluster import open_cluster

        handle = open_cluster(ClusterSpec(n_workers=args.workers), None, dashboard_address=":0")
    try:
        n = match_campaign(engine, campaign_id, references, str(path.resolve()), settings, top_k=args.top_k,
                           client=handle.client if handle else None, energy_column=args.energy_column)
    finally:
        if handle is not None:
            handle.close()
    out.print(f"{n} unique structures of {args.name!r} match one of {len(references)} structures in {path} "
              f"(StructureMatcher ltol {args.ltol}, stol {args.stol}, angle_tol {args.angle_tol}); "
              f"see table structure_match or platform report {args.name}")
    return 0


def cmd_trajectory_energies(args: argparse.Namespace) -> int:
    """Single points of a real method (xtb, chgnet, a factory) at every stored frame of chosen structures' trajectories,
    stored as a trajectory of that method on the same structure."""
    import numpy as np
    from ase import Atoms
    from sqlalchemy import select

    from atomscreen.evaluate.calculators import CalculatorError, method_name, single_points
    from atomscreen.store import get_campaign
    from atomscreen.store.api import TrajectoryRecord, add_trajectory, trajectory
    from atomscreen.store.models import Ranking, Structure, Trajectory

    engine = _campaign_engine(args)
    target = method_name(args.method)
    with transaction(engine) as session:
        campaign_id = get_campaign(session, args.name).id
        if args.structure:
            ids = list(args.structure)
        else:
            ids = list(session.scalars(select(Ranking.structure_id).where(
                Ranking.campaign_id == campaign_id, Ranking.method == args.source, Ranking.scope == "composition",
                Ranking.rank <= args.top).order_by(Ranking.structure_id)))
        records = {}
        for sid in ids:
            rec = trajectory(session, sid, args.source)
            if rec is None or session.scalar(select(Structure.campaign_id).where(Structure.id == sid)) != campaign_id:
                raise CLIError(f"structure {sid} has no {args.source} trajectory (trajectory_every was 0, or the id is not in {args.name!r})")
            done = session.scalar(select(Trajectory.id).where(Trajectory.structure_id == sid, Trajectory.method == target))
            if done is None:
                records[sid] = rec
    if not records:
        out.print(f"nothing to do: {len(ids)} structure(s) already have {target} trajectories" if ids else "no structures selected")
        return 0
    failures = 0
    for n, (sid, rec) in enumerate(records.items(), start=1):
        with transaction(engine) as session:
            row = session.get(Structure, sid)
            numbers, pbc = row.numbers, [c == "T" for c in row.pbc]
        frames = [Atoms(numbers=numbers, positions=p, cell=c, pbc=pbc) for p, c in zip(rec.positions, rec.cells)]
        try:
            energies, fmax, errors = single_points(frames, args.method, timeout_s=args.timeout)
        except CalculatorError as exc:
            raise CLIError(str(exc)) from None
        failures += sum(e is not None for e in errors)
        with transaction(engine) as session:
            add_trajectory(session, sid, TrajectoryRecord(target, rec.steps, np.asarray(energies), np.asarray(fmax), rec.positions, rec.cells))
        out.print(f"[{n}/{len(records)}] structure {sid}: {len(frames)} frames, {target} energy {energies[0]:.4f} -> {energies[-1]:.4f} eV")
    out.print(f"stored {len(records)} {target} trajectories (frames of the {args.source} relaxations); {failures} frame(s) failed (NaN)")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from atomscreen.store.api import export_structures

    engine = _campaign_engine(args)
    with transaction(engine) as session:
        frames = export_structures(session, args.name, stable_only=args.stable_only, include_duplicates=args.all)
    if not frames:
        raise CLIError(f"nothing to export from {args.name!r}" + (" (no stable structures)" if args.stable_only else ""))
    suffix = {"extxyz": ".extxyz", "cif": "", "ase-db": ".db"}[args.format]
    target = Path(args.output or f"{args.name}{'-stable' if args.stable_only else ''}{suffix or '-cif'}")
    from ase.io import write

    if args.format == "extxyz":
        write(target, frames, format="extxyz")
    elif args.format == "ase-db":
        from ase.db import connect

        if target.exists():
            raise CLIError(f"{target} exists; choose another --output or remove it")
        from ase.calculators.singlepoint import SinglePointCalculator
        from ase.db.core import reserved_keys

        with connect(target) as db:
            for atoms in frames:
                info = atoms.info
                if "energy" in info:  # ASE db keeps energies on a calculator, not as a key
                    atoms.calc = SinglePointCalculator(atoms, energy=info["energy"])
                pairs = {k: v for k, v in info.items() if isinstance(v, (int, float, str, bool)) and k not in reserved_keys and k != "formula"}
                db.write(atoms, key_value_pairs=pairs)
    else:
        target.mkdir(parents=True, exist_ok=True)
        for atoms in frames:
            write(target / f"{atoms.info['structure_id']}_{atoms.info['formula']}.cif", atoms, format="cif")
    out.print(f"wrote {len(frames)} structures to {target}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="platform", description="atomscreen: high-throughput screening of molecules and crystals")
    parser.add_argument("--version", action="version", version=f"atomscreen {atomscreen.__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress details")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    db_help = "database URL (default: $ATOMSCREEN_DB, else sqlite:///atomscreen.db); a plain path means a SQLite file"

    validate = commands.add_parser("validate", help="check campaign (or train) files and report every problem")
    validate.add_argument("campaigns", nargs="+", metavar="CAMPAIGN.yaml")
    validate.set_defaults(func=cmd_validate)

    db = commands.add_parser("db", help="create, upgrade or inspect the database")
    db_commands = db.add_subparsers(dest="db_command", required=True, metavar="ACTION")
    upgrade = db_commands.add_parser("upgrade", help="create or upgrade the schema")
    upgrade.add_argument("--db", help=db_help)
    upgrade.add_argument("--revision", default="head", help="target revision (default: head)")
    upgrade.set_defaults(func=cmd_db_upgrade)
    downgrade = db_commands.add_parser("downgrade", help="downgrade the schema (base removes every table)")
    downgrade.add_argument("revision")
    downgrade.add_argument("--db", help=db_help)
    downgrade.set_defaults(func=cmd_db_downgrade)
    current = db_commands.add_parser("current", help="print the schema revision")
    current.add_argument("--db", help=db_help)
    current.set_defaults(func=cmd_db_current)

    train_cmd = commands.add_parser("train", help="train an RM pseudo potential from a train YAML file and store it")
    train_cmd.add_argument("config", metavar="TRAIN.yaml")
    train_cmd.add_argument("--db", help=db_help)
    train_cmd.add_argument("--output", help="also write the checkpoint to this file")
    train_cmd.add_argument("--device", help="torch device, e.g. cpu or cuda (default: the file's, else cpu)")
    train_cmd.add_argument("--quiet", action="store_true", help="no progress bar")
    train_cmd.set_defaults(func=cmd_train)

    status = commands.add_parser("status", help="tasks by state, structures and failures of campaigns")
    status.add_argument("campaign", nargs="?", help="a campaign name or its YAML file (default: all campaigns)")
    status.add_argument("--db", help=db_help)
    status.set_defaults(func=cmd_status)

    submit = commands.add_parser("submit", help="validate, record and run a campaign on Dask (resumes it if already recorded)")
    submit.add_argument("campaign", metavar="CAMPAIGN.yaml")
    submit.add_argument("--db", help=db_help + "; the campaign's database: key comes after $ATOMSCREEN_DB")
    submit.add_argument("--scheduler", help="address of a running Dask scheduler, e.g. tcp://host:8786 (default: a LocalCluster)")
    submit.add_argument("--dashboard-address", default=":8787", help="LocalCluster dashboard address (default :8787)")
    submit.add_argument("--quiet", action="store_true", help="no progress bars")
    submit.set_defaults(func=cmd_submit)

    resume_cmd = commands.add_parser("resume", help="run the tasks of a campaign that are not done (after a crash or failures)")
    resume_cmd.add_argument("name")
    resume_cmd.add_argument("--db", help=db_help)
    resume_cmd.add_argument("--scheduler", help="address of a running Dask scheduler (default: a LocalCluster)")
    resume_cmd.add_argument("--dashboard-address", default=":8787", help="LocalCluster dashboard address (default :8787)")
    resume_cmd.add_argument("--quiet", action="store_true", help="no progress bars")
    resume_cmd.set_defaults(func=cmd_resume)

    results = commands.add_parser("results", help="unique structures of a campaign in rank order")
    results.add_argument("name")
    results.add_argument("--top", type=int, help="only the first K")
    results.add_argument("--composition", help="rank within this composition, e.g. C8")
    results.add_argument("--format", choices=["table", "csv", "json"], default="table")
    results.add_argument("--method", default="rm_pseudo", help="rank by this energy method (rm_pseudo, chgnet, xtb_gfn2, ...)")
    results.add_argument("--db", help=db_help)
    results.set_defaults(func=cmd_results)

    hull = commands.add_parser("hull", help="the pseudo convex hull of a campaign (table, and a figure with --plot)")
    hull.add_argument("name")
    hull.add_argument("--plot", metavar="FILE.png", help="write the hull figure (energy versus volume for one element)")
    hull.add_argument("--within", type=float, default=0.05, help="list structures up to this far above the hull (eV/atom, default 0.05)")
    hull.add_argument("--method", default="all", help="which hull: rm_pseudo, a re-scoring method, or all (default)")
    hull.add_argument("--db", help=db_help)
    hull.set_defaults(func=cmd_hull)

    report = commands.add_parser("report", help="per-composition statistics, pseudo vs re-scored energies, reference matches")
    report.add_argument("name")
    report.add_argument("--format", choices=["table", "json"], default="table")
    report.add_argument("--db", help=db_help)
    report.set_defaults(func=cmd_report)

    match = commands.add_parser("match", help="mark unique structures that match a reference structure (StructureMatcher)")
    match.add_argument("name")
    match.add_argument("--references", required=True, metavar="FILE", help="structures to match against (CDVAE CSV, extxyz, CIF, ...)")
    match.add_argument("--format", default="auto", help="reference file format (default: from the file name)")
    match.add_argument("--ltol", type=float, default=0.3)
    match.add_argument("--stol", type=float, default=0.5)
    match.add_argument("--angle-tol", type=float, default=10.0)
    match.add_argument("--energy-column", default="energy_per_atom", help="the references' energy per atom column (default energy_per_atom)")
    match.add_argument("--top-k", type=int, help="only the best K unique structures per composition and method (default: all)")
    match.add_argument("--workers", type=int, default=1, help="compare on a local Dask cluster of this many processes (default 1: here)")
    match.add_argument("--db", help=db_help)
    match.set_defaults(func=cmd_match)

    traj = commands.add_parser("trajectory-energies", help="single points of a real method along stored relaxation trajectories")
    traj.add_argument("name")
    traj.add_argument("--method", required=True, help="xtb, chgnet or 'module.path:function'")
    traj.add_argument("--structure", type=int, nargs="*", help="structure ids (default: the best --top per composition)")
    traj.add_argument("--top", type=int, default=3, help="without --structure: the best K unique structures per composition (default 3)")
    traj.add_argument("--source", default="rm_pseudo", help="whose trajectories and ranking (default rm_pseudo)")
    traj.add_argument("--timeout", type=float, default=None, help="seconds per frame; each frame then runs in a child process")
    traj.add_argument("--db", help=db_help)
    traj.set_defaults(func=cmd_trajectory_energies)

    export = commands.add_parser("export", help="write a campaign's unique structures to files")
    export.add_argument("name")
    export.add_argument("--format", choices=["extxyz", "cif", "ase-db"], required=True)
    export.add_argument("--stable-only", action="store_true", help="only structures on the hull")
    export.add_argument("--all", action="store_true", help="include duplicates (default: unique structures only)")
    export.add_argument("--output", help="file (extxyz, ase-db) or folder (cif); default from the campaign name")
    export.add_argument("--db", help=db_help)
    export.set_defaults(func=cmd_export)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    for name in ("distributed", "dask"):  # Dask logs every connection at INFO: keep the terminal for progress unless -v
        logging.getLogger(name).setLevel(logging.INFO if args.verbose else logging.WARNING)
    from atomscreen.store.migrate import SchemaError

    try:
        return args.func(args)
    except CampaignError as exc:
        err.print(str(exc), markup=False)
    except (CLIError, DatabaseURLError, SchemaError) as exc:
        err.print(f"error: {exc}", markup=False)
    except (OperationalError, ProgrammingError) as exc:
        err.print(f"database error: {exc.orig or exc}", markup=False)
    except Exception as exc:
        # runner and planning errors carry their own advice; anything else is a bug and keeps its traceback
        from atomscreen.compute.plan import PlanError
        from atomscreen.compute.runner import RunnerError

        if not isinstance(exc, (RunnerError, PlanError)):
            raise
        err.print(f"error: {exc}", markup=False)
    return 1


if __name__ == "__main__":
    sys.exit(main())
