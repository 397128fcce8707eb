"""The task contract: every job kind round-trips through its JSON payload; payloads stored before the contract
(no version key) decode to the same jobs; planners give seeds and keys that do not depend on batching."""

from __future__ import annotations

import json
import zlib
from pathlib import Path

import pytest
from ase.build import bulk, molecule
from ase.units import GPa

from atomscreen.campaign import DiffusionSpec, parse_campaign
from atomscreen.compute import plan
from atomscreen.jobs import (
    JOB_TYPES,
    DiffusionRelaxJob,
    KickSettings,
    PolishSettings,
    ReferenceJob,
    RescoreJob,
    RssJob,
    StructureIn,
    TaskKind,
    ValidityJob,
    from_json,
    to_json,
    worker_models,
)
from atomscreen.relax.ase_relax import CalcSettings
from atomscreen.relax.loop import RelaxSettings

DENOISER = Path(__file__).resolve().parents[1] / "models" / "diffusion_qm9.pt"
SPEC = {
    "name": "c", "seed": 7, "compositions": ["C2", "Si2C"],
    "model": {"train": {"dataset": {"format": "ase-collection", "name": "g2"}}},
    "generators": {"rss": {"samples_per_composition": 5, "volume_per_atom": 6.0, "batch_size": 2,
                           "min_separation": {"C-C": 1.2, "Si-C": 1.5, "Si-Si": 2.0}, "kick": {"displacement": 0.2}}},
    "relaxation": {"fmax": 0.02, "max_steps": 77, "pressure_gpa": 3.0, "trajectory_every": 5},
    "rescore": {"method": "xtb", "top_k": 3, "timeout_s": 9.5, "options": {"accuracy": 0.5}, "batch_size": 1},
    "validity": {"timeout_s": 4.0, "batch_size": 1},
}


def _jobs():
    spec = parse_campaign(SPEC, source="test")
    rss = [t.job for t in plan.rss_tasks(spec, spec.generators.rss_blocks[0], {"periodic": 1})]
    diamond, water = bulk("C", "diamond", a=3.57), molecule("H2O")
    water.info["structure_id"], water.info["formula"] = 12, "H2O"
    diamond.info.update(material_id="mp-66", energy_per_atom=-9.1)
    reference = [t.job for t in plan.reference_tasks(spec, [diamond])]
    rescore = [t.job for t in plan.rescore_tasks(spec, [("C2", 3, diamond), ("reference", 4, diamond)])]
    validity = [t.job for t in plan.validity_tasks(spec, [water], 0)]
    block = DiffusionSpec(sampler="morered-as", time_model="t", samples_per_composition=3, batch_size=2, max_steps=9)
    diffusion = [t.job for t in plan.diffusion_tasks(spec, block)]
    molecules = parse_campaign({**SPEC, "models": {"den": {"kind": "denoiser", "checkpoint": str(DENOISER)}},
                                "relaxation": {"method": "morered_as", "model": "den", "time_model": "den",
                                               "stop_at": 2, "batch_size": 3},
                                "rescore": {"method": "xtb", "polish": {"model": "den", "steps": 50}}}, source="test")
    relaxed = [t.job for t in plan.diffusion_relax_tasks(molecules, [water])]
    polished = [t.job for t in plan.rescore_tasks(molecules, [("H2O", 12, water)])]
    return rss + reference + rescore + validity + diffusion + relaxed + polished


def test_every_job_kind_round_trips_through_json():
    jobs = _jobs()
    assert {j.kind for j in jobs} == set(JOB_TYPES)
    for job in jobs:
        payload = json.loads(json.dumps(to_json(job)))  # as the task.payload column stores it
        assert payload["v"] == 2
        again = from_json(job.kind, payload)
        assert again == job and type(again) is type(job)


