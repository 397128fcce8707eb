"""Campaigns end to end on a real Dask LocalCluster and real databases: submit, results, resume after a killed
driver, a killed worker, every task failing, and SQLite/PostgreSQL parity."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import threading
import time

import pytest
from ase.io import read
from conftest import write_campaign
from sqlalchemy import func, select

from atomscreen.cli import main
from atomscreen.compute import runner
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


def wait_for_done_tasks(db, n: int, running, timeout: float) -> int:
    """Poll the SQLite file until ``n`` tasks are done, ``running()`` is false, or ``timeout`` s passed; the count."""
    deadline, done = time.monotonic() + timeout, 0
    while time.monotonic() < deadline and running() and done < n:
        try:
            with sqlite3.connect(db) as conn:
                done = conn.execute("SELECT count(*) FROM task WHERE status = 'done'").fetchone()[0]
        except sqlite3.OperationalError:  # not created yet
            done = 0
        time.sleep(0.05)
    return done


def counts(engine, name: str) -> dict[str, int]:
    with transaction(engine) as session:
        cid = session.scalar(select(Campaign.id).where(Campaign.name == name))
        n = {table.__tablename__: session.scalar(select(func.count()).select_from(table)
                                                 .where(table.campaign_id == cid))
             for table in (Structure, Ranking, HullEntry, Task)}
        n["distinct_slots"] = session.scalar(select(func.count()).select_from(
            select(Structure.task_id, Structure.task_index).where(Structure.campaign_id == cid).distinct().subquery()))
        n["energy"] = session.scalar(select(func.count(Energy.id)).join(Structure).where(Structure.campaign_id == cid))
    return n


def test_submit_runs_a_campaign_and_results_hull_export_show_it(tmp_path, checkpoint_file, capsys):
    path = write_campaign(tmp_path, checkpoint_file)
    db = str(tmp_path / "c.db")
    assert main(["submit", str(path), "--db", db, "--quiet", "--dashboard-address", ":0"]) == 0
    printed = capsys.readouterr()
    assert "Dask dashboard: http://" in printed.err + printed.out and "'carbon': done" in printed.out
    engine = make_engine(db)
    n = counts(engine, "carbon")
    assert n["task"] == 4 and n["structure"] == 12 == n["distinct_slots"] == n["energy"]
    with transaction(engine) as session:
        unique = session.scalar(select(func.count(Structure.id)).where(Structure.representative_id.is_(None)))
        rows = ranked(session, "carbon")
    assert n["ranking"] == 2 * unique and n["hull_entry"] == unique
    assert [r.rank for r in rows] == list(range(1, unique + 1))
    assert [r.energy_per_atom for r in rows] == sorted(r.energy_per_atom for r in rows)
    assert rows[0].e_above_hull == 0.0 and rows[0].is_stable

    assert main(["results", "carbon", "--db", db, "--top", "3", "--format", "json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert [r["structure_id"] for r in shown] == [r.structure_id for r in rows[:3]]
    assert main(["results", "carbon", "--db", db, "--composition", "C4", "--format", "csv"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0].startswith("rank,structure_id,formula") and all(",C4," in line for line in lines[1:])
    assert main(["hull", "carbon", "--db", db, "--plot", str(tmp_path / "hull.png")]) == 0
    assert (tmp_path / "hull.png").stat().st_size > 10_000
    assert main(["export", "carbon", "--db", db, "--format", "extxyz", "--output", str(tmp_path / "x.extxyz")]) == 0
    frames = read(tmp_path / "x.extxyz", ":")
    assert len(frames) == unique and frames[0].info["structure_id"] == rows[0].structure_id
    assert main(["export", "carbon", "--db", db, "--format", "cif", "--stable-only",
                 "--output", str(tmp_path / "cif")]) == 0
    assert len(list((tmp_path / "cif").glob("*.cif"))) == sum(r.is_stable for r in rows)
    capsys.readouterr()

    # the same file again: nothing left to do, nothing written twice
    before = snapshot(engine, "carbon")
    assert main(["submit", str(path), "--db", db, "--quiet", "--dashboard-address", ":0"]) == 0
    assert "already recorded with this spec" in capsys.readouterr().err
    assert snapshot(engine, "carbon") == before and counts(engine, "carbon") == n
    # a different spec under the same name is refused with the way out
    (tmp_path / "edited").mkdir()
    changed = write_campaign(tmp_path / "edited", checkpoint_file, seed=4)
    assert main(["submit", str(changed), "--db", db, "--quiet"]) == 2
    message = capsys.readouterr().err
    assert "different spec" in message and "platform resume carbon" in message and "new `name:`" in message


def test_driver_killed_mid_campaign_is_resumed_to_the_uninterrupted_result(tmp_path, checkpoint_file):
    path = write_campaign(tmp_path, checkpoint_file, name="crash", compositions=["C4", "C6", "C8"],
                          **{"generators.rss.samples_per_composition": 12, "generators.rss.batch_size": 3,
                             "relaxation.max_steps": 300})
    db = tmp_path / "crash.db"
    env = {k: v for k, v in os.environ.items() if k != "ATOMSCREEN_DB"}
    driver = subprocess.Popen(["platform", "submit", str(path), "--db", str(db), "--quiet",
                               "--dashboard-address", ":0"],
                              env=env, start_new_session=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True)
    wait_for_done_tasks(db, 2, lambda: driver.poll() is None, timeout=300)
    assert driver.poll() is None, f"the driver ended before it could be killed: {driver.stdout.read()}"
    os.killpg(driver.pid, signal.SIGKILL)  # the driver, its LocalCluster and workers, all at once
    driver.wait()
    with sqlite3.connect(db) as conn:
        states = dict(conn.execute("SELECT status, count(*) FROM task GROUP BY status").fetchall())
        assert conn.execute("SELECT status FROM campaign").fetchone()[0] == "running"
    assert 2 <= states.get("done", 0) < 12, states

    resumed = subprocess.run(["platform", "resume", "crash", "--db", str(db), "--quiet", "--dashboard-address", ":0"],
                             env=env, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    engine = make_engine(str(db))
    n = counts(engine, "crash")
    assert n["task"] == 12 and n["structure"] == 36 == n["distinct_slots"] == n["energy"]

    reference_db = tmp_path / "reference.db"
    reference = make_engine(str(reference_db))
    outcome = runner.submit(path, reference, dashboard_address=":0")
    assert outcome.status == "done"
    assert snapshot(engine, "crash") == snapshot(reference, "crash")
    with transaction(engine) as a, transaction(reference) as b:
        assert ([(r.rank, r.formula, r.energy_per_atom) for r in ranked(a, "crash")]
                == [(r.rank, r.formula, r.energy_per_atom) for r in ranked(b, "crash")])


def test_a_killed_worker_loses_no_task_and_duplicates_nothing(tmp_path, checkpoint_file):
    from distributed import Client, LocalCluster

    path = write_campaign(tmp_path, checkpoint_file, name="workerloss", compositions=["C6", "C8"],
                          **{"generators.rss.samples_per_composition": 8, "generators.rss.batch_size": 4,
                             "relaxation.max_steps": 400})
    engine = make_engine(str(tmp_path / "w.db"))
    with (LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0") as cluster,
          Client(cluster) as client):
        before = set(client.scheduler_info()["workers"])
        outcome = {}
        thread = threading.Thread(target=lambda: outcome.update(result=runner.submit(path, engine, client=client)))
        thread.start()
        victim = None
        deadline = time.monotonic() + 120
        while victim is None and time.monotonic() < deadline:
            busy = [w for w, keys in client.processing().items() if any(k.startswith("rss-") for k in map(str, keys))]
            if busy:
                time.sleep(0.3)  # let the task get going
                victim = busy[0]
            time.sleep(0.02)
        assert victim is not None, "no task ever started"
        pid = client.run(os.getpid, workers=[victim])[victim]
        os.kill(pid, signal.SIGKILL)
        thread.join(timeout=300)
        assert not thread.is_alive()
        after = set(client.scheduler_info()["workers"])
    assert victim in before and victim not in after  # that worker really died (its nanny started a new one)
    assert outcome["result"].status == "done"
    n = counts(engine, "workerloss")
    assert n["task"] == 4 and n["structure"] == 16 == n["distinct_slots"] == n["energy"]


def test_a_campaign_whose_every_task_fails_ends_failed_with_the_errors_stored(tmp_path, checkpoint_file, capsys):
    path = write_campaign(tmp_path, checkpoint_file, name="impossible",
                          **{"generators.rss.min_separation": 3.0, "generators.rss.volume_per_atom": 2.0})
    db = str(tmp_path / "f.db")
    assert main(["submit", str(path), "--db", db, "--quiet", "--dashboard-address", ":0"]) == 1
    assert "'impossible': failed" in capsys.readouterr().out
    engine = make_engine(db)
    with transaction(engine) as session:
        campaign = session.scalar(select(Campaign).where(Campaign.name == "impossible"))
        tasks = session.scalars(select(Task).where(Task.campaign_id == campaign.id)).all()
        assert campaign.status == "failed" and "4 of 4 tasks failed" in campaign.error
        assert [t.status for t in tasks] == ["failed"] * 4
        assert all("RandomStructureError" in t.error and "C-C 3.00 Å" in t.error for t in tasks)
    assert counts(engine, "impossible") | {"task": 0} == {"structure": 0, "ranking": 0, "hull_entry": 0, "task": 0,
                                                          "distinct_slots": 0, "energy": 0}
    assert main(["status", "impossible", "--db", db]) == 0
    shown = capsys.readouterr().out
    assert shown.count("failed impossible task rss/") == 4 and "cannot build C2" in shown


@pytest.mark.postgres
def test_postgres_and_sqlite_give_the_same_rankings(tmp_path, checkpoint_file, sqlite_url, postgres_url):
    path = write_campaign(tmp_path, checkpoint_file, name="parity")
    results = []
    for url in (sqlite_url, postgres_url):
        engine = make_engine(url)
        assert runner.submit(path, engine, dashboard_address=":0").status == "done"
        with transaction(engine) as session:
            results.append([(r.rank, r.formula, r.energy_per_atom, r.volume_per_atom, r.e_above_hull)
                            for r in ranked(session, "parity")])
        engine.dispose()
    assert results[0] == results[1] and len(results[0]) > 0


@pytest.mark.slow  # ~25 s; the fast suite keeps to ~5 min on 2 cores
def test_dask_info_lines_are_printed_only_with_verbose(tmp_path, checkpoint_file):
    """The terminal keeps the dashboard URL and progress; Dask's connection chatter only with -v."""
    import sys

    path = write_campaign(tmp_path, checkpoint_file, name="quiet", compositions=["C2"],
                          **{"generators.rss.samples_per_composition": 2, "cluster.n_workers": 1})

    def submit(*flags: str) -> subprocess.CompletedProcess:
        db = tmp_path / f"run{len(flags)}.db"
        return subprocess.run([sys.executable, "-m", "atomscreen", *flags, "submit", str(path), "--db", str(db),
                               "--dashboard-address", ":0"], capture_output=True, text=True, timeout=300)

    quiet, verbose = submit(), submit("--verbose")
    assert quiet.returncode == 0 and verbose.returncode == 0, quiet.stderr + verbose.stderr
    assert "Dask dashboard: http" in quiet.stderr and "generation tasks" in quiet.stderr
    assert "INFO" not in quiet.stderr + quiet.stdout
    assert "INFO distributed" in verbose.stderr


