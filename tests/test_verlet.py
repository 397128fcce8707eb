"""The Verlet (skin) neighbour list and the step loop checked every k steps: exact against a fresh list and
against checking every step."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from atomscreen.atoms import verlet
from atomscreen.atoms.batch import from_ase
from atomscreen.atoms.random import RandomSpec, random_structures
from atomscreen.potentials.forces import compute
from atomscreen.potentials.rm import RMConfig, RMPotential
from atomscreen.relax import RelaxSettings, relax

MOLECULE_SPEC = RandomSpec(volume_per_atom=12.0, periodic=False,
                           min_separation={"H-H": 1.0, "C-H": 0.9, "H-O": 0.9, "C-C": 1.2, "C-O": 1.2, "O-O": 1.2})


def _model():
    """bench_relax's architecture on H, C, O, last layer scaled so forces are O(1 eV/Å)."""
    torch.manual_seed(0)
    model = RMPotential(RMConfig(cutoff=4.0, l_max=2, nu_max=3, n_embedding=2, elements=(1, 6, 8)))
    with torch.no_grad():
        model.mlp[-1].weight.mul_(50.0)
    return model.double().eval()


def _mixed(n_crystals=4, n_molecules=3, seed=0):
    crystals = random_structures({"C": 8}, n_crystals,
                                 RandomSpec(volume_per_atom=5.67, volume_factor=(0.86, 1.27), min_separation=1.2),
                                 seed=seed)
    molecules = random_structures({"C": 3, "H": 6, "O": 1}, n_molecules, MOLECULE_SPEC, seed=seed + 1)
    return [s for pair in zip(crystals, molecules) for s in pair] + crystals[n_molecules:]


def test_skin_pairs_give_the_forces_of_a_fresh_list_at_every_step():
    """A random walk of atoms and cells (crystals and molecules in one batch): energies, forces and stresses from
    the reused list equal a fresh search's at every step, and the list is searched again only now and then."""
    model, rng = _model(), np.random.default_rng(3)
    structures = _mixed()
    batch = from_ase(structures)
    state = verlet.extend(verlet.VerletList.empty(model.cutoff, 0.5, "cpu", torch.float64),
                          batch.positions.shape[0], batch.n_systems)
    periodic = batch.pbc.all(dim=1)
    for step in range(40):
        state, candidates = verlet.update(state, batch)
        fresh = compute(model, batch)
        reused = compute(model, batch.with_(pairs=candidates))
        assert torch.allclose(reused.energy, fresh.energy, rtol=0, atol=1e-10), step
        assert torch.allclose(reused.forces, fresh.forces, rtol=0, atol=1e-10), step
        assert torch.allclose(reused.stress, fresh.stress, rtol=0, atol=1e-10), step
        move = torch.as_tensor(rng.normal(scale=0.03, size=batch.positions.shape))
        noise = rng.normal(scale=0.004, size=(batch.n_systems, 3, 3))
        strain = torch.eye(3, dtype=torch.float64) + torch.as_tensor(noise)
        strain = torch.where(periodic[:, None, None], strain, torch.eye(3, dtype=torch.float64))
        batch = batch.with_(positions=torch.einsum("ni,nij->nj", batch.positions + move, strain[batch.system]),
                            cell=batch.cell @ strain)
    assert batch.n_systems < state.searches < state.updates / 3  # reused, and rebuilt as the walk went on


def test_a_system_that_moves_too_far_alone_is_searched_again():
    model = _model()
    batch = from_ase(_mixed(2, 2))
    state = verlet.extend(verlet.VerletList.empty(model.cutoff, 0.4, "cpu", torch.float64),
                          batch.positions.shape[0], batch.n_systems)
    state, _ = verlet.update(state, batch)
    assert state.searches == 4
    jump = batch.positions.clone()
    jump[batch.system == 1] += torch.tensor([0.21, 0.0, 0.0], dtype=torch.float64) * torch.arange(
        int((batch.system == 1).sum()), dtype=torch.float64)[:, None] / 10  # relative moves up to ~0.2 Å: within
    state, _ = verlet.update(state, batch.with_(positions=jump))
    assert state.searches == 4
    jump[batch.system == 2] += 0.25  # a rigid shift counts too (the bound is not translation-aware): 2 x 0.25 > 0.4
    state, candidates = verlet.update(state, batch.with_(positions=jump))
    assert state.searches == 5
    fresh = compute(model, batch.with_(positions=jump))
    reused = compute(model, batch.with_(positions=jump, pairs=candidates))
    assert torch.allclose(reused.forces, fresh.forces, rtol=0, atol=1e-10)


