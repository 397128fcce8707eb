"""The campaign driver: record, train or load the model, plan tasks, run them on Dask, write results, analyse.

Only this process writes to the database. Each finished task's structures,
energies and trajectories land in one transaction together with the task's
``done`` mark; the task row is locked and its status checked first, and
(task_id, task_index) is unique, so a task that runs twice (a lost worker, a
resumed driver) can never add rows twice. A driver that dies leaves tasks
``running`` or ``pending``; `resume` runs every task that is not ``done``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import traceback
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

import numpy as np
import yaml
from ase import Atoms
from distributed import as_completed
from sqlalchemy import delete, func, select, update
from sqlalchemy.engine import Engine

from atomscreen.campaign import CampaignError, CampaignSpec, ClusterSpec, load_campaign, parse_campaign
from atomscreen.compute.cluster import open_cluster
from atomscreen.compute.plan import PlanError, plan_tasks
from atomscreen.compute.tasks import ModelRef, rss_task
from atomscreen.store import migrate
from atomscreen.store.api import EnergyRecord, TrajectoryRecord, add_campaign, add_model, add_structures, get_campaign
from atomscreen.store.engine import transaction
from atomscreen.store.models import Campaign, Model, Task

log = logging.getLogger("atomscreen.runner")
METHOD = "rm_pseudo"


class RunnerError(Exception):
    """A campaign that cannot be submitted or resumed as asked; the message says what to do instead."""


@dataclass
class Reporter:
    """Progress hooks for a front end (all optional)."""

    message: Callable[[str], None] = lambda text: None
    training: Callable[[int, int, float], None] | None = None  # epoch, epochs, validation loss
    # all tasks of a stage, done before, structures to make, stage ("generation" or "re-scoring")
    tasks_started: Callable[[int, int, int, str], None] = lambda total, done, structures, stage: None
    task_finished: Callable[[str, bool, int], None] = lambda key, ok, n_structures: None


@dataclass
class Outcome:
    """How a run ended."""

    name: str
    status: str
    tasks: dict[str, int]
    n_structures: int
    dashboard: str | None = None
    notes: list[str] = field(default_factory=list)


def now() -> datetime:
    return datetime.now(timezone.utc)


def same_spec(stored: str, submitted: str) -> bool:
    """Equal as YAML documents: comments and layout may change, content may not."""
    return stored == submitted or yaml.safe_load(stored) == yaml.safe_load(submitted)


def submit(path: str | Path, engine: Engine, *, scheduler: str | None = None, reporter: Reporter = Reporter(),
           dashboard_address: str = ":8787", client=None) -> Outcome:
    """Validate and record ``path`` (or resume it if already recorded with the same content), then run it."""
    path = Path(path)
    spec = load_campaign(path)
    text = path.read_text()
    migrate.upgrade(engine)
    with transaction(engine) as session:
        row = get_campaign(session, spec.name)
        if row is None:
            row = add_campaign(session, spec.name, text, source=str(path.resolve()))
        elif not same_spec(row.spec, text):
            raise RunnerError(
                f"a campaign named {spec.name!r} already exists in this database with a different spec "
                f"(stored sha256 {row.spec_hash[:12]}, submitted {hashlib.sha256(text.encode()).hexdigest()[:12]}): "
                f"continue it with `platform resume {spec.name}`, or give this file a new `name:` to start a separate campaign"
            )
        else:
            reporter.message(f"campaign {spec.name!r} already recorded with this spec: resuming it")
        campaign_id = row.id
    return _prepare_and_run(engine, campaign_id, spec, scheduler, reporter, dashboard_address, client)


def resume(name: str, engine: Engine, *, scheduler: str | None = None, reporter: Reporter = Reporter(),
           dashboard_address: str = ":8787", client=None) -> Outcome:
    """Run every task of campaign ``name`` that is not done, then redo the analysis."""
    migrate.require_head(engine)
    with transaction(engine) as session:
        row = get_campaign(session, name)
        if row is None:
            names = session.scalars(select(Campaign.name).order_by(Campaign.id)).all()
            raise RunnerError(f"no campaign named {name!r}; campaigns here: {', '.join(names) or 'none'}")
        campaign_id, text, source = row.id, row.spec, row.source
    base_dir = Path(source).parent if source else Path(".")
    spec = parse_campaign(yaml.safe_load(text), source=f"campaign {name!r} as stored", base_dir=base_dir)
    return _prepare_and_run(engine, campaign_id, spec, scheduler, reporter, dashboard_address, client)


def _prepare_and_run(engine, campaign_id, spec: CampaignSpec, scheduler, reporter, dashboard_address, client) -> Outcome:
    model_id, ref, training_data = ensure_model(engine, campaign_id, spec, reporter)
    if spec.compositions.from_training:
        from atomscreen.campaign import with_training_compositions

        try:
            spec = with_training_compositions(spec, training_data.get("compositions", {}))
        except ValueError as exc:
            with transaction(engine) as session:
                campaign = session.get(Campaign, campaign_id)
                campaign.status, campaign.error = "failed", str(exc)
            raise RunnerError(str(exc)) from None
        reporter.message(f"compositions: {', '.join(spec.compositions.expand())}")
    ensure_tasks(engine, campaign_id, spec, training_data)
    return run(engine, campaign_id, spec, ref, model_id, scheduler=scheduler, reporter=reporter,
               dashboard_address=dashboard_address, client=client)


# --- model -------------------------------------------------------------------------------------------------------

def _ref(row: Model) -> ModelRef:
    return ModelRef(row.sha256, row.hyperparameters["model"], row.weights)


def training_recipe(spec: CampaignSpec, data_sha256: str) -> str:
    """sha256 of what determines a trained model: the training set, hyperparameters and seed."""
    train = spec.model.train
    blob = json.dumps({"data": data_sha256, "hyperparameters": train.hyperparameters, "seed": train.seed}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()


def ensure_model(engine: Engine, campaign_id: int, spec: CampaignSpec, reporter: Reporter) -> tuple[int, ModelRef, dict]:
    """The campaign's model: already linked, loaded from a checkpoint, reused by recipe, or trained now."""
    with transaction(engine) as session:
        campaign = session.get(Campaign, campaign_id)
        if campaign.model_id is not None:
            row = session.get(Model, campaign.model_id)
            return row.id, _ref(row), dict(row.training_data)
    from atomscreen.potentials.train import Checkpoint, describe, split_hyperparameters, train

    if spec.model.checkpoint is not None:
        checkpoint = Checkpoint.load(spec.model.checkpoint)
        reporter.message(f"model from checkpoint {spec.model.checkpoint}")
        recipe = None
    else:
        from atomscreen.data import read_dataset

        block = spec.model.train
        dataset = block.dataset
        structures = read_dataset(dataset.format, dataset.path, name=dataset.name, limit=dataset.limit, skip=dataset.skip)
        source = dataset.path or f"{dataset.format}:{dataset.name or ''}"
        recipe = training_recipe(spec, describe(structures)["sha256"])
        with transaction(engine) as session:
            rows = session.scalars(select(Model).where(Model.kind == "rm_potential").order_by(Model.id)).all()
            for row in rows:
                if row.training_data.get("recipe") == recipe:
                    session.get(Campaign, campaign_id).model_id = row.id
                    reporter.message(f"reusing stored model {row.id} (sha256 {row.sha256[:12]}): same data, hyperparameters and seed")
                    return row.id, _ref(row), dict(row.training_data)
        model_cfg, response_cfg, train_cfg = split_hyperparameters(block.hyperparameters)
        if "seed" not in block.hyperparameters:
            import dataclasses

            train_cfg = dataclasses.replace(train_cfg, seed=block.seed)
        reporter.message(f"training the RM potential on {len(structures)} structure(s) from {source} ({train_cfg.epochs} epochs)")
        progress = None
        if reporter.training is not None:
            progress = lambda epoch, r: reporter.training(epoch, train_cfg.epochs, r["val_loss"])  # noqa: E731
        checkpoint = train(structures, model_cfg, response_cfg, train_cfg, source=str(source), progress=progress)
    training_data = dict(checkpoint.training_data)
    if recipe is not None:
        training_data["recipe"] = recipe
    with transaction(engine) as session:
        row = add_model(session, kind=checkpoint.kind, weights=checkpoint.weights_bytes(), hyperparameters=checkpoint.hyperparameters(),
                        training_data=training_data, metrics=checkpoint.metrics, name=spec.name)
        session.get(Campaign, campaign_id).model_id = row.id
        return row.id, _ref(row), dict(row.training_data)