def test_jobs_carry_the_science_settings_in_science_units():
    rss, *_ = _jobs()
    assert isinstance(rss, RssJob) and isinstance(rss.relax, RelaxSettings) and isinstance(rss.kick, KickSettings)
    assert rss.relax.pressure == pytest.approx(3.0 * GPa) and rss.relax.max_systems == 2 and rss.relax.fmax == 0.02
    assert rss.random.min_separation == {"C-C": 1.2, "C-Si": 1.5, "Si-Si": 2.0}
    rescore = next(j for j in _jobs() if isinstance(j, RescoreJob))
    assert isinstance(rescore.settings, CalcSettings) and rescore.settings.pressure == pytest.approx(3.0 * GPa)
    assert rescore.timeout_s == 9.5 and rescore.options == {"accuracy": 0.5} and rescore.polish is None
    relaxed = next(j for j in _jobs() if isinstance(j, DiffusionRelaxJob))
    assert (relaxed.method, relaxed.max_steps, relaxed.stop_at, relaxed.seed) == ("morered-as", 1000, 2, 7)
    assert relaxed.structures[0].parent_id == 12 and worker_models(relaxed) == ("den", "den")
    polished = [j for j in _jobs() if isinstance(j, RescoreJob)][-1]
    assert polished.polish == PolishSettings("den", 50, True, (7 * 1_000_003 + zlib.crc32(b"polish")) % 2**62)
    assert worker_models(polished) == ("den",)


def test_payloads_stored_before_the_contract_decode_to_the_same_jobs():
    """Revision-0004 payloads (hand-built dicts, no "v") hold the same names: resume reads them as jobs."""
    old_rss = {"formula": "C2", "counts": {"C": 2}, "start": 0, "count": 2, "seed": 7, "composition_seed": 11,
               "symprec": 0.1, "random": {"volume_per_atom": 6.0, "volume_factor": [0.8, 1.2], "min_separation": 0.7,
                                          "periodic": True},
               "relax": {"fmax": 0.05, "max_steps": 500, "cell": True, "constant_volume": False, "pressure": 0.0,
                         "trajectory_every": 10, "max_systems": 64}, "kick": None}
    job = from_json("rss", old_rss)
    assert job.random.volume_factor == (0.8, 1.2) and job.relax.max_systems == 64 and job.model == "default"
    assert from_json("rss", to_json(job)) == job
    water = StructureIn.from_atoms(molecule("H2O"), structure_id=5)
    old_validity = {"formula": "H2O", "count": 1, "timeout_s": 30.0,
                    "structures": [{"numbers": list(water.numbers), "positions": [list(p) for p in water.positions],
                                    "cell": [list(c) for c in water.cell], "pbc": list(water.pbc), "structure_id": 5}]}
    assert from_json("validity", old_validity) == ValidityJob("H2O", 1, 30.0, (water,))
    old_rescore = {"method": "xtb", "energy_method": "xtb_gfn2", "symprec": 0.1, "formula": "H2O", "count": 0,
                   "settings": {"relax": True, "cell": False, "fmax": 0.05, "max_steps": 300, "optimizer": "fire",
                                "trajectory_every": 10}, "structures": []}
    rescore = from_json("rescore", old_rescore)
    assert rescore.timeout_s is None and rescore.options == {} and rescore.settings.pressure == 0.0


def test_a_payload_with_an_unknown_field_or_kind_is_refused_by_name():
    payload = to_json(_jobs()[0])
    with pytest.raises(ValueError, match="unknown field.*surprise"):
        from_json("rss", {**payload, "surprise": 1})
    with pytest.raises(ValueError, match="unknown task kind 'dft'"):
        from_json("dft", payload)


def test_reference_jobs_never_relax_at_constant_volume():
    spec = parse_campaign({**SPEC, "relaxation": {"constant_volume": True}}, source="test")
    (task,) = plan.reference_tasks(spec, [bulk("C", "diamond", a=3.57)])
    assert isinstance(task.job, ReferenceJob) and task.job.relax.constant_volume is False


def test_rss_seeds_and_keys_do_not_depend_on_batching():
    """The random start of sample k of a composition depends on (seed, composition, k) only."""
    from atomscreen.compute.tasks import structure_rng

    def starts(batch_size):
        spec = parse_campaign({**SPEC, "generators": {"rss": {**SPEC["generators"]["rss"], "batch_size": batch_size}}},
                              source="test")
        tasks = plan.rss_tasks(spec, spec.generators.rss_blocks[0], {"periodic": 1})
        assert len({t.key for t in tasks}) == len(tasks)
        return {(t.job.formula, t.job.start + k): structure_rng(t.job, k).random() for t in tasks
                for k in range(t.job.count)}

    assert starts(2) == starts(5)
    assert TaskKind.RSS.value == "rss"
