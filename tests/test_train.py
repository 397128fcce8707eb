"""Fictitious responses follow the paper's equations; training is seeded, learns, and checkpoints round-trip."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from ase import Atoms
from ase.build import bulk, molecule

from atomscreen.atoms.batch import from_ase
from atomscreen.potentials.forces import compute
from atomscreen.potentials.responses import ResponseConfig, minimum_image, noise, noise_many, repulsion_forces
from atomscreen.potentials.rm import RMConfig
from atomscreen.potentials.train import Checkpoint, TrainConfig, train


def test_harmonic_force_is_minus_k_times_minimum_image_displacement():
    config = ResponseConfig(k=2.5, repulsion_strength=0.0, max_strain=0.0)
    atoms = bulk("Cu", "fcc", a=3.6, cubic=True)
    sample = noise(atoms, config, np.random.default_rng(0))
    displacement = minimum_image(sample.atoms.positions - atoms.positions, atoms.cell.array, atoms.pbc)
    assert np.allclose(sample.forces, -2.5 * displacement)
    assert np.linalg.norm(displacement, axis=1).max() <= config.max_displacement + 1e-12


def test_minimum_image_picks_the_nearest_periodic_image():
    cell = np.diag([3.0, 3.0, 3.0])
    assert np.allclose(minimum_image(np.array([[2.9, 0.0, -1.6]]), cell, np.array([True] * 3)), [[-0.1, 0.0, 1.4]])
    assert np.allclose(minimum_image(np.array([[2.9, 0.0, 0.0]]), cell, np.array([False] * 3)), [[2.9, 0.0, 0.0]])


def test_repulsion_matches_analytic_pair_force():
    config = ResponseConfig(repulsion_cutoff=0.7, repulsion_strength=2.0, repulsion_power=3)
    r = 0.4
    pair = Atoms("HH", positions=[[0, 0, 0], [r, 0, 0]])
    f = repulsion_forces(pair, config)
    # g(r) = m (1 - r^2/rc^2)^n ; the force on atom 0 is +dg/dr along +x (pushed away from atom 1)
    dg_dr = -2 * 2.0 * 3 * r / 0.7**2 * (1 - r**2 / 0.7**2) ** 2
    assert f[0] == pytest.approx([dg_dr, 0, 0]) and f[1] == pytest.approx([-dg_dr, 0, 0])


def test_elastic_stress_is_isotropic_hookes_law():
    config = ResponseConfig(youngs_modulus=2.0, poisson_ratio=0.3)
    uniaxial = np.diag([0.01, 0.0, 0.0])
    sigma = config.elastic_stress(uniaxial)
    lam, mu = 2.0 * 0.3 / (1.3 * 0.4), 2.0 / 2.6
    assert sigma[0, 0] == pytest.approx((lam + 2 * mu) * 0.01) and sigma[1, 1] == pytest.approx(lam * 0.01)
    shear = np.array([[0, 0.02, 0], [0.02, 0, 0], [0, 0, 0]])
    assert config.elastic_stress(shear)[0, 1] == pytest.approx(2 * mu * 0.02)


def test_ladder_noise_draws_one_level_per_structure_and_bounds_every_component():
    config = ResponseConfig(displacement="ladder", ladder=(0.25, 1.0), max_displacement=0.8, max_strain=0.0,
                            repulsion_strength=0.0)
    atoms = bulk("C", "diamond", cubic=True).repeat(3)  # 216 atoms: the largest component comes close to the level
    levels = []
    for sample in noise_many([atoms] * 40, config, 7):
        dr = minimum_image(sample.atoms.positions - atoms.positions, atoms.cell.array, atoms.pbc)
        assert np.allclose(sample.forces, -dr)
        largest = np.abs(dr).max()
        level = min((0.2, 0.8), key=lambda x: abs(x - largest))
        assert largest <= level + 1e-12 and largest > 0.97 * level
        levels.append(level)
    assert set(levels) == {0.2, 0.8}
    with pytest.raises(ValueError, match="ladder"):
        ResponseConfig(displacement="ladder", ladder=(0.5, 1.5))


def test_hydrostatic_strain_scales_the_cell_and_gives_bulk_modulus_stress():
    """An isotropic strain s with no other noise: cell x (1 + s), sigma = E s / (1 - 2 nu) on the diagonal, no
    forces."""
    config = ResponseConfig(max_displacement=0.0, max_strain=0.0, hydrostatic_strain=0.1, repulsion_strength=0.0,
                            youngs_modulus=1.0, poisson_ratio=0.3)
    atoms = bulk("C", "diamond")
    scales = []
    for sample in noise_many([atoms] * 30, config, 3):
        s = (sample.atoms.get_volume() / atoms.get_volume()) ** (1 / 3) - 1
        assert np.allclose(sample.atoms.cell.array, atoms.cell.array * (1 + s)) and abs(s) <= 0.1
        assert np.allclose(sample.stress, np.eye(3) * 1.0 * s / (1 - 2 * 0.3))
        assert np.allclose(sample.forces, 0.0)
        scales.append(s)
    assert min(scales) < -0.05 and max(scales) > 0.05


def test_molecules_get_no_strain_and_no_stress():
    sample = noise(molecule("H2O"), ResponseConfig(), np.random.default_rng(1))
    assert np.count_nonzero(sample.stress) == 0 and not sample.atoms.pbc.any()


def test_noise_is_reproducible_from_the_seed():
    structures = [bulk("Si", "diamond", a=5.43)] * 3
    a, b = noise_many(structures, ResponseConfig(), [4, 2]), noise_many(structures, ResponseConfig(), [4, 2])
    c = noise_many(structures, ResponseConfig(), [4, 3])
    assert all(np.array_equal(x.atoms.positions, y.atoms.positions) for x, y in zip(a, b))
    assert not np.allclose(a[0].atoms.positions, c[0].atoms.positions)


def tiny_training(seed: int, epochs: int = 6, validate_every: int = 1, progress=None, lr: float = 1e-2, **options):
    return train(
        [bulk("C", "diamond"), molecule("CH4")],
        RMConfig(cutoff=3.5, l_max=2, nu_max=2, n_embedding=1, n_radial=4, hidden=(8,)),
        ResponseConfig(max_displacement=0.4, max_strain=0.05),
        TrainConfig(epochs=epochs, batch_size=4, steps_per_epoch=3, seed=seed, validation_size=8, lr=lr,
                    ema_decay=0.9, validate_every=validate_every, **options),
        progress=progress,
    )


def test_warm_up_raises_the_rate_linearly_then_the_schedule_takes_over():
    rates = []
    tiny_training(0, epochs=6, warmup_epochs=2, progress=lambda epoch, record: rates.append(record["lr"]))
    assert rates[0] == pytest.approx(1e-2 * 3 / 6) and rates[1] == pytest.approx(1e-2)  # 3 of 6 warm-up steps
    assert rates[2] < 1e-2 and rates[-1] == pytest.approx(1e-2 * 0.05, rel=1e-6)  # cosine to lr_final_fraction


def test_plateau_schedule_cuts_the_rate_when_validation_stops_improving():
    rates, losses = [], []

    def seen(epoch, record):
        rates.append(record["lr"])
        losses.append(record["val_loss"])

    tiny_training(0, epochs=30, schedule="plateau", plateau_patience=1, plateau_factor=0.5, progress=seen)
    best, stale, expected = float("inf"), 0, 1e-2  # ReduceLROnPlateau's rule, replayed on the reported losses
    for loss, rate in zip(losses, rates):
        stale = 0 if loss < best * (1 - 1e-4) else stale + 1
        best = min(best, loss)
        if stale > 1:
            expected, stale = expected * 0.5, 0
        assert rate == pytest.approx(expected)
    assert rates[-1] < 1e-2


def test_best_checkpoint_keeps_the_lowest_validation_loss():
    checkpoint = tiny_training(0, epochs=12, keep="best", lr=5e-2)
    losses = [h["val_loss"] for h in checkpoint.metrics["history"]]
    assert checkpoint.metrics["best_val_loss"] == min(losses)
    assert checkpoint.metrics["best_epoch"] == 1 + losses.index(min(losses))
    final = tiny_training(0, epochs=12, lr=5e-2)
    assert (checkpoint.sha256 == final.sha256) == (checkpoint.metrics["best_epoch"] == 12)


def test_gradient_clipping_and_amsgrad_change_the_updates():
    """Adam is scale-invariant, so a clip to 1e-12 leaves only eps-sized steps: the weights stay at their start."""
    start = {k: v.clone() for k, v in tiny_training(0, epochs=1, lr=1e-12).state_dict.items()}
    clipped = tiny_training(0, epochs=2, grad_clip=1e-12).state_dict
    plain = tiny_training(0, epochs=2).state_dict
    key = "mlp.0.weight"
    assert torch.allclose(clipped[key], start[key], atol=1e-5) and not torch.allclose(plain[key], start[key], atol=1e-3)
    assert tiny_training(0, epochs=2, amsgrad=True).sha256 != tiny_training(0, epochs=2).sha256
    with pytest.raises(ValueError, match="schedule"):
        TrainConfig(schedule="step")


def test_validating_less_often_changes_no_weight_and_reports_the_latest_loss():
    every, sparse = tiny_training(0, epochs=7), tiny_training(0, epochs=7, validate_every=3)
    assert every.sha256 == sparse.sha256
    full, thin = every.metrics["history"], sparse.metrics["history"]
    for epoch in (1, 3, 6, 7):  # validated: the first, every third and the last epoch
        assert thin[epoch - 1]["val_loss"] == pytest.approx(full[epoch - 1]["val_loss"])
    assert thin[1]["val_loss"] == thin[0]["val_loss"] != full[1]["val_loss"]
    with pytest.raises(ValueError, match="validate_every"):
        TrainConfig(validate_every=0)


def test_training_is_reproducible_and_learns():
    first, again, other = tiny_training(0, epochs=40), tiny_training(0, epochs=40), tiny_training(1, epochs=40)
    assert first.sha256 == again.sha256 and first.sha256 != other.sha256
    history = first.metrics["history"]
    assert history[-1]["val_loss"] < 0.7 * history[0]["val_loss"]
    assert first.training_data["n_structures"] == 2 and first.training_data["elements"] == [1, 6]


def test_checkpoint_round_trips_through_a_file(tmp_path):
    checkpoint = tiny_training(0)
    path = tmp_path / "rm.pt"
    checkpoint.save(path)
    loaded = Checkpoint.load(path)
    assert loaded.sha256 == checkpoint.sha256 and loaded.model == checkpoint.model
    batch = from_ase([bulk("C", "diamond")])
    assert torch.allclose(compute(checkpoint.build(), batch).forces, compute(loaded.build(), batch).forces)


def test_trained_model_pulls_a_displaced_atom_back(trained_checkpoint):
    checkpoint, reference = trained_checkpoint
    model = checkpoint.build()
    atoms = reference[0].copy()
    atoms.positions[0] += [0.15, 0.0, 0.0]
    force = compute(model, from_ase([atoms])).forces[0].numpy()
    assert force[0] < 0  # restoring, as the harmonic target says


def test_virial_stress_target_is_the_strain_derivative_of_the_target_energy():
    """With virial=True, stress = (1/V) dU/d(eps) for U = k/2 sum |dr|^2 + sum_pairs g(r) at zero cell strain."""
    from ase.neighborlist import neighbor_list

    config = ResponseConfig(max_strain=0.0, virial=True, repulsion_cutoff=1.5, max_displacement=0.6)
    atoms = bulk("C", "diamond", cubic=True)
    sample = noise(atoms, config, np.random.default_rng(3))
    cell = sample.atoms.cell.array
    frac_reference = np.linalg.solve(cell.T, atoms.positions.T).T

    def energy(eps):
        deformation = np.eye(3) + eps
        strained_cell = cell @ deformation
        positions = sample.atoms.positions @ deformation
        dr = minimum_image(positions - frac_reference @ strained_cell, strained_cell, np.array([True] * 3))
        strained = sample.atoms.copy()
        strained.set_cell(strained_cell)
        strained.positions = positions
        d = neighbor_list("d", strained, config.repulsion_cutoff)
        g = config.repulsion_strength * (1 - d**2 / config.repulsion_cutoff**2) ** config.repulsion_power
        return 0.5 * config.k * (dr**2).sum() + 0.5 * g.sum()

    h = 1e-6
    for a in range(3):
        for b in range(3):
            eps = np.zeros((3, 3))
            eps[a, b] = h
            fd = (energy(eps) - energy(-eps)) / (2 * h) / sample.atoms.get_volume()
            assert fd == pytest.approx(sample.stress[a, b], abs=1e-9)


def test_supercell_for_noise_is_the_smallest_wide_enough_repeat():
    from atomscreen.potentials.responses import supercell

    primitive = bulk("C", "diamond")  # fcc primitive cell, faces 2.06 Å apart
    big = supercell(primitive, 5.0)
    assert len(big) == 2 * 27
    spacing = 1.0 / np.linalg.norm(np.linalg.inv(big.cell.array), axis=0)
    assert (spacing >= 5.0).all() and (spacing < 5.0 + 2.1).all()
    assert supercell(molecule("H2O"), 5.0) is not None and len(supercell(molecule("H2O"), 5.0)) == 3
    sample = noise(primitive, ResponseConfig(supercell_width=5.0), np.random.default_rng(0))
    assert len(sample.atoms) == 54 and sample.forces.shape == (54, 3)