@pytest.mark.slow
def test_losing_every_worker_at_once_reruns_their_tasks_with_the_model_sent_again(tmp_path, checkpoint_file):
    """Drill W04: both workers SIGKILLed together; the model (a task's result, not scattered data) is computed again
    on the new workers and the campaign ends as an uninterrupted run does."""
    from distributed import Client, LocalCluster

    path = write_campaign(tmp_path, checkpoint_file, name="allgone", compositions=["C6", "C8"],
                          **{"generators.rss.samples_per_composition": 8, "generators.rss.batch_size": 2,
                             "relaxation.max_steps": 400})
    engine = make_engine(str(tmp_path / "w.db"))
    with (LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0") as cluster,
          Client(cluster) as client):
        outcome = {}
        thread = threading.Thread(target=lambda: outcome.update(result=runner.submit(path, engine, client=client)))
        thread.start()
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not any(
                str(k).startswith("rss-") for keys in client.processing().values() for k in keys):
            time.sleep(0.02)
        time.sleep(0.3)
        pids = client.run(os.getpid)
        assert len(pids) == 2
        for pid in pids.values():
            os.kill(pid, signal.SIGKILL)
        thread.join(timeout=300)
        assert not thread.is_alive()
    assert outcome["result"].status == "done", outcome["result"]
    n = counts(engine, "allgone")
    assert n["task"] == 8 and n["structure"] == 16 == n["distinct_slots"] == n["energy"]
    reference = make_engine(str(tmp_path / "reference.db"))
    assert runner.submit(path, reference, dashboard_address=":0").status == "done"
    assert snapshot(engine, "allgone") == snapshot(reference, "allgone")


