"""The one-shot diamond of the RM paper (Fig. 5), end to end: slow, run with `pytest -m slow`."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from conftest import REPO


@pytest.mark.slow
def test_one_shot_diamond_reproduces_the_papers_claims(tmp_path):
    result = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "reproduce_diamond.py"), "--out", str(tmp_path / "fig5.png")],
        capture_output=True, text=True, cwd=tmp_path, timeout=3600,
    )
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["n_structures"] >= 500
    assert summary["diamond_found_in_every_bin"]
    assert summary["min_within_5_percent_of_V0"]
    assert summary["diamond_lowest_in_every_bin_where_found"], summary["per_volume_bin"]
    assert (tmp_path / "fig5.png").stat().st_size > 10_000
