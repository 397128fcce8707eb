"""Bad input from the reliability drills (`shared/design/reliability-drills.md`, sections 1b-1d), each as the
project's own copy: a named one-line error with exit code 2, no traceback, nothing left in the database. Malformed
campaign files (1a) are in tests/campaigns/ and test_campaign.py."""

from __future__ import annotations

import pickle
import re
import signal
from pathlib import Path

import pytest
import torch
import yaml
from conftest import REPO, write_campaign
from sqlalchemy import func, select

from atomscreen.cli import main
from atomscreen.store import make_engine, transaction
from atomscreen.store.models import Base

BAD_DATA = REPO / "tests" / "bad_data"
# file -> what the one-line error must say (drills D01-D14)
DATA = {
    "truncated.cif": "ASE cannot read it",
    "garbage.cif": "ASE cannot read it: AssertionError",
    "too_few_atoms.extxyz": "Frame has 2 atoms, expected 3",
    "too_many_atoms.extxyz": "expected an atom count",
    "nan_coordinate.extxyz": "atom 2 has a non-finite coordinate",
    "same_position.extxyz": "atoms 1 and 2 are 0 Å apart",
    "unknown_element.extxyz": "'Xx'",
    "ghost_atom.extxyz": "atomic number 0 is not an element",
    "empty.extxyz": "holds no usable structure",
    "no_atoms.extxyz": "a structure without atoms",
    "zero_cell.extxyz": "the cell is degenerate",
    "inf_cell.extxyz": "the cell has non-finite entries",
    "huge_cell.extxyz": "is 1e+06 Å long",
    "not_a_cif.csv": "row 1: line 2:",
}


class _Hang(Exception):
    pass


@pytest.fixture
def within_ten_seconds():
    """Each case must end within 10 s (the issue's bound): a hang fails the test instead of stalling the suite."""
    def alarm(signum, frame):
        raise _Hang("no answer within 10 s")

    previous = signal.signal(signal.SIGALRM, alarm)
    signal.alarm(10)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, previous)


def rows(db: Path) -> int:
    if not db.exists():
        return 0
    engine = make_engine(str(db))
    with transaction(engine) as session:
        return sum(session.scalar(select(func.count()).select_from(t)) or 0 for t in Base.metadata.sorted_tables
                   if t.name != "alembic_version")


def one_named_line(capsys, expected: str) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err, err
    assert expected in err, err
    assert len([line for line in err.splitlines() if line.startswith(("error:", "database error:"))]) == 1, err
    return err


@pytest.mark.parametrize("name", sorted(DATA), ids=sorted(DATA))
def test_a_bad_training_file_is_a_named_error_and_stores_nothing(name, tmp_path, capsys, within_ten_seconds):
    fmt = "cdvae-csv" if name.endswith(".csv") else "auto"
    train = tmp_path / "train.yaml"
    train.write_text(yaml.safe_dump({
        "name": "bad", "dataset": {"path": str(BAD_DATA / name), "format": fmt}, "seed": 0,
        "hyperparameters": {"cutoff": 3.0, "l_max": 1, "nu_max": 2, "n_embedding": 1, "n_radial": 4, "hidden": [4],
                            "epochs": 1, "batch_size": 2, "steps_per_epoch": 1}}))
    db = tmp_path / "t.db"
    assert main(["train", str(train), "--db", str(db)]) == 2
    one_named_line(capsys, DATA[name])
    assert rows(db) == 0


