"""Molecules end to end on a real LocalCluster: RM trained on QM9, random molecules in a box relaxed on it, GFN2-xTB
re-scoring with a time limit, validity checks stored per molecule, novelty against the training SMILES; and xtb
failures (SCF not converged, time limit) recorded per structure."""

from __future__ import annotations

import numpy as np
import pytest
import yaml
from ase.build import molecule
from conftest import store_job, store_result
from sqlalchemy import func, select

from atomscreen.analysis.report import campaign_report
from atomscreen.cli import main
from atomscreen.compute import runner
from atomscreen.compute.tasks import rescore_task
from atomscreen.data.qm9 import read_qm9
from atomscreen.evaluate.validity import CHECKS, canonical_smiles
from atomscreen.jobs import RescoreJob, StructureIn, ValidityJob
from atomscreen.relax.ase_relax import CalcSettings
from atomscreen.store import EnergyRecord, add_campaign, add_structures, make_engine, migrate, report_rows, transaction
from atomscreen.store.models import CalculationFailure, Composition, Energy, MoleculeCheck, Structure, Task


def _campaign(folder, **changes):
    spec = {
        "name": "mols", "seed": 5, "cluster": {"n_workers": 2},
        "compositions": {"formulas": ["CH4O"], "from_training": 1},  # + the most common of the 60 training molecules
        "model": {"train": {"dataset": {"format": "qm9", "limit": 60},
                            "hyperparameters": {"cutoff": 4.5, "l_max": 1, "nu_max": 2, "n_embedding": 2,
                                                "max_displacement": 1.6, "repulsion_cutoff": 0.7, "epochs": 2,
                                                "batch_size": 16}}},
        "generators": {"rss": {"samples_per_composition": 4, "volume_per_atom": 10.0, "min_separation": 0.7,
                               "batch_size": 4}},
        "relaxation": {"fmax": 0.1, "max_steps": 200, "trajectory_every": 50},
        "rescore": {"method": "xtb", "top_k": 2, "optimizer": "bfgs_linesearch", "fmax": 0.05, "max_steps": 100,
                    "timeout_s": 120, "batch_size": 2},
        "validity": {"timeout_s": 120, "batch_size": 4},
        **changes,
    }
    path = folder / "mols.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def test_molecule_campaign_relaxes_rescores_with_xtb_and_stores_validity(tmp_path, capsys):
    db = f"sqlite:///{tmp_path / 'm.db'}"
    assert main(["submit", str(_campaign(tmp_path)), "--db", db, "--quiet", "--dashboard-address", ":0"]) == 0
    engine = make_engine(db)
    with transaction(engine) as session:
        kinds = dict(session.execute(select(Task.kind, func.count()).group_by(Task.kind)).all())
        assert kinds == {"rss": 2, "rescore": 2, "validity": kinds["validity"]} and kinds["validity"] >= 2
        assert not session.scalar(select(func.count(Task.id)).where(Task.status != "done"))
        rows = session.execute(select(Structure.id, Structure.origin, Structure.pbc, Structure.info,
                                      Composition.formula)
                               .join(Composition, Composition.id == Structure.composition_id)).all()
        where = {r.id: (r.origin, r.formula) for r in rows}
        # molecules: no periodicity
        assert {r.origin for r in rows} == {"rss", "rescore"} and all(r.pbc == "FFF" for r in rows)
        checked = {c.structure_id: c for c in session.scalars(select(MoleculeCheck))}
        expected = {r.id for r in rows if (r.info or {}).get("relax_status") != "exploded"}
        assert set(checked) == expected  # every molecule that did not explode, generated or re-scored, once
        xtb = session.scalars(select(Energy).where(Energy.method == "xtb_gfn2")).all()
        assert len(xtb) + session.scalar(select(func.count(CalculationFailure.id))) == 4
        report = campaign_report(report_rows(session, "mols"))
    assert sorted(r.formula for r in report.rows) == ["C3H6O", "CH4O"]  # C3H6O: 5 of the first 60 QM9 molecules
    for c in checked.values():
        assert c.passes_all == (c.status == "ok" and c.bonds_determined is True
                                and not any(getattr(c, k) is False for k in CHECKS))
    # novelty: against the canonical SMILES of the 60 training molecules, recomputed here
    known = {canonical_smiles(a.info["smiles"]) for a in read_qm9(limit=60)}
    assert all(c.novel == (c.smiles not in known) for c in checked.values() if c.smiles is not None)
    assert all(c.novel is None for c in checked.values() if c.smiles is None)
    # the report's rates are the table's counts, per composition and origin
    assert {v.origin for v in report.validity} == {"rss", "rescore"}
    for v in report.validity:
        members = [c for sid, c in checked.items() if where[sid] == (v.origin, v.formula)]
        assert v.checked == len(members) and v.passes_all == sum(c.passes_all for c in members)
        assert all(v.passed[k] == sum(getattr(c, k) is True for c in members) for k in CHECKS)
        assert v.unique_smiles == len({c.smiles for c in members if c.smiles})
    capsys.readouterr()
    assert main(["report", "mols", "--db", db]) == 0
    printed = capsys.readouterr().out
    assert "chemical validity" in printed and "sanit." in printed and "gen." in printed and "resc." in printed

    # xtb single points along the stored RM relaxation of the best molecule per composition
    assert main(["trajectory-energies", "mols", "--method", "xtb", "--top", "1", "--db", db]) == 0
    with transaction(engine) as session:
        from atomscreen.store import trajectory
        from atomscreen.store.models import Ranking, Trajectory

        best = set(session.scalars(select(Ranking.structure_id).where(Ranking.method == "rm_pseudo",
                                                                       Ranking.scope == "composition",
                                                                       Ranking.rank == 1)))
        # (re-scored molecules carry their own xtb relaxation as an xtb_gfn2 trajectory; the RM structures now have
        # one too)
        assert set(session.scalars(select(Trajectory.structure_id)
                                   .join(Structure, Structure.id == Trajectory.structure_id)
                                   .where(Trajectory.method == "xtb_gfn2", Structure.origin == "rss"))) == best
        sid = min(best)
        pseudo, xtb = trajectory(session, sid, "rm_pseudo"), trajectory(session, sid, "xtb_gfn2")
        numbers = session.get(Structure, sid).numbers
    from ase import Atoms
    from xtb.ase.calculator import XTB

    assert np.array_equal(xtb.steps, pseudo.steps) and np.array_equal(xtb.positions, pseudo.positions)
    last = Atoms(numbers=numbers, positions=pseudo.positions[-1])
    last.calc = XTB(method="GFN2-xTB")
    assert xtb.energies[-1] == pytest.approx(last.get_potential_energy(), abs=1e-6)
    # done already: nothing to do
    assert main(["trajectory-energies", "mols", "--method", "xtb", "--top", "1", "--db", db]) == 0


