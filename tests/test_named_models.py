"""Named models: two RM potentials (different seeds), each used by its own RSS block, run end to end on a real
LocalCluster; every structure records the model that made it; a campaign stored before named models resumes."""

from __future__ import annotations

import shutil

import yaml
from conftest import REPO
from sqlalchemy import select, text

from atomscreen.cli import main
from atomscreen.compute import runner
from atomscreen.store import make_engine, migrate, transaction
from atomscreen.store.models import CampaignModel, Energy, Model, Ranking, Structure, Task

TINY = {"cutoff": 3.0, "l_max": 1, "nu_max": 2, "n_radial": 3, "hidden": [4], "epochs": 2, "batch_size": 2,
        "steps_per_epoch": 1}


def _two_model_campaign(folder):
    shutil.copy(REPO / "examples" / "data" / "diamond.extxyz", folder / "diamond.extxyz")
    block = {"samples_per_composition": 4, "volume_per_atom": 5.7, "min_separation": 1.2, "batch_size": 2}
    spec = {
        "name": "pair", "seed": 4, "cluster": {"n_workers": 2}, "compositions": ["C2", "C4"],
        "models": {name: {"train": {"dataset": {"path": "diamond.extxyz"}, "hyperparameters": TINY, "seed": seed}}
                   for name, seed in (("a", 0), ("b", 1))},
        "generators": {"rss": [{"name": "rss_a", "model": "a", **block}, {"name": "rss_b", "model": "b", **block}]},
        "relaxation": {"fmax": 0.05, "max_steps": 60, "trajectory_every": 0},
    }
    path = folder / "pair.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def test_two_named_models_each_with_its_own_rss_block(tmp_path, capsys):
    db = f"sqlite:///{tmp_path / 'p.db'}"
    path = _two_model_campaign(tmp_path)
    assert main(["submit", str(path), "--db", db, "--quiet", "--dashboard-address", ":0"]) == 0
    engine = make_engine(db)
    with transaction(engine) as session:
        linked = dict(session.execute(select(CampaignModel.name, CampaignModel.model_id)).all())
        assert set(linked) == {"a", "b"} and linked["a"] != linked["b"]
        seeds = {m.id: m.hyperparameters["training"]["seed"] for m in session.scalars(select(Model))}
        assert seeds == {linked["a"]: 0, linked["b"]: 1}
        rows = session.execute(select(Task.key, Structure.model_id, Energy.method, Energy.model_id)
                               .join(Structure, Structure.task_id == Task.id)
                               .join(Energy, Energy.structure_id == Structure.id)).all()
        assert len(rows) == 16
        for key, made_by, method, energy_model in rows:
            name = key.split("/")[0].removeprefix("rss_")
            assert made_by == energy_model == linked[name] and method == f"rm_pseudo:{name}"
        ranked = {m for (m,) in session.execute(select(Ranking.method).distinct())}
        assert ranked == {"rm_pseudo:a", "rm_pseudo:b"}
    capsys.readouterr()
    assert main(["results", "pair", "--method", "rm_pseudo:b", "--top", "3", "--db", db]) == 0
    assert "rm_pseudo:b" in capsys.readouterr().out
    assert main(["results", "pair", "--db", db]) == 2  # no default model: the error lists what is ranked
    assert "ranked here: rm_pseudo:a, rm_pseudo:b" in capsys.readouterr().err
    # a second submit resumes with the linked models: nothing is trained or stored again
    assert main(["submit", str(path), "--db", db, "--quiet", "--dashboard-address", ":0"]) == 0
    with transaction(engine) as session:
        assert session.scalar(text("SELECT count(*) FROM model")) == 2


def test_a_campaign_stored_before_named_models_resumes_to_the_same_result(tmp_path, checkpoint_file):
    """A database at revision 0004 with a campaign whose tasks hold the old hand-built payloads: upgraded, resumed,
    it gives exactly what a fresh submit of the same file gives."""
    from conftest import write_campaign

    path = write_campaign(tmp_path, checkpoint_file, name="old")
    fresh = make_engine(f"sqlite:///{tmp_path / 'fresh.db'}")
    assert runner.submit(path, fresh, dashboard_address=":0").status == "done"
    with transaction(fresh) as session:
        tasks = session.execute(select(Task.kind, Task.key, Task.seed, Task.payload).order_by(Task.id)).all()
        model = session.scalars(select(Model)).one()
        expected = sorted(session.execute(select(Task.key, Structure.task_index, Energy.total)
                                          .join(Structure, Structure.task_id == Task.id)
                                          .join(Energy, Energy.structure_id == Structure.id)).all())
    old = make_engine(f"sqlite:///{tmp_path / 'old.db'}")
    migrate.upgrade(old, "0004")
    with old.begin() as conn:  # what revision 0004's runner left: campaign, model link, tasks with v1 payloads
        conn.execute(text("INSERT INTO model (id, kind, sha256, name, hyperparameters, weights, training_data, "
                          "metrics, created_at) VALUES (1, :kind, :sha, 'old', :hp, :w, :td, '{}', CURRENT_TIMESTAMP)"),
                     {"kind": model.kind, "sha": model.sha256, "hp": _json(model.hyperparameters), "w": model.weights,
                      "td": _json(model.training_data)})
        conn.execute(text("INSERT INTO campaign (id, name, spec, spec_hash, source, status, model_id, created_at, "
                          "updated_at) VALUES (1, 'old', :spec, 'x', :source, 'pending', 1, CURRENT_TIMESTAMP, "
                          "CURRENT_TIMESTAMP)"), {"spec": path.read_text(), "source": str(path)})
        for kind, key, seed, payload in tasks:
            v1 = {k: v for k, v in payload.items() if k not in ("v", "model")}
            conn.execute(text("INSERT INTO task (campaign_id, kind, key, seed, payload, status, attempts, created_at) "
                              "VALUES (1, :kind, :key, :seed, :payload, 'pending', 0, CURRENT_TIMESTAMP)"),
                         {"kind": kind, "key": key, "seed": seed, "payload": _json(v1)})
    migrate.upgrade(old)
    assert runner.resume("old", old, dashboard_address=":0").status == "done"
    with transaction(old) as session:
        got = sorted(session.execute(select(Task.key, Structure.task_index, Energy.total)
                                     .join(Structure, Structure.task_id == Task.id)
                                     .join(Energy, Energy.structure_id == Structure.id)).all())
        assert session.scalar(select(CampaignModel.model_id).where(CampaignModel.name == "default")) == 1
        assert set(session.scalars(select(Structure.model_id))) == {1}
    assert got == expected


def _json(value) -> str:
    import json

    return json.dumps(value)
