"""The checkpoint shipped in models/ (examples/qm7b_like.yaml generates with it) agrees with its recipe
(examples/train_qm7b_like.yaml): the same model, responses, schedule and data split, a size fit to commit, and forces
that behave as a response-matching potential's should on its own training molecules."""

from __future__ import annotations

import dataclasses
import io

import numpy as np
import pytest
import torch
from ase.io import read, write
from conftest import REPO

from atomscreen.campaign import load_spec, load_training
from atomscreen.potentials.calculator import RMCalculator
from atomscreen.potentials.train import Checkpoint, describe, split_hyperparameters

SHIPPED = REPO / "models" / "qm7b_like.pt"
RECIPE = REPO / "examples" / "train_qm7b_like.yaml"


@pytest.fixture(scope="module")
def shipped() -> Checkpoint:
    return Checkpoint.load(SHIPPED)


@pytest.fixture(scope="module")
def recipe():
    """The recipe's TrainSpec and its molecules, read once for the module."""
    spec = load_training(RECIPE)[1]
    return spec, spec.dataset.read()


def test_the_campaign_generates_with_the_shipped_checkpoint():
    spec = load_spec(REPO / "examples" / "qm7b_like.yaml")
    assert spec.model_specs()["default"].checkpoint == str(SHIPPED.resolve())
    assert SHIPPED.stat().st_size < 5_000_000


def test_the_shipped_checkpoint_is_its_recipe(shipped, recipe):
    recipe, structures = recipe
    model, responses, training = split_hyperparameters(recipe.hyperparameters)
    stored = {k: v for k, v in shipped.model.items() if k not in ("elements", "avg_neighbors")}
    assert stored == {k: v for k, v in model.to_dict().items() if k not in ("elements", "avg_neighbors")}
    assert shipped.responses == responses.to_dict()
    ignored = ("epochs", "max_seconds", "device")  # a wall-time stop; the recipe's epochs are the epochs it reached
    expected = {k: v for k, v in dataclasses.asdict(training).items() if k not in ignored}
    assert {k: shipped.training[k] for k in expected} == {**expected, "seed": recipe.seed}
    assert shipped.metrics["epochs"] == training.epochs
    assert shipped.metrics["steps"] == training.epochs * 197  # 3,921 molecules in steps of 20
    assert shipped.training_data["split"]["sha256"] == describe(structures)["sha256"]
    assert shipped.training_data["split"]["n_structures"] == len(structures) == 3921
    # trained from the packed copy (scripts/pack_training_set.py): the same molecules through an extxyz round trip
    buffer = io.StringIO()
    write(buffer, structures, format="extxyz")
    buffer.seek(0)
    assert shipped.training_data["sha256"] == describe(read(buffer, index=":", format="extxyz"))["sha256"]
    assert shipped.metrics["n_parameters"] == 16487


def test_training_molecules_sit_near_minima_of_the_shipped_model(shipped, recipe):
    """Response matching teaches F = -dr near the data: forces on the training geometries must be far smaller than on
    the same molecules displaced by 0.2 Å per component, and the displaced forces must point back (cosine with -dr).
    Measured: ratio 0.32 and cosine 0.73 for the shipped model; an untrained one gives 0.76 and 0.12."""
    molecules = recipe[1][::200]
    calc = RMCalculator(shipped.build(dtype=torch.float64))
    rng = np.random.default_rng(0)
    at_rest, displaced, cosines = [], [], []
    for atoms in molecules:
        atoms = atoms.copy()
        atoms.calc = calc
        at_rest.append(np.abs(atoms.get_forces()).mean())
        dr = rng.uniform(-0.2, 0.2, atoms.positions.shape)
        atoms.positions += dr
        forces = atoms.get_forces()
        displaced.append(np.abs(forces).mean())
        cosines.append(float(np.sum(-dr * forces) / np.linalg.norm(dr) / np.linalg.norm(forces)))
    assert np.mean(at_rest) < 0.5 * np.mean(displaced), (np.mean(at_rest), np.mean(displaced))
    assert np.mean(cosines) > 0.5, cosines
