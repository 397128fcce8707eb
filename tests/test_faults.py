"""Fault drills (`shared/design/reliability-drills.md`, sections 2 and 3): a real campaign is hit by a fault from
outside (SIGKILL, SIGTERM, killed Dask workers, another SQLite writer, a full disk, a PostgreSQL restart or outage),
then finishes or is resumed; every drill asserts that the final database holds exactly the rows of an uninterrupted
run with the same seed (every structure, energy and ranking, nothing twice). The long ones are marked slow:
`pytest -m slow tests/test_faults.py`; `scripts/drill.py` repeats the SIGKILL drill at random moments."""

from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from conftest import REPO, write_campaign
from drills import assert_same_as, counts, platform, start, task_states, wait_for_done_tasks

from atomscreen.compute import runner
from atomscreen.store import make_engine


def reference_run(path: Path, folder: Path):
    """The same campaign, uninterrupted, in a database of its own."""
    engine = make_engine(str(folder / f"reference-{path.stem}.db"))
    assert runner.submit(path, engine, dashboard_address=":0").status == "done"
    return engine


def test_driver_killed_mid_campaign_is_resumed_to_the_uninterrupted_result(tmp_path, checkpoint_file):
    path = write_campaign(tmp_path, checkpoint_file, name="crash", compositions=["C4", "C6", "C8"],
                          **{"generators.rss.samples_per_composition": 12, "generators.rss.batch_size": 3,
                             "relaxation.max_steps": 300})
    db = tmp_path / "crash.db"
    driver = start("submit", str(path), "--db", str(db), start_new_session=True)
    wait_for_done_tasks(db, 2, lambda: driver.poll() is None, timeout=300)
    assert driver.poll() is None, f"the driver ended before it could be killed: {driver.communicate()}"
    os.killpg(driver.pid, signal.SIGKILL)  # the driver, its LocalCluster and workers, all at once
    driver.wait()
    with sqlite3.connect(db) as conn:
        states = dict(conn.execute("SELECT status, count(*) FROM task GROUP BY status").fetchall())
        assert conn.execute("SELECT status FROM campaign").fetchone()[0] == "running"
    assert 2 <= states.get("done", 0) < 12, states

    resumed = platform("resume", "crash", "--db", str(db))
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert_same_as(make_engine(str(db)), reference_run(path, tmp_path), "crash", n_tasks=12, n_structures=36)


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
    assert_same_as(engine, reference_run(path, tmp_path), "allgone", n_tasks=8, n_structures=16)


@pytest.mark.slow
def test_sigterm_stops_the_driver_cleanly_and_the_campaign_resumes_to_the_uninterrupted_result(tmp_path,
                                                                                                checkpoint_file):
    """Drills T02/T03: SIGTERM (what timeout and batch schedulers send) ends the run with one line, tasks in flight
    pending again, the campaign not left `running`; resume completes it as an uninterrupted run."""
    path = write_campaign(tmp_path, checkpoint_file, name="term",
                          **{"generators.rss.samples_per_composition": 12, "generators.rss.batch_size": 3,
                             "relaxation.max_steps": 300})
    db = tmp_path / "term.db"
    driver = start("submit", str(path), "--db", str(db))
    wait_for_done_tasks(db, 1, lambda: driver.poll() is None, timeout=300)
    assert driver.poll() is None, "the driver ended before it could be stopped"
    driver.send_signal(signal.SIGTERM)
    stdout, stderr = driver.communicate(timeout=120)
    assert driver.returncode == 130, stdout + stderr
    assert "Traceback" not in stderr and "interrupted (SIGTERM)" in stderr and "platform resume" in stderr
    with sqlite3.connect(db) as conn:
        assert conn.execute("SELECT status FROM campaign").fetchone()[0] == "pending"
        assert conn.execute("SELECT count(*) FROM task WHERE status = 'running'").fetchone()[0] == 0
    resumed = platform("resume", "term", "--db", str(db))
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert_same_as(make_engine(str(db)), reference_run(path, tmp_path), "term", n_tasks=8, n_structures=24)


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
    assert_same_as(engine, reference_run(path, tmp_path), "locked", n_tasks=4, n_structures=12)


@pytest.mark.slow
def test_two_campaigns_submitted_at_once_to_one_database_both_complete(tmp_path, checkpoint_file, db_url):
    """Drills CC1 and PC1: two drivers write one database at the same time; neither aborts, nothing is mixed up."""
    db = str(tmp_path / "shared.db") if db_url.startswith("sqlite") else db_url
    assert platform("db", "upgrade", "--db", db).returncode == 0
    paths = [write_campaign(tmp_path, checkpoint_file, name="first"),
             write_campaign(tmp_path, checkpoint_file, name="second", seed=7, compositions=["C3", "C5"])]
    drivers = [start("submit", str(p), "--db", db) for p in paths]
    outputs = [d.communicate(timeout=400) for d in drivers]
    assert [d.returncode for d in drivers] == [0, 0], outputs
    engine = make_engine(db)
    for path in paths:
        assert_same_as(engine, reference_run(path, tmp_path), path.stem, n_tasks=4, n_structures=12)
    engine.dispose()


