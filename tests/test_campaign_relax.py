"""MoreRed relaxation and diffusion polish inside a campaign (real LocalCluster, the shipped denoiser and RM model, real
GFN2-xTB): every generated molecule, RSS's and diffusion's, gets a relaxed child with its steps, predicted times and
frames, equal to the science function's own result; re-scoring starts from the relaxed child, polished first, and
`platform report` shows the steps saved. DFT re-scoring failures (SCF not converged, time limit) are recorded per
structure and the campaign goes on."""

from __future__ import annotations

import pytest
import torch
import yaml
from conftest import REPO
from sqlalchemy import func, inspect, select

from atomscreen.analysis.report import campaign_report
from atomscreen.cli import main
from atomscreen.compute.diffusion_tasks import molecule_seed
from atomscreen.diffusion.checkpoint import DenoiserCheckpoint
from atomscreen.diffusion.relax import relax
from atomscreen.evaluate.calculators import method_name
from atomscreen.store import make_engine, report_rows, trajectory, transaction
from atomscreen.store.models import CalculationFailure, Campaign, MoleculeCheck, Structure, Task

DENOISER = REPO / "models" / "diffusion_qm9.pt"


def _campaign(folder, **changes):
    spec = {
        "name": "relax", "seed": 3, "cluster": {"n_workers": 1}, "compositions": ["CH4O"],
        "model": {"checkpoint": str(REPO / "models" / "qm7b_like.pt")},
        "models": {"den": {"kind": "denoiser", "checkpoint": str(DENOISER)}},
        "generators": {
            "rss": {"samples_per_composition": 3, "periodic": False, "box": [10.0, 5.0, 5.0], "min_separation": 0.7,
                    "batch_size": 3},
            "diffusion": {"name": "jt", "model": "den", "sampler": "morered-jt", "samples_per_composition": 2,
                          "max_steps": 60, "trajectory_every": 20}},
        "relaxation": {"method": "morered_jt", "model": "den", "reverse_max_steps": 40, "max_steps": 100,
                       "fmax": 0.05, "trajectory_every": 10, "batch_size": 4},
        "rescore": {"method": "xtb", "top_k": 2, "optimizer": "bfgs", "fmax": 0.05, "max_steps": 150,
                    "polish": {"model": "den", "steps": 10}},
        "validity": {"timeout_s": 60},
        **changes,
    }
    path = folder / f"{spec['name']}.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


@pytest.fixture(scope="module")
def relaxed_campaign(tmp_path_factory):
    folder = tmp_path_factory.mktemp("relax")
    db = f"sqlite:///{folder / 'r.db'}"
    assert main(["submit", str(_campaign(folder)), "--db", db, "--quiet", "--dashboard-address", ":0"]) == 0
    return db


