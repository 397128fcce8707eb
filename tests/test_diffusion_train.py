"""Denoiser training: the validation loss falls on a small QM9 subset, and a run killed with SIGKILL and resumed
reaches exactly the weights of an uninterrupted run with the same seed."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from atomscreen.data.qm9 import read_qm9
from atomscreen.diffusion.checkpoint import DenoiserCheckpoint
from atomscreen.diffusion.data import from_atoms, split
from atomscreen.diffusion.painn import DenoiserConfig
from atomscreen.diffusion.train import DenoiserTraining, split_denoiser_hyperparameters, train_denoiser

TINY = DenoiserConfig(features=8, interactions=1, radial=8)


@pytest.fixture(scope="module")
def qm9_small():
    return from_atoms(read_qm9(limit=400, skip=1000))


def test_training_lowers_the_validation_loss_well_below_its_initial_value(qm9_small, tmp_path):
    cfg = DenoiserTraining(steps=200, batch_size=16, lr=3e-3, ema_decay=0.9, validate_every=50,
                           validation_size=64, seed=1)
    molecules = split(len(qm9_small), 300, 64, seed=1)
    checkpoint = train_denoiser(qm9_small, molecules, TINY, cfg, source="qm9 rows 1001-1400")
    history = checkpoint.metrics["history"]
    first, last = history[0]["val_loss"], history[-1]["val_loss"]
    assert history[0]["step"] == 0 and history[-1]["step"] == 200
    assert last < 0.7 * first, history
    assert history[-1]["val_time"] < history[0]["val_time"]
    # the checkpoint records its split and rebuilds to the same predictions
    path = tmp_path / "d.pt"
    checkpoint.save(path)
    loaded = DenoiserCheckpoint.load(path)
    assert loaded.training_data["split"]["train_ids"] == qm9_small.ids[molecules.train].tolist()
    assert loaded.training_data["n_test"] == 400 - 300 - 64 and loaded.config.elements == (1, 6, 7, 8)
    model, schedule = loaded.build()
    assert schedule.T == 1000 and loaded.metrics["parameters"] == sum(p.numel() for p in model.parameters())


def test_a_checkpoint_of_another_kind_is_refused_with_its_path(tmp_path):
    path = tmp_path / "rm.pt"
    torch.save({"kind": "rm_potential", "state_dict": {}}, path)
    with pytest.raises(ValueError, match=r"rm\.pt is not a denoiser checkpoint \(kind 'rm_potential'\)"):
        DenoiserCheckpoint.load(path)


def test_unknown_hyperparameters_are_named():
    with pytest.raises(ValueError, match="unknown denoiser hyperparameter.*featurs"):
        split_denoiser_hyperparameters({"featurs": 8})


RUN = """
import sys, torch
torch.set_num_threads(1)
from atomscreen.data.qm9 import read_qm9
from atomscreen.diffusion.data import from_atoms, split
from atomscreen.diffusion.painn import DenoiserConfig
from atomscreen.diffusion.train import DenoiserTraining, train_denoiser
data = from_atoms(read_qm9(limit=200, skip=1000))
cfg = DenoiserTraining(steps=int(sys.argv[2]), batch_size=8, lr=1e-3, validate_every=10, validation_size=16,
                       checkpoint_every=5, seed=3)
ck = train_denoiser(data, split(len(data), 150, 16, seed=3), DenoiserConfig(features=8, interactions=1, radial=6),
                    cfg, resume_path=sys.argv[1])
ck.save(sys.argv[1] + ".final")
"""


def _run(resume: Path, steps: int) -> subprocess.Popen:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    return subprocess.Popen([sys.executable, "-c", RUN, str(resume), str(steps)], env=env)


def test_a_run_killed_with_sigkill_and_resumed_reaches_the_same_weights(tmp_path):
    steps = 60
    straight = tmp_path / "straight.pt"
    assert _run(straight, steps).wait(timeout=300) == 0
    killed = tmp_path / "killed.pt"
    process = _run(killed, steps)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:  # kill once a resume checkpoint past step 20 is on disk
        if killed.exists() and torch.load(killed, weights_only=False)["step"] >= 20:
            break
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    blob = torch.load(killed, weights_only=False)
    assert 20 <= blob["step"] < steps and not Path(str(killed) + ".final").exists()
    assert _run(killed, steps).wait(timeout=300) == 0
    a = torch.load(str(straight) + ".final", weights_only=True)
    b = torch.load(str(killed) + ".final", weights_only=True)
    assert a["metrics"]["steps"] == b["metrics"]["steps"] == steps
    for name, tensor in a["state_dict"].items():
        assert torch.equal(tensor, b["state_dict"][name]), name
    full_a, full_b = torch.load(straight, weights_only=False), torch.load(killed, weights_only=False)
    for name, tensor in full_a["model"].items():  # the raw (non-EMA) weights too
        assert torch.equal(tensor, full_b["model"][name]), name
    assert full_a["history"] == full_b["history"]
