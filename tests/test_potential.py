"""The RM pseudo potential: forces and stress equal finite differences of its energy; energy has the symmetries of
physics."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from ase.build import bulk, molecule
from ase.calculators.fd import calculate_numerical_stress
from scipy.spatial.transform import Rotation

from atomscreen.atoms import from_ase
from atomscreen.potentials.calculator import RMCalculator
from atomscreen.potentials.forces import compute
from atomscreen.potentials.rm import RMConfig, RMPotential, count_parameters

AUTHORS_QM7B = dict(n_bessel=6, radial_mixing="per_channel", bessel_trainable=True, envelope_p=2, hidden=(24, 12),
                    linear_readout=True)  # the RM authors' QM7b radial basis and readout (cace-rm qm7b/train.ipynb)


@pytest.fixture(scope="module", params=[{}, {"n_bessel": 6}, AUTHORS_QM7B],
                ids=["fixed-bessel", "mixed-radial", "per-channel-radial"])
def model(request) -> RMPotential:
    torch.manual_seed(0)
    model = RMPotential(RMConfig(cutoff=4.0, n_embedding=2, elements=(1, 6, 7, 8, 14), **request.param)).double()
    if "frequencies" in dict(model.named_parameters()):  # away from n pi / rc, so the trainable path is exercised
        with torch.no_grad():
            model.frequencies.mul_(torch.linspace(0.8, 1.1, model.frequencies.numel(), dtype=torch.float64))
    return model


def test_per_channel_mixing_with_one_matrix_everywhere_is_the_shared_mixing():
    """Mixing per l and per edge channel after the neighbour sum equals mixing the radial basis before it (linear)."""
    torch.manual_seed(0)
    shared = RMPotential(RMConfig(cutoff=4.0, n_embedding=2, n_bessel=6, elements=(1, 6, 7, 8, 14))).double()
    per_channel = RMPotential(RMConfig(cutoff=4.0, n_embedding=2, n_bessel=6, radial_mixing="per_channel",
                                       elements=(1, 6, 7, 8, 14))).double()
    state = {k: v for k, v in shared.state_dict().items() if k != "radial_mixing.weight"}
    w = shared.radial_mixing.weight.detach()
    state["channel_mixing"] = w.expand_as(per_channel.channel_mixing).clone()
    per_channel.load_state_dict(state)
    batch = from_ase(structures(), dtype=torch.float64)
    assert torch.allclose(per_channel(batch), shared(batch), rtol=1e-12, atol=1e-12)
    with torch.no_grad():
        per_channel.channel_mixing[2, 1, 0, 0] += 0.5  # l = 2, one element pair only
    assert not torch.allclose(per_channel(batch), shared(batch))


def test_the_authors_qm7b_model_has_the_papers_16490_parameters():
    """l_max 3, nu_max 3, 3 embedding channels, cutoff 4.5, 6 trainable Bessel -> 8 radial channels per l and per
    element pair, MLP [24, 12] + linear readout, elements H C N O S Cl: the paper's 16,490."""
    config = RMConfig(cutoff=4.5, l_max=3, nu_max=3, n_embedding=3, n_radial=8, elements=(1, 6, 7, 8, 16, 17),
                      **AUTHORS_QM7B)
    assert count_parameters(RMPotential(config)) == 16_490


def test_identity_radial_mixing_is_the_fixed_bessel_model():
    torch.manual_seed(0)
    fixed = RMPotential(RMConfig(cutoff=4.0, n_embedding=2, elements=(1, 6, 7, 8, 14))).double()
    mixed = RMPotential(RMConfig(cutoff=4.0, n_embedding=2, n_bessel=8, elements=(1, 6, 7, 8, 14))).double()
    state = dict(fixed.state_dict(), **{"radial_mixing.weight": torch.eye(8, dtype=torch.float64)})
    mixed.load_state_dict(state)
    batch = from_ase(structures(), dtype=torch.float64)
    assert torch.allclose(mixed(batch), fixed(batch), rtol=1e-12, atol=1e-12)
    with torch.no_grad():
        mixed.radial_mixing.weight[0, 1] = 0.5
    assert not torch.allclose(mixed(batch), fixed(batch))


