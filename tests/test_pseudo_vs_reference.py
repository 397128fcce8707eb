"""scripts/pseudo_vs_reference.py (issue 5, criterion 2) on a slice of carbon_24: the R it prints is the Pearson R of
the per-structure energies it writes, and the reference column is the file's."""

from __future__ import annotations

import csv
import json
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import yaml
from conftest import REPO, SHARED_DATA
from scipy.stats import pearsonr

DATA = SHARED_DATA / "carbon_24" / "val.csv"


@pytest.mark.skipif(not DATA.exists(), reason="shared/data/carbon_24 is not beside this checkout")
def test_pseudo_vs_reference_reports_the_correlation_of_its_own_numbers(tmp_path):
    spec = {"name": "pvr", "seed": 1, "compositions": ["C4"],
            "model": {"train": {"dataset": {"format": "cdvae-csv", "path": str(DATA), "limit": 16},
                                "hyperparameters": {"cutoff": 3.5, "l_max": 1, "nu_max": 2, "n_embedding": 1,
                                                    "epochs": 3, "batch_size": 8, "max_displacement": 0.3},
                                "seed": 1}},
            "generators": {"rss": {"samples_per_composition": 1}}}
    path = tmp_path / "pvr.yaml"
    path.write_text(yaml.safe_dump(spec))
    result = subprocess.run([sys.executable, str(REPO / "scripts" / "pseudo_vs_reference.py"), str(path),
                             "--column", "energy_per_atom", "--held-out", "8", "--max-steps", "200",
                             "--out", str(tmp_path / "pvr.png"), "--csv", str(tmp_path / "pvr.csv")],
                            capture_output=True, text=True, cwd=tmp_path, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    printed = {line["set"]: line for line in (json.loads(x) for x in result.stdout.splitlines() if x.startswith("{"))}
    assert set(printed) == {"training", "held_out"}
    rows = list(csv.DictReader((tmp_path / "pvr.csv").open()))
    file = pd.read_csv(DATA).iloc[:24].reset_index(drop=True)
    for name, expected in (("training", range(1, 17)), ("held_out", range(17, 25))):  # source_row counts from 1
        mine = [r for r in rows if r["set"] == name]
        assert printed[name]["n"] == len(mine) and len(mine) >= len(expected) - 1  # at most one explodes
        reference = np.array([float(r["reference"]) for r in mine])
        pseudo = np.array([float(r["pseudo_per_atom"]) for r in mine])
        assert np.allclose(reference, file.loc[[int(r["source_row"]) - 1 for r in mine], "energy_per_atom"].to_numpy())
        assert {int(r["source_row"]) for r in mine} <= set(expected)
        assert printed[name]["pearson_r"] == pytest.approx(pearsonr(pseudo, reference)[0], abs=1e-9)
        # one element: removing a per-element energy is a shift, which leaves R unchanged
        assert printed[name]["pearson_r_after_element_fit"] == pytest.approx(printed[name]["pearson_r"], abs=1e-9)
    assert (tmp_path / "pvr.png").stat().st_size > 10_000