def _xtb_job(parent_ids, structures, **extra):
    settings = CalcSettings(relax=True, cell=False, fmax=0.05, max_steps=50, optimizer="bfgs_linesearch",
                            trajectory_every=10)
    return RescoreJob("xtb", "xtb_gfn2", settings, 0.1, "C2H6O", len(structures),
                      tuple(StructureIn.from_atoms(a, parent_id=p) for p, a in zip(parent_ids, structures)), **extra)


@pytest.mark.parametrize("extra, reason", [
    ({"options": {"max_iterations": 1}}, "xtb could not evaluate"),  # the SCF cannot converge in one iteration
    ({"timeout_s": 0.05}, "timeout: no result within 0.05 s"),  # stopped: what a hanging xtb gets
])
def test_xtb_failures_are_recorded_per_structure_and_the_task_completes(tmp_path, extra, reason):
    engine = make_engine(f"sqlite:///{tmp_path / 'x.db'}")
    migrate.upgrade(engine)
    ethanol, ether = molecule("CH3CH2OH"), molecule("CH3OCH3")
    with transaction(engine) as session:
        campaign = add_campaign(session, "x", "name: x\n")
        parents = add_structures(session, [ethanol, ether], origin="rss", campaign_id=campaign.id)
        cid = campaign.id
    job = _xtb_job(parents, [ethanol, ether], **extra)
    task_id = store_job(engine, cid, "rescore/C2H6O/0", job)
    result = rescore_task(job)
    assert [s.status for s in result.structures] == ["failed", "failed"]
    store_result(engine, task_id, result, method=job.energy_method)
    with transaction(engine) as session:
        failures = session.scalars(select(CalculationFailure).order_by(CalculationFailure.structure_id)).all()
        assert [f.structure_id for f in failures] == parents and all(reason in f.error for f in failures)
        assert session.get(Task, task_id).status == "done"
        assert not session.scalar(select(func.count(Structure.id)).where(Structure.origin == "rescore"))