def structures():
    crystal = bulk("Si", "diamond", a=5.43) * (1, 1, 2)
    crystal.set_cell(crystal.cell.array + np.array([[0, 0.2, 0], [0.1, 0, 0], [0, 0.3, 0]]), scale_atoms=True)
    crystal.rattle(0.1, seed=1)
    carbon = bulk("C", "diamond")
    carbon.rattle(0.1, seed=2)
    mol = molecule("CH3CH2OH")
    mol.rattle(0.05, seed=3)
    return [crystal, carbon, mol]


def test_forces_match_central_finite_differences(model):
    batch = from_ase(structures())
    forces = compute(model, batch).forces
    h = 1e-5
    for atom in range(batch.positions.shape[0]):
        for k in range(3):
            plus, minus = batch.positions.clone(), batch.positions.clone()
            plus[atom, k] += h
            minus[atom, k] -= h
            with torch.no_grad():
                fd = -(model(batch.with_(positions=plus)).sum() - model(batch.with_(positions=minus)).sum()) / (2 * h)
            assert abs(float(fd) - float(forces[atom, k])) <= 1e-4 * max(abs(float(fd)), 1e-2)


def test_stress_matches_finite_difference_of_strain(model):
    batch = from_ase(structures()[:2])
    response = compute(model, batch)
    h = 1e-5
    volume = batch.volume()
    for a in range(3):
        for b in range(3):
            energies = []
            for sign in (1, -1):
                deformation = torch.eye(3, dtype=torch.float64).repeat(batch.n_systems, 1, 1)
                deformation[:, a, b] += sign * h
                strained = batch.with_(
                    positions=torch.einsum("ni,nij->nj", batch.positions, deformation[batch.system]),
                    cell=torch.bmm(batch.cell, deformation),
                )
                with torch.no_grad():
                    energies.append(model(strained))
            fd = (energies[0] - energies[1]) / (2 * h) / volume
            assert torch.allclose(fd, response.stress[:, a, b], rtol=1e-4, atol=1e-8)


def test_stress_is_symmetric_and_zero_for_molecules(model):
    response = compute(model, from_ase(structures()))
    assert torch.allclose(response.stress[:2], response.stress[:2].transpose(1, 2), atol=1e-10)
    assert torch.count_nonzero(response.stress[2]) == 0


def _energy(model, atoms) -> float:
    with torch.no_grad():
        return float(model(from_ase([atoms])))


def test_energy_is_invariant_to_rotation_translation_permutation_and_image(model):
    for atoms in structures():
        e0 = _energy(model, atoms)
        rotated = atoms.copy()
        R = Rotation.random(random_state=5).as_matrix()
        rotated.positions = atoms.positions @ R.T
        rotated.cell = atoms.cell.array @ R.T
        moved = atoms.copy()
        moved.positions += np.array([0.3, -1.7, 2.2])
        order = np.random.default_rng(0).permutation(len(atoms))
        permuted = atoms[order]
        assert _energy(model, rotated) == pytest.approx(e0, rel=1e-10, abs=1e-10)
        assert _energy(model, moved) == pytest.approx(e0, rel=1e-10, abs=1e-10)
        assert _energy(model, permuted) == pytest.approx(e0, rel=1e-10, abs=1e-10)
        if atoms.pbc.all():
            imaged = atoms.copy()
            imaged.positions[0] += atoms.cell.array.T @ np.array([1, -2, 1])
            assert _energy(model, imaged) == pytest.approx(e0, rel=1e-10, abs=1e-10)
            supercell = atoms * (2, 1, 1)
            assert _energy(model, supercell) == pytest.approx(2 * e0, rel=1e-10)


def test_batched_energy_equals_one_by_one(model):
    systems = structures()
    with torch.no_grad():
        batched = model(from_ase(systems))
    assert torch.allclose(batched, torch.tensor([_energy(model, a) for a in systems], dtype=torch.float64), rtol=1e-12)


def test_parameter_count_is_in_the_papers_range():
    diamond = RMPotential(RMConfig(cutoff=4.5, l_max=3, nu_max=3, n_embedding=1, elements=(6,)))
    qm9 = RMPotential(RMConfig(cutoff=4.5, l_max=3, nu_max=3, n_embedding=3, elements=(1, 6, 7, 8, 9)))
    assert 1_500 <= count_parameters(diamond) <= 3_000  # paper: 2,137
    assert 10_000 <= count_parameters(qm9) <= 17_000  # paper: 16,490