def test_a_campaign_relaxes_generated_molecules_by_morered_and_polishes_before_xtb(relaxed_campaign, capsys):
    db = relaxed_campaign
    engine = make_engine(db)
    with transaction(engine) as session:
        kinds = dict(session.execute(select(Task.kind, func.count()).group_by(Task.kind)).all())
        assert set(kinds) == {"rss", "diffusion", "diffusion_relax", "rescore", "validity"}
        assert not session.scalar(select(func.count(Task.id)).where(Task.status != "done"))
        rows = {s.id: s for s in session.scalars(select(Structure))}
        generated = [s for s in rows.values() if s.origin in ("rss", "diffusion")
                     and s.info.get("relax_status") != "exploded"]
        relaxed = {s.parent_id: s for s in rows.values()  # the campaign's (platform relax adds ITP ones)
                   if s.origin == "diffusion_relax" and s.sampler == "morered-jt"}
        # every generated molecule that did not explode, from either generator, has one relaxed child
        assert sorted(relaxed) == sorted(s.id for s in generated) and len(relaxed) == 5
        for child in relaxed.values():
            info = child.info
            assert child.sampler == "morered-jt" and 0 <= info["reverse_steps"] <= 40
            assert info["converged"] == (child.info["relax_status"] == "converged")
            predicted = info["predicted_steps"]
            assert predicted[0] == info["t0"] and len(predicted) in (info["reverse_steps"], info["reverse_steps"] + 1)
            assert info["converged"] == (predicted[-1] <= 0)  # MoreRed's criterion, else stopped at max_steps
            assert info["converged"] or info["reverse_steps"] == 40
            frames = trajectory(session, child.id, "diffusion_relax")
            assert frames.steps[0] == 0 and frames.steps[-1] == info["reverse_steps"]
            assert torch.allclose(torch.tensor(frames.positions[-1]), torch.tensor(child.positions))
        # the task's result is the science function's, with the molecule's own keyed seed
        model, schedule = DenoiserCheckpoint.load(DENOISER).build()
        parent = rows[min(relaxed)]
        alone = relax(model, schedule, model.species(torch.tensor(parent.numbers)),
                      torch.zeros(parent.n_atoms, dtype=torch.long), 1, torch.tensor(parent.positions),
                      method="morered-jt", seeds=torch.tensor([molecule_seed(3, parent.id)]), max_steps=40)
        assert torch.allclose(alone.positions, torch.tensor(relaxed[parent.id].positions), atol=1e-5)
        assert int(alone.steps[0]) == relaxed[parent.id].info["reverse_steps"]
        # re-scoring starts from the relaxed children, polished for 10 steps, and also from them unpolished
        rescored = [s for s in rows.values() if s.origin == "rescore"]
        failures = session.scalar(select(func.count(CalculationFailure.id)))
        assert len(rescored) + failures == 2
        for s in rescored:
            assert rows[s.parent_id].origin == "diffusion_relax" and rows[rows[s.parent_id].parent_id].origin == "rss"
            assert s.info["polish_steps"] == 10 and s.info["unpolished_steps"] >= 1 and s.info["polish_rmsd"] > 0
        # validity covers the relaxed molecules too
        checked = set(session.scalars(select(MoleculeCheck.structure_id)))
        assert {c.id for c in relaxed.values()} <= checked
        report = campaign_report(report_rows(session, "relax"))
    assert sorted((r.source, r.n) for r in report.relaxation if r.method == "morered-jt") == [
        ("diffusion:morered-jt", 2), ("rss", 3)]
    assert report.polish[0].n == len(rescored) and report.polish[0].polish_steps == 10
    assert report.n_pairs == len(rescored)  # pseudo energy of the RSS parent vs xtb, through the relaxed child
    capsys.readouterr()
    assert main(["report", "relax", "--db", db]) == 0
    printed = capsys.readouterr().out
    assert "relaxation by reverse diffusion" in printed and "diffusion polish before xtb_gfn2" in printed
    assert "relaxed:morered-jt" in printed  # the relaxed molecules' validity rows


def test_platform_relax_relaxes_chosen_stored_molecules_once(relaxed_campaign, capsys):
    """`platform relax` on chosen stored molecules (here RSS's, by ITP where the campaign used JT): children equal to
    the science function's result, a second run adds nothing, and bad requests are named."""
    db = relaxed_campaign
    engine = make_engine(db)
    with transaction(engine) as session:
        ids = sorted(session.scalars(select(Structure.id).where(Structure.origin == "rss")))[:2]
    command = ["relax", "relax", "--structures", *map(str, ids), "--method", "morered_itp", "--model", "den",
               "--max-steps", "30", "--seed", "4", "--db", db]
    assert main(command) == 0
    assert main(command) == 0  # again: already relaxed, nothing added
    printed = capsys.readouterr().out
    assert "stored 2 relaxed molecule(s)" in printed and "2 molecule(s) already relaxed" in printed
    with transaction(engine) as session:
        children = session.scalars(select(Structure).where(Structure.origin == "diffusion_relax",
                                                           Structure.sampler == "morered-itp")).all()
        assert sorted(c.parent_id for c in children) == ids
        parent = session.get(Structure, ids[0])
        child = next(c for c in children if c.parent_id == ids[0])
        model, schedule = DenoiserCheckpoint.load(DENOISER).build()
        alone = relax(model, schedule, model.species(torch.tensor(parent.numbers)),
                      torch.zeros(parent.n_atoms, dtype=torch.long), 1, torch.tensor(parent.positions),
                      method="morered-itp", seeds=torch.tensor([molecule_seed(4, parent.id)]), max_steps=30)
        assert torch.allclose(alone.positions, torch.tensor(child.positions), atol=1e-5)
        assert child.info["t0"] == int(alone.times[0, 0]) and child.info["reverse_steps"] == int(alone.steps[0])
    for structure, model, message in [("99999", "den", "not in campaign"), (str(ids[0]), "default", "of kind"),
                                      (str(ids[0]), "nope", "neither a model")]:
        assert main(["relax", "relax", "--structures", structure, "--model", model, "--db", db]) == 2
        assert message in capsys.readouterr().err


