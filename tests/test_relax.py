"""Batched FIRE against ASE's FIRE (positions only and with FrechetCellFilter) on the same RM potential.

Also: the loop with another batched optimizer, and FIRE's step as a pure function.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest
import torch
from ase import Atoms
from ase.filters import FrechetCellFilter
from ase.optimize import FIRE
from conftest import well_conditioned_starts

from atomscreen.atoms.batch import per_system
from atomscreen.atoms.random import RandomSpec, random_structures
from atomscreen.potentials.calculator import RMCalculator
from atomscreen.relax import FireParams, Optimizer, RelaxSettings, RelaxStatus, fire_init, fire_step, relax, relax_with


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
        assert np.allclose(a.atoms.positions, b.atoms.positions, atol=1e-9)
        assert np.allclose(a.atoms.cell, b.atoms.cell, atol=1e-9)


def test_exploding_system_is_flagged_and_does_not_poison_the_batch(trained_checkpoint):
    checkpoint, reference = trained_checkpoint
    rm = checkpoint.build()
    starts = well_conditioned_starts(reference, n=6, seed=2)
    poisoned_count = len(starts[3])

    def model(batch):
        energy = rm(batch)
        # a system with as many atoms as starts[3] and its first atom's number gets a NaN energy; the NaN is added
        # off the path to the positions, or autograd's 0 * NaN would give every system NaN forces
        first_numbers = batch.numbers[torch.cumsum(batch.n_atoms, 0) - batch.n_atoms]
        bad = (batch.n_atoms == poisoned_count) & (first_numbers == int(starts[3].numbers[0]))
        return energy + torch.where(bad, torch.full_like(energy, float("nan")), torch.zeros_like(energy))

    clean = relax(rm, starts[:3] + starts[4:], RelaxSettings(fmax=0.01, max_steps=300, cell=True))
    mixed = relax(model, starts, RelaxSettings(fmax=0.01, max_steps=300, cell=True))
    flagged = [r for r in mixed if r.status == "exploded"]
    assert {r.index for r in flagged} >= {3}
    for a, b in zip(clean, [r for r in mixed if r.status != "exploded"]):
        assert a.n_steps == b.n_steps and np.allclose(a.atoms.positions, b.atoms.positions)


def test_trajectory_is_subsampled_and_ends_with_the_last_frame(trained_checkpoint):
    checkpoint, reference = trained_checkpoint
    start = well_conditioned_starts(reference, n=2, seed=3)[:2]
    settings = RelaxSettings(fmax=0.001, max_steps=200, cell=True, trajectory_every=4)
    (result, _) = relax(checkpoint.build(), start, settings)
    traj = result.trajectory
    assert traj.steps[0] == 0 and traj.steps[-1] == result.n_steps
    assert all(s % 4 == 0 for s in traj.steps[:-1])
    assert traj.positions.shape == (len(traj.steps), len(start[0]), 3) and traj.cells.shape == (len(traj.steps), 3, 3)
    assert np.allclose(traj.positions[-1], result.atoms.positions) and traj.energies[-1] == pytest.approx(result.energy)


def test_max_steps_cap_stops_unconverged_systems(trained_checkpoint):
    checkpoint, reference = trained_checkpoint
    results = relax(checkpoint.build(), well_conditioned_starts(reference, n=4), RelaxSettings(fmax=1e-6, max_steps=7))
    assert all(r.status == "not_converged" and r.n_steps == 7 for r in results)


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


@pytest.mark.slow  # ~25 s; the fast suite keeps to ~5 min on 2 cores
def test_random_search_starts_reach_the_same_energy_distribution_as_ase(trained_checkpoint):
    """Random starts are chaotic: compare distributions of final energies, not structure by structure."""
    checkpoint, _ = trained_checkpoint
    model = checkpoint.build()
    spec = RandomSpec(volume_per_atom=20.0, volume_factor=(0.9, 1.1), min_separation=2.0)
    starts = random_structures({"Si": 4}, 16, spec, seed=5)
    ours = np.sort([r.energy / 4 for r in relax(model, starts, RelaxSettings(fmax=0.02, max_steps=800, cell=True))])
    theirs = np.sort([ase_fire(model, s, 0.02, 800, True)[0].get_potential_energy() / 4 for s in starts])
    assert abs(np.median(ours) - np.median(theirs)) < 0.05 and abs(ours[0] - theirs[0]) < 0.05


def test_fire_step_is_pure():
    rng = np.random.default_rng(0)
    rows_system = torch.tensor([0, 0, 0, 1, 1])
    x, f = torch.as_tensor(rng.normal(size=(5, 3))), torch.as_tensor(rng.normal(size=(5, 3)))
    state = fire_init(x, rows_system, 2)
    x1, state1 = fire_step(state, x, f, rows_system)
    x2, state2 = fire_step(state1, x1, f, rows_system)
    before = {k: v.clone() for k, v in vars(state1).items()}
    again_x, again = fire_step(state1, x1, f, rows_system)
    assert torch.equal(again_x, x2) and all(torch.equal(getattr(again, k), getattr(state2, k)) for k in before)
    assert all(torch.equal(getattr(state1, k), v) for k, v in before.items())
    assert not state.started.any() and state1.started.all() and torch.equal(state.v, torch.zeros_like(x))


@dataclass(frozen=True)
class _Damped:
    alpha: torch.Tensor = per_system()


def _harmonic(batch):
    """E = |x|^2 / 2 per atom: forces -x, minimum at the origin."""
    per_atom = batch.positions.square().sum(dim=1) / 2
    return torch.zeros(batch.n_systems, dtype=batch.dtype).index_add_(0, batch.system, per_atom)


def test_the_loop_runs_any_batched_optimizer():
    """x <- x + f/2 halves every coordinate per step, so steps and positions are known exactly, in or out of flight."""
    halve = Optimizer(init=lambda x, rows, n, params: _Damped(torch.full((n,), params, dtype=x.dtype)),
                      step=lambda s, x, f, rows, params: (x + s.alpha[rows, None] * f, s))
    rng = np.random.default_rng(1)
    starts = [Atoms("H" * k, positions=rng.uniform(-1, 1, (k, 3)), pbc=False) for k in (1, 3, 2, 5, 4)]
    settings = RelaxSettings(fmax=1e-3, max_steps=100, cell=True, max_systems=2, trajectory_every=3)
    for result, start in zip(relax_with(halve, 0.5, _harmonic, starts, settings), starts):
        x, n = start.positions.copy(), 0
        while np.linalg.norm(x, axis=1).max() >= 1e-3:
            x, n = x / 2, n + 1
        assert result.status == RelaxStatus.CONVERGED and result.n_steps == n
        assert np.array_equal(result.atoms.positions, x) and list(result.trajectory.steps) == [*range(0, n, 3), n]


def test_unknown_optimizer_is_refused():
    with pytest.raises(ValueError, match="optimizer"):
        relax(_harmonic, [Atoms("H", pbc=False)], RelaxSettings(optimizer="bfgs"))
    assert RelaxSettings().fire == FireParams() and RelaxSettings().optimizer == "fire"