def _same(a, b, atol):
    assert [r.n_steps for r in a] == [r.n_steps for r in b]
    assert [r.status for r in a] == [r.status for r in b]
    for x, y in zip(a, b):
        assert abs(x.energy - y.energy) <= atol and abs(x.fmax - y.fmax) <= atol
        assert np.allclose(x.atoms.positions, y.atoms.positions, rtol=0, atol=atol)
        assert np.allclose(x.atoms.cell.array, y.atoms.cell.array, rtol=0, atol=atol)
        assert np.array_equal(x.trajectory.steps, y.trajectory.steps)
        assert np.allclose(x.trajectory.energies, y.trajectory.energies, rtol=0, atol=atol)


@pytest.mark.parametrize("k", [3, 10])
def test_checking_every_k_steps_gives_the_results_of_checking_every_step(k):
    """Crystals (cell relaxed) and molecules in one batch, refilled in flight: the same steps, energies, structures
    and trajectory frames whether the host looks every step or every k steps."""
    model, structures = _model(), _mixed(5, 3)
    base = RelaxSettings(fmax=0.05, max_steps=60, cell=True, trajectory_every=4, max_systems=5)
    every_step = relax(model, structures, base)
    every_k = relax(model, structures, RelaxSettings(**{**vars(base), "check_every": k}))
    _same(every_step, every_k, 1e-12)
    assert len({r.n_steps for r in every_step}) > 2 and any(r.converged for r in every_step)


def test_the_skin_changes_no_relaxation():
    model, structures = _model(), _mixed(4, 3)
    stats: dict = {}
    with_skin = relax(model, structures, RelaxSettings(fmax=0.05, max_steps=60, cell=True, trajectory_every=5),
                      stats=stats)
    without = relax(model, structures, RelaxSettings(fmax=0.05, max_steps=60, cell=True, trajectory_every=5, skin=0))
    _same(with_skin, without, 1e-9)
    assert 0 < stats["searches"] < stats["evaluations"] / 2


def test_float32_relaxations_reach_the_float64_minima(trained_checkpoint):
    """Well-conditioned starts (rattled known crystals and molecules, cells relaxed): float32 throughout (model,
    positions, FIRE state) ends at the float64 minima."""
    from conftest import well_conditioned_starts

    checkpoint, reference = trained_checkpoint
    starts = well_conditioned_starts(reference, n=12, seed=4)
    settings = RelaxSettings(fmax=0.01, max_steps=500, cell=True, trajectory_every=0, check_every=5)
    double = relax(checkpoint.build(), starts, settings, dtype=torch.float64)
    single = relax(checkpoint.build(dtype=torch.float32), starts, settings, dtype=torch.float32)
    assert all(r.converged for r in double) and all(r.converged for r in single)
    for a, b in zip(double, single):
        assert abs(a.energy - b.energy) / len(a.atoms) < 1e-4
        assert np.abs(a.atoms.positions - b.atoms.positions).max() < 0.02
        assert np.abs(a.atoms.cell.array - b.atoms.cell.array).max() < 0.02


def test_the_memory_estimate_scales_with_the_batch_and_refuses_what_cannot_fit():
    from atomscreen.relax.memory import DeviceMemoryError, estimate, max_systems, saved_bytes

    model, cells = _model(), _mixed(4, 0)
    one = saved_bytes(model, cells[:2], "cpu", torch.float64, True)
    two = saved_bytes(model, cells[:2] * 2, "cpu", torch.float64, True)
    assert one > 0 and abs(two / one - 2) < 0.05  # activations grow with the systems in the batch
    est = estimate(model, cells, budget_bytes=10**9)
    all_four = saved_bytes(model, cells, "cpu", torch.float64, True)
    assert est.bytes_per_atom >= 2 * all_four / 32  # twice the saved bytes per atom (the backward pass), and the rows
    roomy = max_systems(model, cells, budget_bytes=10**9)
    assert roomy > 8 and max_systems(model, cells, budget_bytes=10**9 // 4) == pytest.approx(roomy / 4, rel=0.01)
    assert max_systems(model, cells, budget_bytes=10**9, cap=7) == 7
    with pytest.raises(DeviceMemoryError, match=r"structure 0 \(8 atoms\) needs about .* GiB"):
        max_systems(model, cells, budget_bytes=int(est.bytes_per_atom * 4))


def test_max_systems_zero_sizes_the_batch_from_memory():
    model, cells = _model(), _mixed(3, 2)
    auto = relax(model, cells, RelaxSettings(fmax=0.05, max_steps=30, cell=True, max_systems=0))
    fixed = relax(model, cells, RelaxSettings(fmax=0.05, max_steps=30, cell=True))
    _same(auto, fixed, 1e-12)