def test_ase_calculator_gives_the_same_forces_and_stress(model):
    atoms = structures()[0]
    atoms.calc = RMCalculator(model)
    response = compute(model, from_ase([atoms]))
    assert atoms.get_potential_energy() == pytest.approx(float(response.energy[0]))
    assert np.allclose(atoms.get_forces(), response.forces.numpy())
    from ase.stress import full_3x3_to_voigt_6_stress

    assert np.allclose(atoms.get_stress(), full_3x3_to_voigt_6_stress(response.stress[0].numpy()))
    assert np.allclose(atoms.get_stress(), calculate_numerical_stress(atoms, eps=1e-5), atol=1e-7)


def test_unknown_element_is_refused_by_name(model):
    with pytest.raises(ValueError, match=r"not trained on atomic numbers \[26\]"):
        model(from_ase([bulk("Fe")]))


def _full_cartesian_descriptors(model: RMPotential, batch) -> torch.Tensor:
    """The descriptor as first written: Eq. 3 summed over every component of the full Cartesian tensors (3^l per
    rank), the reference for the symmetric-component form the model now sums."""
    from atomscreen.atoms.neighbors import neighbor_list
    from atomscreen.potentials.basis import bessel, cartesian_angular, polynomial_cutoff
    from atomscreen.potentials.rm import _sum_outer_over_neighbours

    cfg = model.config
    nb = neighbor_list(batch, cfg.cutoff)
    theta = model.embedding(batch.numbers)
    edge_type = (theta[nb.i][:, :, None] * theta[nb.j][:, None, :]).flatten(1)
    radial = bessel(nb.distances, cfg.n_bessel or cfg.n_radial, cfg.cutoff, getattr(model, "frequencies", None))
    radial = radial * polynomial_cutoff(nb.distances, cfg.cutoff, cfg.envelope_p)[:, None]
    if model.radial_mixing is not None:
        radial = model.radial_mixing(radial)
    type_radial = (edge_type[:, :, None] * radial[:, None, :]).flatten(1)
    angular = torch.cat(cartesian_angular(nb.vectors / nb.distances[:, None], cfg.l_max), dim=1)
    A_flat = _sum_outer_over_neighbours(nb.i, type_radial, angular, batch.positions.shape[0]) / cfg.avg_neighbors
    return torch.cat(model._invariants(model._per_l(A_flat, edge_type.shape[1])), dim=1)


@pytest.mark.parametrize("config", [
    RMConfig(cutoff=4.5, l_max=3, nu_max=3, n_embedding=2),
    RMConfig(cutoff=4.0, l_max=4, nu_max=3, n_embedding=2, n_bessel=6, radial_mixing="per_channel"),
    RMConfig(cutoff=4.0, l_max=2, nu_max=2, n_embedding=1),
], ids=["l3", "l4-per-channel", "l2-nu2"])
def test_symmetric_components_give_the_full_cartesian_descriptor(config):
    """Summing only the distinct monomials of each r^ (x)...(x) r^ and expanding per atom changes nothing: the
    descriptors and the forces through them equal the full 3^l form to 1e-10 (crystals and molecules, float64)."""
    torch.manual_seed(1)
    model = RMPotential(config).double()
    crystal = bulk("Si", "diamond", a=5.43, cubic=True)
    crystal.rattle(0.1, seed=2)
    batch = from_ase([crystal, molecule("CH3CH2OH"), molecule("H2O")])
    assert torch.allclose(model.descriptors(batch), _full_cartesian_descriptors(model, batch), rtol=0, atol=1e-10)
    x = batch.positions.clone().requires_grad_(True)
    ours = torch.autograd.grad(model.mlp(model.descriptors(batch.with_(positions=x))).sum(), x)[0]
    theirs = torch.autograd.grad(model.mlp(_full_cartesian_descriptors(model, batch.with_(positions=x))).sum(), x)[0]
    assert torch.allclose(ours, theirs, rtol=0, atol=1e-10)
