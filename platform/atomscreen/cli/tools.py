"""Database and model commands: db upgrade/downgrade/current, train, match, trajectory-energies, relax."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from atomscreen.campaign import load_campaign
from atomscreen.cli.common import (
    CLIError,
    add_db_option,
    campaign_engine,
    err,
    open_engine,
    out,
    positive_int,
    redact,
)
from atomscreen.store.engine import resolve_url, transaction


def add_commands(commands) -> None:
    db = commands.add_parser("db", help="create, upgrade or inspect the database")
    actions = db.add_subparsers(dest="db_command", required=True, metavar="ACTION")
    upgrade = actions.add_parser("upgrade", help="create or upgrade the schema")
    add_db_option(upgrade)
    upgrade.add_argument("--revision", default="head", help="target revision (default: head)")
    upgrade.set_defaults(func=cmd_db_upgrade)
    downgrade = actions.add_parser("downgrade", help="downgrade the schema (base removes every table)")
    downgrade.add_argument("revision")
    add_db_option(downgrade)
    downgrade.set_defaults(func=cmd_db_downgrade)
    current = actions.add_parser("current", help="print the schema revision")
    add_db_option(current)
    current.set_defaults(func=cmd_db_current)

    train = commands.add_parser("train", help="train an RM pseudo potential or a diffusion denoiser from a train YAML "
                                              "file and store it")
    train.add_argument("config", metavar="TRAIN.yaml")
    add_db_option(train)
    train.add_argument("--output", help="also write the checkpoint to this file")
    train.add_argument("--device", help="torch device, e.g. cpu or cuda (default: the file's, else cpu)")
    train.add_argument("--batch-size", type=positive_int,
                       help="structures per step (default: the file's; larger fills a GPU)")
    train.add_argument("--max-seconds", type=float, help="stop after the epoch that passes this wall time")
    train.add_argument("--quiet", action="store_true", help="no progress bar")
    train.add_argument("--sample-every", type=int, default=0,
                       help="denoisers: every N steps, score DDPM samples and redraw OUTPUT.png (0: never)")
    train.add_argument("--sample-molecules", type=positive_int,
                       default=32, help="denoisers: molecules per sample score")
    train.set_defaults(func=cmd_train)
    _add_match(commands)
    _add_trajectory_energies(commands)
    _add_relax(commands)


def _add_relax(commands) -> None:
    relax = commands.add_parser("relax", help="relax stored molecules by reverse diffusion (MoreRed ITP / AS / JT)")
    relax.add_argument("name", help="the campaign")
    which = relax.add_mutually_exclusive_group(required=True)
    which.add_argument("--structures", type=int, nargs="+", metavar="ID", help="structure ids")
    which.add_argument("--origin", help="every molecule of this origin that did not explode (e.g. rss, diffusion, "
                                        "rescore, import)")
    relax.add_argument("--method", default="morered_jt", choices=["morered_itp", "morered_as", "morered_jt"])
    relax.add_argument("--model", required=True, help="a denoiser of the campaign (its name under models:) or a "
                                                      "denoiser checkpoint file")
    relax.add_argument("--time-model", help="morered_itp / morered_as: a separate time predictor (default: the "
                                            "denoiser's own time head)")
    relax.add_argument("--max-steps", type=positive_int, default=1000, help="reverse-step cap (MoreRed: 1000)")
    relax.add_argument("--stop-at", type=int, default=0, help="converged when the rounded predicted step is <= this")
    relax.add_argument("--trajectory-every", type=positive_int, default=10, help="reverse steps between stored frames")
    relax.add_argument("--batch-size", type=positive_int, default=64, help="molecules relaxed together")
    relax.add_argument("--seed", type=int, help="default: the campaign's seed")
    add_db_option(relax)
    relax.set_defaults(func=cmd_relax)


def cmd_relax(args: argparse.Namespace) -> int:
    """Relax stored molecules by reverse diffusion and store them as children (origin diffusion_relax)."""
    from atomscreen.compute.relax_stored import relax_stored, structures_of_origin

    engine = campaign_engine(args)
    ids = args.structures or structures_of_origin(engine, args.name, args.origin)
    outcome = relax_stored(engine, args.name, ids, method=args.method, model=args.model, time_model=args.time_model,
                           max_steps=args.max_steps, stop_at=args.stop_at, trajectory_every=args.trajectory_every,
                           seed=args.seed, batch_size=args.batch_size,
                           progress=lambda done, total: out.print(f"relaxed {done}/{total}"))
    if outcome.skipped:
        out.print(f"{len(outcome.skipped)} molecule(s) already relaxed by {args.method} on this model: skipped")
    if outcome.new_ids:
        out.print(f"stored {len(outcome.new_ids)} relaxed molecule(s) (origin diffusion_relax, ids "
                  f"{outcome.new_ids[0]}..{outcome.new_ids[-1]}); {outcome.converged} reached the stopping step "
                  f"within {args.max_steps}")
    return 0


def _add_match(commands) -> None:
    match = commands.add_parser("match", help="mark unique structures that match a reference structure "
                                              "(StructureMatcher)")
    match.add_argument("name")
    match.add_argument("--references", required=True, metavar="FILE", help="structures to match against (CDVAE CSV, "
                                                                           "extxyz, CIF, ...)")
    match.add_argument("--format", default="auto", help="reference file format (default: from the file name)")
    match.add_argument("--ltol", type=float, default=0.3)
    match.add_argument("--stol", type=float, default=0.5)
    match.add_argument("--angle-tol", type=float, default=10.0)
    match.add_argument("--energy-column", default="energy_per_atom", help="the references' energy per atom column "
                                                                          "(default energy_per_atom)")
    match.add_argument("--top-k", type=positive_int,
                       help="only the best K unique structures per composition and method "
                                                 "(default: all)")
    match.add_argument("--workers", type=int, default=1, help="compare on a local Dask cluster of this many processes "
                                                              "(default 1: here)")
    add_db_option(match)
    match.set_defaults(func=cmd_match)


def _add_trajectory_energies(commands) -> None:
    traj = commands.add_parser("trajectory-energies", help="single points of a real method along stored relaxation "
                                                           "trajectories")
    traj.add_argument("name")
    traj.add_argument("--method", required=True, help="xtb, chgnet or 'module.path:function'")
    traj.add_argument("--structure", type=int, nargs="*",
                      help="structure ids (default: the best --top per composition)")
    traj.add_argument("--top", type=positive_int,
                      default=3, help="without --structure: the best K unique structures per "
                                                         "composition (default 3)")
    traj.add_argument("--source", default="rm_pseudo", help="whose trajectories and ranking (default rm_pseudo)")
    traj.add_argument("--timeout", type=float, default=None, help="seconds per frame; each frame then runs in a child "
                                                                  "process")
    add_db_option(traj)
    traj.set_defaults(func=cmd_trajectory_energies)


def cmd_db_upgrade(args: argparse.Namespace) -> int:
    from atomscreen.store import migrate

    url = resolve_url(args.db)
    engine = open_engine(url, must_exist=False)
    before = migrate.current_revision(engine)
    migrate.upgrade(engine, args.revision)
    after = migrate.current_revision(engine)
    action = "already at" if before == after else f"upgraded from {before or 'empty'} to"
    out.print(f"{redact(url)}: {action} revision {after}")
    return 0


def cmd_db_downgrade(args: argparse.Namespace) -> int:
    from atomscreen.store import migrate

    url = resolve_url(args.db)
    engine = open_engine(url, must_exist=True)
    migrate.downgrade(engine, args.revision)
    out.print(f"{redact(url)}: now at revision {migrate.current_revision(engine) or 'base (empty)'}")
    return 0


def cmd_db_current(args: argparse.Namespace) -> int:
    from atomscreen.store import migrate

    current = migrate.current_revision(open_engine(resolve_url(args.db), must_exist=True))
    head = migrate.head_revision()
    note = "(head)" if current == head else f"(head is {head}: run platform db upgrade)"
    out.print(f"{current or 'none'} {note}")
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    from atomscreen.campaign import TrainFileSpec
    from atomscreen.compute.models import configs, train_from_spec
    from atomscreen.store import migrate

    spec = load_campaign(args.config, root=TrainFileSpec)
    if spec.kind == "denoiser":
        return _train_denoiser(args, spec)
    output = _output(args, spec)
    structures = spec.dataset.read()
    overrides = {"batch_size": args.batch_size, "max_seconds": args.max_seconds}
    train_cfg = configs(spec, args.device, **overrides)[2]
    n_epochs = train_cfg.epochs
    out.print(f"training {spec.name!r} on {len(structures)} structures from {spec.dataset.label} ({n_epochs} epochs, "
              f"{train_cfg.device})")
    engine = open_engine(resolve_url(args.db, spec.database), must_exist=False)
    migrate.upgrade(engine)
    with Progress(TextColumn("epoch {task.completed}/{task.total}"), BarColumn(), TextColumn("{task.fields[loss]}"),
                  TimeElapsedColumn(), TimeRemainingColumn(), console=err, disable=args.quiet) as bar:
        task = bar.add_task("train", total=n_epochs, loss="")
        checkpoint = train_from_spec(spec, structures, device=args.device, progress=lambda epoch, r: bar.update(
            task, completed=epoch, loss=f"val loss {r['val_loss']:.4g}"), **overrides)
    row = _store(engine, spec.name, checkpoint, output)
    m = checkpoint.metrics
    out.print(f"model {row.id} sha256 {row.sha256}: {m['n_parameters']} parameters, "
              f"validation loss {m['val_loss']:.4g} "
              f"(force MSE {m['val_force_mse']:.4g} (eV/Å)^2, stress MSE {m['val_stress_mse']:.4g}), "
              f"{m['train_time_s']:.0f} s, {m['epochs']} epochs ({m['train_time_s'] / m['epochs']:.2f} s each), "
              f"{m['steps']} steps of {train_cfg.batch_size} on {train_cfg.device}")
    return 0


def _store(engine, name: str, checkpoint, path: Path | None):
    """Write a trained model's file (whole, or not at all) and then store it in the model table; returns the row. A
    file that cannot be written leaves no row; a row that cannot be stored leaves no file."""
    from atomscreen.store import add_model

    if path:
        partial = path.with_name(f".{path.name}.partial")
        try:
            checkpoint.save(partial)
            os.replace(partial, path)
        finally:
            partial.unlink(missing_ok=True)
    try:
        with transaction(engine) as session:
            row = add_model(session, kind=checkpoint.kind, weights=checkpoint.weights_bytes(),
                            hyperparameters=checkpoint.hyperparameters(), training_data=checkpoint.training_data,
                            metrics=checkpoint.metrics, name=name)
    except BaseException:
        if path:
            path.unlink(missing_ok=True)
        raise
    if path:
        out.print(f"checkpoint written to {path}")
    return row


def _output(args: argparse.Namespace, spec) -> Path | None:
    """Where the checkpoint goes, checked before any training: its folder must exist and be writable."""
    output = args.output or spec.output
    if not output:
        return None
    path = Path(output) if args.output or Path(output).is_absolute() else Path(args.config).parent / output
    where = "--output" if args.output else f"{args.config}: output"
    if path.is_dir():
        raise CLIError(f"{where} {path} is a folder; give the checkpoint's file name")
    if not path.parent.is_dir():
        raise CLIError(f"{where} {path}: the folder {path.parent} does not exist")
    if not os.access(path.parent, os.W_OK):
        raise CLIError(f"{where} {path}: the folder {path.parent} is not writable")
    return path


def _train_denoiser(args: argparse.Namespace, spec) -> int:
    """`platform train` for kind: denoiser; resumable: a run stopped or killed continues from OUTPUT.resume.pt."""
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    from atomscreen.compute.denoisers import train_denoiser_from_spec
    from atomscreen.store import migrate

    output = _output(args, spec)
    resume = output.with_suffix(".resume.pt") if output else None
    engine = open_engine(resolve_url(args.db, spec.database), must_exist=False)
    migrate.upgrade(engine)
    steps = int(spec.hyperparameters.get("steps", 1000))
    out.print(f"training denoiser {spec.name!r} on {spec.dataset.label} ({steps} steps"
              + (f", resuming from {resume}" if resume and resume.exists() else "") + ")")
    with Progress(TextColumn("step {task.completed}/{task.total}"), BarColumn(), TextColumn("{task.fields[loss]}"),
                  TimeElapsedColumn(), TimeRemainingColumn(), console=err, disable=args.quiet) as bar:
        task = bar.add_task("train", total=steps, loss="")
        progress = lambda step, r: bar.update(task, completed=step, loss=f"loss {r['loss'] or 0:.4g}")  # noqa: E731
        checkpoint = train_denoiser_from_spec(
            spec, device=args.device, max_seconds=args.max_seconds, batch_size=args.batch_size, resume_path=resume,
            progress=progress, sample_every=args.sample_every, sample_molecules=args.sample_molecules,
            figure=output.with_suffix(".png") if output else None)
    row = _store(engine, spec.name, checkpoint, output)
    m = checkpoint.metrics
    out.print(f"model {row.id} sha256 {row.sha256}: denoiser of {m['parameters']} parameters, {m['steps']} steps of "
              f"{checkpoint.training['batch_size']} ({m['molecules_seen']} molecules) in {m['seconds']:.0f} s, best "
              f"validation loss {m['best_val_loss']:.4g}; split {checkpoint.training_data['n_train']} / "
              f"{checkpoint.training_data['n_validation']} / {checkpoint.training_data['n_test']}")
    return 0


def cmd_match(args: argparse.Namespace) -> int:
    from atomscreen.campaign import ClusterSpec
    from atomscreen.compute.dispatch import Cluster
    from atomscreen.compute.finalize import match_campaign
    from atomscreen.data import read_dataset
    from atomscreen.evaluate.match import MatchSettings
    from atomscreen.store import get_campaign

    engine = campaign_engine(args)
    path = Path(args.references)
    if not path.is_file():
        raise CLIError(f"--references {args.references}: no such file")
    references = read_dataset(args.format, str(path))
    with transaction(engine) as session:
        campaign_id = get_campaign(session, args.name).id
    cluster = Cluster(ClusterSpec(n_workers=args.workers), dashboard_address=":0") if args.workers > 1 else None
    try:
        n = match_campaign(engine, campaign_id, references, str(path.resolve()),
                           MatchSettings(args.ltol, args.stol, args.angle_tol), top_k=args.top_k,
                           client=cluster.get() if cluster else None, energy_column=args.energy_column)
    finally:
        if cluster is not None:
            cluster.close()
    out.print(f"{n} unique structures of {args.name!r} match one of {len(references)} structures in {path} "
              f"(StructureMatcher ltol {args.ltol}, stol {args.stol}, angle_tol {args.angle_tol}); "
              f"see table structure_match or platform report {args.name}")
    return 0


def cmd_trajectory_energies(args: argparse.Namespace) -> int:
    """Single points of a real method along stored trajectories, stored as a trajectory of that method."""
    from atomscreen.compute.finalize import trajectory_energies
    from atomscreen.evaluate.calculators import method_name

    engine = campaign_engine(args)
    target = method_name(args.method)

    def shown(n: int, total: int, sid: int, frames: int, energies: list[float]) -> None:
        out.print(f"[{n}/{total}] structure {sid}: {frames} frames, {target} energy {energies[0]:.4f} -> "
                  f"{energies[-1]:.4f} eV")

    selected, stored, failed = trajectory_energies(engine, args.name, args.method, structure_ids=args.structure,
                                                   top=args.top, source=args.source, timeout_s=args.timeout,
                                                   progress=shown)
    if not stored:
        out.print(f"nothing to do: {selected} structure(s) already have {target} trajectories" if selected
                  else "no structures selected")
        return 0
    out.print(f"stored {stored} {target} trajectories (frames of the {args.source} relaxations); {failed} frame(s) "
              "failed (NaN)")
    return 0