# --- tasks -------------------------------------------------------------------------------------------------------

def ensure_tasks(engine: Engine, campaign_id: int, spec: CampaignSpec, training_data: dict) -> int:
    """Create the campaign's generation (and hull reference) task rows once, in one transaction; returns how many exist."""
    from atomscreen.compute.plan import hull_references, plan_reference_tasks

    with transaction(engine) as session:
        existing = session.scalar(select(func.count(Task.id)).where(Task.campaign_id == campaign_id, Task.kind.in_(("rss", "reference"))))
        if existing:
            return existing
        try:
            # a training set with no periodic structure makes the search one for molecules (unless rss.periodic says)
            plans = plan_tasks(spec, training_data.get("element_volumes"), training_periodic=bool(training_data.get("periodic", 1)))
            plans += plan_reference_tasks(spec, hull_references(spec))
        except PlanError as exc:
            campaign = session.get(Campaign, campaign_id)
            campaign.status, campaign.error = "failed", f"cannot plan tasks: {exc}"
            raise RunnerError(campaign.error) from None
        session.add_all(Task(campaign_id=campaign_id, kind=p.kind, key=p.key, seed=p.seed, payload=p.payload) for p in plans)
        return len(plans)


def ensure_rescore_tasks(engine: Engine, campaign_id: int, spec: CampaignSpec) -> int:
    """Once generation is done: re-scoring tasks for the top-K unique candidates per composition and every hull reference."""
    from atomscreen.compute.plan import plan_rescore_tasks
    from atomscreen.store.api import structures as load_structures
    from atomscreen.store.models import Ranking, Structure

    with transaction(engine) as session:
        existing = session.scalar(select(func.count(Task.id)).where(Task.campaign_id == campaign_id, Task.kind == "rescore"))
        if existing:
            return existing
        top = session.scalars(select(Ranking.structure_id).where(
            Ranking.campaign_id == campaign_id, Ranking.method == METHOD, Ranking.scope == "composition",
            Ranking.rank <= spec.rescore.top_k).order_by(Ranking.score, Ranking.structure_id)).all()
        refs = session.scalars(select(Structure.id).where(
            Structure.campaign_id == campaign_id, Structure.origin == "reference").order_by(Structure.id)).all()
        by_id = {a.info["structure_id"]: a for a in load_structures(session, ids=list(top) + list(refs))}
        candidates = [(by_id[i].info["formula"], i, by_id[i]) for i in top]
        candidates.sort(key=lambda c: c[0])
        candidates += [("reference", i, by_id[i]) for i in refs if METHOD in by_id[i].info["energies"]]
        plans = plan_rescore_tasks(spec, candidates)
        session.add_all(Task(campaign_id=campaign_id, kind=p.kind, key=p.key, seed=p.seed, payload=p.payload) for p in plans)
        return len(plans)


