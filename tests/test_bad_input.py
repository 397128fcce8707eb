"""Bad input from the reliability drills (`shared/design/reliability-drills.md`, section 1), each as the project's
own copy: campaign files Y01-Y49, training files D01-D16, checkpoints K01-K11b, CLI misuse C01-C41. Each must end in
a named one-line error with exit code 2 within 10 s, without a traceback, leaving no row behind. More malformed
campaign files are in tests/campaigns/ (test_campaign.py)."""

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


# drills C01-C41: the command, and what its one-line error must say ({db}: the finished campaign's database; {yaml}: a
# file that is not a database; {empty}: an extxyz without structures; {dir}: a folder)
CLI = {
    "C01": ([], "the following arguments are required: COMMAND"),
    "C02": (["submit"], "the following arguments are required: CAMPAIGN.yaml"),
    "C03": (["results"], "the following arguments are required: name"),
    "C04": (["status", "--db", "mysql://u@h/db"], "unsupported database backend 'mysql'"),
    "C05": (["status", "--db", "postgresql://nouser@127.0.0.1:1/x"], "Connection refused"),
    "C06": (["status", "--db", "sqlite:////nonexistent/dir/x.db"], "no database at"),
    "C07": (["status", "--db", ""], "--db is empty"),
    "C08": (["results", "nosuch"], "no campaign named 'nosuch'"),
    "C09": (["status", "nosuch"], "no campaign named 'nosuch'"),
    "C10": (["resume", "nosuch"], "no campaign named 'nosuch'; campaigns here: base"),
    "C11": (["export", "nosuch", "--format", "extxyz", "--output", "{dir}/x.extxyz"], "no campaign named 'nosuch'"),
    "C12": (["results", "base", "--top", "-1"], "must be at least 1"),
    "C13": (["results", "base", "--top", "0"], "must be at least 1"),
    "C14": (["results", "base", "--top", "abc"], "must be a whole number of at least 1, got 'abc'"),
    "C15": (["export", "base", "--format", "extxyz", "--output", "/nonexistent/dir/x.extxyz"], "No such file"),
    "C16": (["export", "base", "--format", "extxyz", "--output", "/proc/x.extxyz"], "/proc/x.extxyz"),
    "C17": (["export", "base", "--format", "cif", "--output", "{yaml}"], "is a file; cif export writes a folder"),
    "C18": (["export", "base", "--format", "extxyz", "--output", "{yaml}"],
            "exists; give another --output or add --force"),
    "C19": (["export", "base", "--format", "ase-db", "--output", "/proc/x.db"], "cannot write /proc/x.db"),
    "C20": (["hull", "base", "--plot", "/nonexistent/dir/h.png"], "No such file"),
    "C21": (["hull", "base", "--within", "-1"], "must be a finite number of at least 0"),
    "C22": (["db", "downgrade", "bogus"], "Can't locate revision"),
    "C23": (["db", "upgrade", "--revision", "bogus"], "Can't locate revision"),
    "C24": (["results", "base", "--composition", "c8"], "c8"),
    "C25": (["results", "base", "--method", "bogus"], "bogus"),
    "C26": (["resume", "base", "--scheduler", "not-an-address"], "is not a scheduler address"),
    "C26b": (["resume", "base", "--scheduler", "tcp://127.0.0.1:1"], "cannot reach the Dask scheduler"),
    "C27": (["match", "base", "--references", "/nonexistent.extxyz"], "no such file"),
    "C28": (["status", "--db", "{dir}"], "unable to open database file"),
    "C29": (["results", "base", "--db", "{yaml}"], "file is not a database"),
    "C30": (["db", "upgrade", "--db", "{yaml}"], "file is not a database"),
    "C31": (["results", "base", "--format", "xml"], "invalid choice: 'xml'"),
    "C32": (["status", "--db", "sqlite:///:memory:"], "in-memory SQLite database"),
    "C33": (["trajectory-energies", "base", "--method", "nosuch.module:f"], "cannot import module 'nosuch.module'"),
    "C34": (["trajectory-energies", "base", "--method", "xtb", "--structure", "999999"], "999999"),
    "C35": (["match", "base", "--references", "{empty}"], "holds no usable structure"),
    "C36": (["status", "--db", "relative/nosuch.db"], "no database at"),
    "C37": (["status", "nosuch.yaml"], "nosuch.yaml"),
}


