"""Campaign files: every malformed one is refused with the bad field named; good ones expand correctly."""

from __future__ import annotations

import itertools
import os
import re
import subprocess
import sys
from math import comb
from pathlib import Path

import pytest
from conftest import REPO, SHARED_DATA
from pymatgen.core import Composition

from atomscreen.campaign import CampaignError, hill_formula, load_campaign, parse_campaign, parse_formula
from atomscreen.cli import main
from atomscreen.store.engine import DEFAULT_URL, DatabaseURLError, resolve_url

BAD = sorted((REPO / "tests" / "campaigns").glob("*.yaml"))
EXAMPLES = sorted((REPO / "examples").glob("*.yaml"))


def expected_fields(path: Path) -> list[str]:
    return re.match(r"# expect: (.*)", path.read_bytes().decode("utf-8", "replace")).group(1).split()


def test_there_are_at_least_a_dozen_malformed_campaigns():
    assert len(BAD) >= 12


@pytest.mark.parametrize("path", BAD, ids=[p.stem for p in BAD])
def test_malformed_campaign_is_refused_naming_the_field(path, capsys):
    assert main(["validate", str(path)]) == 2
    message = capsys.readouterr().err
    for field in expected_fields(path):
        assert re.search(rf"^\s*{re.escape(field)}( = .*)?: ", message, flags=re.M), message


def test_validate_cli_creates_no_database(tmp_path):
    env = {**os.environ, "ATOMSCREEN_DB": str(tmp_path / "env.db")}
    result = subprocess.run(
        [sys.executable, "-m", "atomscreen", "validate", *map(str, BAD)],
        cwd=tmp_path, env=env, capture_output=True, text=True,
    )
    assert result.returncode == 2
    assert result.stderr.count("problem(s)") == len(BAD)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.stem for p in EXAMPLES])
def test_examples_are_valid(path, capsys):
    if "shared/data/" in path.read_text() and not SHARED_DATA.is_dir():
        pytest.skip(f"{path.name} trains on {SHARED_DATA}, which is not beside this checkout")
    assert main(["validate", str(path)]) == 0
    assert "✓" in capsys.readouterr().out


def test_every_problem_is_reported_not_just_the_first():
    data = {
        "name": "x y",
        "compositions": {"max_atoms": 4, "formulas": ["C8", "Qq"]},
        "model": {"checkpoint": "/nonexistent/model.pt"},
        "generators": {"rss": {"samples_per_composition": -3}},
        "relaxation": {"fmax": 0.05, "cell": "sometimes"},
    }
    with pytest.raises(CampaignError) as info:
        parse_campaign(data)
    fields = [p.field for p in info.value.problems]
    assert fields == [
        "name",
        "compositions.formulas[0]",
        "compositions.formulas[1]",
        "model.checkpoint",
        "generators.rss.samples_per_composition",
        "relaxation.cell",
    ]
    assert info.value.problems[1].value == "C8" and "max_atoms = 4" in info.value.problems[1].message


def test_relative_paths_resolve_from_the_campaign_folder(tmp_path):
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "set.extxyz").write_text("1\n\nH 0 0 0\n")
    campaign = tmp_path / "c.yaml"
    campaign.write_text(
        "name: c\ncompositions: [H2]\nmodel:\n  train:\n    dataset: {path: data/set.extxyz}\n"
        "generators:\n  rss: {samples_per_composition: 1}\n"
    )
    spec = load_campaign(campaign)
    assert spec.model.train.dataset.path == str((tmp_path / "data" / "set.extxyz").resolve())


@pytest.mark.parametrize("formula", ["C7H10O2", "Li4S2", "C6H8O", "SiO2", "Fe", "C8H11N", "BaTiO3", "H2O"])
def test_formula_parsing_agrees_with_pymatgen(formula):
    counts = parse_formula(formula)
    assert Composition(counts) == Composition(formula)
    assert Composition(hill_formula(counts)) == Composition(formula)


def test_hill_order_puts_carbon_then_hydrogen_then_alphabetical():
    assert hill_formula({"O": 2, "H": 10, "C": 7}) == "C7H10O2"
    assert hill_formula({"S": 2, "Li": 4}) == "Li4S2"
    assert hill_formula({"H": 2, "O": 1}) == "H2O"


@pytest.mark.parametrize("bad", ["", "c8", "C0", "Xx", "C-1", "C1.5", "(CH3)2", "C 8"])
def test_malformed_formulas_are_refused(bad):
    with pytest.raises(ValueError):
        parse_formula(bad)


def test_grid_expands_to_every_composition_up_to_max_atoms():
    spec = parse_campaign(
        {
            "name": "g",
            "compositions": {"max_atoms": 6, "grid": {"elements": ["Li", "S", "O"]}},
            "model": {"train": {"dataset": {"format": "qm9"}}},
            "generators": {"rss": {"samples_per_composition": 1}},
        }
    )
    formulas = spec.compositions.expand()
    brute = {
        hill_formula({e: c for e, c in zip(("Li", "S", "O"), counts) if c})
        for counts in itertools.product(range(7), repeat=3)
        if 1 <= sum(counts) <= 6
    }
    assert set(formulas) == brute and len(formulas) == len(brute) == sum(comb(n + 2, 2) for n in range(1, 7))


def test_grid_that_explodes_is_refused():
    with pytest.raises(CampaignError, match="grid expands to"):
        parse_campaign(
            {
                "name": "g",
                "compositions": {"max_atoms": 200, "grid": {"elements": ["Li", "S", "O", "P"]}},
                "model": {"train": {"dataset": {"format": "qm9"}}},
                "generators": {"rss": {"samples_per_composition": 1}},
            }
        )


def test_database_url_precedence(monkeypatch):
    monkeypatch.delenv("ATOMSCREEN_DB", raising=False)
    assert resolve_url() == DEFAULT_URL
    assert resolve_url(None, "runs/c.db") == "sqlite:///runs/c.db"
    monkeypatch.setenv("ATOMSCREEN_DB", "postgresql://u:p@h/db")
    assert resolve_url(None, "runs/c.db") == "postgresql+psycopg://u:p@h/db"
    assert resolve_url("cli.db", "runs/c.db") == "sqlite:///cli.db"
    with pytest.raises(DatabaseURLError, match="unsupported database backend 'mysql'"):
        resolve_url("mysql://h/db")
