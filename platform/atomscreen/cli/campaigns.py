"""Campaign commands: validate, submit, resume, status (with the progress display of a run), delete."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from rich.table import Table

from atomscreen.campaign import CampaignError, load_campaign
from atomscreen.cli.common import (
    CLIError,
    add_cluster_options,
    add_db_option,
    campaign_engine,
    err,
    open_engine,
    out,
    redact,
    require_head,
)
from atomscreen.store.engine import resolve_url, transaction


def add_commands(commands) -> None:
    validate = commands.add_parser("validate", help="check campaign (or train) files and report every problem")
    validate.add_argument("campaigns", nargs="+", metavar="CAMPAIGN.yaml")
    validate.set_defaults(func=cmd_validate)

    status = commands.add_parser("status", help="tasks by state, structures and failures of campaigns")
    status.add_argument("campaign", nargs="?", help="a campaign name or its YAML file (default: all campaigns)")
    add_db_option(status)
    status.set_defaults(func=cmd_status)

    submit = commands.add_parser("submit", help="validate, record and run a campaign on Dask (resumes it if already "
                                                "recorded)")
    submit.add_argument("campaign", metavar="CAMPAIGN.yaml")
    add_db_option(submit, "; the campaign's database: key comes after $ATOMSCREEN_DB")
    add_cluster_options(submit)
    submit.set_defaults(func=cmd_submit)

    resume = commands.add_parser("resume", help="run the tasks of a campaign that are not done (after a crash or "
                                                "failures)")
    resume.add_argument("name")
    add_db_option(resume)
    add_cluster_options(resume)
    resume.set_defaults(func=cmd_resume)

    remove = commands.add_parser("delete", help="remove a campaign and all its rows (tasks, structures, energies, "
                                                "trajectories, ranks, hulls) in one transaction")
    remove.add_argument("name")
    remove.add_argument("--yes", action="store_true", help="do not ask for confirmation")
    add_db_option(remove)
    remove.set_defaults(func=cmd_delete)


def _describe(path: str, spec) -> str:
    from atomscreen.campaign import TrainFileSpec

    if isinstance(spec, TrainFileSpec):
        return f"{path}: train file {spec.name!r} ({spec.kind}) on {spec.dataset.label}"
    formulas = spec.compositions.expand()
    shown = ", ".join(formulas[:8]) + (f", ... ({len(formulas)} in all)" if len(formulas) > 8 else "")
    if spec.compositions.from_training:
        shown += f"{'; ' if formulas else ''}and the {spec.compositions.from_training} most common of the training set"
    generators = ", ".join(f"{b.name} (model {b.model})" if b.model != "default" else b.name
                           for b in spec.generators.rss_blocks + spec.generators.diffusion_blocks)
    stages = []
    for b in spec.generators.diffusion_blocks:
        on = [f"{what} on {b.energy_of(what)[0]}" for what in ("guidance", "accept", "post_relax")
              if getattr(b, what) is not None]
        if on:
            stages.append(f"{b.name} with {', '.join(on)}")
    if spec.relaxation.diffusion_method is not None:
        stages.append(f"relaxation {spec.relaxation.method} (model {spec.relaxation.model})")
    if spec.rescore is not None:
        polish = spec.rescore.polish
        stages.append(f"re-scoring {spec.rescore.energy_method}"
                      + (f" after a {polish.steps}-step polish (model {polish.model})" if polish else ""))
    return (f"{path}: campaign {spec.name!r}, {len(formulas)} composition(s) ({shown}); generators: {generators}"
            + "".join(f"; {s}" for s in stages))


def cmd_validate(args: argparse.Namespace) -> int:
    from atomscreen.campaign import CampaignSpec, load_spec
    from atomscreen.compute.denoisers import check_models

    bad = 0
    for path in args.campaigns:
        try:
            spec = load_spec(path)
            if isinstance(spec, CampaignSpec):
                check_models(spec, str(path))
        except CampaignError as exc:
            bad += 1
            err.print(f"[red]✗[/red] {exc.source}: {len(exc.problems)} problem(s)")
            for problem in exc.problems:
                err.print(f"    {problem}", markup=False)
            continue
        out.print(f"[green]✓[/green] {_describe(path, spec)}")
    return 2 if bad else 0  # as cli.main's USAGE_ERROR


def cmd_status(args: argparse.Namespace) -> int:
    from atomscreen.store import campaign_summaries

    name, campaign_db = args.campaign, None
    if name and (name.endswith((".yaml", ".yml")) or Path(name).is_file()):
        spec = load_campaign(name)
        name, campaign_db = spec.name, spec.database
    engine = open_engine(resolve_url(args.db, campaign_db), must_exist=True)
    require_head(engine)
    with transaction(engine) as session:
        summaries = campaign_summaries(session, name)
    if not summaries:
        if name:
            raise CLIError(f"no campaign named {name!r} in {redact(str(engine.url))}")
        out.print("no campaigns yet")
        return 0
    table = Table("campaign", "status", "pending", "running", "done", "failed", "structures")
    for s in summaries:
        states = (str(s.tasks.get(state, 0)) for state in ("pending", "running", "done", "failed"))
        table.add_row(s.name, s.status, *states, str(s.n_structures))
    out.print(table)
    for s in summaries:
        if s.error:
            out.print(f"[red]{s.name}: {s.error}[/red]")
        for key, error in s.failures:
            out.print(f"  [red]failed[/red] {s.name} task {key}: {error}", markup=True)
    return 0


def progress_reporter(quiet: bool):
    """A rich progress display for training epochs and tasks, plus the Reporter that drives it."""
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    from atomscreen.compute.progress import Reporter

    bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                   TextColumn("{task.fields[info]}"), TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(),
                   console=err, disable=quiet, transient=False)
    state: dict = {}

    def training(epoch: int, epochs: int, loss: float) -> None:
        if "train" not in state:
            state["train"] = bar.add_task("training epochs", total=epochs, info="")
        bar.update(state["train"], completed=epoch, info=f"val loss {loss:.4g}")

    def started(total: int, done: int, n_structures: int, stage: str = "generation") -> None:
        state.update(structures=0, expected=n_structures)
        state["tasks"] = bar.add_task(f"{stage} tasks", total=total, completed=done,
                                      info=f"0/{n_structures} structures")

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
    out.print(f"campaign {outcome.name!r}: [{colour}]{outcome.status}[/{colour}] ({tasks}; {outcome.n_structures} "
              "structures)")
    if outcome.status == "done":
        out.print(f"next: platform results {outcome.name} --top 10 | platform hull {outcome.name} --plot hull.png")
    else:
        out.print(f"errors: platform status {outcome.name}; retry: platform resume {outcome.name}")
    return 0 if outcome.status == "done" else 1


def cmd_submit(args: argparse.Namespace) -> int:
    from atomscreen.compute.runner import submit

    spec = load_campaign(args.campaign)
    url = resolve_url(args.db, spec.database)
    engine = open_engine(url, must_exist=False)
    out.print(f"database: {redact(url)}")
    bar, reporter = progress_reporter(args.quiet)
    with bar:
        outcome = submit(args.campaign, engine, scheduler=args.scheduler, reporter=reporter,
                         dashboard_address=args.dashboard_address)
    return _report(outcome)


def cmd_resume(args: argparse.Namespace) -> int:
    from atomscreen.compute.runner import resume

    engine = open_engine(resolve_url(args.db), must_exist=True)
    bar, reporter = progress_reporter(args.quiet)
    with bar:
        outcome = resume(args.name, engine, scheduler=args.scheduler, reporter=reporter,
                         dashboard_address=args.dashboard_address)
    return _report(outcome)


def cmd_delete(args: argparse.Namespace) -> int:
    from atomscreen.store import delete_campaign, get_campaign

    engine = campaign_engine(args)
    with transaction(engine) as session:
        campaign = get_campaign(session, args.name)
        if not args.yes:
            if not sys.stdin.isatty():
                raise CLIError(f"deleting campaign {args.name!r} needs confirmation: run it in a terminal or add "
                               "--yes")
            answer = input(f"delete campaign {args.name!r} and every row of it from {redact(str(engine.url))}? "
                           "[y/N] ")
            if answer.strip().lower() not in ("y", "yes"):
                out.print("nothing deleted")
                return 0
        removed = delete_campaign(session, campaign.id)
    out.print(f"deleted campaign {args.name!r}: {removed['tasks']} tasks, {removed['structures']} structures")
    return 0

