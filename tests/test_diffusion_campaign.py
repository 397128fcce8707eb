"""Diffusion end to end: `platform train` with kind: denoiser, a campaign with DDPM and MoreRed-JT generators on a real
LocalCluster, molecules stored with origin diffusion and their sampler, validity checks (MoreRed Table B1 columns),
`platform report`; and the bad inputs that must be refused before anything is written."""

from __future__ import annotations

import pytest
import torch
import yaml
from conftest import REPO
from sqlalchemy import create_engine, inspect, select, text

from atomscreen.cli import main
from atomscreen.diffusion.checkpoint import DenoiserCheckpoint
from atomscreen.store import make_engine, transaction
from atomscreen.store.models import Model, MoleculeCheck, Structure, Trajectory

TINY = {"features": 8, "interactions": 1, "radial": 8, "steps": 40, "batch_size": 16, "lr": 3e-3,
        "validate_every": 20, "validation_size": 32, "checkpoint_every": 10, "ema_decay": 0.9}


@pytest.fixture(scope="module")
def denoiser(tmp_path_factory):
    """A tiny denoiser trained by `platform train` on QM9 rows 1001-1300 (elements H, C, N, O; at most 23 atoms)."""
    folder = tmp_path_factory.mktemp("denoiser")
    spec = {"name": "tiny-denoiser", "kind": "denoiser", "dataset": {"format": "qm9", "limit": 300, "skip": 1000},
            "split": {"train": 240, "validation": 40}, "seed": 2, "hyperparameters": TINY, "output": "tiny.pt"}
    (folder / "train.yaml").write_text(yaml.safe_dump(spec))
    db = f"sqlite:///{folder / 'models.db'}"
    assert main(["train", str(folder / "train.yaml"), "--db", db, "--quiet"]) == 0
    return folder, db


def test_platform_train_stores_a_denoiser_with_its_split(denoiser, capsys):
    folder, db = denoiser
    checkpoint = DenoiserCheckpoint.load(folder / "tiny.pt")
    assert checkpoint.metrics["steps"] == 40 and checkpoint.training_data["n_test"] == 20
    assert (folder / "tiny.resume.pt").exists()  # a later `platform train` of the same file resumes from it
    with transaction(make_engine(db)) as session:
        row = session.scalars(select(Model)).one()
        assert row.kind == "denoiser" and row.name == "tiny-denoiser"
        assert row.training_data["split"]["train_ids"] == checkpoint.training_data["split"]["train_ids"]
        assert len(row.training_data["split"]["validation_ids"]) == 40


@pytest.mark.slow
def test_platform_train_draws_the_sample_quality_figure(tmp_path):
    spec = {"name": "fig", "kind": "denoiser", "dataset": {"format": "qm9", "limit": 100, "skip": 1000},
            "split": {"train": 80, "validation": 10}, "hyperparameters": {**TINY, "steps": 20, "validate_every": 10},
            "output": "fig.pt"}
    (tmp_path / "train.yaml").write_text(yaml.safe_dump(spec))
    assert main(["train", str(tmp_path / "train.yaml"), "--db", f"sqlite:///{tmp_path / 'm.db'}", "--quiet",
                 "--sample-every", "20", "--sample-molecules", "4"]) == 0
    assert (tmp_path / "fig.png").stat().st_size > 1000  # redrawn at step 20
    last = DenoiserCheckpoint.load(tmp_path / "fig.pt").metrics["history"][-1]
    assert last["step"] == 20 and 0.0 <= last["sample_valid_pct"] <= 100.0