def ensure_validity_tasks(engine: Engine, campaign_id: int, spec: CampaignSpec) -> int:
    """Validity tasks for every molecule (generated or re-scored, not exploded) that has no check yet; returns how many
    tasks were added."""
    from atomscreen.compute.tasks import structure_payload
    from atomscreen.store.api import structures as load_structures
    from atomscreen.store.models import MoleculeCheck, Structure

    with transaction(engine) as session:
        checked = select(MoleculeCheck.structure_id).where(MoleculeCheck.campaign_id == campaign_id)
        queued = {s["structure_id"] for payload in session.scalars(select(Task.payload).where(
            Task.campaign_id == campaign_id, Task.kind == "validity", Task.status != "done")) for s in payload["structures"]}
        ids = [i for i in session.scalars(select(Structure.id).where(
            Structure.campaign_id == campaign_id, Structure.origin.in_(("rss", "rescore")), Structure.id.not_in(checked))
            .order_by(Structure.id)) if i not in queued]  # a failed task's molecules are retried by that task
        molecules = [a for a in load_structures(session, ids=ids) if not a.pbc.any() and a.info.get("relax_status") != "exploded"]
        groups: dict[str, list[Atoms]] = {}
        for a in molecules:
            groups.setdefault(a.info["formula"], []).append(a)
        n_existing = session.scalar(select(func.count(Task.id)).where(Task.campaign_id == campaign_id, Task.kind == "validity"))
        added = 0
        for formula, members in sorted(groups.items()):
            for start in range(0, len(members), spec.validity.batch_size):
                chunk = members[start:start + spec.validity.batch_size]
                payload = {"formula": formula, "count": len(chunk), "timeout_s": spec.validity.timeout_s,
                           "structures": [structure_payload(a, structure_id=a.info["structure_id"]) for a in chunk]}
                session.add(Task(campaign_id=campaign_id, kind="validity", key=f"validity/{formula}/{n_existing + added}",
                                 seed=spec.seed, payload=payload))
                added += 1
        return added


