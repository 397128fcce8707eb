"""The campaign driver: record the campaign, provide its models, then run its stages in order.

A stage is one row of :data:`STAGES`: the task kinds it owns, when it applies,
its planner (spec + store state -> typed jobs), and whether it needs the
rankings first. One loop runs every stage: plan -> record tasks -> claim ->
dispatch -> write, then :func:`~atomscreen.compute.finalize.finish`. Only this
process writes to the database; each finished task's results land in one
transaction with its ``done`` mark, so a task that runs twice (a lost worker, a
resumed driver) never adds rows twice, and `resume` runs every task not done.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import yaml
from sqlalchemy.engine import Engine
from sqlalchemy.exc import DBAPIError, OperationalError

from atomscreen.campaign import CampaignSpec, load_campaign, parse_campaign, with_training_compositions
from atomscreen.compute import plan
from atomscreen.compute.dispatch import Cluster, check_gpus, check_scheduler, run_jobs
from atomscreen.compute.finalize import analyse_campaign, finish
from atomscreen.compute.lifecycle import forget_campaign, mark_interrupted, record_campaign
from atomscreen.compute.models import ProvidedModel, provide_models
from atomscreen.compute.progress import CampaignStopped, Outcome, Reporter, RunnerError, Timings
from atomscreen.errors import AtomscreenError, error_text
from atomscreen.jobs import PSEUDO, Origin, TaskKind, from_json
from atomscreen.store import (
    DatabaseUnavailable,
    add_tasks,
    campaign_names,
    campaign_summaries,
    children,
    claim_tasks,
    count_tasks,
    get_campaign,
    migrate,
    open_payloads,
    record_task_failure,
    retry,
    set_campaign_status,
    structure_ids,
    structures,
    top_candidates,
    transaction,
    write_task_result,
)

__all__ = ["STAGES", "Context", "Outcome", "Reporter", "RunnerError", "Stage", "record_tasks", "resume", "run", "stage",
           "submit"]


@dataclass(frozen=True)
class Context:
    """What a planner may use: the store, the campaign, its spec and models."""

    engine: Engine
    campaign_id: int
    spec: CampaignSpec
    models: dict[str, ProvidedModel]
    timings: Timings = field(default_factory=Timings)


@dataclass(frozen=True)
class Stage:
    """One step of a campaign: its task kinds, when it applies, its planner, and how to announce it."""

    name: str
    kinds: tuple[TaskKind, ...]
    applies: Callable[[CampaignSpec], bool]
    plan: Callable[[Context], list[plan.PlannedTask]]
    incremental: bool = False  # planned again on every run (new inputs may have appeared), not only once
    needs_ranking: bool = False  # plans from the rankings: analyse first
    message: Callable[[CampaignSpec], str | None] = lambda spec: None


def _generation(ctx: Context) -> list[plan.PlannedTask]:
    return plan.generation_tasks(ctx.spec, {name: m.training_data for name, m in ctx.models.items()})


def _diffusion_relaxation(ctx: Context) -> list[plan.PlannedTask]:
    """MoreRed relaxation of every generated molecule the generators keep (not exploded; rss.select)."""
    with transaction(ctx.engine) as session:
        ids = structure_ids(session, ctx.campaign_id, [Origin.RSS, Origin.DIFFUSION])
        molecules = [a for a in structures(session, ids=ids)
                     if a.info.get("relax_status") != "exploded" and a.info.get("selected", True)]
    return plan.diffusion_relax_tasks(ctx.spec, molecules)


def _rescoring(ctx: Context) -> list[plan.PlannedTask]:
    """Re-scoring of the top-K unique candidates per composition (by every pseudo energy) and of every reference;
    after a MoreRed relaxation stage, each candidate's relaxed child is what is re-scored."""
    with transaction(ctx.engine) as session:
        top = [i for method in ctx.spec.candidate_methods
               for i in top_candidates(session, ctx.campaign_id, method=method, top_k=ctx.spec.rescore.top_k)]
        r = ctx.spec.relaxation
        if r.diffusion_method is not None:  # the stage's own children (not `platform relax` ones)
            relaxed = children(session, ctx.campaign_id, Origin.DIFFUSION_RELAX, sampler=r.diffusion_method,
                               model_id=ctx.models[r.model].id, from_tasks=True)
            post = set(structure_ids(session, ctx.campaign_id, [Origin.POST_RELAX]))  # relaxed by their energy model
            missing = [i for i in top if i not in relaxed and i not in post]
            if missing:
                raise plan.PlanError(f"candidates {missing[:10]} have no {r.diffusion_method} relaxation stored")
            top = [i if i in post else relaxed[i] for i in top]
        refs = structure_ids(session, ctx.campaign_id, [Origin.REFERENCE])
        by_id = {a.info["structure_id"]: a for a in structures(session, ids=list(top) + refs)}
    candidates = sorted(((by_id[i].info["formula"], i, by_id[i]) for i in dict.fromkeys(top)), key=lambda c: c[0])
    candidates += [("reference", i, by_id[i]) for i in refs if PSEUDO in by_id[i].info["energies"]]
    return plan.rescore_tasks(ctx.spec, candidates)


