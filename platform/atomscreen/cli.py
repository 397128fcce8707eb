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

    current, head = migrate.current_revision(engine), migrate.head_revision()
    if current != head:
        raise CLIError(f"the database is at revision {current or 'none'} but this atomscreen needs {head}: run platform db upgrade")


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
    structures = read_dataset(dataset.format, dataset.path, name=dataset.name, limit=dataset.limit)
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
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        return args.func(args)
    except CampaignError as exc:
        err.print(str(exc), markup=False)
    except (CLIError, DatabaseURLError) as exc:
        err.print(f"error: {exc}", markup=False)
    except (OperationalError, ProgrammingError) as exc:
        err.print(f"database error: {exc.orig or exc}", markup=False)
    return 1


if __name__ == "__main__":
    sys.exit(main())