@pytest.mark.parametrize("case", sorted(CLI), ids=sorted(CLI))
def test_cli_misuse_is_a_named_error(case, finished_db, tmp_path, capsys, within_ten_seconds, monkeypatch):
    args, expected = CLI[case]
    not_a_db = tmp_path / "campaign.yaml"
    not_a_db.write_text("name: x\n")
    empty = tmp_path / "empty.extxyz"
    empty.write_text("")
    monkeypatch.chdir(tmp_path)
    args = [a.format(db=finished_db, yaml=not_a_db, empty=empty, dir=tmp_path) for a in args]
    if "--db" not in args and case not in ("C01", "C02", "C03"):  # those stop at argparse
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


def _bomb(indent: str) -> str:
    """'Billion laughs': 9 levels of 9 aliases, 650 bytes that expand to 387 million strings."""
    lines = [f'{indent}a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    lines += [f"{indent}{b}: &{b} [{','.join(['*' + a] * 9)}]" for a, b in zip("abcdefgh", "bcdefghi")]
    return "\n".join(lines) + "\n"


def _replace(key: str, value: str):
    """An edit of the campaign text: the top-level ``key:`` block replaced by ``key: value``."""
    def edit(text: str) -> str:
        kept, skipping = [], False
        for line in text.splitlines():
            if line.startswith(f"{key}:"):
                kept.append(f"{key}: {value}")
                skipping = True
            elif skipping and line.startswith((" ", "- ")):
                continue
            else:
                kept.append(line)
                skipping = False
        return "\n".join(kept) + "\n"
    return edit


# drills Y01-Y49: an edit of a valid campaign (dotted changes, or a function of its text returning text or bytes),
# and what the error must say; every one is refused before the campaign is recorded
YAML = {
    "Y01": ({"seed": "abc"}, "seed = 'abc': Input should be a valid integer"),
    "Y02": ({"generators.rss.samples_per_composition": "ten"}, "generators.rss.samples_per_composition = 'ten'"),
    "Y03": ({"compositions": 42}, "compositions = 42"),
    "Y04": ({"relaxation.max_steps": 1.5}, "relaxation.max_steps = 1.5"),
    "Y05": ({"sed": 3}, "did you mean 'seed'?"),
    "Y06": ({"generators.rss.samples": 3}, "generators.rss.samples"),
    "Y07": (lambda t: t + "deep: " + "[" * 5000 + "]" * 5000 + "\n", "nested deeper than 64 levels"),
    "Y08": (lambda t: t + "deep: " + "{a: " * 300 + "1" + "}" * 300 + "\n", "nested deeper than 64 levels"),
    "Y09": (lambda t: t + "bomb:\n" + _bomb("  "), "expands to more than 100,000 values"),
    "Y10": (_replace("compositions", "\n  formulas:\n" + _bomb("    ").rstrip()), "expands to more than 100,000"),
    "Y11": (lambda t: t + "rescore: {calculator: 'ase.calculators.emt:EMT', options: {}}\nbomb:\n" + _bomb("  "),
            "expands to more than 100,000 values"),
    "Y11b": (lambda t: t + "rescore:\n  calculator: 'ase.calculators.emt:EMT'\n  options:\n" + _bomb("    "),
             "expands to more than 100,000 values"),
    "Y12": ({"seed": 10**100}, "seed = 1000000"),
    "Y13": ({"generators.rss.samples_per_composition": 10**12}, "generators.rss.samples_per_composition = 1000000"),
    "Y14": ({"cluster.n_workers": 100000}, "cluster.n_workers = 100000"),
    "Y15": ({"relaxation.fmax": float("nan")}, "relaxation.fmax = nan"),
    "Y16": ({"generators.rss.volume_per_atom": float("inf")}, "generators.rss.volume_per_atom = inf"),
    "Y17": ({"relaxation.pressure_gpa": float("inf")}, "relaxation.pressure_gpa = inf"),
    "Y18": ({"generators.rss.min_separation": float("inf")}, "generators.rss.min_separation = inf"),
    "Y19": ({"generators.rss.volume_factor": [float("nan")] * 2}, "generators.rss.volume_factor[0] = nan"),
    "Y20": ({"generators.rss.batch_size": 0}, "generators.rss.batch_size = 0"),
    "Y21": ({"relaxation.fmax": -1}, "relaxation.fmax = -1"),
    "Y22": ({"seed": -1}, "seed = -1"),
    "Y23": ({"relaxation.trajectory_every": -5}, "relaxation.trajectory_every = -5"),
    "Y24": ({"cluster.n_workers": 0}, "cluster.n_workers = 0"),
    "Y25": ({"compositions": {"formulas": ["C2"], "max_atoms": 0}}, "compositions.max_atoms = 0"),
    "Y26": ({"name": "x'; DROP TABLE campaign;--"}, "name = \"x'; DROP TABLE campaign;--\""),
    "Y27": ({"name": "καμπάνια"}, "name = 'καμπάνια'"),
    "Y28": ({"name": "a" * 300}, "name = 'aaaa"),
    "Y30": (lambda t: t + "seed: 99\n", "duplicate key 'seed'"),
    "Y31": (lambda t: t + "generators:\n  rss: {samples_per_composition: 1}\n", "duplicate key 'generators'"),
    "Y32": (lambda t: "", "the file is empty"),
    "Y33": (lambda t: bytes(range(256)) * 16, "not UTF-8 text"),
    "Y34": ("directory", "cannot read the file"),
    "Y35": ("missing", "cannot read the file"),
    "Y36": (lambda t: "!!python/object/apply:os.system ['touch PWNED']\n", "could not determine a constructor"),
    "Y37": (lambda t: "- name: a\n- name: b\n", "expected a mapping"),
    "Y38": (lambda t: t + "extra: [1, 2\n", "expected ',' or ']', but got '<stream end>'"),
    "Y39": ({"name": True}, "YAML read this as a boolean"),
    "Y40": ({"compositions": ["c8", "C0"]}, "2 problem(s)"),
    "Y41": ({"database": "mysql://localhost/x"}, "database = 'mysql://localhost/x'"),
    "Y42": ({"cluster": {"scheduler": "tcp://127.0.0.1:1"}}, "cannot reach the Dask scheduler at tcp://127.0.0.1:1"),
    "Y43": ({"model.checkpoint": "/nonexistent/rm.pt"}, "file not found: /nonexistent/rm.pt"),
    "Y44": ({"compositions": {"formulas": ["C20000"], "max_atoms": 20000}}, "compositions.max_atoms = 20000"),
    "Y45": (lambda t: t.encode() + b"# caf\xe9 au lait\n", "not UTF-8 text"),
    "Y46": ({"relaxation": None}, "relaxation = None"),
    "Y47": ({"hull": {"energy": "chgnet"}}, "hull"),
    "Y48": ({"rescore": {"calculator": "ase.calculators.emt:EMT", "options": {"bogus_kw": 1}}}, "bogus_kw"),
}


def _case_file(case: str, folder: Path, checkpoint: Path) -> Path:
    edit, _ = YAML[case]
    if edit == "directory":
        return folder
    if edit == "missing":
        return folder / "nosuch.yaml"
    changes = dict(edit) if isinstance(edit, dict) else {}
    name = changes.pop("name", "bad")
    path = write_campaign(folder, checkpoint, name="bad", **changes)
    if name != "bad":
        path.write_text(yaml.safe_dump({**yaml.safe_load(path.read_text()), "name": name}, allow_unicode=True))
    if callable(edit):
        content = edit(path.read_text())
        path.write_bytes(content if isinstance(content, bytes) else content.encode())
    return path


@pytest.mark.parametrize("case", sorted(YAML), ids=sorted(YAML))
def test_every_bad_campaign_file_of_the_drills_is_a_named_error(case, finished_db, tmp_path, capsys,
                                                                within_ten_seconds):
    path = _case_file(case, tmp_path, finished_db.parent / "rm.pt")
    before = rows(finished_db)
    assert main(["submit", str(path), "--db", str(finished_db), "--quiet", "--dashboard-address", ":0"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and YAML[case][1] in err, err
    assert len(err.strip().splitlines()) == (3 if case in ("Y19", "Y40") else 1), err  # one line per problem, named
    assert rows(finished_db) == before
    assert not (tmp_path / "PWNED").exists()


def test_a_two_hundred_character_name_is_accepted(tmp_path, checkpoint_file, capsys):
    """Drill Y29: the longest allowed name is a valid campaign."""
    assert main(["validate", str(write_campaign(tmp_path, checkpoint_file, name="a" * 200))]) == 0


def test_a_rescore_time_limit_too_short_for_any_structure_is_honoured(tmp_path, checkpoint_file):
    """Drill Y49 (valid but unusual): `rescore.timeout_s: 0.001` reaches the tasks; every re-scored structure is
    stopped and stored as a calculation failure naming the timeout, and the campaign still completes."""
    from atomscreen.store.models import CalculationFailure, Energy

    path = write_campaign(tmp_path, checkpoint_file, name="late", compositions=["C2"],
                          **{"cluster.n_workers": 1, "generators.rss.samples_per_composition": 3})
    spec = yaml.safe_load(path.read_text())
    spec["rescore"] = {"calculator": "ase.calculators.emt:EMT", "top_k": 2, "relax": False, "timeout_s": 0.001}
    path.write_text(yaml.safe_dump(spec))
    db = tmp_path / "late.db"
    assert main(["submit", str(path), "--db", str(db), "--quiet", "--dashboard-address", ":0"]) == 0
    engine = make_engine(str(db))
    with transaction(engine) as session:
        errors = session.scalars(select(CalculationFailure.error)).all()
        rescored = session.scalar(select(func.count()).select_from(Energy)
                                  .where(Energy.method == "ase.calculators.emt:EMT"))
    assert rescored == 0 and len(errors) >= 1 and all(e.startswith("timeout") for e in errors), errors


@pytest.mark.parametrize("case,name", [("D15", "nan_coordinate.extxyz"), ("D16", "inf_cell.extxyz")])
def test_a_campaign_training_on_a_bad_file_is_refused_before_it_is_recorded(case, name, tmp_path, checkpoint_file,
                                                                            capsys, within_ten_seconds):
    path = write_campaign(tmp_path, checkpoint_file, name=case.lower())
    spec = yaml.safe_load(path.read_text())
    spec["model"] = {"train": {"dataset": {"path": str(BAD_DATA / name)},
                               "hyperparameters": {"cutoff": 3.0, "epochs": 1, "hidden": [4]}}}
    path.write_text(yaml.safe_dump(spec))
    db = tmp_path / "d.db"
    assert main(["submit", str(path), "--db", str(db), "--quiet", "--dashboard-address", ":0"]) == 2
    one_named_line(capsys, DATA[name])
    assert rows(db) == 0


def test_a_checkpoint_output_folder_that_does_not_exist_is_refused_before_training(tmp_path, capsys,
                                                                                    within_ten_seconds):
    """Drill K10: the model used to be trained and stored before the file failed to write."""
    train = tmp_path / "train.yaml"
    train.write_text(yaml.safe_dump({
        "name": "k10", "dataset": {"path": str(REPO / "examples" / "data" / "diamond.extxyz")}, "seed": 0,
        "hyperparameters": {"cutoff": 3.0, "hidden": [4], "epochs": 1}}))
    db = tmp_path / "k.db"
    assert main(["train", str(train), "--db", str(db), "--output", "/nonexistent/dir/x.pt"]) == 2
    one_named_line(capsys, "the folder /nonexistent/dir does not exist")
    assert rows(db) == 0


@pytest.mark.postgres
@pytest.mark.parametrize("case", ["C38", "C39", "C40", "C41"])
def test_postgresql_misuse_is_a_named_error(case, postgres_url, capsys, within_ten_seconds):
    """Drills C38-C41 on a real PostgreSQL server: a bad --top never reaches SQL; a wrong password or a missing
    database is named."""
    from sqlalchemy.engine import make_url

    url = make_url(postgres_url)
    db, expected = {
        "C38": (postgres_url, "must be at least 1"),
        "C39": (postgres_url, "must be at least 1"),
        "C40": (url.set(password="wrong").render_as_string(hide_password=False), "password authentication failed"),
        "C41": (url.set(database="nosuchdb").render_as_string(hide_password=False), 'database "nosuchdb" does not '
                                                                                     "exist"),
    }[case]
    args = ["results", "base", "--top", "-1" if case == "C38" else "0"] if case in ("C38", "C39") else ["status"]
    assert run([*args, "--db", db]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and expected in err, err