def _validity(ctx: Context) -> list[plan.PlannedTask]:
    """Validity tasks for every molecule (generated or re-scored, not exploded) not yet checked or queued; a failed
    task's molecules are retried by that task."""
    with transaction(ctx.engine) as session:
        queued = {s.structure_id for p in open_payloads(session, ctx.campaign_id, TaskKind.VALIDITY)
                  for s in from_json(TaskKind.VALIDITY, p).structures}
        ids = [i for i in structure_ids(session, ctx.campaign_id, [Origin.RSS, Origin.DIFFUSION,
                                                                   Origin.DIFFUSION_RELAX, Origin.POST_RELAX,
                                                                   Origin.RESCORE],
                                        unchecked=True) if i not in queued]
        molecules = [a for a in structures(session, ids=ids)
                     if not a.pbc.any() and a.info.get("relax_status") != "exploded"]
        n_existing = count_tasks(session, ctx.campaign_id, [TaskKind.VALIDITY])
    return plan.validity_tasks(ctx.spec, molecules, n_existing)


STAGES: tuple[Stage, ...] = (
    Stage("generation", (TaskKind.RSS, TaskKind.DIFFUSION, TaskKind.REFERENCE), lambda spec: True, _generation),
    Stage("relaxation", (TaskKind.DIFFUSION_RELAX,), lambda spec: spec.relaxation.diffusion_method is not None,
          _diffusion_relaxation,
          message=lambda spec: f"relaxing every generated molecule by {spec.relaxation.diffusion_method} on "
                               f"{spec.relaxation.model!r} (at most {spec.relaxation.reverse_max_steps} steps)"),
    Stage("re-scoring", (TaskKind.RESCORE,), lambda spec: spec.rescore is not None, _rescoring, needs_ranking=True,
          message=lambda spec: f"re-scoring the top {spec.rescore.top_k} unique candidates per composition with "
                               f"{spec.rescore.energy_method}"),
    Stage("validity", (TaskKind.VALIDITY,), lambda spec: spec.validity is not None, _validity, incremental=True,
          message=lambda spec: "checking chemical validity (RDKit + PoseBusters, "
                               f"at most {spec.validity.timeout_s:g} s a molecule)"),
)


def _check_cluster(spec: CampaignSpec, scheduler: str | None, client) -> None:
    """cluster.gpus without CUDA, or a scheduler that does not answer: said at once, not after minutes."""
    if scheduler is None and client is None:
        check_gpus(spec.cluster)
    if client is None:
        check_scheduler(scheduler or spec.cluster.scheduler)


def submit(path: str | Path, engine: Engine, *, scheduler: str | None = None, reporter: Reporter = Reporter(),
           dashboard_address: str = ":8787", client=None) -> Outcome:
    """Validate and record ``path`` (or resume it if already recorded with the same content), then run it."""
    from atomscreen.compute.denoisers import check_models

    path = Path(path)
    spec = load_campaign(path)
    _check_cluster(spec, scheduler, client)  # before anything is recorded
    check_models(spec, str(path))  # checkpoints of the right kind, compositions a denoiser can make: before any write
    text = path.read_text()
    migrate.upgrade(engine)
    with transaction(engine) as session:
        campaign_id, created = record_campaign(session, spec.name, text, path, reporter)
    cluster = Cluster(spec.cluster, scheduler, dashboard_address, client)
    return _prepare_and_run(engine, campaign_id, spec, cluster, reporter, created=created)


