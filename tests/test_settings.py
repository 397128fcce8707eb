"""Every campaign setting reaches the task that uses it (or is listed as used by the driver only), and re-scoring
happens at the campaign's pressure."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from ase.build import bulk
from ase.units import GPa

from atomscreen.campaign import (
    AcceptSpec,
    DiffusionSpec,
    GuidanceSpec,
    KickSpec,
    PolishSpec,
    PostRelaxSpec,
    RelaxationSpec,
    RescoreSpec,
    RSSSpec,
    StageSpec,
    ValiditySpec,
    parse_campaign,
)
from atomscreen.compute import plan
from atomscreen.jobs import KickSettings, from_json, to_json
from atomscreen.relax.schedule import RelaxStage

BASE = {
    "name": "s", "seed": 1, "compositions": ["C4"],
    "model": {"train": {"dataset": {"format": "ase-collection", "name": "g2"}}},
    "generators": {"rss": {"samples_per_composition": 4, "volume_per_atom": 6.0, "batch_size": 2}},
    "rescore": {"method": "chgnet"},
    "validity": {},
}

# spec path -> (value to set, the value in the job, read from the job as its task reads it)
RSS_FIELDS = {
    "relaxation.fmax": (0.013, 0.013, lambda j: j.relax.fmax),
    "relaxation.max_steps": (123, 123, lambda j: j.relax.max_steps),
    "relaxation.cell": (False, False, lambda j: j.relax.cell),
    "relaxation.constant_volume": (True, True, lambda j: j.relax.constant_volume),
    "relaxation.pressure_gpa": (4.0, 4.0 * GPa, lambda j: j.relax.pressure),
    "relaxation.trajectory_every": (7, 7, lambda j: j.relax.trajectory_every),
    "relaxation.check_every": (4, 4, lambda j: j.relax.check_every),
    "relaxation.skin": (0.3, 0.3, lambda j: j.relax.skin),
    "generators.rss.samples_per_composition": (3, 3, lambda j: j.start + j.count),
    "generators.rss.volume_per_atom": (7.5, 7.5, lambda j: j.random.volume_per_atom),
    "generators.rss.volume_factor": ([0.9, 1.3], (0.9, 1.3), lambda j: j.random.volume_factor),
    "generators.rss.min_separation": ({"C-C": 1.3}, {"C-C": 1.3}, lambda j: j.random.min_separation),
    "generators.rss.batch_size": (3, 3, lambda j: j.relax.max_systems),
    "generators.rss.periodic": (False, False, lambda j: j.random.periodic),
    "generators.rss.kick": ({"displacement": 0.25, "rounds": 2}, KickSettings(0.25, 2), lambda j: j.kick),
    "generators.rss.kick.displacement": (0.35, 0.35, lambda j: j.kick.displacement),
    "generators.rss.kick.rounds": (3, 3, lambda j: j.kick.rounds),
    "generators.rss.seed": (99, 99, lambda j: j.seed),
    "generators.rss.model": ("other", "other", lambda j: j.model),
    "generators.rss.box": ([10.0, 5.0, 5.0], (10.0, 5.0, 5.0), lambda j: j.random.box),
    "generators.rss.box_aspect": ([2.0, 1.0, 1.0], (2.0, 1.0, 1.0), lambda j: j.random.box_aspect),
    "generators.rss.stages": ([{"fmax": 0.001, "max_steps": 50}, {"kick": 0.5, "fmax": 0.0002}],
                              (RelaxStage(0.001, 50, 0.0), RelaxStage(0.0002, None, 0.5)), lambda j: j.stages),
    "generators.rss.stages.fmax": (0.004, 0.004, lambda j: j.stages[0].fmax),
    "generators.rss.stages.max_steps": (40, 40, lambda j: j.stages[0].max_steps),
    "generators.rss.stages.kick": (0.6, 0.6, lambda j: j.stages[0].kick),
    "generators.rss.select": ("converged", "converged", lambda j: j.select),
}
RESCORE_FIELDS = {
    "relaxation.pressure_gpa": (5.0, 5.0 * GPa, lambda j: j.settings.pressure),
    "rescore.method": ("xtb", "xtb", lambda j: j.method),
    "rescore.calculator": ("ase.calculators.emt:EMT", "ase.calculators.emt:EMT", lambda j: j.method),
    "rescore.relax": (False, False, lambda j: j.settings.relax),
    "rescore.cell": (False, False, lambda j: j.settings.cell),
    "rescore.fmax": (0.031, 0.031, lambda j: j.settings.fmax),
    "rescore.max_steps": (17, 17, lambda j: j.settings.max_steps),
    "rescore.optimizer": ("bfgs_linesearch", "bfgs_linesearch", lambda j: j.settings.optimizer),
    "rescore.trajectory_every": (3, 3, lambda j: j.settings.trajectory_every),
    "rescore.timeout_s": (0.5, 0.5, lambda j: j.timeout_s),
    "rescore.options": ({"accuracy": 0.3}, {"accuracy": 0.3}, lambda j: j.options),
}
VALIDITY_FIELDS = {"validity.timeout_s": (4.5, 4.5, lambda j: j.timeout_s)}
DIFFUSION_FIELDS = {
    "generators.diffusion.model": ("other", "other", lambda j: j.model),
    "generators.diffusion.sampler": ("ddpm", "ddpm", lambda j: j.sampler),
    "generators.diffusion.time_model": ("den", "den", lambda j: j.time_model),
    "generators.diffusion.samples_per_composition": (5, 5, lambda j: j.start + j.count),
    "generators.diffusion.max_steps": (321, 321, lambda j: j.max_steps),
    "generators.diffusion.batch_size": (2, 2, lambda j: j.count),
    "generators.diffusion.trajectory_every": (9, 9, lambda j: j.trajectory_every),
    "generators.diffusion.seed": (77, 77, lambda j: j.seed),
    "generators.diffusion.stop_at": (5, 5, lambda j: j.stop_at),
}
HYBRID_FIELDS = {  # a diffusion block with guidance, accept and post_relax on the RM model 'pot' (see _hybrid_jobs)
    "generators.diffusion.guidance": ({"energy": "xtb_gfnff"}, ("xtb_gfnff", False, 0.8),
                                      lambda h: (h.guidance_energy.name, h.guidance_energy.model, h.guidance.start)),
    "generators.diffusion.guidance.energy": ("pot", ("pot", True, "rm_pseudo:pot"),
                                             lambda h: (h.guidance_energy.name, h.guidance_energy.model,
                                                        h.guidance_energy.method)),
    "generators.diffusion.guidance.options": ({"basis": "sto-3g"}, ({"basis": "sto-3g"}, {"basis": "sto-3g"}),
                                              lambda h: (h.guidance_energy.options, h.post_energy.options)),
    "generators.diffusion.guidance.start": (0.7, 0.7, lambda h: h.guidance.start),
    "generators.diffusion.guidance.every": (3, 3, lambda h: h.guidance.every),
    "generators.diffusion.guidance.iterations": (11, 11, lambda h: h.guidance.iterations),
    "generators.diffusion.guidance.target": ("xt", "xt", lambda h: h.guidance.target),
    "generators.diffusion.guidance.optimizer": ("fire", "fire", lambda h: h.guidance.optimizer),
    "generators.diffusion.guidance.fmax": (0.07, 0.07, lambda h: h.guidance.fmax),
    "generators.diffusion.accept": ({}, (25.0, "pot"), lambda h: (h.accept.threshold_mev_per_atom,
                                                                  h.accept_energy.name)),
    "generators.diffusion.accept.energy": ("xtb_gfn2", "xtb_gfn2", lambda h: h.accept_energy.name),
    "generators.diffusion.accept.options": ({"accuracy": 2.0}, {"accuracy": 2.0}, lambda h: h.accept_energy.options),
    "generators.diffusion.accept.threshold_mev_per_atom": (12.0, 12.0, lambda h: h.accept.threshold_mev_per_atom),
    "generators.diffusion.accept.max_restarts": (5, 5, lambda h: h.accept.max_restarts),
    "generators.diffusion.accept.steps": (44, 44, lambda h: h.accept.steps),
    "generators.diffusion.accept.fmax": (0.02, 0.02, lambda h: h.accept.fmax),
    "generators.diffusion.post_relax": ({}, (0.01, "pot"), lambda h: (h.post_relax.fmax, h.post_energy.name)),
    "generators.diffusion.post_relax.energy": ("dft", "dft", lambda h: h.post_energy.name),
    "generators.diffusion.post_relax.options": ({"basis": "sto-3g"}, {"basis": "sto-3g"},
                                                lambda h: h.post_energy.options),
    "generators.diffusion.post_relax.fmax": (0.003, 0.003, lambda h: h.post_relax.fmax),
    "generators.diffusion.post_relax.max_steps": (77, 77, lambda h: h.post_relax.max_steps),
    "generators.diffusion.post_relax.optimizer": ("fire", "fire", lambda h: h.post_relax.optimizer),
    "generators.diffusion.post_relax.trajectory_every": (4, 4, lambda h: h.post_relax.record_every),
}
RELAX_FIELDS = {  # a molecule campaign relaxing by MoreRed (base: morered_jt on 'den')
    "relaxation.method": ("morered_itp", "morered-itp", lambda j: j.method),
    "relaxation.model": ("den2", "den2", lambda j: j.model),
    "relaxation.time_model": ("den2", "den2", lambda j: j.time_model),
    "relaxation.reverse_max_steps": (321, 321, lambda j: j.max_steps),
    "relaxation.stop_at": (4, 4, lambda j: j.stop_at),
    "relaxation.batch_size": (1, 1, lambda j: j.count),
    "relaxation.trajectory_every": (6, 6, lambda j: j.trajectory_every),
}
POLISH_FIELDS = {
    "rescore.polish": ({"model": "den"}, ("den", 20, True), lambda j: (j.polish.model, j.polish.steps,
                                                                       j.polish.compare)),
    "rescore.polish.model": ("den2", "den2", lambda j: j.polish.model),
    "rescore.polish.steps": (50, 50, lambda j: j.polish.steps),
    "rescore.polish.compare": (False, False, lambda j: j.polish.compare),
}
DRIVER_ONLY = {  # used where the driver plans, not inside a task
    "generators.rss.name": "names the block's task keys",
    "rescore.top_k": "chooses the candidates to re-score",
    "rescore.batch_size": "structures per re-scoring task",
    "validity.batch_size": "molecules per validity task",
    "validity.novelty_qm9": "marks novelty in the final analysis",
    "generators.diffusion.name": "names the block's task keys",
}
BLOCKS = {"relaxation": RelaxationSpec, "generators.rss": RSSSpec, "generators.rss.kick": KickSpec,
          "generators.rss.stages": StageSpec, "rescore": RescoreSpec, "validity": ValiditySpec,
          "generators.diffusion": DiffusionSpec, "rescore.polish": PolishSpec,
          "generators.diffusion.guidance": GuidanceSpec, "generators.diffusion.accept": AcceptSpec,
          "generators.diffusion.post_relax": PostRelaxSpec}


def test_every_task_setting_is_mapped_to_its_job_or_listed_as_driver_only():
    known = set(RSS_FIELDS) | set(RESCORE_FIELDS) | set(VALIDITY_FIELDS) | set(DIFFUSION_FIELDS) | set(DRIVER_ONLY)
    known |= set(RELAX_FIELDS) | set(POLISH_FIELDS) | set(HYBRID_FIELDS)
    fields = {f"{path}.{name}" for path, block in BLOCKS.items() for name in block.model_fields}
    assert fields - known == set(), "a new campaign setting must reach its job (or be listed as driver-only)"


def _spec(path: str, value):
    data = json.loads(json.dumps(BASE))
    if path == "generators.rss.model":
        data["models"] = {"other": data.pop("model")}
    if path.startswith("generators.rss.kick."):
        data["generators"]["rss"]["kick"] = {}
    if path in ("generators.rss.box", "generators.rss.box_aspect"):
        data["generators"]["rss"]["periodic"] = False
    if path.startswith("generators.rss.stages."):  # one stage, the field set on it
        stage = {"fmax": 0.01, path.rsplit(".", 1)[1]: value}
        data["generators"]["rss"]["stages"] = [stage]
        return parse_campaign(data, source=path)
    if path == "rescore.calculator":
        del data["rescore"]["method"]
    if path == "rescore.options":
        data["rescore"]["method"] = "xtb"
    return _parsed_with(data, path, value)


def _parsed_with(data: dict, path: str, value):
    """The campaign ``data`` with ``value`` set at the dotted ``path`` (parents created), parsed."""
    *parents, leaf = path.split(".")
    node = data
    for key in parents:
        node = node.setdefault(key, {})
    node[leaf] = value
    return parse_campaign(data, source=path)


def _as_stored(job):
    return from_json(job.kind, json.loads(json.dumps(to_json(job))))


@pytest.mark.parametrize("path", sorted(RSS_FIELDS))
def test_generation_settings_reach_the_rss_jobs(path):
    value, expected, read = RSS_FIELDS[path]
    spec = _spec(path, value)
    jobs = [_as_stored(t.job) for rss in spec.generators.rss_blocks
            for t in plan.rss_tasks(spec, rss, {"periodic": 1})]
    assert (jobs and read(jobs[-1]) == pytest.approx(expected) if isinstance(expected, float)
            else read(jobs[-1]) == expected)


@pytest.mark.parametrize("path", sorted(RESCORE_FIELDS))
def test_rescoring_settings_reach_the_rescore_jobs(path):
    value, expected, read = RESCORE_FIELDS[path]
    spec = _spec(path, value)
    (task,) = plan.rescore_tasks(spec, [("C2", 1, bulk("C", "diamond", a=3.57))])
    job = _as_stored(task.job)
    assert read(job) == pytest.approx(expected) if isinstance(expected, float) else read(job) == expected


DENOISER = str(Path(__file__).resolve().parents[1] / "models" / "diffusion_qm9.pt")


def _molecule_spec(path: str, value):
    data = json.loads(json.dumps(BASE))
    data["models"] = {name: {"kind": "denoiser", "checkpoint": DENOISER} for name in ("den", "den2")}
    data["relaxation"] = {"method": "morered_jt", "model": "den"}
    data["rescore"] = {"method": "xtb", "polish": {"model": "den"}}
    if path == "relaxation.time_model":
        data["relaxation"]["method"] = "morered_as"
    return _parsed_with(data, path, value)


@pytest.mark.parametrize("path", sorted(RELAX_FIELDS))
def test_diffusion_relaxation_settings_reach_the_relaxation_jobs(path):
    from ase.build import molecule

    value, expected, read = RELAX_FIELDS[path]
    molecules = [molecule("H2O"), molecule("H2O")]
    for k, a in enumerate(molecules):
        a.info.update(structure_id=k + 1, formula="H2O")
    tasks = plan.diffusion_relax_tasks(_molecule_spec(path, value), molecules)
    assert read(_as_stored(tasks[0].job)) == expected


@pytest.mark.parametrize("path", sorted(POLISH_FIELDS))
def test_polish_settings_reach_the_rescore_jobs(path):
    from ase.build import molecule

    value, expected, read = POLISH_FIELDS[path]
    (task,) = plan.rescore_tasks(_molecule_spec(path, value), [("H2O", 1, molecule("H2O"))])
    assert read(_as_stored(task.job)) == expected


def test_validity_settings_reach_the_validity_jobs():
    from ase.build import molecule

    water = molecule("H2O")
    water.info.update(structure_id=1, formula="H2O")
    value, expected, read = VALIDITY_FIELDS["validity.timeout_s"]
    (task,) = plan.validity_tasks(_spec("validity.timeout_s", value), [water], 0)
    assert read(_as_stored(task.job)) == expected


def _rescored_volume(spec_data: dict, atoms, pressure_gpa: float) -> float:
    from atomscreen.compute.tasks import rescore_task

    spec = parse_campaign({**spec_data, "relaxation": {"pressure_gpa": pressure_gpa}}, source="pressure")
    (task,) = plan.rescore_tasks(spec, [(atoms.get_chemical_formula(), 1, atoms)])
    (out,) = rescore_task(_as_stored(task.job)).structures
    assert out.status == "converged", out.error
    return abs(np.linalg.det(out.cell)) / len(out.numbers)


def test_chgnet_rescoring_at_5_gpa_gives_a_smaller_cell_than_at_0():
    data = {**BASE, "rescore": {"method": "chgnet", "fmax": 0.02, "max_steps": 200, "optimizer": "bfgs"}}
    diamond = bulk("C", "diamond", a=3.60)
    v0, v5 = _rescored_volume(data, diamond, 0.0), _rescored_volume(data, diamond, 5.0)
    assert v5 < v0 - 0.01  # diamond's bulk modulus ~440 GPa: about 1% smaller, 0.06 Å^3/atom


def test_rescoring_at_pressure_reaches_the_volume_where_minus_dE_dV_is_that_pressure():
    """EMT copper at 5 GPa: the relaxed volume against ASE's Birch-Murnaghan fit of E(V), -dE/dV = P."""
    from ase.calculators.emt import EMT
    from ase.eos import EquationOfState

    data = {**BASE, "rescore": {"calculator": "ase.calculators.emt:EMT", "fmax": 1e-4, "max_steps": 500,
                                "optimizer": "bfgs"}}
    volume = _rescored_volume(data, bulk("Cu", "fcc", a=3.6), 5.0)
    volumes, energies = [], []
    for a in np.linspace(3.50, 3.65, 13):
        cu = bulk("Cu", "fcc", a=a)
        cu.calc = EMT()
        volumes.append(cu.get_volume())
        energies.append(cu.get_potential_energy())
    eos = EquationOfState(volumes, energies, eos="birchmurnaghan")
    eos.fit()
    grid = np.linspace(min(volumes), max(volumes), 20001)
    pressure = -np.gradient(eos.func(grid, *eos.eos_parameters), grid)  # eV/Å^3
    expected = grid[np.argmin(abs(pressure - 5.0 * GPa))]
    assert volume == pytest.approx(expected, rel=2e-3)