def _write_checks(session, task: Task, result: dict[str, Any]) -> int:
    from atomscreen.store.models import MoleculeCheck

    for c in result["checks"]:
        session.add(MoleculeCheck(campaign_id=task.campaign_id, structure_id=c["structure_id"], task_id=task.id, status=c["status"],
                                  error=c["error"], passes_all=c["passes_all"], smiles=c["smiles"], atoms_stable=c["atoms_stable"],
                                  molecule_stable=c["molecule_stable"], wall_time_s=c["wall_time_s"], **c["checks"]))
    task.status, task.error, task.finished_at, task.wall_time_s = "done", None, now(), float(result["wall_time_s"])
    return len(result["checks"])


def write_result(engine: Engine, task_id: int, result: dict[str, Any], model_id: int | None) -> int:
    """Store one task's structures, energies, trajectories (and per-structure failures) and mark it done, in one
    transaction; 0 if it was done already."""
    from atomscreen.store.models import CalculationFailure

    with transaction(engine) as session:
        task = session.get(Task, task_id, with_for_update=True)
        if task.status == "done":
            log.warning("task %s already done: result ignored", task.key)
            return 0
        if task.kind == "validity":
            return _write_checks(session, task, result)
        rescore = task.kind == "rescore"
        method = task.payload["energy_method"] if rescore else METHOD
        atoms_list, energies, trajectories, indices, parents, groups = [], [], [], [], [], []
        for index, s in enumerate(result["structures"]):
            if rescore and s["status"] == "failed":
                session.add(CalculationFailure(campaign_id=task.campaign_id, structure_id=s["parent_id"], task_id=task.id,
                                               method=method, error=s["error"] or "unknown error", wall_time_s=s["wall_time_s"]))
                continue
            atoms = Atoms(numbers=s["numbers"], positions=s["positions"], cell=s["cell"], pbc=s["pbc"])
            atoms.info.update(s.get("info", {}))
            atoms.info.update(relax_status=s["status"], start_volume_per_atom=s.get("start_volume_per_atom"))
            atoms_list.append(atoms)
            indices.append(index)
            parents.append(s.get("parent_id"))
            groups.append(s["spacegroup"])
            ok = s["status"] != "exploded" and s["energy"] is not None and math.isfinite(s["energy"])
            fmax = s["fmax"] if s["fmax"] is not None and math.isfinite(s["fmax"]) else None
            energies.append([EnergyRecord(method, s["energy"], fmax=fmax, converged=s["status"] == "converged", n_steps=s["n_steps"],
                                          model_id=None if rescore else model_id,
                                          wall_time_s=s.get("wall_time_s"))] if ok else [])
            t = s["trajectory"]
            trajectories.append([] if t is None else [TrajectoryRecord(method, t["steps"], t["energies"], t["fmax"], t["positions"], t["cells"])])
        add_structures(session, atoms_list, origin=task.kind, campaign_id=task.campaign_id, task_id=task.id, parent_ids=parents,
                       task_indices=indices, spacegroups=groups, energies=energies, trajectories=trajectories)
        task.status, task.error, task.finished_at, task.wall_time_s = "done", None, now(), float(result["wall_time_s"])
        return len(result["structures"])