def resume(name: str, engine: Engine, *, scheduler: str | None = None, reporter: Reporter = Reporter(),
           dashboard_address: str = ":8787", client=None) -> Outcome:
    """Run every task of campaign ``name`` that is not done, then redo the analysis."""
    migrate.require_head(engine)
    with transaction(engine) as session:
        row = get_campaign(session, name)
        if row is None:
            known = ", ".join(campaign_names(session)) or "none"
            raise RunnerError(f"no campaign named {name!r}; campaigns here: {known}")
        campaign_id, text, source = row.id, row.spec, row.source
    base_dir = Path(source).parent if source else Path(".")
    spec = parse_campaign(yaml.safe_load(text), source=f"campaign {name!r} as stored", base_dir=base_dir)
    _check_cluster(spec, scheduler, client)
    cluster = Cluster(spec.cluster, scheduler, dashboard_address, client)
    return _prepare_and_run(engine, campaign_id, spec, cluster, reporter)


def _prepare_and_run(engine: Engine, campaign_id: int, spec: CampaignSpec, cluster: Cluster,
                     reporter: Reporter, created: bool = False) -> Outcome:
    """Provide the models (load, or train) and the compositions, then run. Bad input found here (a training set, a
    checkpoint) removes a campaign ``created`` by this submit; a resumed one is marked failed."""
    timings = Timings()
    try:
        with timings.add("models_s"):
            models = provide_models(engine, campaign_id, spec, reporter)
        if spec.compositions.from_training:
            try:
                spec = with_training_compositions(spec, _composition_histogram(spec, models))
            except ValueError as exc:
                raise RunnerError(str(exc)) from None
    except (AtomscreenError, ValueError) as exc:
        if created:
            forget_campaign(engine, campaign_id)
        else:
            with transaction(engine) as session:
                set_campaign_status(session, campaign_id, "failed", str(exc))
        raise
    if spec.compositions.from_training:
        reporter.message(f"compositions: {', '.join(spec.compositions.expand())}")
    return run(engine, campaign_id, spec, models, cluster, reporter, timings)


def _composition_histogram(spec: CampaignSpec, models: dict[str, ProvidedModel]) -> dict[str, int]:
    """What `from_training` draws from: the first RSS model's training set, else the first denoiser's test split
    (MoreRed App. B.5 draws generation compositions from it)."""
    if spec.generators.rss_blocks:
        return models[spec.generators.rss_blocks[0].model].training_data.get("compositions", {})
    return models[spec.generators.diffusion_blocks[0].model].training_data.get("test_compositions", {})


def run(engine: Engine, campaign_id: int, spec: CampaignSpec, models: dict[str, ProvidedModel], cluster: Cluster,
        reporter: Reporter = Reporter(), timings: Timings | None = None) -> Outcome:
    """Run every stage that applies, in order, each once the stages before it are done; then the final analysis.
    ``timings`` (the outcome's) add up where the wall time went."""
    name = spec.name
    timings = timings or Timings()
    t0 = time.perf_counter()
    with transaction(engine) as session:
        set_campaign_status(session, campaign_id, "running")
    cluster.on_open = lambda dashboard: reporter.message(f"Dask dashboard: {dashboard}")
    ctx = Context(engine, campaign_id, spec, models, timings)
    try:
        before: list[TaskKind] = []
        for stage in (s for s in STAGES if s.applies(spec)):
            if before and not _all_done(engine, campaign_id, before):
                break
            _run_stage(ctx, stage, cluster, reporter)
            before += stage.kinds
        with timings.add("analysis_s"):
            notes = retry(lambda: finish(engine, campaign_id, spec, cluster), "the final analysis",
                          log=reporter.message)  # each of its transactions may run again
    except BaseException as exc:
        mark_interrupted(engine, campaign_id, name, reporter)
        if isinstance(exc, (DatabaseUnavailable, DBAPIError)):
            reason = str(getattr(exc, "orig", None) or exc).strip()
            raise CampaignStopped(f"campaign {name!r} stopped: {reason}. Every result stored so far is whole; fix the "
                                  f"database (free disk space, restart the server), then `platform resume {name}`"
                                  ) from exc
        raise
    finally:
        cluster.close()
    with transaction(engine) as session:
        s = campaign_summaries(session, name)[0]
    timings.total_s += time.perf_counter() - t0
    return Outcome(s.name, s.status, s.tasks, s.n_structures, cluster.dashboard, notes, timings)