@pytest.mark.slow
def test_sigterm_stops_the_driver_cleanly_and_the_campaign_resumes_to_the_uninterrupted_result(tmp_path,
                                                                                                checkpoint_file):
    """Drills T02/T03: SIGTERM (what timeout and batch schedulers send) ends the run with one line, tasks in flight
    pending again, the campaign not left `running`; resume completes it as an uninterrupted run."""
    path = write_campaign(tmp_path, checkpoint_file, name="term",
                          **{"generators.rss.samples_per_composition": 12, "generators.rss.batch_size": 3,
                             "relaxation.max_steps": 300})
    db = tmp_path / "term.db"
    env = {k: v for k, v in os.environ.items() if k != "ATOMSCREEN_DB"}
    driver = subprocess.Popen(["platform", "submit", str(path), "--db", str(db), "--quiet", "--dashboard-address",
                               ":0"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_for_done_tasks(db, 1, lambda: driver.poll() is None, timeout=300)
    assert driver.poll() is None, "the driver ended before it could be stopped"
    driver.send_signal(signal.SIGTERM)
    stdout, stderr = driver.communicate(timeout=120)
    assert driver.returncode == 130, stdout + stderr
    assert "Traceback" not in stderr and "interrupted (SIGTERM)" in stderr and "platform resume" in stderr
    with sqlite3.connect(db) as conn:
        assert conn.execute("SELECT status FROM campaign").fetchone()[0] == "pending"
        assert conn.execute("SELECT count(*) FROM task WHERE status = 'running'").fetchone()[0] == 0
    resumed = subprocess.run(["platform", "resume", "term", "--db", str(db), "--quiet", "--dashboard-address", ":0"],
                             env=env, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    reference = make_engine(str(tmp_path / "reference.db"))
    assert runner.submit(path, reference, dashboard_address=":0").status == "done"
    assert snapshot(make_engine(str(db)), "term") == snapshot(reference, "term")


@pytest.mark.slow
def test_a_sqlite_write_lock_held_past_the_busy_timeout_is_waited_out(tmp_path, checkpoint_file):
    """Drill L02: another process holds the file's write lock for 35 s (longer than the 30 s busy timeout) while
    results arrive; the driver waits (busy timeout, then retries with backoff) and the campaign completes."""
    path = write_campaign(tmp_path, checkpoint_file, name="locked")
    db = tmp_path / "locked.db"
    engine = make_engine(str(db))
    outcome = {}
    thread = threading.Thread(target=lambda: outcome.update(
        result=runner.submit(path, engine, dashboard_address=":0")))
    thread.start()
    wait_for_done_tasks(db, 1, thread.is_alive, timeout=120)
    holder = sqlite3.connect(db, isolation_level=None, timeout=60)
    holder.execute("BEGIN EXCLUSIVE")
    time.sleep(35)
    holder.execute("COMMIT")
    holder.close()
    thread.join(timeout=300)
    assert outcome["result"].status == "done"
    n = counts(engine, "locked")
    assert n["task"] == 4 and n["structure"] == 12 == n["distinct_slots"] == n["energy"]


@pytest.mark.slow
def test_two_campaigns_submitted_at_once_to_one_sqlite_file_both_complete(tmp_path, checkpoint_file):
    """Drill CC1: two drivers write one SQLite file at the same time; neither aborts, nothing is mixed up."""
    db = tmp_path / "shared.db"
    env = {k: v for k, v in os.environ.items() if k != "ATOMSCREEN_DB"}
    subprocess.run(["platform", "db", "upgrade", "--db", str(db)], env=env, check=True, capture_output=True)
    paths = [write_campaign(tmp_path, checkpoint_file, name="first"),
             write_campaign(tmp_path, checkpoint_file, name="second", seed=7, compositions=["C3", "C5"])]
    drivers = [subprocess.Popen(["platform", "submit", str(p), "--db", str(db), "--quiet", "--dashboard-address", ":0"],
                                env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for p in paths]
    outputs = [d.communicate(timeout=400)[0] for d in drivers]
    assert [d.returncode for d in drivers] == [0, 0], outputs
    engine = make_engine(str(db))
    for name in ("first", "second"):
        n = counts(engine, name)
        assert n["task"] == 4 and n["structure"] == 12 == n["distinct_slots"] == n["energy"], (name, n)
