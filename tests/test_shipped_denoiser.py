"""The shipped denoiser (models/diffusion_qm9.pt) is what its recipe (examples/train_diffusion_qm9.yaml) trains, carries
its split, stays small, and has learned: on QM9 test-split molecules it predicts the diffusion time and the noise far
better than an untrained model."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import yaml
from conftest import REPO

from atomscreen.data.qm9 import read_qm9
from atomscreen.diffusion.checkpoint import DenoiserCheckpoint
from atomscreen.diffusion.data import from_atoms, split
from atomscreen.diffusion.forward import noised
from atomscreen.diffusion.painn import Denoiser, molecule_time

PATH = REPO / "models" / "diffusion_qm9.pt"
RECIPE = REPO / "examples" / "train_diffusion_qm9.yaml"
QM9_SHA256 = "fa60a29c434b"  # all 130,831 qm9pack molecules as float64 (scripts/pack_qm9.py prints it)


@pytest.fixture(scope="module")
def shipped():
    return DenoiserCheckpoint.load(PATH), yaml.safe_load(RECIPE.read_text())


def test_the_shipped_denoiser_is_its_recipe(shipped):
    checkpoint, recipe = shipped
    assert PATH.stat().st_size < 5_000_000
    hyper = recipe["hyperparameters"]
    model_keys = ("features", "interactions", "radial", "cutoff", "head_layers")
    assert {k: checkpoint.model[k] for k in model_keys} == {k: hyper[k] for k in model_keys}
    training = {k: v for k, v in hyper.items() if k not in model_keys}
    assert {k: checkpoint.training[k] for k in training} == training
    assert checkpoint.training["seed"] == recipe["seed"] and checkpoint.metrics["steps"] == hyper["steps"]
    data = checkpoint.training_data
    assert data["sha256"].startswith(QM9_SHA256) and data["n_molecules"] == 130_831
    assert (data["n_train"], data["n_validation"], data["n_test"]) == (55_000, 10_000, 65_831)
    assert data["split"]["seed"] == recipe["seed"] and len(set(data["split"]["train_ids"])) == 55_000
    assert checkpoint.config.elements == (1, 6, 7, 8, 9) and checkpoint.config.max_atoms == 29
    assert sum(data["test_compositions"].values()) == 65_831


@pytest.mark.slow
def test_the_recorded_split_is_the_seeded_split_of_qm9(shipped):
    checkpoint, recipe = shipped
    data = from_atoms(read_qm9())
    assert data.sha256() == checkpoint.training_data["sha256"]
    molecules = split(len(data), 55_000, 10_000, recipe["seed"])
    assert data.ids[molecules.train].tolist() == checkpoint.training_data["split"]["train_ids"]
    assert data.ids[molecules.validation].tolist() == checkpoint.training_data["split"]["validation_ids"]


def _predictions(model: Denoiser, schedule, molecules, steps: torch.Tensor):
    """(predicted steps, noise MSE) of molecules noised to ``steps`` (one per molecule), the noise head fed the true
    time."""
    data = from_atoms(molecules)
    numbers, x0, mol = data.batch(range(len(data)))
    n = len(data)
    x_t, eps = noised(x0, steps, mol, schedule, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        eps_hat, tau = model(model.species(numbers), x_t.float(), mol, n, time=steps.float() / schedule.T)
    return molecule_time(tau.double(), mol, n) * schedule.T, float(((eps_hat.double() - eps) ** 2).mean())


def test_the_shipped_denoiser_predicts_time_and_noise_on_test_molecules(shipped):
    checkpoint, _ = shipped
    known = checkpoint.seen_ids()
    test = [a for a in read_qm9(limit=400, skip=60_000) if a.info["qm9_index"] not in known][:100]
    assert len(test) >= 60
    model, schedule = checkpoint.build()
    torch.manual_seed(0)
    untrained = Denoiser(checkpoint.config).eval()
    steps = torch.tensor([20, 100, 300, 600, 900] * 20)[:len(test)]
    t_hat, _ = _predictions(model, schedule, test, steps)
    t_untrained, _ = _predictions(untrained, schedule, test, steps)
    r = np.corrcoef(t_hat.numpy(), steps.numpy())[0, 1]
    assert r > 0.95 and float((t_hat - steps).abs().mean()) < 0.06 * schedule.T, (r, t_hat[:10])
    assert abs(np.corrcoef(t_untrained.numpy(), steps.numpy())[0, 1]) < r - 0.2
    for t in (100, 300, 600):
        same = torch.full((len(test),), t)
        mse, mse0 = _predictions(model, schedule, test, same)[1], _predictions(untrained, schedule, test, same)[1]
        assert mse < 0.6 and mse < 0.7 * mse0, (t, mse, mse0)
    assert np.isfinite(checkpoint.metrics["best_val_loss"])
