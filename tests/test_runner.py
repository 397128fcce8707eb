"""Campaigns end to end on a real Dask LocalCluster and real databases: submit, results, hull and export, a re-submit,
every task failing, and SQLite/PostgreSQL parity. Fault drills are in test_faults.py."""

from __future__ import annotations

import json
import subprocess

import pytest
from ase.io import read
from conftest import write_campaign
from drills import counts, snapshot
from sqlalchemy import func, select

from atomscreen.cli import main
from atomscreen.compute import runner
from atomscreen.store import make_engine, ranked, transaction
from atomscreen.store.models import Campaign, Structure, Task


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