def test_xtb_relaxation_in_a_child_process_matches_the_in_process_one():
    """The time-limited path (child process) gives the same GFN2-xTB energy as relaxing here."""
    from atomscreen.evaluate.calculators import calculate_all
    from atomscreen.relax.ase_relax import CalcSettings

    settings = CalcSettings(fmax=0.02, max_steps=100, optimizer="bfgs_linesearch")
    here = calculate_all([molecule("CH3CH2OH")], "xtb", settings)[0]
    there = calculate_all([molecule("CH3CH2OH")], "xtb", settings, timeout_s=120)[0]
    assert here.status == there.status == "converged"
    assert there.energy == pytest.approx(here.energy, abs=1e-6) and there.n_steps == here.n_steps


def test_readme_validity_queries_answer_on_a_molecule_campaign(tmp_path):
    """The README's fifth SQL block, on a campaign database written by the runner's own code paths."""
    from sqlalchemy import text
    from test_readme_queries import readme_sql_blocks

    engine = make_engine(f"sqlite:///{tmp_path / 'q.db'}")
    migrate.upgrade(engine)
    good, broken = molecule("CH3CH2OH"), molecule("CH3OCH3")
    broken.positions[0] = broken.positions[1] + [0.3, 0.0, 0.0]  # two heavy atoms 0.3 Å apart
    with transaction(engine) as session:
        campaign = add_campaign(session, "qm9", "name: qm9\n")
        ids = add_structures(session, [good, broken], origin="rss", campaign_id=campaign.id,
                             energies=[[EnergyRecord("xtb_gfn2", -310.0)], [EnergyRecord("xtb_gfn2", -300.0)]])
        cid = campaign.id
    job = ValidityJob("C2H6O", 2, 120,
                      tuple(StructureIn.from_atoms(a, structure_id=i) for a, i in zip([good, broken], ids)))
    task_id = store_job(engine, cid, "validity/C2H6O/0", job)
    from atomscreen.compute.tasks import validity_task

    store_result(engine, task_id, validity_task(job))
    with transaction(engine) as session:
        # as mark_novelty leaves them for a training set without ethanol
        for row in session.scalars(select(MoleculeCheck)):
            row.novel = True
    rates_sql, novel_sql = [q.strip() for q in readme_sql_blocks()[4].split(";") if q.strip()]
    with engine.connect() as conn:
        rates = conn.execute(text(rates_sql)).all()
        novel = conn.execute(text(novel_sql)).all()
    assert ([(r.formula, r.origin, r.n, r.sanitization, r.passes_all, r.unique_smiles) for r in rates]
            == [("C2H6O", "rss", 2, 0.5, 0.5, 1)])
    assert [(r.structure_id, r.smiles) for r in novel] == [(ids[0], "CCO")]


