"""A campaign with energy guidance, accept/reject and post-relaxation on a real LocalCluster (the shipped denoiser
guided by the shipped RM pseudo potential, judged by GFN2-xTB): restarts and verdicts stored with each generated
molecule, each post-relaxation its own structure with energy and trajectory, the re-scoring starting from the
post-relaxed molecules, and `platform report` showing the judge's figures; and the settings refused before anything
is written."""

from __future__ import annotations

import pytest
import yaml
from conftest import REPO
from sqlalchemy import select

from atomscreen.cli import main
from atomscreen.store import make_engine, transaction
from atomscreen.store.models import Energy, Structure, Trajectory


def _campaign(folder, **diffusion):
    block = {"name": "guided", "model": "den", "sampler": "ddpm", "samples_per_composition": 4, "batch_size": 4,
             "trajectory_every": 250,
             "guidance": {"energy": "pot", "every": 25, "iterations": 5},
             "accept": {"threshold_mev_per_atom": 25, "max_restarts": 1, "steps": 30},
             "post_relax": {"fmax": 0.05, "max_steps": 60, "trajectory_every": 20}}
    block.update(diffusion)
    spec = {"name": "hybrid", "seed": 3, "cluster": {"n_workers": 2}, "compositions": ["CH4O", "C2H6O"],
            "models": {"den": {"kind": "denoiser", "checkpoint": str(REPO / "models" / "diffusion_qm9.pt")},
                       "pot": {"checkpoint": str(REPO / "models" / "qm7b_like.pt")}},
            "generators": {"diffusion": block},
            "rescore": {"method": "xtb", "top_k": 1, "max_steps": 40, "optimizer": "lbfgs"}}
    path = folder / "hybrid.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


@pytest.fixture(scope="module")
def ran(tmp_path_factory):
    folder = tmp_path_factory.mktemp("hybrid")
    db = f"sqlite:///{folder / 'h.db'}"
    assert main(["submit", str(_campaign(folder)), "--db", db, "--quiet", "--dashboard-address", ":0"]) == 0
    return db


def test_restarts_verdicts_and_post_relaxations_are_stored(ran):
    with transaction(make_engine(ran)) as session:
        made = session.scalars(select(Structure).where(Structure.origin == "diffusion")).all()
        post = session.scalars(select(Structure).where(Structure.origin == "post_relax")).all()
        assert len(made) == 8
        for s in made:
            assert 0 <= s.info["restarts"] <= 1 and isinstance(s.info["accepted"], bool)
            verdict = s.info["hybrid"]["accept"]
            assert verdict["accepted"] == s.info["accepted"] and verdict["energy"] == "rm_pseudo:pot"
            assert s.info["accepted"] or s.info["restarts"] == 1  # a rejected molecule used its restart
            guidance = s.info["hybrid"]["guidance"]
            assert guidance["dropped"] is None and guidance["interventions"] == 8  # t <= 200 every 25 steps
        accepted = {s.id for s in made if s.info["accepted"]}
        assert accepted and {p.parent_id for p in post} == accepted  # only accepted molecules are post-relaxed
        for p in post:
            energy = session.scalars(select(Energy).where(Energy.structure_id == p.id)).one()
            assert energy.method == "rm_pseudo:pot" and energy.n_steps <= 60
            frames = session.scalars(select(Trajectory).where(Trajectory.structure_id == p.id)).one()
            assert frames.steps[0] == 0 and frames.steps[-1] == energy.n_steps
        rescored = session.scalars(select(Structure).where(Structure.origin == "rescore")).all()
        assert len(rescored) == 2 and {r.parent_id for r in rescored} <= {p.id for p in post}


def test_the_report_shows_the_judges_figures(ran, capsys):
    capsys.readouterr()
    assert main(["report", "hybrid", "--db", ran, "--format", "json"]) == 0
    import json

    guided = json.loads(capsys.readouterr().out)["guided"]
    overall = guided[-1]
    assert overall["formula"] == "all" and overall["n"] == 8 and overall["judge"] == "xtb_gfn2"
    assert overall["judged"] == 2 and overall["dE_median"] >= 0 and overall["dP_median"] > 0
    assert overall["post_relaxed"] == overall["accepted"]
    assert main(["report", "hybrid", "--db", ran]) == 0
    assert "generation with an energy model" in capsys.readouterr().out


@pytest.mark.parametrize("change, message", [
    ({"guidance": None}, "accept.energy: give the energy model"),
    ({"guidance": {"energy": "nowhere"}}, "'nowhere', which this campaign does not define"),
    ({"guidance": {"energy": "den"}}, "needs a model of kind rm_potential"),
    ({"guidance": {"energy": "pot", "start": 1.0}}, "start"),
    ({"accept": {"max_restarts": -1}}, "max_restarts"),
    ({"accept": {"options": {"accuracy": 2.0}}}, "accept.options belong to an energy model"),
    ({"guidance": {"energy": "xtb_gfnff", "options": {"bogus": 1}}}, "options ['bogus'] are not xtb_gfnff options"),
    ({"guidance": {"energy": "pot", "options": {"accuracy": 1}}}, "the RM model 'pot' takes no options"),
])
def test_bad_hybrid_settings_are_refused_before_anything_is_written(tmp_path, capsys, change, message):
    path = _campaign(tmp_path, **change)
    db = tmp_path / "never.db"
    assert main(["submit", str(path), "--db", f"sqlite:///{db}", "--quiet"]) == 2  # a named error
    assert message in capsys.readouterr().err and not db.exists()
