"""Crash soak: SIGKILL a real `platform submit` at random moments, resume it, and check that nothing was lost or
duplicated and that the result equals an uninterrupted run with the same seed.

    python scripts/drill.py --n 20 [--seed 0] [--db sqlite|postgres] [--out drills.jsonl]

A tiny RM potential is trained first (seconds); the campaign (C2 and C4, 8 tasks of 2 structures, 2 workers) runs
once uninterrupted as the reference. Then, n times: submit into a fresh database, kill the driver's whole process
group (driver, LocalCluster, workers) after a random time within the reference's wall time, resume (or submit again
if the kill came before the campaign was recorded) until it is done, and compare every stored structure (task key,
index in task, positions, cell, energy) and the rankings with the reference. One JSON line per drill; exit code 1 if
any drill differs. PostgreSQL (`--db postgres`) uses $ATOMSCREEN_TEST_POSTGRES_URL (a fresh database per drill).
"""

from __future__ import annotations

import argparse
import hashlib
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import yaml
from bench_campaign import postgres_database, tiny_model
from benchlib import emit


def campaign(folder: Path, checkpoint: Path) -> Path:
    spec = {"name": "drill", "seed": 5, "cluster": {"n_workers": 2, "threads_per_worker": 1},
            "compositions": ["C2", "C4"], "model": {"checkpoint": str(checkpoint)},
            "generators": {"rss": {"samples_per_composition": 8, "volume_per_atom": 5.7, "volume_factor": [0.9, 1.1],
                                   "min_separation": 1.2, "batch_size": 2}},
            "relaxation": {"fmax": 0.05, "max_steps": 200, "trajectory_every": 20}}
    path = folder / "drill.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def fingerprint(url: str) -> dict:
    """Hashes of every stored structure and of the rankings, and the row counts that must hold."""
    from sqlalchemy import func, inspect, select

    from atomscreen.store import make_engine, ranked, transaction
    from atomscreen.store.models import Campaign, Energy, Structure, Task

    engine = make_engine(url)
    try:
        if not inspect(engine).has_table("campaign"):  # killed before the first migration committed
            return {"status": None}
        with transaction(engine) as session:
            campaign = session.scalar(select(Campaign).where(Campaign.name == "drill"))
            if campaign is None:
                return {"status": None}
            rows = session.execute(
                select(Task.key, Structure.task_index, Structure.positions, Structure.cell, Energy.total)
                .join(Structure, Structure.task_id == Task.id).outerjoin(Energy, Energy.structure_id == Structure.id)
                .where(Task.campaign_id == campaign.id).order_by(Task.key, Structure.task_index)).all()
            structures = hashlib.sha256()
            for key, index, positions, cell, energy in rows:
                structures.update(f"{key}/{index}/{energy!r}".encode() + positions.tobytes() + cell.tobytes())
            ranking = hashlib.sha256(repr([(r.rank, r.formula, r.energy_per_atom)
                                           for r in ranked(session, "drill")]).encode())
            n = session.scalar(select(func.count(Structure.id)).where(Structure.campaign_id == campaign.id))
            slots = session.scalar(select(func.count()).select_from(
                select(Structure.task_id, Structure.task_index).where(Structure.campaign_id == campaign.id)
                .distinct().subquery()))
            return {"status": campaign.status, "structures": structures.hexdigest()[:16],
                    "rankings": ranking.hexdigest()[:16], "n_structures": n, "distinct_slots": slots}
    finally:
        engine.dispose()


def platform(*args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "ATOMSCREEN_DB"}
    return subprocess.run(["platform", *args, "--quiet", "--dashboard-address", ":0"], env=env, capture_output=True,
                          text=True, timeout=timeout)


def one_drill(path: Path, url: str, kill_after: float) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "ATOMSCREEN_DB"}
    driver = subprocess.Popen(["platform", "submit", str(path), "--db", url, "--quiet", "--dashboard-address", ":0"],
                              env=env, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(kill_after)
    killed = driver.poll() is None
    if killed:
        os.killpg(driver.pid, signal.SIGKILL)
    driver.wait()
    at_kill = fingerprint(url)
    runs = 0
    while runs < 5:
        runs += 1
        recorded = at_kill["status"] is not None if runs == 1 else True
        result = platform("resume", "drill", "--db", url) if recorded else platform("submit", str(path), "--db", url)
        if result.returncode == 0:
            break
    return {"killed": killed, "kill_after_s": round(kill_after, 2), "status_at_kill": at_kill["status"],
            "n_at_kill": at_kill.get("n_structures"), "resume_runs": runs, **fingerprint(url)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=20, help="drills (random kill moments)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--db", choices=["sqlite", "postgres"], default="sqlite")
    parser.add_argument("--out", type=Path, help="also append the JSON lines here")
    args = parser.parse_args()
    admin = os.environ.get("ATOMSCREEN_TEST_POSTGRES_URL")
    if args.db == "postgres" and not admin:
        parser.error("--db postgres needs $ATOMSCREEN_TEST_POSTGRES_URL")
    rng = np.random.default_rng(args.seed)
    with tempfile.TemporaryDirectory(prefix="drill_") as scratch:
        folder = Path(scratch)
        tiny_model(folder / "tiny.pt", 0)
        path = campaign(folder, folder / "tiny.pt")

        def fresh(i):
            return (f"sqlite:///{folder / f'd{i}.db'}", None) if args.db == "sqlite" else postgres_database(admin)

        url, drop = fresh("ref")
        t0 = time.perf_counter()
        assert platform("submit", str(path), "--db", url).returncode == 0, "the reference run failed"
        wall = time.perf_counter() - t0
        reference = fingerprint(url)
        if drop:
            drop()
        emit({"drill": "reference", "db": args.db, "wall_s": round(wall, 1), **reference}, args.out)
        bad = 0
        for i in range(args.n):
            url, drop = fresh(i)
            try:
                line = one_drill(path, url, float(rng.uniform(0.5, wall)))
            finally:
                if drop:
                    drop()
            same = all(line.get(k) == reference[k] for k in ("status", "structures", "rankings", "n_structures"))
            same = same and line["n_structures"] == line["distinct_slots"]
            bad += not same
            emit({"drill": i, "db": args.db, "identical": same, **line}, args.out)
        emit({"drill": "summary", "db": args.db, "n": args.n, "identical": args.n - bad, "differ": bad}, args.out)
    sys.exit(1 if bad else 0)


if __name__ == "__main__":
    main()
