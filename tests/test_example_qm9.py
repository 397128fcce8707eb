"""`examples/qm9.yaml` end to end (issue 6, criterion 1): RM trained on QM9, 100 random molecules of each of five
common compositions relaxed, the 10 lowest per composition re-scored with GFN2-xTB, validity table printed. Slow
(about 20 minutes on 2 cores)."""

from __future__ import annotations

import json
import os
import subprocess

import pytest
from conftest import REPO


@pytest.mark.slow
def test_qm9_example_generates_rescores_and_checks_molecules(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "ATOMSCREEN_DB"}
    submitted = subprocess.run(["platform", "submit", str(REPO / "examples" / "qm9.yaml"), "--quiet",
                                "--dashboard-address", ":0"],
                               cwd=tmp_path, env=env, capture_output=True, text=True, timeout=3600)
    assert submitted.returncode == 0, submitted.stdout[-3000:] + submitted.stderr[-3000:]
    report = json.loads(subprocess.run(["platform", "report", "qm9", "--format", "json"], cwd=tmp_path, env=env,
                                       capture_output=True, text=True, check=True).stdout)
    formulas = ["C7H11NO", "C6H9NO2", "C7H9NO", "C6H7NO2", "C6H8N2O"]
    assert sorted(r["formula"] for r in report["rows"]) == sorted(formulas)
    assert all(r["generated"] == 100 and r["rescored"] + r["rescore_failed"] == min(10, r["unique"])
               for r in report["rows"])
    generated = {v["formula"]: v for v in report["validity"] if v["origin"] == "rss"}
    assert sorted(generated) == sorted(formulas)
    assert all(v["checked"] >= 90 and 0 <= v["passed"]["sanitization"] <= v["checked"] for v in generated.values())
    assert report["rescore_method"] == "xtb_gfn2"
    text = subprocess.run(["platform", "report", "qm9"], cwd=tmp_path, env=env, capture_output=True, text=True,
                          check=True).stdout
    assert "chemical validity" in text and "sanit." in text
