"""Relaxation by reverse diffusion (MoreRed ITP / AS / JT) and diffusion polish: the shipped denoiser reads the
diffusion step of noised QM9 test molecules, leaves equilibria nearly where they are, relaxes a molecule the same alone
or in a batch, and flags a molecule whose predicted step never reaches the threshold."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from ase import Atoms
from conftest import REPO

from atomscreen.data.qm9 import read_qm9
from atomscreen.diffusion.checkpoint import DenoiserCheckpoint
from atomscreen.diffusion.data import from_atoms
from atomscreen.diffusion.forward import centre, keyed_noise, noised
from atomscreen.diffusion.painn import Denoiser, DenoiserConfig
from atomscreen.diffusion.relax import polish, predicted_step, relax
from atomscreen.diffusion.schedule import polynomial_schedule


@pytest.fixture(scope="module")
def shipped():
    checkpoint = DenoiserCheckpoint.load(REPO / "models" / "diffusion_qm9.pt")
    known = checkpoint.seen_ids()
    test = [a for a in read_qm9(limit=200, skip=60_000) if a.info["qm9_index"] not in known][:40]
    data = from_atoms(test)
    numbers, x0, mol = data.batch(range(len(data)))
    model, schedule = checkpoint.build()
    return model, schedule, model.species(numbers), centre(x0.double(), mol, len(data)), mol, len(data)


def _rmsd(a: torch.Tensor, b: torch.Tensor, mol: torch.Tensor, n_mol: int) -> np.ndarray:
    """All-atom RMSD after the Kabsch rotation, fixed atom order (ASE's minimize_rotation_and_translation)."""
    from ase.build import minimize_rotation_and_translation

    out = []
    for m in range(n_mol):
        target, moved = Atoms(positions=b[mol == m].numpy()), Atoms(positions=a[mol == m].numpy())
        minimize_rotation_and_translation(target, moved)
        out.append(np.sqrt(((moved.positions - target.positions) ** 2).sum(1).mean()))
    return np.array(out)


def test_itp_reads_the_step_a_test_molecule_was_noised_to(shipped):
    model, schedule, species, x0, mol, n = shipped
    x_t, _ = noised(x0, torch.full((n,), 250), mol, schedule, generator=torch.Generator().manual_seed(0))
    t_hat = predicted_step(model, schedule, species, x_t, mol, n)
    # tolerance from the shipped model's measured error (time MAE 43 steps on test molecules, README)
    assert abs(float(t_hat.double().median()) - 250) <= 25 and float(((t_hat - 250).abs() <= 75).double().mean()) >= 0.8
    few = mol < 12  # relax the first 12 (250 steps each)
    out = relax(model, schedule, species[few], mol[few], 12, x_t[few], method="morered-itp", seeds=0)
    assert torch.equal(out.steps, t_hat[:12]) and bool(out.converged.all())
    assert torch.equal(out.times[0], t_hat[:12]) and (out.times[out.steps, torch.arange(12)] == 0).all()
    ratio = _rmsd(out.positions, x0[few], mol[few], 12) / _rmsd(x_t[few], x0[few], mol[few], 12)
    assert np.median(ratio) < 0.9, np.median(ratio)  # closer to the reference than the input


def test_an_equilibrium_is_left_nearly_where_it_is(shipped):
    model, schedule, species, x0, mol, n = shipped
    shift = torch.tensor([2.0, -1.0, 0.5], dtype=torch.float64)
    out = relax(model, schedule, species, mol, n, x0 + shift, method="morered-itp", seeds=1)
    rmsd = _rmsd(out.positions, x0 + shift, mol, n)
    assert np.median(rmsd) < 0.03 and rmsd.max() < 0.1, (np.median(rmsd), rmsd.max())  # Å
    centre_of = torch.zeros(n, 3, dtype=torch.float64).index_add_(0, mol, out.positions)
    counts = torch.bincount(mol)[:, None]
    assert torch.allclose(centre_of / counts, shift.expand(n, 3), atol=1e-10)  # returned in the input's frame
    assert int(out.steps.max()) < 50  # an equilibrium reads as a low step


@pytest.mark.parametrize("method", ["morered-itp", "morered-as", "morered-jt"])
def test_batched_relaxation_equals_one_molecule_at_a_time(shipped, method):
    model, schedule, species, x0, mol, n = shipped
    x_t, _ = noised(x0, torch.full((n,), 150), mol, schedule, generator=torch.Generator().manual_seed(2))
    pick = mol < 5
    seeds = torch.tensor([11, 12, 13, 14, 15])
    batch = relax(model, schedule, species[pick], mol[pick], 5, x_t[pick], method=method, seeds=seeds, max_steps=40)
    for m in range(5):
        one = mol == m
        alone = relax(model, schedule, species[one], torch.zeros(int(one.sum()), dtype=torch.long), 1, x_t[one],
                      method=method, seeds=seeds[m:m + 1], max_steps=40)
        assert torch.allclose(alone.positions, batch.positions[mol[pick] == m], atol=1e-6, rtol=0)
        assert int(alone.steps[0]) == int(batch.steps[m])
    again = relax(model, schedule, species[pick], mol[pick], 5, x_t[pick], method=method, seeds=seeds, max_steps=40)
    assert torch.equal(again.positions, batch.positions)


def test_as_on_the_models_own_time_head_equals_two_separate_passes(shipped):
    """AS with the denoiser as its own time model shares one backbone pass; a copy forces the two-call path."""
    import copy

    model, schedule, species, x0, mol, n = shipped
    x_t, _ = noised(x0, torch.full((n,), 200), mol, schedule, generator=torch.Generator().manual_seed(3))
    pick = mol < 4
    shared = relax(model, schedule, species[pick], mol[pick], 4, x_t[pick], method="morered-as", seeds=5, max_steps=30)
    twice = relax(model, schedule, species[pick], mol[pick], 4, x_t[pick], method="morered-as", seeds=5, max_steps=30,
                  time_model=copy.deepcopy(model))
    assert torch.allclose(shared.positions, twice.positions, atol=1e-9, rtol=0)
    assert torch.equal(shared.steps, twice.steps) and torch.equal(shared.times, twice.times)


def test_a_molecule_that_never_reaches_the_threshold_stops_at_max_steps_and_is_flagged():
    torch.manual_seed(0)
    model = Denoiser(DenoiserConfig(features=8, interactions=1, radial=4)).double().eval()
    schedule = polynomial_schedule()
    with torch.no_grad():  # the time head reads t/T >= 1 for any geometry
        model.time_head[-1].bias.fill_(5.0)
    species = torch.tensor([1, 0, 0, 0, 1, 0, 0])
    mol = torch.tensor([0, 0, 0, 0, 1, 1, 1])
    x = torch.randn(7, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    for method in ("morered-jt", "morered-as"):
        out = relax(model, schedule, species, mol, 2, x, method=method, max_steps=25)
        assert out.steps.tolist() == [25, 25] and not bool(out.converged.any())
        assert out.final_time.tolist() == [1000, 1000] and (out.times[:25] == 1000).all()
    itp = relax(model, schedule, species, mol, 2, x, method="morered-itp", max_steps=25)
    assert itp.steps.tolist() == [25, 25] and not bool(itp.converged.any()) and itp.times[25].tolist() == [975, 975]


def test_polish_runs_exactly_the_last_n_steps(shipped):
    model, schedule, species, x0, mol, n = shipped
    few = mol < 12
    species, x0, mol, n = species[few], x0[few], mol[few], 12
    x_t, _ = noised(x0, torch.full((n,), 50), mol, schedule, generator=torch.Generator().manual_seed(3))
    out = polish(model, schedule, species, mol, n, x_t, steps=50, seeds=0, record_every=10)
    assert out.steps.tolist() == [50] * n and bool(out.converged.all())
    assert [k for k, _ in out.frames] == [0, 10, 20, 30, 40, 50]
    assert torch.equal(out.times[:, 0], torch.arange(50, -1, -1))
    assert np.median(_rmsd(out.positions, x0, mol, n)) < np.median(_rmsd(x_t, x0, mol, n))
    with pytest.raises(ValueError, match="polish steps"):
        polish(model, schedule, species, mol, n, x_t, steps=0)


def test_keyed_noise_is_standard_normal_and_depends_only_on_seed_and_step():
    mol = torch.repeat_interleave(torch.arange(3000), 8)
    eps = keyed_noise(torch.arange(3000), torch.zeros(3000, dtype=torch.long), mol, 3000)
    from scipy import stats

    first = eps[::8].reshape(-1).numpy() * np.sqrt(8 / 7)  # one atom per molecule, undoing the centring's 7/8
    assert stats.kstest(first, "norm").pvalue > 1e-3 and abs(eps.mean().item()) < 1e-12
    other = keyed_noise(torch.arange(3000), torch.ones(3000, dtype=torch.long), mol, 3000)
    assert abs(float(np.corrcoef(eps.reshape(-1).numpy(), other.reshape(-1).numpy())[0, 1])) < 0.02


def test_an_mmff_start_from_smiles_is_seeded_and_chemically_sensible():
    from atomscreen.evaluate.conformers import mmff_conformer

    a, b = mmff_conformer("CCO", seed=4), mmff_conformer("CCO", seed=4)
    assert a.get_chemical_formula() == "C2H6O" and a.info["mmff_converged"]
    assert np.array_equal(a.positions, b.positions)
    assert 1.38 < a.get_distance(1, 2) < 1.46 and 1.48 < a.get_distance(0, 1) < 1.55  # C-O and C-C, Å
    with pytest.raises(ValueError, match="cannot parse the SMILES 'C1CC'"):
        mmff_conformer("C1CC")
