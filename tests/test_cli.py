"""The `platform` command as a new user meets it: db upgrade/current, status, and the stdlib `platform` untouched."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys

from conftest import REPO

from atomscreen import store
from atomscreen.cli import main
from atomscreen.store.models import Base, Task


def run(*args: str, cwd, env=None) -> subprocess.CompletedProcess:
    full = {k: v for k, v in os.environ.items() if k != "ATOMSCREEN_DB"}
    return subprocess.run(["platform", *args], cwd=cwd, env={**full, **(env or {})}, capture_output=True, text=True)


def test_stdlib_platform_is_not_shadowed_from_the_repo_root():
    result = subprocess.run([sys.executable, "-c", "import platform; print(platform.system())"], cwd=REPO,
                            capture_output=True, text=True)
    assert result.stdout.strip() == "Linux", result.stderr
    assert not (REPO / "platform" / "__init__.py").exists()


def test_db_upgrade_creates_every_table_in_a_new_sqlite_file(tmp_path):
    result = run("db", "upgrade", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    with sqlite3.connect(tmp_path / "atomscreen.db") as conn:
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    assert set(Base.metadata.tables) <= tables
    again = run("db", "upgrade", cwd=tmp_path)
    assert again.returncode == 0 and "already at" in again.stdout
    current = run("db", "current", cwd=tmp_path)
    assert current.returncode == 0 and current.stdout.startswith("0007 (head)")


def test_python_dash_m_is_the_same_command(tmp_path):
    result = subprocess.run([sys.executable, "-m", "atomscreen", "db", "upgrade", "--db", str(tmp_path / "x.db")],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "x.db").exists()


def test_commands_on_a_missing_database_fail_without_creating_it(tmp_path):
    for args in (["db", "current"], ["status"]):
        result = run(*args, "--db", str(tmp_path / "missing.db"), cwd=tmp_path)
        assert result.returncode == 2 and "no database at" in result.stderr and "platform db upgrade" in result.stderr
    assert not (tmp_path / "missing.db").exists()


def test_status_lists_tasks_by_state_and_failures(engine, capsys):
    with store.transaction(engine) as session:
        campaign = store.add_campaign(session, "lis", "name: lis\n")
        for i, status in enumerate(["done", "done", "failed", "pending"]):
            error = "minimum separation 3.0 Å cannot be met in 2.1 Å^3/atom" if status == "failed" else None
            session.add(Task(campaign_id=campaign.id, kind="rss", key=f"rss-{i}", seed=i, status=status, error=error))
    url = engine.url.render_as_string(hide_password=False)
    assert main(["status", "--db", url]) == 0
    shown = capsys.readouterr().out
    assert "lis" in shown and "rss-2" in shown and "cannot be met" in shown
    assert main(["status", "nope", "--db", url]) == 2
    assert "no campaign named 'nope'" in capsys.readouterr().err


def test_status_on_an_old_schema_asks_for_upgrade(tmp_path, capsys):
    from atomscreen.store import migrate

    engine = store.make_engine(str(tmp_path / "old.db"))
    migrate.upgrade(engine)
    migrate.downgrade(engine, "base")
    assert main(["status", "--db", str(tmp_path / "old.db")]) == 2
    assert "run platform db upgrade" in capsys.readouterr().err


def test_db_env_variable_is_used(tmp_path):
    result = run("db", "upgrade", cwd=tmp_path, env={"ATOMSCREEN_DB": str(tmp_path / "from_env.db")})
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "from_env.db").exists() and not (tmp_path / "atomscreen.db").exists()


def test_train_command_stores_the_model_and_writes_the_checkpoint(tmp_path):
    import shutil

    from sqlalchemy import select

    from atomscreen.potentials.train import Checkpoint
    from atomscreen.store.models import Model

    shutil.copy(REPO / "examples" / "data" / "diamond.extxyz", tmp_path / "diamond.extxyz")
    config = tmp_path / "train.yaml"
    config.write_text(
        "name: tiny-diamond\ndataset: {path: diamond.extxyz}\n"
        "hyperparameters: {cutoff: 3.0, l_max: 1, nu_max: 2, n_radial: 3, hidden: [4], epochs: 2, batch_size: 2, "
        "steps_per_epoch: 1}\n"
        "output: tiny.pt\n"
    )
    result = run("train", str(config), "--quiet", "--db", str(tmp_path / "models.db"), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    checkpoint = Checkpoint.load(tmp_path / "tiny.pt")
    engine = store.make_engine(str(tmp_path / "models.db"))
    with store.transaction(engine) as session:
        row = session.scalars(select(Model)).one()
        assert row.sha256 == checkpoint.sha256 and row.kind == "rm_potential" and row.name == "tiny-diamond"
        assert row.hyperparameters["model"]["cutoff"] == 3.0 and row.training_data["n_structures"] == 1
        assert row.weights == checkpoint.weights_bytes()
    assert checkpoint.sha256 in result.stdout


def test_train_command_rejects_unknown_hyperparameters(tmp_path, capsys):
    config = tmp_path / "train.yaml"
    config.write_text("name: x\ndataset: {format: qm9, limit: 5}\nhyperparameters: {cutof: 4.0}\n")
    assert main(["train", str(config), "--db", str(tmp_path / "m.db")]) == 2
    assert "hyperparameters" in capsys.readouterr().err
    assert not (tmp_path / "m.db").exists()


def test_submit_with_gpus_on_a_machine_without_cuda_says_so_and_records_nothing(tmp_path):
    import pytest
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    (tmp_path / "gpu.yaml").write_text(
        "name: on_gpu\ncompositions: [C2]\nmodel:\n  checkpoint: %s\ngenerators:\n  rss: {samples_per_composition: 2}\n"
        "cluster: {gpus: 1}\n" % (REPO / "models" / "qm7b_like.pt"))
    result = run("submit", "gpu.yaml", "--db", str(tmp_path / "gpu.db"), cwd=tmp_path)
    assert result.returncode != 0
    assert "cluster.gpus = 1" in result.stderr and "CUDA" in result.stderr and "Traceback" not in result.stderr
    if (tmp_path / "gpu.db").exists():
        with sqlite3.connect(tmp_path / "gpu.db") as conn:
            tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
            assert "campaign" not in tables or conn.execute("SELECT count(*) FROM campaign").fetchone()[0] == 0