def _campaign(folder, checkpoint, **changes):
    spec = {"name": "gen", "seed": 1, "cluster": {"n_workers": 1}, "compositions": ["CH4O", "C2H6O"],
            "models": {"den": {"kind": "denoiser", "checkpoint": str(checkpoint)}},
            "generators": {"diffusion": [
                {"name": "ddpm", "model": "den", "sampler": "ddpm", "samples_per_composition": 3,
                 "trajectory_every": 250},
                {"name": "jt", "model": "den", "sampler": "morered-jt", "samples_per_composition": 3,
                 "max_steps": 40, "trajectory_every": 10}]},
            "validity": {"timeout_s": 60}}
    spec.update(changes)
    path = folder / f"{spec['name']}.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def test_a_diffusion_campaign_stores_molecules_by_origin_and_sampler(denoiser, tmp_path, capsys):
    folder, _ = denoiser
    db = f"sqlite:///{tmp_path / 'gen.db'}"
    path = _campaign(tmp_path, folder / "tiny.pt")
    assert main(["submit", str(path), "--db", db, "--quiet", "--dashboard-address", ":0"]) == 0
    engine = make_engine(db)
    with engine.connect() as conn:  # what a user's SQL sees
        counts = conn.execute(text("SELECT sampler, count(*) FROM structure WHERE origin = 'diffusion' "
                                   "GROUP BY sampler ORDER BY sampler")).all()
        assert [tuple(r) for r in counts] == [("ddpm", 6), ("morered-jt", 6)]
    with transaction(engine) as session:
        molecules = session.scalars(select(Structure).order_by(Structure.id)).all()
        for s in molecules:
            steps = s.info["reverse_steps"]
            assert s.pbc == "FFF" and s.info["sampler"] == s.sampler
            assert steps == 1000 if s.sampler == "ddpm" else 0 <= steps <= 40
            assert abs(s.positions.mean(axis=0)).max() < 1e-9  # centred
        frames = session.scalars(select(Trajectory)).all()
        assert len(frames) == 12 and {t.method for t in frames} == {"diffusion"}
        by_id = {s.id: s for s in molecules}
        for t in frames:
            assert t.steps[0] == 0 and t.steps[-1] == by_id[t.structure_id].info["reverse_steps"]
            assert (t.positions[-1] == by_id[t.structure_id].positions).all()
        checks = session.scalars(select(MoleculeCheck)).all()
        assert len(checks) == 12 and all(c.connected_valence is not None for c in checks)
    capsys.readouterr()
    assert main(["report", "gen", "--db", db]) == 0
    shown = capsys.readouterr().out
    assert "MoreRed Table B1" in shown and "diffusion:ddpm" in shown and "diffusion:morered-jt" in shown


@pytest.mark.slow
def test_a_diffusion_campaign_run_twice_gives_the_same_molecules(denoiser, tmp_path):
    folder, _ = denoiser
    runs = []
    for name in ("first", "second"):
        (tmp_path / name).mkdir()
        db = f"sqlite:///{tmp_path / name / 'gen.db'}"
        path = _campaign(tmp_path / name, folder / "tiny.pt", validity=None)
        assert main(["submit", str(path), "--db", db, "--quiet", "--dashboard-address", ":0"]) == 0
        with transaction(make_engine(db)) as session:
            runs.append([s.positions.tolist() for s in session.scalars(select(Structure).order_by(Structure.id))])
    assert len(runs[0]) == 12 and runs[0] == runs[1]


@pytest.mark.parametrize("formula, words", [("CH3Cl", "'CH3Cl': element(s) Cl unknown to the denoiser"),
                                            ("C10H22", "'C10H22': 32 atoms, more than the 23")])
def test_a_composition_the_denoiser_cannot_make_is_refused_before_any_write(denoiser, tmp_path, capsys, formula,
                                                                          words):
    folder, _ = denoiser
    path = _campaign(tmp_path, folder / "tiny.pt", compositions=["CH4O", formula])
    assert main(["validate", str(path)]) == 2
    err = capsys.readouterr().err
    assert words in err and "1 problem(s)" in err
    db = tmp_path / "none.db"
    assert main(["submit", str(path), "--db", f"sqlite:///{db}", "--quiet"]) != 0
    err = capsys.readouterr().err
    assert words in err and "tiny.pt" in err
    assert not db.exists() or "campaign" not in inspect(create_engine(f"sqlite:///{db}")).get_table_names()


def test_a_checkpoint_of_the_wrong_kind_is_named(denoiser, tmp_path, capsys):
    rm = REPO / "models" / "qm7b_like.pt"
    path = _campaign(tmp_path, rm)
    assert main(["validate", str(path)]) == 2
    assert f"{rm} is a checkpoint of kind 'rm_potential', not 'denoiser'" in capsys.readouterr().err
    folder, _ = denoiser
    spec = yaml.safe_load(_campaign(tmp_path, folder / "tiny.pt").read_text())
    spec["model"] = {"checkpoint": str(folder / "tiny.pt")}  # an RM model slot holding a denoiser
    spec["generators"]["rss"] = {"samples_per_composition": 2, "volume_per_atom": 10.0}
    path.write_text(yaml.safe_dump(spec))
    assert main(["validate", str(path)]) == 2
    assert "tiny.pt is a checkpoint of kind 'denoiser', not 'rm_potential'" in capsys.readouterr().err
    assert torch.load(rm, weights_only=True)["kind"] == "rm_potential"
