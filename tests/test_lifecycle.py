"""A campaign's lifecycle: a first submit that failed before any result can be resubmitted with a corrected file;
`platform delete` removes one campaign's rows and nothing else, in one transaction, only when confirmed."""

from __future__ import annotations

import numpy as np
from ase.build import bulk
from conftest import write_campaign
from sqlalchemy import func, select

from atomscreen import store
from atomscreen.cli import main
from atomscreen.store.models import (
    Campaign,
    CampaignModel,
    Energy,
    HullEntry,
    Model,
    Ranking,
    Structure,
    Task,
    Trajectory,
)

TABLES = (Campaign, CampaignModel, Task, Structure, Energy, Trajectory, Ranking, HullEntry, Model)


def row_counts(engine) -> dict[str, int]:
    with store.transaction(engine) as session:
        return {t.__tablename__: session.scalar(select(func.count()).select_from(t)) for t in TABLES}


def test_a_first_submit_that_failed_before_any_result_is_replaced_by_the_corrected_file(tmp_path, checkpoint_file,
                                                                                         capsys):
    broken = tmp_path / "broken.pt"
    broken.write_text("not a checkpoint\n")
    db = str(tmp_path / "c.db")
    bad = write_campaign(tmp_path, broken, name="fixme")
    assert main(["submit", str(bad), "--db", db, "--quiet", "--dashboard-address", ":0"]) == 2
    assert "broken.pt" in capsys.readouterr().err
    good = write_campaign(tmp_path, checkpoint_file, name="fixme")
    assert main(["submit", str(good), "--db", db, "--quiet", "--dashboard-address", ":0"]) == 0
    engine = store.make_engine(db)
    with store.transaction(engine) as session:
        (summary,) = store.campaign_summaries(session)
        assert store.get_campaign(session, "fixme").spec == good.read_text()
    assert (summary.status, summary.tasks, summary.n_structures) == ("done", {"done": 4}, 12)
    # with results stored, a different spec is refused and the way out is named
    changed = write_campaign(tmp_path, checkpoint_file, name="fixme", seed=4)
    assert main(["submit", str(changed), "--db", db, "--quiet", "--dashboard-address", ":0"]) == 2
    assert "platform delete fixme" in capsys.readouterr().err


def _campaign_with_rows(session, name: str, seed: int) -> int:
    rng = np.random.default_rng(seed)
    campaign = store.add_campaign(session, name, f"name: {name}\n")
    model_id = store.add_model(session, kind="rm_potential", weights=rng.bytes(64), hyperparameters={"cutoff": 3.0},
                               training_data={"seed": seed}).id
    store.link_model(session, campaign.id, "default", model_id)
    (task_id,) = store.add_tasks(session, campaign.id, [store.NewTask("rss", "rss/C2/0", seed, {}, "C2")])
    crystals = [bulk("C", "diamond", a=3.5 + 0.01 * k) for k in range(3)]
    frames = 2
    ids = store.add_structures(
        session, crystals, origin="rss", campaign_id=campaign.id, task_id=task_id, model_id=model_id,
        task_indices=[0, 1, 2], energies=[[store.EnergyRecord("rm_pseudo", total=-14.0 - k)] for k in range(3)],
        trajectories=[[store.TrajectoryRecord("rm_pseudo", np.arange(frames), rng.normal(size=frames),
                                              rng.random(frames), rng.normal(size=(frames, 2, 3)),
                                              rng.normal(size=(frames, 3, 3)))] for _ in crystals])
    store.add_analysis(session, campaign.id, store.MethodAnalysis(
        "rm_pseudo", {}, [(i, "composition", k + 1, -7.0) for k, i in enumerate(ids)],
        [(i, 0.0, 0.0, k == 0) for k, i in enumerate(ids)]))
    return campaign.id


def test_delete_removes_one_campaign_and_every_row_of_it_only_when_confirmed(engine, capsys, monkeypatch):
    with store.transaction(engine) as session:
        _campaign_with_rows(session, "keep", 1)
    kept = row_counts(engine)
    with store.transaction(engine) as session:
        _campaign_with_rows(session, "drop", 2)
    url = engine.url.render_as_string(hide_password=False)

    monkeypatch.setattr("sys.stdin.isatty", lambda: False)
    assert main(["delete", "drop", "--db", url]) == 2  # not a terminal and no --yes: nothing happens
    assert "--yes" in capsys.readouterr().err
    assert row_counts(engine)["structure"] == 2 * kept["structure"]

    assert main(["delete", "drop", "--yes", "--db", url]) == 0
    assert "deleted campaign 'drop': 1 tasks, 3 structures" in capsys.readouterr().out
    after = row_counts(engine)
    assert after == {**kept, "model": 2}  # models are shared between campaigns and stay
    with store.transaction(engine) as session:
        assert store.campaign_names(session) == ["keep"]
    assert main(["delete", "drop", "--yes", "--db", url]) == 2
    assert "no campaign named 'drop'" in capsys.readouterr().err