def _checkpoints(folder: Path, good: Path) -> dict[str, tuple[Path, str]]:
    """Drills K01-K09b: (file, what the error must say)."""
    data = torch.load(good, weights_only=True)
    out = {}

    def put(name: str, expected: str, content=None, raw: bytes | None = None):
        path = folder / name
        if raw is not None:
            path.write_bytes(raw)
        else:
            torch.save(content, path)
        out[name] = (path, expected)

    class RunsCode:
        def __reduce__(self):
            return (Path.touch, (folder / "PWNED",))

    put("text.pt", "is not a checkpoint atomscreen can read", raw=b"not a checkpoint\n")
    put("empty.pt", "is not a checkpoint atomscreen can read", raw=b"")
    put("truncated.pt", "is not a checkpoint atomscreen can read", raw=good.read_bytes()[: good.stat().st_size // 2])
    put("pickle.pt", "files holding code are refused, never run", raw=pickle.dumps(RunsCode()))
    put("torch_pickle.pt", "files holding code are refused, never run", content=RunsCode())
    put("list.pt", "kind None", content=[1, 2, 3])
    put("no_keys.pt", "lacks responses", content={"kind": "rm_potential", "model": {}})
    put("nan.pt", "holds non-finite weights",
        content={**data, "state_dict": {k: v * float("nan") if v.is_floating_point() else v
                                        for k, v in data["state_dict"].items()}})
    put("wrong_config.pt", "its weights do not fit its stored model config",
        content={**data, "model": {**data["model"], "hidden": [5, 5]}})
    return out


def test_a_bad_checkpoint_is_refused_before_anything_is_recorded(tmp_path, checkpoint_file, capsys):
    for name, (path, expected) in _checkpoints(tmp_path, checkpoint_file).items():
        campaign = write_campaign(tmp_path, path, name=re.sub(r"\W", "-", name))
        db = tmp_path / f"{name}.db"
        signal.alarm(10)
        try:
            assert main(["submit", str(campaign), "--db", str(db), "--quiet", "--dashboard-address", ":0"]) == 2
        finally:
            signal.alarm(0)
        err = capsys.readouterr().err
        assert "Traceback" not in err and expected in err, (name, err)
        assert ".checkpoint = " in err and "weights_only=False" not in err, err
        assert rows(db) == 0, name
    assert not (tmp_path / "PWNED").exists()  # the pickled command never ran


@pytest.fixture(scope="module")
def finished_db(tmp_path_factory, trained_checkpoint):
    folder = tmp_path_factory.mktemp("finished")
    checkpoint = folder / "rm.pt"
    trained_checkpoint[0].save(checkpoint)
    path = write_campaign(folder, checkpoint, name="base", **{"cluster.n_workers": 1,
                                                              "generators.rss.samples_per_composition": 2,
                                                              "generators.rss.batch_size": 2})
    db = folder / "base.db"
    assert main(["submit", str(path), "--db", str(db), "--quiet", "--dashboard-address", ":0"]) == 0
    return db


# drills C07-C41: the command, and what its one-line error must say
CLI = {
    "top_negative": (["results", "base", "--top", "-1"], "must be at least 1"),
    "top_zero": (["results", "base", "--top", "0"], "must be at least 1"),
    "within_negative": (["hull", "base", "--within", "-1"], "must be a finite number of at least 0"),
    "export_missing_folder": (["export", "base", "--format", "extxyz", "--output", "/nonexistent/dir/x.extxyz"],
                              "No such file"),
    "export_unwritable": (["export", "base", "--format", "ase-db", "--output", "/proc/x.db"],
                          "cannot write /proc/x.db"),
    "export_over_a_file": (["export", "base", "--format", "extxyz", "--output", "{db}"],
                           "exists; give another --output or add --force"),
    "plot_missing_folder": (["hull", "base", "--plot", "/nonexistent/dir/h.png"], "No such file"),
    "bogus_upgrade": (["db", "upgrade", "--revision", "bogus"], "Can't locate revision"),
    "bogus_downgrade": (["db", "downgrade", "bogus"], "Can't locate revision"),
    "memory_db": (["status", "--db", "sqlite:///:memory:"], "in-memory SQLite database"),
    "empty_db": (["status", "--db", ""], "--db is empty"),
    "not_a_database": (["results", "base", "--db", "{yaml}"], "file is not a database"),
    "unknown_campaign": (["results", "nosuch"], "no campaign named 'nosuch'"),
    "scheduler_not_an_address": (["resume", "base", "--scheduler", "not-an-address"], "is not a scheduler address"),
    "scheduler_unreachable": (["resume", "base", "--scheduler", "tcp://127.0.0.1:1"],
                              "cannot reach the Dask scheduler"),
}


@pytest.mark.parametrize("case", sorted(CLI), ids=sorted(CLI))
def test_cli_misuse_is_a_named_error(case, finished_db, tmp_path, capsys, within_ten_seconds):
    args, expected = CLI[case]
    not_a_db = tmp_path / "campaign.yaml"
    not_a_db.write_text("name: x\n")
    args = [a.format(db=finished_db, yaml=not_a_db) for a in args]
    if "--db" not in args:
        args += ["--db", str(finished_db)]
    before = rows(finished_db)
    assert run(args) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and expected in err, err
    assert rows(finished_db) == before


def run(args: list[str]) -> int:
    """main(args), or the exit code argparse gives for a bad option value."""
    try:
        return main(args)
    except SystemExit as exc:
        return int(exc.code)
