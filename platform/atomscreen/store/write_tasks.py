"""Every INSERT and UPDATE of task rows: creating, claiming, failing, and writing a task's result with its done mark.

A result is written in the caller's transaction together with the task's ``done`` mark; the task row is locked and its
status checked first, and (task_id, task_index) is unique, so a result that arrives twice never adds rows twice.
"""

from __future__ import annotations

import logging
import math
from typing import TYPE_CHECKING, Iterable, Sequence

import numpy as np
from sqlalchemy import select, update
from sqlalchemy.orm import Session

from atomscreen.store.models import CalculationFailure, CampaignState, MoleculeCheck, Task, TaskState
from atomscreen.store.records import ClaimedTask, EnergyRecord, NewStructure, NewTask, TrajectoryRecord
from atomscreen.store.write import add_structures, now, set_campaign_status

if TYPE_CHECKING:
    from atomscreen.jobs import StructureOut, TaskResult

log = logging.getLogger("atomscreen.store")


def add_tasks(session: Session, campaign_id: int, tasks: Iterable[NewTask]) -> list[int]:
    """Create task rows; returns their ids."""
    rows = [Task(campaign_id=campaign_id, kind=t.kind, key=t.key, seed=t.seed, payload=t.payload, formula=t.formula)
            for t in tasks]
    session.add_all(rows)
    session.flush()
    return [row.id for row in rows]


def claim_tasks(session: Session, campaign_id: int, kinds: Sequence[str]) -> list[ClaimedTask]:
    """Mark the not-done tasks of these kinds running (one more attempt each) and return them in id order."""
    pending = session.scalars(select(Task).where(Task.campaign_id == campaign_id, Task.kind.in_(kinds),
                                                 Task.status != TaskState.DONE).order_by(Task.id)).all()
    for t in pending:
        t.status, t.error, t.attempts, t.started_at = TaskState.RUNNING, None, t.attempts + 1, now()
    return [ClaimedTask(t.id, t.key, t.kind, dict(t.payload)) for t in pending]


def reset_running(session: Session, campaign_id: int, message: str) -> None:
    """After an interruption: running tasks back to pending, the campaign pending with ``message``."""
    session.execute(update(Task).where(Task.campaign_id == campaign_id, Task.status == TaskState.RUNNING)
                    .values(status=TaskState.PENDING))
    set_campaign_status(session, campaign_id, CampaignState.PENDING, message)


def record_task_failure(session: Session, task_id: int, error: str) -> str:
    """Mark a task failed with its error (unless a result was already written); returns its key."""
    task = session.get(Task, task_id, with_for_update=True)
    if task.status != TaskState.DONE:
        task.status, task.error, task.finished_at = TaskState.FAILED, error, now()
    return task.key


def write_task_result(session: Session, task_id: int, result: TaskResult, *, method: str | None = None,
                      model_id: int | None = None) -> int:
    """Store one task's structures (energies under ``method``, made by ``model_id``), trajectories, per-structure
    failures or validity checks, and mark it done; returns how many items were stored (0 if it was done already)."""
    task = session.get(Task, task_id, with_for_update=True)
    if task.status == TaskState.DONE:
        log.warning("task %s already done: result ignored", task.key)
        return 0
    if result.checks:
        session.add_all(MoleculeCheck(campaign_id=task.campaign_id, structure_id=c.structure_id, task_id=task.id,
                                      status=c.status, error=c.error, passes_all=c.passes_all, smiles=c.smiles,
                                      atoms_stable=c.atoms_stable, molecule_stable=c.molecule_stable,
                                      wall_time_s=c.wall_time_s, **c.checks) for c in result.checks)
    write_structures(session, task.campaign_id, task.kind, result.structures, method=method, model_id=model_id,
                     task_id=task.id)
    task.status, task.error, task.finished_at, task.wall_time_s = TaskState.DONE, None, now(), float(result.wall_time_s)
    return len(result.structures) + len(result.checks)


def write_structures(session: Session, campaign_id: int, origin: str, outs: Sequence[StructureOut], *,
                     method: str | None = None, model_id: int | None = None, task_id: int | None = None) -> list[int]:
    """Store structures as a task returns them (energies under ``method``, trajectories under ``method`` or the
    origin) and a calculation failure for each failed one; returns the new ids."""
    return _write(session, campaign_id, origin, outs, method, model_id, task_id, 0)


def _write(session: Session, campaign_id: int, origin: str, outs: Sequence[StructureOut], method: str | None,
           model_id: int | None, task_id: int | None, first_index: int) -> list[int]:
    """write_structures with task indices from ``first_index``; each structure's children (its post-relaxation)
    follow under origin post_relax, with their own energy method, indices after the parents'."""
    kept = [(i, s) for i, s in enumerate(outs) if s.status != "failed"]
    for s in outs:
        if s.status == "failed":
            session.add(CalculationFailure(campaign_id=campaign_id, structure_id=s.parent_id, task_id=task_id,
                                           method=method, error=s.error or "unknown error", wall_time_s=s.wall_time_s))
    ids = add_structures(session, [_atoms(s) for _, s in kept], origin=origin, campaign_id=campaign_id,
                         task_id=task_id, model_id=model_id, parent_ids=[s.parent_id for _, s in kept],
                         task_indices=[first_index + i for i, _ in kept] if task_id is not None else None,
                         spacegroups=[s.spacegroup for _, s in kept],
                         energies=[_energies(s, method, model_id) for _, s in kept],
                         trajectories=[[] if s.trajectory is None else
                                       [TrajectoryRecord.of(method or origin, s.trajectory)] for _, s in kept])
    next_index = first_index + len(outs)
    for new_id, (_, s) in zip(ids, kept):
        for child in s.children:
            child.parent_id = new_id
            _write(session, campaign_id, "post_relax", [child], s.child_method, model_id, task_id, next_index)
            next_index += 1
    return ids


def _atoms(s: StructureOut) -> NewStructure:
    """The structure to store, with the dtypes ASE Atoms would give it (int numbers, float64 coordinates)."""
    info = dict(s.info)
    info.update(relax_status=str(s.status), start_volume_per_atom=s.start_volume_per_atom)
    cell = np.zeros((3, 3)) if s.cell is None else np.asarray(s.cell, dtype=float).reshape(3, 3)
    return NewStructure(np.asarray(s.numbers, dtype=int), np.asarray(s.positions, dtype=float).reshape(-1, 3), cell,
                        np.broadcast_to(np.asarray(s.pbc, dtype=bool), (3,)), info)


def _energies(s: StructureOut, method: str, model_id: int | None) -> list[EnergyRecord]:
    if s.status == "exploded" or s.energy is None or not math.isfinite(s.energy):
        return []
    fmax = s.fmax if s.fmax is not None and math.isfinite(s.fmax) else None
    return [EnergyRecord(method, s.energy, fmax=fmax, converged=s.status == "converged", n_steps=s.n_steps,
                         model_id=model_id, wall_time_s=s.wall_time_s)]
