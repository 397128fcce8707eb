"""The crystal funnel end to end on a real LocalCluster: RSS on the pseudo potential, CHGNet re-scoring of the top
candidates, both hulls, reference matching, the report; and per-structure calculator failures."""

from __future__ import annotations

import numpy as np
import pytest
from ase.build import bulk
from ase.io import write
from conftest import store_job, store_result, write_campaign
from sqlalchemy import func, select, text

from atomscreen.analysis.report import campaign_report
from atomscreen.cli import main
from atomscreen.compute import runner
from atomscreen.compute.finalize import analyse_campaign
from atomscreen.compute.tasks import rescore_task
from atomscreen.jobs import RescoreJob, StructureIn
from atomscreen.relax.ase_relax import CalcSettings
from atomscreen.store import add_campaign, add_structures, make_engine, migrate, report_rows, transaction
from atomscreen.store.models import CalculationFailure, Energy, HullEntry, Ranking, Structure, StructureMatch, Task


def _graphite():
    from ase.lattice.hexagonal import Graphite

    return Graphite("C", latticeconstant={"a": 2.46, "c": 6.7})


@pytest.fixture(scope="module")
def references(tmp_path_factory):
    """Diamond (lowest) and graphite with made-up reference energies, as a user file would give them."""
    path = tmp_path_factory.mktemp("refs") / "carbon_refs.extxyz"
    diamond, graphite = bulk("C", "diamond", a=3.567), _graphite()
    diamond.info.update(material_id="diamond", energy_per_atom=-9.10)
    graphite.info.update(material_id="graphite", energy_per_atom=-9.05)
    write(path, [graphite, diamond], format="extxyz")
    return path


def test_campaign_rescoring_hulls_matching_and_report(tmp_path, checkpoint_file, references, capsys):
    path = write_campaign(tmp_path, checkpoint_file, name="funnel",
                          rescore={"method": "chgnet", "top_k": 2, "max_steps": 40, "fmax": 0.1, "batch_size": 2},
                          match={"references": {"path": str(references)}},
                          hull={"energy": "chgnet", "references": {"path": str(references)}})
    db = f"sqlite:///{tmp_path / 'f.db'}"
    assert main(["submit", str(path), "--db", db, "--quiet", "--dashboard-address", ":0"]) == 0
    engine = make_engine(db)
    with transaction(engine) as session:
        tasks = dict(session.execute(select(Task.kind, func.count()).group_by(Task.kind)).all())
        assert tasks == {"rss": 4, "reference": 1, "rescore": 3}  # 2 x 2 candidates + 2 references, 2 per task
        top = session.execute(select(Ranking.structure_id).where(Ranking.method == "rm_pseudo",
                                                                  Ranking.scope == "composition",
                                                                  Ranking.rank <= 2)).scalars().all()
        refs = session.scalars(select(Structure.id).where(Structure.origin == "reference")).all()
        rescored = session.execute(select(Structure.parent_id, Structure.id).where(Structure.origin == "rescore")).all()
        failures = session.scalar(select(func.count(CalculationFailure.id)))
        assert sorted(p for p, _ in rescored) == sorted(list(top) + list(refs)) or failures
        methods = set(session.scalars(select(Energy.method)).all())
        assert methods == {"rm_pseudo", "chgnet"}
        hulls = dict(session.execute(select(HullEntry.method, func.count()).group_by(HullEntry.method)).all())
        assert set(hulls) == {"rm_pseudo", "chgnet"}
        # the references enter both hulls but no ranking
        ranked_ids = set(session.scalars(select(Ranking.structure_id)).all())
        assert not ranked_ids & set(refs)
        ref_children = [c for p, c in rescored if p in refs]
        assert (set(session.scalars(select(HullEntry.structure_id).where(HullEntry.method == "chgnet")).all())
                >= set(ref_children))
        # CHGNet puts diamond below graphite-like sp2 carbon only slightly; what we check is that its hull is its own
        # numbers
        e = dict(session.execute(select(Energy.structure_id, Energy.per_atom).where(Energy.method == "chgnet")).all())
        stable = session.scalars(select(HullEntry.structure_id)
                                 .where(HullEntry.method == "chgnet", HullEntry.is_stable)).all()
        assert len(stable) == 1 and e[stable[0]] == pytest.approx(min(e.values()))
        report = campaign_report(report_rows(session, "funnel"))
    assert report.rescore_method == "chgnet"
    assert report.n_pairs == 4 - len([f for f in report.failures])
    x, y = np.array([p[1] for p in report.pairs]), np.array([p[2] for p in report.pairs])
    assert report.pearson_r == pytest.approx(float(np.corrcoef(x, y)[0, 1]))
    assert [r.formula for r in report.rows] == ["C2", "C4"]
    assert all(r.generated == 6 and r.rescored <= 2 for r in report.rows)
    assert all(r.pearson_r is None for r in report.rows)  # fewer than 3 pairs per composition

    capsys.readouterr()
    assert main(["report", "funnel", "--db", db]) == 0
    printed = capsys.readouterr().out
    assert "Pearson R between rm_pseudo and chgnet" in printed and "lowest C by chgnet" in printed
    figure = tmp_path / "hull.png"
    assert main(["hull", "funnel", "--db", db, "--plot", str(figure)]) == 0
    assert figure.stat().st_size > 10_000
    assert main(["results", "funnel", "--db", db, "--method", "chgnet"]) == 0

    # the README's re-scoring queries answer on this campaign
    from test_readme_queries import readme_sql_blocks

    statements = [q.strip() for q in readme_sql_blocks()[3].replace("'carbon24'", "'funnel'").split(";") if q.strip()]
    with engine.connect() as conn:
        pairs = conn.execute(text(statements[0])).all()
        failed = conn.execute(text(statements[1])).all()
    # candidates and references
    assert sorted(r[2] for r in pairs) == sorted([p[0] for p in report.pairs] + ref_children)
    assert [r[4] for r in pairs] == sorted(r[4] for r in pairs)
    assert len(failed) == len(report.failures)

    # resume changes nothing: every task is done
    before = _rows(engine)
    assert runner.resume("funnel", engine, dashboard_address=":0").status == "done"
    assert _rows(engine) == before