def test_relaxation_and_polish_settings_are_checked_before_anything_is_written(tmp_path, capsys):
    db = f"sqlite:///{tmp_path / 'bad.db'}"
    bad = [({"relaxation": {"method": "morered_jt"}}, "needs model"),
           ({"relaxation": {"method": "morered_jt", "model": "default"}}, "needs a model of kind denoiser"),
           ({"relaxation": {"method": "morered_jt", "model": "den", "time_model": "den"}}, "time_model"),
           ({"rescore": {"method": "xtb", "polish": {"model": "den", "steps": 5000}}}, "5000 reverse steps"),
           ({"rescore": {"method": "xtb", "relax": False, "polish": {"model": "den"}}}, "polish.compare"),
           ({"relaxation": {"method": "morered_jt", "model": "den", "stop_at": 1000}}, "relaxation.stop_at"),
           ({"generators": {"rss": {"samples_per_composition": 2, "periodic": True}}}, "make crystals")]
    for changes, message in bad:
        assert main(["submit", str(_campaign(tmp_path, **changes)), "--db", db, "--quiet"]) != 0
        assert message in capsys.readouterr().err
    assert not inspect(make_engine(db)).get_table_names()  # refused before the store was even created


@pytest.mark.parametrize("rescore, reason", [
    ({"relax": False, "options": {"xc": "hf", "basis": "sto-3g", "max_cycle": 1}}, "did not converge"),
    ({"relax": False, "timeout_s": 0.5}, "timeout: no result within 0.5 s"),  # B3LYP/6-31G(2df,p) takes ~10 s here
])
def test_dft_failures_are_recorded_per_structure_and_the_campaign_goes_on(tmp_path, rescore, reason):
    db = f"sqlite:///{tmp_path / 'd.db'}"
    changes = {"name": "dft", "generators": {"rss": {"samples_per_composition": 2, "periodic": False,
                                                      "box": [10.0, 5.0, 5.0], "min_separation": 0.7}},
               "models": {}, "relaxation": {"fmax": 0.05, "max_steps": 200},
               "rescore": {"method": "dft", "top_k": 2, **rescore}, "validity": {"timeout_s": 60}}
    path = _campaign(tmp_path, **changes)
    assert main(["submit", str(path), "--db", db, "--quiet", "--dashboard-address", ":0"]) == 0
    with transaction(make_engine(db)) as session:
        failures = session.scalars(select(CalculationFailure)).all()
        assert len(failures) == 2  # both candidates
        assert all(reason in f.error and f.method == method_name("dft") for f in failures), [f.error for f in failures]
        assert session.scalar(select(Campaign.status)) == "done"
        # the campaign went on: every task done, and validity ran after the failed re-scoring
        assert not session.scalar(select(func.count(Task.id)).where(Task.status != "done"))
        assert session.scalar(select(func.count(MoleculeCheck.id))) >= 1
