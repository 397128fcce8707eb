"""Batched FIRE against ASE's FIRE (positions only and with FrechetCellFilter) on the same RM potential."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from ase.filters import FrechetCellFilter
from ase.optimize import FIRE

from atomscreen.atoms.random import RandomSpec, random_structures
from atomscreen.potentials.calculator import RMCalculator
from atomscreen.relax import RelaxSettings, relax


def well_conditioned_starts(reference, n=50, seed=0):
    """Known crystals and molecules rattled by 0.1 Å; crystals also strained by up to 5%."""
    rng = np.random.default_rng(seed)
    starts = []
    for k in range(n):
        atoms = reference[k % len(reference)].copy()
        atoms.rattle(0.1, seed=k)
        if atoms.pbc.all():
            strain = rng.uniform(-0.05, 0.05, (3, 3))
            atoms.set_cell(atoms.cell.array @ (np.eye(3) + (strain + strain.T) / 2), scale_atoms=True)
        starts.append(atoms)
    return starts


def ase_fire(model, atoms, fmax, steps, cell):
    atoms = atoms.copy()
    atoms.calc = RMCalculator(model)
    optimizer = FIRE(FrechetCellFilter(atoms) if cell and atoms.pbc.all() else atoms, logfile=None)
    optimizer.run(fmax=fmax, steps=steps)
    return atoms, optimizer.nsteps


@pytest.mark.parametrize("cell", [False, True], ids=["positions", "frechet-cell"])
def test_batched_fire_reproduces_ase_fire(trained_checkpoint, cell):
    checkpoint, reference = trained_checkpoint
    model = checkpoint.build()
    starts = well_conditioned_starts(reference)
    results = relax(model, starts, RelaxSettings(fmax=0.01, max_steps=1000, cell=cell), dtype=torch.float64)
    agree = 0
    for result, start in zip(results, starts):
        final, n_steps = ase_fire(model, start, 0.01, 1000, cell)
        assert result.converged
        energy_ok = abs(result.energy - final.get_potential_energy()) / len(start) < 1e-3
        agree += energy_ok and abs(result.n_steps - n_steps) <= 0.1 * max(n_steps, 1)
    assert agree >= 45
    assert np.mean([r.n_steps for r in results]) > 5  # the starts really needed relaxing


def test_in_flight_batching_gives_the_same_result_as_one_batch(trained_checkpoint):
    checkpoint, reference = trained_checkpoint
    model = checkpoint.build()
    starts = well_conditioned_starts(reference, n=12, seed=1)
    settings = RelaxSettings(fmax=0.01, max_steps=500, cell=True)
    together = relax(model, starts, settings)
    streamed = relax(model, starts, RelaxSettings(fmax=0.01, max_steps=500, cell=True, max_systems=3))
    for a, b in zip(together, streamed):
        assert a.n_steps == b.n_steps and a.status == b.status
        assert np.allclose(a.atoms.positions, b.atoms.positions, atol=1e-9) and np.allclose(a.atoms.cell, b.atoms.cell, atol=1e-9)


def test_exploding_system_is_flagged_and_does_not_poison_the_batch(trained_checkpoint):
    checkpoint, reference = trained_checkpoint
    rm = checkpoint.build()
    starts = well_conditioned_starts(reference, n=6, seed=2)
    poisoned_count = len(starts[3])

    def model(batch):
        energy = rm(batch)
        # a system with as many atoms as starts[3] and its first atom's number gets NaN after a few evaluations
        bad = (batch.n_atoms == poisoned_count) & (batch.numbers[torch.cumsum(batch.n_atoms, 0) - batch.n_atoms] == int(starts[3].numbers[0]))
        return torch.where(bad, energy * float("nan"), energy)

    clean = relax(rm, starts[:3] + starts[4:], RelaxSettings(fmax=0.01, max_steps=300, cell=True))
    mixed = relax(model, starts, RelaxSettings(fmax=0.01, max_steps=300, cell=True))
    flagged = [r for r in mixed if r.status == "exploded"]
    assert {r.index for r in flagged} >= {3}
    for a, b in zip(clean, [r for r in mixed if r.status != "exploded"]):
        assert a.n_steps == b.n_steps and np.allclose(a.atoms.positions, b.atoms.positions)


def test_trajectory_is_subsampled_and_ends_with_the_last_frame(trained_checkpoint):
    checkpoint, reference = trained_checkpoint
    start = well_conditioned_starts(reference, n=2, seed=3)[:2]
    (result, _) = relax(checkpoint.build(), start, RelaxSettings(fmax=0.001, max_steps=200, cell=True, trajectory_every=4))
    traj = result.trajectory
    assert traj.steps[0] == 0 and traj.steps[-1] == result.n_steps
    assert all(s % 4 == 0 for s in traj.steps[:-1])
    assert traj.positions.shape == (len(traj.steps), len(start[0]), 3) and traj.cells.shape == (len(traj.steps), 3, 3)
    assert np.allclose(traj.positions[-1], result.atoms.positions) and traj.energies[-1] == pytest.approx(result.energy)


def test_max_steps_cap_stops_unconverged_systems(trained_checkpoint):
    checkpoint, reference = trained_checkpoint
    results = relax(checkpoint.build(), well_conditioned_starts(reference, n=4), RelaxSettings(fmax=1e-6, max_steps=7))
    assert all(r.status == "max_steps" and r.n_steps == 7 for r in results)


def test_constant_volume_cell_relaxation_matches_ase(trained_checkpoint):
    checkpoint, reference = trained_checkpoint
    model = checkpoint.build()
    start = well_conditioned_starts(reference, n=2, seed=4)[1]
    (result,) = relax(model, [start], RelaxSettings(fmax=0.01, max_steps=500, cell=True, constant_volume=True))
    atoms = start.copy()
    atoms.calc = RMCalculator(model)
    optimizer = FIRE(FrechetCellFilter(atoms, constant_volume=True), logfile=None)
    optimizer.run(fmax=0.01, steps=500)
    assert result.n_steps == optimizer.nsteps
    assert result.atoms.get_volume() == pytest.approx(atoms.get_volume(), rel=1e-8)
    assert result.atoms.get_volume() == pytest.approx(start.get_volume(), rel=0.02)


def test_random_search_starts_reach_the_same_energy_distribution_as_ase(trained_checkpoint):
    """Random starts are chaotic: compare distributions of final energies, not structure by structure."""
    checkpoint, _ = trained_checkpoint
    model = checkpoint.build()
    starts = random_structures({"Si": 4}, 16, RandomSpec(volume_per_atom=20.0, volume_factor=(0.9, 1.1), min_separation=2.0), seed=5)
    ours = np.sort([r.energy / 4 for r in relax(model, starts, RelaxSettings(fmax=0.02, max_steps=800, cell=True))])
    theirs = np.sort([ase_fire(model, s, 0.02, 800, True)[0].get_potential_energy() / 4 for s in starts])
    assert abs(np.median(ours) - np.median(theirs)) < 0.05 and abs(ours[0] - theirs[0]) < 0.05


@pytest.mark.gpu
def test_relaxation_on_cuda_matches_cpu(trained_checkpoint):
    checkpoint, reference = trained_checkpoint
    starts = well_conditioned_starts(reference, n=16, seed=6)
    settings = RelaxSettings(fmax=0.01, max_steps=500, cell=True)
    cpu = relax(checkpoint.build(), starts, settings)
    gpu = relax(checkpoint.build(device="cuda"), starts, settings, device="cuda")
    for a, b in zip(cpu, gpu):
        assert a.status == b.status and abs(a.energy - b.energy) / len(a.atoms) < 1e-6
