"""What the fault drills check after a fault: every stored structure and ranking equal to an uninterrupted run, the
row counts that must hold (no task half-written, no slot stored twice), and ways to watch or drive a campaign from
outside its process."""

from __future__ import annotations

import os
import subprocess
import time

from sqlalchemy import func, select
from sqlalchemy.pool import NullPool

from atomscreen.store import make_engine, ranked, transaction
from atomscreen.store.models import Campaign, Energy, HullEntry, Ranking, Structure, Task


def snapshot(engine, name: str) -> list[tuple]:
    """Every stored structure of a campaign as (task key, index in task, positions, cell, energy): what a re-run must
    reproduce."""
    with transaction(engine) as session:
        rows = session.execute(
            select(Task.key, Structure.task_index, Structure.positions, Structure.cell, Energy.total)
            .join(Structure, Structure.task_id == Task.id)
            .outerjoin(Energy, Energy.structure_id == Structure.id)
            .join(Campaign, Campaign.id == Task.campaign_id)
            .where(Campaign.name == name)
            .order_by(Task.key, Structure.task_index)
        ).all()
    return [(key, index, positions.tobytes(), cell.tobytes(), energy) for key, index, positions, cell, energy in rows]


def rankings(engine, name: str) -> list[tuple]:
    with transaction(engine) as session:
        return [(r.rank, r.formula, r.energy_per_atom) for r in ranked(session, name)]


def counts(engine, name: str) -> dict[str, int]:
    """Rows of a campaign per table, and its distinct (task, index in task) slots."""
    with transaction(engine) as session:
        cid = session.scalar(select(Campaign.id).where(Campaign.name == name))
        n = {table.__tablename__: session.scalar(select(func.count()).select_from(table)
                                                 .where(table.campaign_id == cid))
             for table in (Structure, Ranking, HullEntry, Task)}
        n["distinct_slots"] = session.scalar(select(func.count()).select_from(
            select(Structure.task_id, Structure.task_index).where(Structure.campaign_id == cid).distinct().subquery()))
        n["energy"] = session.scalar(select(func.count(Energy.id)).join(Structure).where(Structure.campaign_id == cid))
    return n


def task_states(url) -> dict[str, int]:
    """Tasks per status, read through a connection of its own (none pooled: the server may be restarted)."""
    engine = make_engine(str(url), poolclass=NullPool)
    try:
        with transaction(engine) as session:
            return dict(session.execute(select(Task.status, func.count()).group_by(Task.status)).all())
    except Exception:  # not migrated yet, or the server is down
        return {}
    finally:
        engine.dispose()


def wait_for_done_tasks(url, n: int, running, timeout: float) -> int:
    """Poll the database until ``n`` tasks are done, ``running()`` is false, or ``timeout`` s passed; the count."""
    deadline, done = time.monotonic() + timeout, 0
    while time.monotonic() < deadline and running() and done < n:
        done = task_states(url).get("done", 0)
        time.sleep(0.05)
    return done


def platform_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k != "ATOMSCREEN_DB"}


def _command(args: tuple[str, ...]) -> list[str]:
    """``platform ARGS``, quiet and on a free dashboard port when it runs a campaign."""
    runs = args[0] in ("submit", "resume")
    return ["platform", *args, *(["--quiet", "--dashboard-address", ":0"] if runs else [])]


def start(*args: str, **popen) -> subprocess.Popen:
    """``platform ARGS`` as a process of its own."""
    return subprocess.Popen(_command(args), env=platform_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, **popen)


def platform(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(_command(args), env=platform_env(), capture_output=True, text=True, timeout=timeout)


def assert_same_as(engine, reference, name: str, n_tasks: int, n_structures: int) -> None:
    """The campaign holds exactly the uninterrupted run's rows: every structure, energy and ranking, none twice."""
    n = counts(engine, name)
    assert n["task"] == n_tasks and n["structure"] == n_structures == n["distinct_slots"] == n["energy"], n
    assert snapshot(engine, name) == snapshot(reference, name)
    assert rankings(engine, name) == rankings(reference, name)