@pytest.mark.parametrize("path", sorted(DIFFUSION_FIELDS))
def test_diffusion_settings_reach_the_diffusion_jobs(path):
    value, expected, read = DIFFUSION_FIELDS[path]
    data = json.loads(json.dumps(BASE))
    checkpoint = str(Path(__file__).resolve().parents[1] / "models" / "qm7b_like.pt")  # parsing only checks it exists
    data["models"] = {name: {"kind": "denoiser", "checkpoint": checkpoint} for name in ("den", "other")}
    block = {"model": "den", "samples_per_composition": 4}
    if path == "generators.diffusion.time_model":
        block["sampler"] = "morered-as"
    block[path.rsplit(".", 1)[1]] = value
    data["generators"] = {"diffusion": block}
    spec = parse_campaign(data, source=path)
    jobs = [_as_stored(t.job) for t in plan.diffusion_tasks(spec, spec.generators.diffusion_blocks[0])]
    assert jobs and read(jobs[-1]) == expected


@pytest.mark.parametrize("path", sorted(HYBRID_FIELDS))
def test_hybrid_settings_reach_the_diffusion_jobs(path):
    value, expected, read = HYBRID_FIELDS[path]
    data = json.loads(json.dumps(BASE))
    data["models"] = {"den": {"kind": "denoiser", "checkpoint": DENOISER},
                      "pot": {"checkpoint": str(Path(DENOISER).parent / "qm7b_like.pt")}}
    block = {"model": "den", "samples_per_composition": 2, "guidance": {"energy": "pot"}, "accept": {},
             "post_relax": {}}
    data["generators"] = {"diffusion": block}
    if path.endswith(".guidance.options"):  # calculator options (the RM model takes none); post_relax inherits them
        block["guidance"]["energy"] = "dft"
    if path.endswith((".accept.options", ".post_relax.options")):  # options go with an energy model
        block[path.split(".")[2]]["energy"] = "xtb_gfn2" if "accept" in path else "dft"
    spec = _parsed_with(data, path, value)
    (task,) = plan.diffusion_tasks(spec, spec.generators.diffusion_blocks[0])
    job = _as_stored(task.job)
    assert read(job.hybrid) == expected
    assert "pot" in spec.model_specs() and job.hybrid.slots == 64