def _rows(engine):
    with transaction(engine) as session:
        return {t.__tablename__: session.scalar(select(func.count()).select_from(t))
                for t in (Structure, Energy, CalculationFailure, Task, StructureMatch)}


def test_match_marks_diamonds_and_records_the_reference(tmp_path, references):
    """`platform match`: relaxed diamond cells (2- and 8-atom, strained) match the diamond entry; graphite matches
    graphite."""
    db = f"sqlite:///{tmp_path / 'm.db'}"
    engine = make_engine(db)
    migrate.upgrade(engine)
    cubic = bulk("C", "diamond", a=3.6, cubic=True)
    cubic.rattle(0.02, seed=2)
    strained = bulk("C", "diamond", a=3.567)
    strained.set_cell(strained.cell.array @ np.diag([1.05, 1.0, 0.97]), scale_atoms=True)
    chain = bulk("C", "sc", a=1.6)  # simple cubic: no reference
    with transaction(engine) as session:
        campaign = add_campaign(session, "m", "name: m\n")
        from atomscreen.store import EnergyRecord

        atoms = [cubic, strained, _graphite(), chain]
        ids = add_structures(session, atoms, origin="rss", campaign_id=campaign.id,
                             energies=[[EnergyRecord("rm_pseudo", -1.0 * len(a) * (k + 1))]
                                       for k, a in enumerate(atoms)])
    analyse_campaign(engine, campaign.id)
    assert main(["match", "m", "--references", str(references), "--db", db]) == 0
    with transaction(engine) as session:
        found = dict(session.execute(select(StructureMatch.structure_id, StructureMatch.reference_name)).all())
        ranks = dict(session.execute(select(StructureMatch.reference_name, StructureMatch.reference_energy_rank)).all())
    assert found == {ids[0]: "diamond", ids[1]: "diamond", ids[2]: "graphite"}
    assert ranks == {"diamond": 1, "graphite": 2}