def _all_done(engine: Engine, campaign_id: int, kinds) -> bool:
    with transaction(engine) as session:
        return not count_tasks(session, campaign_id, kinds, not_done=True)


def _run_stage(ctx: Context, stage: Stage, cluster: Cluster, reporter: Reporter) -> None:
    """Plan the stage's tasks (once, or again if incremental), claim the ones not done and run them."""
    if stage.needs_ranking:
        with ctx.timings.add("analysis_s"):
            retry(lambda: analyse_campaign(ctx.engine, ctx.campaign_id, ctx.spec.dedupe, cluster.client),
                  "the analysis before planning", log=reporter.message)
    with ctx.timings.add("plan_s"):
        retry(lambda: record_tasks(ctx, stage), f"planning the {stage.name} tasks", log=reporter.message)

    def claim():
        with transaction(ctx.engine) as session:
            return claim_tasks(session, ctx.campaign_id, stage.kinds), count_tasks(session, ctx.campaign_id,
                                                                                    stage.kinds)
    claimed, n_total = retry(claim, f"claiming the {stage.name} tasks", log=reporter.message)
    if not claimed:
        return
    message = stage.message(ctx.spec)
    if message:
        reporter.message(message)
    decoded = [(task, from_json(task.kind, task.payload)) for task in claimed]  # once: dispatch and writing use it
    jobs = [(handle, handle[0].key, handle[1]) for handle in decoded]
    reporter.tasks_started(n_total, n_total - len(claimed), sum(job.count for _, _, job in jobs), stage.name)
    refs = {name: m.ref for name, m in ctx.models.items()}
    with ctx.timings.add("dispatch_s"):
        run_jobs(cluster, jobs, refs, lambda handle, result: _write(ctx, *handle, result, reporter),
                 lambda handle, exc: _fail(ctx, handle[0], exc, reporter), tag=f"-c{ctx.campaign_id}")


def stage(name: str) -> Stage:
    """The stage called ``name``."""
    return next(s for s in STAGES if s.name == name)


def record_tasks(ctx: Context, stage: Stage) -> int:
    """Plan the stage's tasks and record them (once, or again if the stage is incremental); returns how many were
    added."""
    with transaction(ctx.engine) as session:
        if count_tasks(session, ctx.campaign_id, stage.kinds) and not stage.incremental:
            return 0
    try:
        planned = stage.plan(ctx)
    except plan.PlanError as exc:
        with transaction(ctx.engine) as session:
            set_campaign_status(session, ctx.campaign_id, "failed", f"cannot plan tasks: {exc}")
        raise RunnerError(f"cannot plan tasks: {exc}") from None
    with transaction(ctx.engine) as session:
        return len(add_tasks(session, ctx.campaign_id, [p.new_task() for p in planned]))


def _write(ctx: Context, task, job, result, reporter: Reporter) -> None:
    """Store a task's result in one transaction; a locked or restarting database is waited for (the result stays in
    memory meanwhile) and never fails the task."""
    model_id = ctx.models[job.model].id if job.model is not None else None

    def write() -> int:
        with ctx.timings.add("write_s"), transaction(ctx.engine) as session:
            return write_task_result(session, task.id, result, method=job.energy_method, model_id=model_id)

    try:
        n = retry(write, f"storing the result of task {task.key}", log=reporter.message)
    except (DatabaseUnavailable, OperationalError):  # the database's fault (down, disk full), not the task's
        raise
    except Exception as exc:  # a result that cannot be stored fails its task, not the run
        _fail(ctx, task, exc, reporter)
        return
    ctx.timings.n_written += n
    ctx.timings.task_s += float(result.wall_time_s)
    reporter.task_finished(task.key, True, n)


def _fail(ctx: Context, task, exc: BaseException, reporter: Reporter) -> None:
    from distributed import KilledWorker

    text = error_text(exc)
    if isinstance(exc, KilledWorker):
        text = f"KilledWorker: the workers running this task died too often ({exc})"

    def record() -> None:
        with transaction(ctx.engine) as session:
            record_task_failure(session, task.id, text)
    retry(record, f"recording the failure of task {task.key}", log=reporter.message)
    reporter.task_finished(task.key, False, 0)