@pytest.fixture
def small_disk(tmp_path):
    """A 16 MiB tmpfs (needs root and a kernel that allows the mount; skipped otherwise), unmounted afterwards."""
    disk = tmp_path / "disk"
    disk.mkdir()
    if os.geteuid() != 0 or not shutil.which("mount"):
        pytest.skip("mounting a tmpfs needs root")
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", str(disk)], capture_output=True,
                             text=True)
    if mounted.returncode:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
    try:
        yield disk
    finally:
        subprocess.run(["umount", "-l", str(disk)], check=False)


def fill(disk: Path) -> Path:
    """Write a file until the disk has no byte left."""
    filler = disk / "filler"
    with open(filler, "wb", buffering=0) as out:
        for size in (1 << 20, 1 << 12, 1):
            try:
                while True:
                    out.write(b"\0" * size)
            except OSError as exc:
                assert exc.errno == errno.ENOSPC, exc
    return filler


@pytest.mark.slow
def test_a_full_disk_during_result_writes_stops_named_and_resumes_to_the_uninterrupted_result(
        tmp_path, checkpoint_file, small_disk):
    """Drill F03: the disk holding the SQLite file fills up while results arrive. The run stops with one named line
    (exit 1), nothing is half-written and the file is intact; once space is freed, resume completes the campaign as
    an uninterrupted run."""
    path = write_campaign(tmp_path, checkpoint_file, name="full",
                          **{"generators.rss.samples_per_composition": 12, "generators.rss.batch_size": 3,
                             "relaxation.max_steps": 300})
    db = small_disk / "full.db"
    driver = start("submit", str(path), "--db", str(db))
    wait_for_done_tasks(db, 1, lambda: driver.poll() is None, timeout=300)
    assert driver.poll() is None, "the campaign ended before the disk could fill"
    filler = fill(small_disk)
    stdout, stderr = driver.communicate(timeout=300)
    assert driver.returncode == 1, stdout + stderr
    assert "Traceback" not in stderr, stderr
    assert "error: campaign 'full' stopped: database or disk is full" in stderr, stderr
    assert stderr.rstrip().endswith("then `platform resume full`"), stderr
    with sqlite3.connect(db) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        done = conn.execute("SELECT count(*) FROM task WHERE status = 'done'").fetchone()[0]
        assert conn.execute("SELECT count(*) FROM task WHERE status = 'failed'").fetchone()[0] == 0
    n = counts(make_engine(str(db)), "full")
    assert n["structure"] == 3 * done == n["distinct_slots"] == n["energy"], n  # only whole tasks were stored
    assert done < 8

    filler.unlink()
    resumed = platform("resume", "full", "--db", str(db))
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert_same_as(make_engine(str(db)), reference_run(path, tmp_path), "full", n_tasks=8, n_structures=24)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def private_postgres():
    """A PostgreSQL cluster of this test's own (Debian's pg_createcluster, as root), so that it can be restarted and
    stopped without touching the shared server; dropped afterwards."""
    versions = sorted(os.listdir("/usr/lib/postgresql"), key=float) if os.path.isdir("/usr/lib/postgresql") else []
    if os.geteuid() != 0 or not versions or not shutil.which("pg_createcluster"):
        pytest.skip("a private PostgreSQL cluster needs root and Debian's postgresql-common")
    version, name, port = versions[-1], f"atomscreen_drill_{os.getpid()}", _free_port()
    subprocess.run(["pg_createcluster", version, name, "--port", str(port), "--start"], check=True,
                   capture_output=True)
    try:
        subprocess.run(["runuser", "-u", "postgres", "--", "psql", "-p", str(port), "-qc",
                        "ALTER USER postgres PASSWORD 'drill'"], check=True, capture_output=True)
        yield (version, name), f"postgresql+psycopg://postgres:drill@127.0.0.1:{port}/postgres"
    finally:
        subprocess.run(["pg_dropcluster", "--stop", version, name], check=False, capture_output=True)