def test_a_structure_that_breaks_the_calculator_is_recorded_and_the_rest_stored(tmp_path):
    """Criterion 4: atoms on top of each other make CHGNet fail for that structure; the task stores the others."""
    db = f"sqlite:///{tmp_path / 'x.db'}"
    engine = make_engine(db)
    migrate.upgrade(engine)
    good, bad = bulk("C", "diamond", a=3.6), bulk("C", "diamond", a=3.57, cubic=True)
    bad.positions[3] = bad.positions[2]
    with transaction(engine) as session:
        campaign = add_campaign(session, "x", "name: x\n")
        parents = add_structures(session, [bad, good], origin="rss", campaign_id=campaign.id)
        cid = campaign.id
    settings = CalcSettings(relax=True, cell=True, fmax=0.1, max_steps=30, optimizer="fire", trajectory_every=10)
    job = RescoreJob("chgnet", "chgnet", settings, 0.1, "C", 2, (StructureIn.from_atoms(bad, parent_id=parents[0]),
                                                                StructureIn.from_atoms(good, parent_id=parents[1])))
    task_id = store_job(engine, cid, "rescore/C/0", job)
    result = rescore_task(job)
    assert result.structures[0].status == "failed"
    store_result(engine, task_id, result, method=job.energy_method)
    with transaction(engine) as session:
        failure = session.scalars(select(CalculationFailure)).one()
        assert failure.structure_id == parents[0] and failure.method == "chgnet" and "non-finite" in failure.error
        child = session.scalars(select(Structure).where(Structure.origin == "rescore")).one()
        assert child.parent_id == parents[1] and child.task_index == 1
        assert session.scalar(select(Energy.method).where(Energy.structure_id == child.id)) == "chgnet"
        assert session.get(Task, task_id).status == "done"


def test_report_correlates_pseudo_and_rescored_energies_per_composition(tmp_path, checkpoint_file, capsys):
    """R per composition and overall, against scipy on the stored (parent pseudo, child EMT) energy pairs."""
    from scipy.stats import pearsonr

    path = write_campaign(tmp_path, checkpoint_file, name="corr",
                          rescore={"calculator": "ase.calculators.emt:EMT", "top_k": 4, "relax": False,
                                   "batch_size": 4})
    db = f"sqlite:///{tmp_path / 'c.db'}"
    assert main(["submit", str(path), "--db", db, "--quiet", "--dashboard-address", ":0"]) == 0
    engine = make_engine(db)
    with transaction(engine) as session:
        report = campaign_report(report_rows(session, "corr"))
        method = report.rescore_method
        parent_energy = dict(session.execute(select(Energy.structure_id, Energy.per_atom)
                                             .where(Energy.method == "rm_pseudo")).all())
        children = session.execute(select(Structure.parent_id, Energy.per_atom, Structure.composition_id)
                                   .join(Energy, Energy.structure_id == Structure.id)
                                   .where(Energy.method == method)).all()
        from atomscreen.store.models import Composition

        formula = dict(session.execute(select(Composition.id, Composition.formula)).all())
    assert method == "ase.calculators.emt:EMT" and len(children) == 8
    by_formula: dict[str, list[tuple[float, float]]] = {}
    for parent, energy, composition in children:
        by_formula.setdefault(formula[composition], []).append((parent_energy[parent], energy))
    assert sorted(by_formula) == ["C2", "C4"] and all(len(v) == 4 for v in by_formula.values())
    for row in report.rows:
        x, y = zip(*by_formula[row.formula])
        assert row.pearson_r == pytest.approx(pearsonr(x, y)[0], abs=1e-9)
    x, y = zip(*[p for v in by_formula.values() for p in v])
    assert report.pearson_r == pytest.approx(pearsonr(x, y)[0], abs=1e-9) and report.n_pairs == 8
    capsys.readouterr()
    assert main(["report", "corr", "--db", db]) == 0
    printed = capsys.readouterr().out
    # C2 and C4: one reduced formula
    assert f"{report.rows[0].pearson_r:.2f}" in printed and "across compositions" not in printed