def _error_text(exc: BaseException) -> str:
    from distributed import KilledWorker

    if isinstance(exc, KilledWorker):
        return f"KilledWorker: the workers running this task died too often ({exc})"
    return "".join(traceback.format_exception_only(type(exc), exc)).strip()


def record_failure(engine: Engine, task_id: int, exc: BaseException) -> str:
    """Mark a task failed with its error (unless a result was already written)."""
    text = _error_text(exc)
    with transaction(engine) as session:
        task = session.get(Task, task_id, with_for_update=True)
        if task.status != "done":
            task.status, task.error, task.finished_at = "failed", text, now()
        return task.key


def _claim(engine: Engine, campaign_id: int, kinds: tuple[str, ...]) -> tuple[list[tuple[int, str, str, dict]], int]:
    """Mark the not-done tasks of these kinds running; returns them and the number of tasks of these kinds."""
    with transaction(engine) as session:
        pending = session.scalars(select(Task).where(Task.campaign_id == campaign_id, Task.kind.in_(kinds), Task.status != "done")
                                  .order_by(Task.id)).all()
        n_total = session.scalar(select(func.count(Task.id)).where(Task.campaign_id == campaign_id, Task.kind.in_(kinds)))
        for t in pending:
            t.status, t.error, t.attempts, t.started_at = "running", None, t.attempts + 1, now()
        return [(t.id, t.key, t.kind, t.payload) for t in pending], n_total


class _Cluster:
    """The Dask client of a run, opened on first use and closed at the end."""

    def __init__(self, cluster: ClusterSpec, scheduler, dashboard_address, client, reporter):
        self.spec, self.scheduler, self.dashboard_address, self.client, self.reporter = cluster, scheduler, dashboard_address, client, reporter
        self.handle = None
        self.dashboard = None

    def get(self):
        if self.client is None:
            self.handle = open_cluster(self.spec, self.scheduler, dashboard_address=self.dashboard_address)
            self.client = self.handle.client
        if self.dashboard is None:
            self.dashboard = self.client.dashboard_link
            self.reporter.message(f"Dask dashboard: {self.dashboard}")
        return self.client

    def gpu(self) -> bool:
        return self.handle.has_gpu_workers() if self.handle else False

    def close(self) -> None:
        if self.handle is not None:
            self.handle.close()


def _run_tasks(engine, campaign_id, todo, n_total, cluster: _Cluster, ref: ModelRef, model_id, reporter: Reporter, stage: str) -> None:
    from atomscreen.compute.tasks import TASKS

    client = cluster.get()
    gpu = cluster.gpu()
    model_future = client.scatter(ref, broadcast=True, hash=False) if ref is not None else None
    reporter.tasks_started(n_total, n_total - len(todo), sum(p["count"] for _, _, _, p in todo), stage)
    futures = {}
    for task_id, key, kind, payload in todo:
        dask_key = f"{key.replace('/', '-')}-c{campaign_id}-{uuid.uuid4().hex[:8]}"
        future = client.submit(TASKS[kind], payload, model_future, key=dask_key, resources={"GPU": 1} if gpu else None)
        futures[future] = (task_id, key)
    for future in as_completed(futures):
        task_id, key = futures[future]
        try:
            n = write_result(engine, task_id, future.result(), model_id)
            reporter.task_finished(key, True, n)
        except Exception as exc:  # the task raised on its worker, or its workers died
            record_failure(engine, task_id, exc)
            reporter.task_finished(key, False, 0)
        future.release()


def _all_done(engine, campaign_id, kinds) -> bool:
    with transaction(engine) as session:
        return not session.scalar(select(func.count(Task.id)).where(Task.campaign_id == campaign_id, Task.kind.in_(kinds), Task.status != "done"))