@pytest.mark.slow
@pytest.mark.postgres
@pytest.mark.parametrize("fault", ["restart", "outage"])
def test_a_postgresql_restart_or_outage_mid_campaign_is_waited_out(tmp_path, checkpoint_file, private_postgres,
                                                                   fault):
    """Drills P03/P05: the server is restarted, or stopped for 20 s, while results arrive. The driver reconnects
    (pinged pool, bounded retry with backoff), keeps the results in flight in memory, marks no task failed and
    completes with exactly the uninterrupted run's rows."""
    (version, name), url = private_postgres
    path = write_campaign(tmp_path, checkpoint_file, name=f"pg-{fault}",
                          **{"generators.rss.samples_per_composition": 12, "generators.rss.batch_size": 3,
                             "relaxation.max_steps": 300})
    driver = start("submit", str(path), "--db", url)
    wait_for_done_tasks(url, 1, lambda: driver.poll() is None, timeout=300)
    assert driver.poll() is None, "the campaign ended before the server could be restarted"
    if fault == "restart":
        subprocess.run(["pg_ctlcluster", version, name, "restart", "-m", "fast"], check=True, capture_output=True)
    else:
        subprocess.run(["pg_ctlcluster", version, name, "stop", "-m", "fast"], check=True, capture_output=True)
        time.sleep(20)
        subprocess.run(["pg_ctlcluster", version, name, "start"], check=True, capture_output=True)
    stdout, stderr = driver.communicate(timeout=400)
    assert driver.returncode == 0, stdout + stderr
    assert "database unavailable" in stderr and "Traceback" not in stderr, stderr  # it did wait, and said so
    assert task_states(url) == {"done": 8}
    engine = make_engine(url)
    assert_same_as(engine, reference_run(path, tmp_path), f"pg-{fault}", n_tasks=8, n_structures=24)
    engine.dispose()


@pytest.mark.slow
def test_an_external_scheduler_survives_a_killed_worker_process(tmp_path, checkpoint_file):
    """An external `dask scheduler` and two `dask worker` processes (no nanny to restart them, no LocalCluster): one
    worker is SIGKILLed mid-campaign; its tasks run again on the other and the result is the uninterrupted run's."""
    from distributed import Client

    bin_dir = Path(sys.executable).parent
    scheduler_file = tmp_path / "scheduler.json"
    processes = [subprocess.Popen([str(bin_dir / "dask"), "scheduler", "--host", "127.0.0.1", "--port", "0",
                                   "--no-dashboard", "--scheduler-file", str(scheduler_file)],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)]
    try:
        deadline = time.monotonic() + 60
        while not scheduler_file.exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        address = json.loads(scheduler_file.read_text())["address"]
        workers = [subprocess.Popen([str(bin_dir / "dask"), "worker", address, "--nthreads", "1", "--no-nanny",
                                     "--host", "127.0.0.1", "--no-dashboard", "--name", f"w{i}"],
                                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) for i in range(2)]
        processes += workers
        path = write_campaign(tmp_path, checkpoint_file, name="external",
                              **{"generators.rss.samples_per_composition": 12, "generators.rss.batch_size": 3,
                                 "relaxation.max_steps": 300})
        db = tmp_path / "external.db"
        driver = start("submit", str(path), "--db", str(db), "--scheduler", address)
        wait_for_done_tasks(db, 1, lambda: driver.poll() is None, timeout=300)
        with Client(address) as client:  # kill w0 while it runs a task
            names = {w: info["name"] for w, info in client.scheduler_info()["workers"].items()}
            deadline, busy = time.monotonic() + 60, False
            while time.monotonic() < deadline and not busy:
                busy = any(str(k).startswith("rss-") for w, keys in client.processing().items() for k in keys
                           if names.get(w) == "w0")
                time.sleep(0.02)
        assert busy, "w0 never ran a task"
        assert driver.poll() is None, "the campaign ended before a worker could be killed"
        workers[0].kill()
        workers[0].wait()
        stdout, stderr = driver.communicate(timeout=400)
        assert driver.returncode == 0, stdout + stderr
        assert workers[1].poll() is None  # the other worker did the rest
    finally:
        for process in processes:
            process.kill()
            process.wait()
    assert_same_as(make_engine(str(db)), reference_run(path, tmp_path), "external", n_tasks=8, n_structures=24)


@pytest.mark.slow
def test_random_sigkills_of_the_driver_always_resume_to_the_uninterrupted_result(tmp_path):
    """The soak (`scripts/drill.py`) at three random moments: each killed run resumes to the reference's rows."""
    out = tmp_path / "drills.jsonl"
    result = subprocess.run([sys.executable, str(REPO / "scripts" / "drill.py"), "--n", "3", "--seed", "11",
                             "--out", str(out)], capture_output=True, text=True, timeout=900, cwd=REPO / "scripts")
    assert result.returncode == 0, result.stdout + result.stderr
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert lines[-1] == {"drill": "summary", "db": "sqlite", "n": 3, "identical": 3, "differ": 0}
