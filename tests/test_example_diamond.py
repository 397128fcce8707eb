"""The README's run command, as a new user meets it: `platform submit examples/diamond.yaml` on SQLite and a
LocalCluster, then `platform results diamond --top 5` and the README's SQL in sqlite3. Slow (minutes)."""

from __future__ import annotations

import os
import re
import shutil
import sqlite3
import subprocess

import pytest
from ase.build import bulk
from conftest import REPO
from pymatgen.analysis.structure_matcher import StructureMatcher
from pymatgen.io.ase import AseAtomsAdaptor

from atomscreen.store import make_engine, structures, transaction


@pytest.mark.slow
def test_diamond_example_ranks_cubic_diamond_first(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "ATOMSCREEN_DB"}
    submitted = subprocess.run(["platform", "submit", str(REPO / "examples" / "diamond.yaml"), "--quiet"],
                               cwd=tmp_path, env=env, capture_output=True, text=True, timeout=1800)
    assert submitted.returncode == 0, submitted.stdout + submitted.stderr
    assert re.search(r"Dask dashboard: http://\S+/status", submitted.stdout + submitted.stderr)
    results = subprocess.run(["platform", "results", "diamond", "--top", "5", "--format", "csv"], cwd=tmp_path, env=env,
                             capture_output=True, text=True, check=True)
    first_id = int(results.stdout.splitlines()[1].split(",")[1])
    with transaction(make_engine(str(tmp_path / "atomscreen.db"))) as session:
        (first,) = structures(session, ids=[first_id])
    matcher = StructureMatcher(ltol=0.2, stol=0.3, angle_tol=5, primitive_cell=True, scale=True)
    assert matcher.fit(AseAtomsAdaptor.get_structure(first),
                       AseAtomsAdaptor.get_structure(bulk("C", "diamond"))), results.stdout

    # the fourth is about re-scoring
    queries = re.findall(r"```sql\n(.*?)```", (REPO / "README.md").read_text(), flags=re.S)[:3]
    with sqlite3.connect(tmp_path / "atomscreen.db") as conn:
        best, ranked, hull = (conn.execute(q).fetchall() for q in queries)
    assert {row[0] for row in best} == {"C2", "C4", "C6", "C8"}
    assert ranked[0][1] == first_id and [row[0] for row in ranked] == list(range(1, len(ranked) + 1))
    assert hull and hull[0][2] == first_id and hull[0][5] == 1
    if shutil.which("sqlite3"):
        for query in queries:
            assert subprocess.run(["sqlite3", str(tmp_path / "atomscreen.db"), query], capture_output=True, text=True,
                                  check=True).stdout