def run(engine: Engine, campaign_id: int, spec: CampaignSpec, ref: ModelRef, model_id: int, *, scheduler: str | None = None,
        reporter: Reporter = Reporter(), dashboard_address: str = ":8787", client=None) -> Outcome:
    """Run every task that is not done on Dask (``client``, or a cluster opened here): generation, analysis,
    then re-scoring of the best candidates, and the analysis again."""
    with transaction(engine) as session:
        campaign = session.get(Campaign, campaign_id)
        name = campaign.name
        campaign.status, campaign.error, campaign.finished_at = "running", None, None
    cluster = _Cluster(spec.cluster, scheduler, dashboard_address, client, reporter)
    generation = ("rss", "reference")
    try:
        todo, n_total = _claim(engine, campaign_id, generation)
        if todo:
            _run_tasks(engine, campaign_id, todo, n_total, cluster, ref, model_id, reporter, "generation")
        # with re-scoring or checks to come this analysis only chooses the candidates; matching and the status come after it
        more = spec.rescore is not None or spec.validity is not None
        notes = finalize(engine, campaign_id, spec, final=not more, client=cluster.client)
        if spec.rescore is not None and _all_done(engine, campaign_id, generation):
            ensure_rescore_tasks(engine, campaign_id, spec)
            todo, n_total = _claim(engine, campaign_id, ("rescore",))
            if todo:
                reporter.message(f"re-scoring the top {spec.rescore.top_k} unique candidates per composition with {spec.rescore.energy_method}")
                _run_tasks(engine, campaign_id, todo, n_total, cluster, None, model_id, reporter, "re-scoring")
        if spec.validity is not None and _all_done(engine, campaign_id, generation + ("rescore",)):
            ensure_validity_tasks(engine, campaign_id, spec)
            todo, n_total = _claim(engine, campaign_id, ("validity",))
            if todo:
                reporter.message(f"checking chemical validity (RDKit + PoseBusters, at most {spec.validity.timeout_s:g} s a molecule)")
                _run_tasks(engine, campaign_id, todo, n_total, cluster, None, model_id, reporter, "validity")
        if more:
            notes = finalize(engine, campaign_id, spec, client=cluster.client)
    except BaseException:
        with transaction(engine) as session:
            session.execute(update(Task).where(Task.campaign_id == campaign_id, Task.status == "running").values(status="pending"))
            c = session.get(Campaign, campaign_id)
            c.status, c.error = "pending", f"interrupted: continue with `platform resume {name}`"
        raise
    finally:
        cluster.close()
    return _outcome(engine, campaign_id, cluster.dashboard, notes)


# --- analysis ----------------------------------------------------------------------------------------------------

def _analyse(session, campaign_id: int, method: str, atoms: list[Atoms], is_reference: list[bool]) -> list[str]:
    """Dedupe and rank the candidates of one energy method, and hull them together with the references."""
    from atomscreen.analysis import pseudo_hulls, rank, representatives
    from atomscreen.store.models import HullEntry, Ranking, Structure

    per_atom = [a.info["energies"][method] / len(a) for a in atoms]
    ids = [a.info["structure_id"] for a in atoms]
    candidates = [i for i in range(len(atoms)) if not is_reference[i]]
    reps = representatives([atoms[i] for i in candidates], [per_atom[i] for i in candidates])
    unique = []
    for k, r in enumerate(reps):
        if r != k:
            session.execute(update(Structure).where(Structure.id == ids[candidates[k]]).values(representative_id=ids[candidates[r]]))
        else:
            unique.append(candidates[k])
    formulas = [atoms[i].info["formula"] for i in unique]
    energies = [per_atom[i] for i in unique]
    within, overall = rank(formulas, energies)
    for j, i in enumerate(unique):
        session.add(Ranking(campaign_id=campaign_id, structure_id=ids[i], method=method, scope="composition", rank=within[j], score=energies[j]))
        session.add(Ranking(campaign_id=campaign_id, structure_id=ids[i], method=method, scope="overall", rank=overall[j], score=energies[j]))
    on_hull = unique + [i for i in range(len(atoms)) if is_reference[i]]
    points, skipped = pseudo_hulls([atoms[i].info["formula"] for i in on_hull], [per_atom[i] for i in on_hull])
    for p in points:
        session.add(HullEntry(campaign_id=campaign_id, structure_id=ids[on_hull[p.index]], method=method,
                              formation_energy_per_atom=p.formation_energy_per_atom, e_above_hull=p.e_above_hull, is_stable=p.is_stable))
    notes = [f"{method}: {s}" for s in skipped]
    if len(candidates) > len(unique):
        notes.append(f"{method}: {len(candidates) - len(unique)} of {len(candidates)} structures are duplicates of lower-energy ones")
    return notes


