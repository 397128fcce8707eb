"""The RM authors' molecule protocol: a fixed box, two relaxation stages sharing one step budget with a uniform kick
between them, and a selection rule whose two denominators (all trials, converged) are both reported."""

from __future__ import annotations

import numpy as np
import pytest
import yaml

from atomscreen.campaign import parse_campaign
from atomscreen.compute.plan import rss_tasks
from atomscreen.compute.tasks import ModelRef, rss_task, structure_rng

PROTOCOL = {"samples_per_composition": 3, "box": [10.0, 5.0, 5.0], "min_separation": 0.7, "batch_size": 3,
            "periodic": False, "select": "converged",
            "stages": [{"fmax": 0.001, "max_steps": 5}, {"kick": 0.75, "fmax": 0.0002}]}


def _job(checkpoint_path, **changes):
    model = {"checkpoint": str(checkpoint_path)}
    spec = parse_campaign({"name": "p", "seed": 3, "compositions": ["C2H6O"], "model": model,
                           "generators": {"rss": {**PROTOCOL, **changes}},
                           "relaxation": {"max_steps": 8, "trajectory_every": 1}}, source="test")
    (task,) = rss_tasks(spec, spec.generators.rss_blocks[0], {"periodic": 0})
    return task.job


def test_the_protocol_follows_box_kick_and_shared_budget_exactly(trained_checkpoint, tmp_path):
    checkpoint = trained_checkpoint[0]
    checkpoint.save(tmp_path / "rm.pt")
    job = _job(tmp_path / "rm.pt")
    assert job.random.box == (10.0, 5.0, 5.0) and job.relax.max_steps == 8 and len(job.stages) == 2
    ref = ModelRef("protocol-test", checkpoint.model, checkpoint.weights_bytes())
    result = rss_task(job, ref)
    for k, s in enumerate(result.structures):
        assert np.allclose(s.cell, np.diag([10.0, 5.0, 5.0])) and not s.pbc.any()
        first, second = s.info["stage_steps"]
        # stage 1 stops at fmax 1e-3 or 5 steps; stage 2 gets what is left of the 8-step budget
        assert first <= 5 and second <= 8 - first and s.n_steps == first + second
        if s.info["stage_status"][1] == "not_converged":
            assert second == 8 - first
        assert s.info["selected"] == (s.status == "converged")
        steps, positions = s.trajectory.steps, s.trajectory.positions
        before, after = np.flatnonzero(steps == first)  # the last frame of stage 1, the first of stage 2
        kick = structure_rng(job, k, stage=1).uniform(-0.75, 0.75, size=positions[before].shape)
        assert np.allclose(positions[after] - positions[before], kick, atol=1e-12)
    # the random starts lie in the box
    from atomscreen.atoms.random import random_structure

    start = random_structure(job.counts, job.random, structure_rng(job, 0))
    assert (start.positions >= 0).all() and (start.positions <= [10.0, 5.0, 5.0]).all()
    assert rss_task(job, ref).structures[0].positions.tobytes() == result.structures[0].positions.tobytes()


def test_protocol_options_are_validated_by_name():
    from atomscreen.campaign import CampaignError

    base = {"name": "p", "compositions": ["C2H6O"], "model": {"train": {"dataset": {"format": "qm9", "limit": 5}}}}
    for bad, field in [({"box": [10, 5, 5], "periodic": True}, "generators.rss"),
                       ({"box": [10, 5, 5], "box_aspect": [2, 1, 1]}, "generators.rss"),
                       ({"stages": [{"fmax": 0.0}]}, "generators.rss.stages[0].fmax"),
                       ({"select": "best"}, "generators.rss.select"),
                       ({"stages": [{"fmax": 0.01}], "kick": {"displacement": 0.3}}, "generators.rss")]:
        with pytest.raises(CampaignError) as info:
            parse_campaign({**base, "generators": {"rss": {"samples_per_composition": 2, **bad}}}, source="t")
        assert any(p.field == field for p in info.value.problems), (bad, info.value.problems)


def test_report_gives_both_denominators(trained_checkpoint, tmp_path, capsys):
    """A campaign with the protocol and validity checks: the report counts trials, converged molecules and the pass
    rates over each, from the stored rows."""
    from sqlalchemy import select

    from atomscreen.analysis.report import campaign_report
    from atomscreen.cli import main
    from atomscreen.store import make_engine, report_rows, transaction
    from atomscreen.store.models import Energy, MoleculeCheck, Structure

    trained_checkpoint[0].save(tmp_path / "rm.pt")
    spec = {"name": "prot", "seed": 1, "cluster": {"n_workers": 1}, "compositions": ["CH4O"],
            "model": {"checkpoint": str(tmp_path / "rm.pt")},
            "generators": {"rss": {**PROTOCOL, "samples_per_composition": 4, "batch_size": 4,
                                   "stages": [{"fmax": 0.05, "max_steps": 100}, {"kick": 0.3, "fmax": 0.01}]}},
            "relaxation": {"max_steps": 150, "trajectory_every": 0}, "validity": {"timeout_s": 60, "batch_size": 4}}
    path = tmp_path / "prot.yaml"
    path.write_text(yaml.safe_dump(spec))
    db = f"sqlite:///{tmp_path / 'p.db'}"
    assert main(["submit", str(path), "--db", db, "--quiet", "--dashboard-address", ":0"]) == 0
    engine = make_engine(db)
    with transaction(engine) as session:
        report = campaign_report(report_rows(session, "prot"))
        converged = dict(session.execute(select(Structure.id, Energy.converged).join(Energy)).all())
        sanitized = dict(session.execute(select(MoleculeCheck.structure_id, MoleculeCheck.sanitization)).all())
        n = session.scalar(select(Structure.id).order_by(Structure.id.desc()).limit(1))
    (row,) = report.validity
    assert row.trials == 4 == n and row.converged == sum(converged.values())
    assert row.sanitized_converged == sum(bool(sanitized.get(s)) for s, c in converged.items() if c)
    capsys.readouterr()
    assert main(["report", "prot", "--db", db]) == 0
    assert "sanit. % conv." in capsys.readouterr().out
