"""Campaign overhead at scale: a real `platform submit` of --n small random crystals relaxed on a tiny RM potential
(trained here in seconds), on SQLite and on PostgreSQL, reporting where the wall time went.

    python scripts/bench_campaign.py --n 100000 [--postgres postgresql+psycopg://USER:PW@HOST/DB] [--workers 1]

One JSON line per database: wall time of the whole submit (cluster start, models, planning, dispatch, store writes,
analysis), the tasks' own time summed over the workers (`task_s`: random starts, model load, relaxation, space
groups), `relax_share` = task_s / (workers x wall) and `overhead` = 1 - relax_share (the fraction of the workers'
wall time spent on anything but their tasks), and the store's write rate (structures written / seconds inside the
write transactions). Without --postgres the PostgreSQL line uses $ATOMSCREEN_TEST_POSTGRES_URL if set (a fresh
database is created on that server and dropped afterwards).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import tempfile
import time
import uuid
from pathlib import Path

import yaml
from benchlib import emit


def tiny_model(path: Path, seed: int) -> dict:
    """A small RM potential on diamond and graphite-like carbon, trained for a few seconds; returns its settings."""
    import torch
    from ase.build import bulk

    from atomscreen.potentials.responses import ResponseConfig
    from atomscreen.potentials.rm import RMConfig
    from atomscreen.potentials.train import TrainConfig, train

    torch.set_num_threads(1)
    config = RMConfig(cutoff=3.5, l_max=1, nu_max=2, n_embedding=1, n_radial=4, hidden=(8,))
    checkpoint = train([bulk("C", "diamond"), bulk("C", "diamond", cubic=True)], config,
                       ResponseConfig(max_displacement=0.3, max_strain=0.05),
                       TrainConfig(epochs=30, batch_size=8, steps_per_epoch=2, seed=seed),
                       source="bench_campaign: tiny carbon model")
    checkpoint.save(path)
    return dataclasses.asdict(config)


def campaign_file(folder: Path, checkpoint: Path, name: str, args) -> Path:
    per = args.n // len(args.formulas)
    spec = {
        "name": name,
        "seed": args.seed,
        "cluster": {"n_workers": args.workers, "threads_per_worker": 1},
        "compositions": list(args.formulas),
        "model": {"checkpoint": str(checkpoint)},
        "generators": {"rss": {"samples_per_composition": per, "volume_per_atom": 5.7, "volume_factor": [0.9, 1.1],
                               "min_separation": 1.2, "batch_size": args.batch_size}},
        "relaxation": {"fmax": args.fmax, "max_steps": args.max_steps, "trajectory_every": args.trajectory_every},
    }
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def postgres_database(admin_url: str):
    """A fresh database on the server of ``admin_url``: (url, drop)."""
    from sqlalchemy import text
    from sqlalchemy.engine import make_url

    from atomscreen.store import make_engine

    name = f"atomscreen_bench_{uuid.uuid4().hex[:10]}"
    admin = make_engine(admin_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    url = make_url(admin.url).set(database=name).render_as_string(hide_password=False)

    def drop() -> None:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()

    return url, drop


def run_campaign(url: str, path: Path, workers: int) -> dict:
    """Submit the campaign at ``path`` on ``url`` and time it."""
    from atomscreen.compute.progress import Reporter
    from atomscreen.compute.runner import submit
    from atomscreen.store import make_engine

    done = {"tasks": 0, "structures": 0}
    t_start = time.perf_counter()

    def finished(key: str, ok: bool, n: int) -> None:
        done["tasks"] += 1
        done["structures"] += n
        if done["tasks"] % 10 == 0:
            print(f"  {done['tasks']} tasks, {done['structures']} structures, "
                  f"{time.perf_counter() - t_start:.0f} s", file=sys.stderr, flush=True)

    engine = make_engine(url)
    try:
        t0 = time.perf_counter()
        outcome = submit(path, engine, reporter=Reporter(message=lambda m: print(m, file=sys.stderr),
                                                         task_finished=finished), dashboard_address=":0")
        wall = time.perf_counter() - t0
    finally:
        engine.dispose()
    t = outcome.timings
    relax_share = t.task_s / (workers * wall)
    return {"status": outcome.status, "n_structures": outcome.n_structures, "tasks": outcome.tasks,
            "wall_s": round(wall, 2), "task_s": round(t.task_s, 2), "relax_share": round(relax_share, 4),
            "overhead": round(1 - relax_share, 4),
            "outside": {"models_s": round(t.models_s, 2), "plan_s": round(t.plan_s, 2),
                        "analysis_s": round(t.analysis_s, 2),
                        "start_and_rest_s": round(wall - t.models_s - t.plan_s - t.dispatch_s - t.analysis_s, 2)},
            "dispatch_s": round(t.dispatch_s, 2), "write_s": round(t.write_s, 2), "n_written": t.n_written,
            "writes_per_s": round(t.n_written / t.write_s, 1) if t.write_s else None}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=100_000, help="structures in all")
    parser.add_argument("--formulas", nargs="+", default=["C2", "C4"])
    parser.add_argument("--batch-size", type=int, default=2000, help="structures per task")
    parser.add_argument("--workers", type=int, default=1, help="local Dask workers (1 thread each)")
    parser.add_argument("--fmax", type=float, default=0.05)
    parser.add_argument("--max-steps", type=int, default=100)
    parser.add_argument("--trajectory-every", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--databases", nargs="+", default=["sqlite", "postgres"], choices=["sqlite", "postgres"])
    parser.add_argument("--postgres", default=os.environ.get("ATOMSCREEN_TEST_POSTGRES_URL"),
                        help="an admin URL of a PostgreSQL server (a fresh database is made on it)")
    parser.add_argument("--out", type=Path, help="also append the JSON lines here")
    args = parser.parse_args()
    if args.n < len(args.formulas):
        parser.error(f"--n {args.n} is smaller than the number of formulas ({len(args.formulas)})")
    with tempfile.TemporaryDirectory(prefix="bench_campaign_") as scratch:
        folder = Path(scratch)
        t0 = time.perf_counter()
        config = tiny_model(folder / "tiny.pt", args.seed)
        print(f"tiny model trained in {time.perf_counter() - t0:.1f} s", file=sys.stderr)
        for database in args.databases:
            if database == "postgres" and not args.postgres:
                emit({"bench": "campaign", "database": database, "skipped": "no --postgres URL and no "
                      "$ATOMSCREEN_TEST_POSTGRES_URL"}, args.out)
                continue
            name = f"bench-{database}"
            path = campaign_file(folder, folder / "tiny.pt", name, args)
            drop = None
            if database == "sqlite":
                url = f"sqlite:///{folder / 'bench.db'}"
            else:
                url, drop = postgres_database(args.postgres)
            try:
                line = run_campaign(url, path, args.workers)
            finally:
                if drop is not None:
                    drop()
            emit({"bench": "campaign", "database": database, "n": args.n, "formulas": args.formulas,
                  "batch_size": args.batch_size, "workers": args.workers, "fmax": args.fmax,
                  "max_steps": args.max_steps, "trajectory_every": args.trajectory_every, "model": config,
                  "loadavg": os.getloadavg(), **line}, args.out)


if __name__ == "__main__":
    main()