def finalize(engine: Engine, campaign_id: int, spec: CampaignSpec | None = None, *, final: bool = True, client=None) -> list[str]:
    """Dedupe, rank and hull the campaign's structures for every energy method (replacing earlier results); when
    ``final``, also match them to references if the campaign asks and set its final status."""
    match = final
    from atomscreen.store.api import structures as load_structures
    from atomscreen.store.models import HullEntry, Ranking, Structure

    notes = []
    with transaction(engine) as session:
        campaign = session.get(Campaign, campaign_id)
        session.execute(delete(Ranking).where(Ranking.campaign_id == campaign_id))
        session.execute(delete(HullEntry).where(HullEntry.campaign_id == campaign_id))
        session.execute(update(Structure).where(Structure.campaign_id == campaign_id).values(representative_id=None))
        everything = load_structures(session, campaign=campaign.name)
        origin = {a.info["structure_id"]: a.info["origin"] for a in everything}
        pseudo = [a for a in everything if a.info["origin"] != "rescore" and METHOD in a.info["energies"]]
        notes += _analyse(session, campaign_id, METHOD, pseudo, [a.info["origin"] == "reference" for a in pseudo])
        rescored = [a for a in everything if a.info["origin"] == "rescore"]
        for method in sorted({m for a in rescored for m in a.info["energies"]}):
            members = [a for a in rescored if method in a.info["energies"]]
            notes += _analyse(session, campaign_id, method, members, [origin.get(a.info["parent_id"]) == "reference" for a in members])
        spec_text, source, any_energy = campaign.spec, campaign.source, bool(pseudo)
    if spec is None and match:
        try:
            spec = parse_campaign(yaml.safe_load(spec_text), source="campaign as stored", base_dir=Path(source).parent if source else Path("."))
        except CampaignError as exc:
            notes.append(f"reference matching skipped: {exc}")
    if final and spec is not None and spec.validity is not None:
        notes += mark_novelty(engine, campaign_id, spec)
    if match and spec is not None and spec.match is not None and pseudo:
        from atomscreen.compute.plan import read_references
        from atomscreen.evaluate.match import MatchSettings

        label, references = read_references(spec.match.references, spec)
        settings = MatchSettings(spec.match.ltol, spec.match.stol, spec.match.angle_tol)
        n = match_campaign(engine, campaign_id, references, label, settings, top_k=spec.match.top_k, client=client,
                           energy_column=spec.match.energy_column)
        notes.append(f"{n} unique structures, generated and re-scored together, match a structure of {label}")
    if not final:
        return notes
    with transaction(engine) as session:  # the status last: 'done' means every analysis, matching included, is stored
        campaign = session.get(Campaign, campaign_id)
        states = dict(session.execute(select(Task.status, func.count()).where(Task.campaign_id == campaign_id).group_by(Task.status)).all())
        n_tasks = sum(states.values())
        failed = states.get("failed", 0)
        if failed:
            campaign.status = "failed"
            campaign.error = f"{failed} of {n_tasks} tasks failed (errors: platform status {campaign.name}; retry: platform resume {campaign.name})"
        elif states.get("done", 0) == n_tasks and not any_energy:
            campaign.status, campaign.error = "failed", "no structure has a finite energy: every relaxation exploded"
        elif states.get("done", 0) == n_tasks:
            campaign.status, campaign.error = "done", None
        campaign.finished_at = now()
    return notes


