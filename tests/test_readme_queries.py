"""The README's SQL queries run on a finished campaign's database, in sqlite3 and PostgreSQL, and answer correctly."""

from __future__ import annotations

import re
import shutil
import sqlite3
import subprocess

import numpy as np
import pytest
from ase import Atoms
from conftest import REPO
from sqlalchemy import text

from atomscreen import store
from atomscreen.compute.finalize import analyse_campaign


def readme_sql_blocks() -> list[str]:
    return re.findall(r"```sql\n(.*?)```", (REPO / "README.md").read_text(), flags=re.S)


def readme_queries() -> list[str]:
    """The three queries about a finished campaign 'diamond' (the fourth block is about re-scoring:
    tests/test_funnel.py; the fifth about molecule validity: tests/test_molecules.py)."""
    return readme_sql_blocks()[:3]


def _carbon(n: int, volume_per_atom: float, seed: int) -> Atoms:
    rng = np.random.default_rng(seed)
    length = (volume_per_atom * n) ** (1 / 3)
    return Atoms(f"C{n}", scaled_positions=rng.random((n, 3)), cell=np.eye(3) * length, pbc=True)


def finished_campaign(engine) -> dict[str, list]:
    """A small campaign 'diamond' as the runner leaves it: structures, pseudo energies, then rankings and hull by the
    runner."""
    energies = {"C2": [-7.9, -8.1, -7.5], "C4": [-8.05, -7.0], "C8": [-8.1, -8.0]}
    with store.transaction(engine) as session:
        campaign = store.add_campaign(session, "diamond", "name: diamond\n")
        other = store.add_campaign(session, "other", "name: other\n")
        atoms, records = [], []
        for formula, values in energies.items():
            n = int(formula[1:])
            for i, e in enumerate(values):
                atoms.append(_carbon(n, 5.6 + 0.1 * i, seed=len(atoms)))
                records.append([store.EnergyRecord("rm_pseudo", total=e * n)])
        ids = store.add_structures(session, atoms, origin="rss", campaign_id=campaign.id, energies=records)
        (other_id,) = store.add_structures(
            session, [_carbon(2, 5.0, 99)], origin="rss", campaign_id=other.id,
            energies=[[store.EnergyRecord("rm_pseudo", total=-20.0)]],
        )
        per_atom = [r[0].total / len(a) for r, a in zip(records, atoms)]
        campaign_id = campaign.id
    analyse_campaign(engine, campaign_id)  # the runner's own dedupe, ranking and hull
    return {"ids": ids, "per_atom": per_atom, "other_id": other_id}


def _check_answers(results: list[list[tuple]], facts: dict) -> None:
    best, top, hull = results
    ids, per_atom = facts["ids"], facts["per_atom"]
    # best per composition, sorted by energy: C2 -8.1 (id 2), C8 -8.1 (id 6), C4 -8.05 (id 4)
    assert [(r[0], r[2]) for r in best] == [("C2", ids[1]), ("C8", ids[5]), ("C4", ids[3])]
    assert all(r[1] == "rm_pseudo" for r in best)
    expected_top = sorted(zip(per_atom, ids))
    assert [r[0] for r in top] == list(range(1, len(ids) + 1))  # ranks
    assert [r[1] for r in top] == [sid for _, sid in expected_top]
    assert [r[3] for r in top] == pytest.approx([e for e, _ in expected_top])
    assert facts["other_id"] not in [r[1] for r in top]
    near = sorted((e - min(per_atom), sid) for e, sid in zip(per_atom, ids) if e - min(per_atom) <= 0.05 + 1e-12)
    assert [r[2] for r in hull] == [sid for _, sid in near]
    assert [bool(r[5]) for r in hull][:2] == [True, True] and not any(bool(r[5]) for r in hull[2:])


def test_readme_has_three_campaign_queries_a_funnel_block_and_a_validity_block():
    blocks = readme_sql_blocks()
    assert len(blocks) == 5 and all("'diamond'" in q for q in blocks[:3]) and "rescored_pairs" in blocks[3]
    assert "molecule_check" in blocks[4]  # run by tests/test_molecules.py


def test_readme_queries_answer_on_both_databases(engine):
    facts = finished_campaign(engine)
    with engine.connect() as conn:
        results = [conn.execute(text(q)).all() for q in readme_queries()]
    _check_answers([[tuple(r) for r in rows] for rows in results], facts)


def test_readme_queries_run_in_sqlite3(sqlite_url):
    engine = store.make_engine(sqlite_url)
    from atomscreen.store import migrate

    migrate.upgrade(engine)
    facts = finished_campaign(engine)
    path = sqlite_url.removeprefix("sqlite:///")
    with sqlite3.connect(path) as conn:
        _check_answers([conn.execute(q).fetchall() for q in readme_queries()], facts)
    if shutil.which("sqlite3"):  # the command-line shell, as a user would type it
        for query in readme_queries():
            out = subprocess.run(["sqlite3", "-csv", path, query], capture_output=True, text=True, check=True)
            assert out.stdout.strip() and not out.stderr