def test_molecules_in_a_box_and_the_kick_keeps_the_lower_minimum(trained_checkpoint, tmp_path):
    """RSS of molecules (no periodicity, no cell) from the plan; a kick-and-re-relax round never ends higher, and
    a re-run with the same seed gives the same molecules."""
    from atomscreen.campaign import parse_campaign
    from atomscreen.compute.plan import rss_tasks
    from atomscreen.compute.tasks import ModelRef, rss_task

    checkpoint = trained_checkpoint[0]
    checkpoint.save(tmp_path / "rm.pt")
    spec = {"name": "box", "seed": 2, "compositions": ["CH4O"], "model": {"checkpoint": str(tmp_path / "rm.pt")},
            "generators": {"rss": {"samples_per_composition": 4, "volume_per_atom": 8.0, "batch_size": 4}},
            "relaxation": {"fmax": 0.05, "max_steps": 300, "trajectory_every": 0}}
    plain = parse_campaign(spec, source="test")
    kicked_rss = {**spec["generators"]["rss"], "kick": {"displacement": 0.4}}
    kicked = parse_campaign({**spec, "generators": {"rss": kicked_rss}}, source="test")
    molecules = {"periodic": 0}  # the training-set description of a model trained on molecules only
    (p_plain,) = [t.job for t in rss_tasks(plain, plain.generators.rss_blocks[0], molecules)]
    (p_kick,) = [t.job for t in rss_tasks(kicked, kicked.generators.rss_blocks[0], molecules)]
    assert p_plain.random.periodic is False and p_plain.relax.cell is False and p_kick.kick.rounds == 1
    ref = ModelRef("kick-test", checkpoint.model, checkpoint.weights_bytes())
    first, second = rss_task(p_plain, ref), rss_task(p_kick, ref)
    assert all(not s.pbc.any() for s in first.structures)
    for a, b in zip(first.structures, second.structures):
        assert b.energy <= a.energy + 1e-9
    again = rss_task(p_kick, ref)
    assert all(np.array_equal(a.positions, b.positions) for a, b in zip(second.structures, again.structures))


def test_validity_tasks_are_planned_once_per_molecule(tmp_path, trained_checkpoint):
    """A validity task that has not finished (pending, or failed and waiting for resume) keeps its molecules: planning
    again adds none twice; once checked, a molecule is never planned again."""
    from atomscreen.campaign import parse_campaign

    trained_checkpoint[0].save(tmp_path / "rm.pt")
    spec = parse_campaign({"name": "v", "compositions": ["C2H6O"], "model": {"checkpoint": str(tmp_path / "rm.pt")},
                           "generators": {"rss": {"samples_per_composition": 2, "volume_per_atom": 8.0}},
                           "validity": {"batch_size": 1}}, source="test")
    engine = make_engine(f"sqlite:///{tmp_path / 'v.db'}")
    migrate.upgrade(engine)
    with transaction(engine) as session:
        campaign = add_campaign(session, "v", "name: v\n")
        cid = campaign.id
        add_structures(session, [molecule("CH3CH2OH"), molecule("CH3OCH3")], origin="rss", campaign_id=cid)
    ctx, validity = runner.Context(engine, cid, spec, {}), runner.stage("validity")
    assert runner.record_tasks(ctx, validity) == 2
    with transaction(engine) as session:
        first = session.scalars(select(Task).order_by(Task.id)).first()
        first.status = "failed"
        first_id, kind, payload = first.id, first.kind, first.payload
    assert runner.record_tasks(ctx, validity) == 0
    from atomscreen.compute.tasks import validity_task
    from atomscreen.jobs import from_json

    store_result(engine, first_id, validity_task(from_json(kind, payload)))
    assert runner.record_tasks(ctx, validity) == 0
    with transaction(engine) as session:
        assert session.scalar(select(func.count(MoleculeCheck.id))) == 1


def test_compositions_drawn_from_the_training_histogram():
    """from_training: K appends the K most common training compositions (Hill formulas), skipping listed ones."""
    from collections import Counter

    from atomscreen.campaign import parse_campaign, with_training_compositions
    from atomscreen.potentials.train import describe

    molecules = read_qm9(skip=21500, limit=300)
    histogram = describe(molecules)["compositions"]
    expected = Counter(a.get_chemical_formula(mode="hill") for a in molecules).most_common()
    assert list(histogram.items())[:5] == expected[:5]
    top = [f for f, _ in sorted(expected, key=lambda x: (-x[1], x[0]))]
    spec = parse_campaign({"name": "h", "compositions": {"formulas": [top[0]], "from_training": 3},
                           "model": {"train": {"dataset": {"format": "qm9", "limit": 10}}},
                           "generators": {"rss": {"samples_per_composition": 1, "volume_per_atom": 8.0}}},
                          source="test")
    assert spec.compositions.expand() == [top[0]]
    assert with_training_compositions(spec, histogram).compositions.expand() == top[:4]
    with pytest.raises(ValueError, match="no composition histogram"):
        with_training_compositions(spec, {})