def mark_novelty(engine: Engine, campaign_id: int, spec: CampaignSpec) -> list[str]:
    """Set molecule_check.novel: the molecule's canonical SMILES is not among the training set's (QM9 carries SMILES;
    training sets without them leave it NULL)."""
    from atomscreen.data import read_dataset
    from atomscreen.evaluate.validity import canonical_smiles
    from atomscreen.store.models import MoleculeCheck

    if spec.model.train is None:
        return ["novelty not assessed: the model was not trained by this campaign (no training set to compare with)"]
    dataset = spec.model.train.dataset
    given = [a.info.get("smiles") for a in read_dataset(dataset.format, dataset.path, name=dataset.name, limit=dataset.limit, skip=dataset.skip)]
    if not any(given):
        return ["novelty not assessed: the training set carries no SMILES"]
    known = {canonical_smiles(x) for x in given if x}
    with transaction(engine) as session:
        rows = session.scalars(select(MoleculeCheck).where(MoleculeCheck.campaign_id == campaign_id)).all()
        for row in rows:
            row.novel = None if row.smiles is None else row.smiles not in known
        n = sum(bool(r.novel) for r in rows)
        n_smiles = sum(r.smiles is not None for r in rows)
    return [f"{n} of {n_smiles} sanitisable molecules are not in the training set (canonical SMILES)"]


def match_campaign(engine: Engine, campaign_id: int, references: list[Atoms], label: str, settings=None, *,
                   top_k: int | None = None, client=None, chunk: int = 8, energy_column: str = "energy_per_atom") -> int:
    """Record which unique structures (of every method; the best ``top_k`` per composition and method if given) match a
    reference; replaces earlier matches against ``label``. With a Dask ``client`` the comparisons run on its workers."""
    from pymatgen.core import Composition

    from atomscreen.evaluate.match import MatchSettings, ReferenceMatch, match_prepared, prepare_references, reduced_formulas
    from atomscreen.store.api import structures as load_structures
    from atomscreen.store.models import Ranking, StructureMatch

    settings = settings or MatchSettings()
    energies = [a.info.get(energy_column) for a in references]
    known = [e if isinstance(e, (int, float)) and math.isfinite(e) else math.inf for e in energies]
    order = sorted(range(len(references)), key=lambda j: (known[j], j))
    energy_rank: dict[int, int] = {}
    seen: dict[str, int] = {}
    for j in order:
        if math.isfinite(known[j]):
            formula = Composition(references[j].get_chemical_formula()).reduced_formula
            seen[formula] = seen.get(formula, 0) + 1
            energy_rank[j] = seen[formula]
    with transaction(engine) as session:
        query = select(Ranking.structure_id).where(Ranking.campaign_id == campaign_id, Ranking.scope == "composition")
        if top_k is not None:
            query = query.where(Ranking.rank <= top_k)
        ids = sorted(set(session.scalars(query).all()))
        unique = load_structures(session, ids=ids)
    prepared = prepare_references(references, reduced_formulas(unique), order)
    if client is not None and len(unique) > chunk:
        shared = client.scatter(prepared, broadcast=True, hash=False)
        parts = [(start, client.submit(match_prepared, unique[start:start + chunk], shared, settings, key=f"match-{campaign_id}-{start}-{uuid.uuid4().hex[:6]}"))
                 for start in range(0, len(unique), chunk)]
        found = [ReferenceMatch(start + m.index, m.reference) for start, future in parts for m in future.result()]
    else:
        found = match_prepared(unique, prepared, settings)
    with transaction(engine) as session:
        session.execute(delete(StructureMatch).where(StructureMatch.campaign_id == campaign_id, StructureMatch.reference_source == label))
        for m in found:
            ref = references[m.reference]
            name = ref.info.get("material_id", ref.info.get("name"))
            session.add(StructureMatch(campaign_id=campaign_id, structure_id=unique[m.index].info["structure_id"], reference_source=label,
                                       reference_index=m.reference, reference_name=None if name is None else str(name)[:200],
                                       reference_energy_per_atom=None if not math.isfinite(known[m.reference]) else float(known[m.reference]),
                                       reference_energy_rank=energy_rank.get(m.reference)))
    return len(found)


def _outcome(engine, campaign_id, dashboard, notes) -> Outcome:
    from atomscreen.store.api import campaign_summaries

    with transaction(engine) as session:
        name = session.get(Campaign, campaign_id).name
        s = campaign_summaries(session, name)[0]
    return Outcome(s.name, s.status, s.tasks, s.n_structures, dashboard, notes)
