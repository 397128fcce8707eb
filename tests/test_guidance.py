"""Energy-guided diffusion (Cho et al. 2023): guidance off is bit-identical to plain sampling, a harmonic well pulls
guided molecules towards it, the stability test accepts falling traces within the threshold and rejects rising ones,
restarts are bounded and counted, batching never changes a molecule, and an energy model that fails on one molecule
drops guidance for it alone. The line-search L-BFGS is checked against the analytic minimum of a quadratic."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

from atomscreen.diffusion.forward import centre, keyed_noise
from atomscreen.diffusion.guidance import Guide
from atomscreen.diffusion.hybrid import (
    AcceptSettings,
    HybridEnergies,
    PostRelaxSettings,
    attempt_seeds,
    generate,
    verdict,
)
from atomscreen.diffusion.hybrid_settings import GuidanceSettings
from atomscreen.diffusion.painn import Denoiser, DenoiserConfig
from atomscreen.diffusion.sample import sample
from atomscreen.diffusion.schedule import polynomial_schedule
from atomscreen.evaluate.energy_models import ase_energy, rm_energy
from atomscreen.relax.lbfgs import Evaluation, lbfgs
from atomscreen.relax.minimise import minimise

SCHEDULE = polynomial_schedule(T=40)
WATER = np.array([8, 1, 1])
METHANOL = np.array([6, 8, 1, 1, 1, 1])


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return Denoiser(DenoiserConfig(features=8, interactions=1, radial=4)).double().eval()


class _Gaussian(Denoiser):
    """The exact noise predictor for data x0 ~ N(0, s^2 I) per atom: eps = sigma_t x_t / (abar_t s^2 + sigma_t^2);
    reverse diffusion with it draws molecules of ~1 Å spread, a finite stand-in for a trained denoiser."""

    def __init__(self, spread: float = 1.0):
        super().__init__(DenoiserConfig(features=4, interactions=1, radial=2))
        self.spread = spread

    def forward(self, species, x, mol, n_mol, time=None):
        abar = SCHEDULE.alpha_bar[torch.round(time * SCHEDULE.T).long()][mol][:, None]
        return (1 - abar).sqrt() * x / (abar * self.spread ** 2 + 1 - abar), torch.zeros(x.shape[0], dtype=x.dtype)


@pytest.fixture(scope="module")
def gaussian():
    return _Gaussian().double().eval()


def _well(k: float = 2.0, centre_of=None):
    """E = k/2 sum |x_i - c_i|^2 per molecule with every atom's well at the origin (forces -k (x - c))."""

    def energy(numbers, x, mol, n_mol, keys) -> Evaluation:
        d = x if centre_of is None else x - centre_of(numbers, mol)
        e = torch.zeros(n_mol, dtype=torch.float64).index_add_(0, mol, 0.5 * k * (d * d).sum(1))
        return Evaluation(e, -k * d, [None] * n_mol)

    return energy


def _batch(molecules):
    z = torch.tensor(np.concatenate(molecules))
    mol = torch.repeat_interleave(torch.arange(len(molecules)), torch.tensor([len(m) for m in molecules]))
    return z, mol


def test_lbfgs_reaches_the_minimum_of_an_anisotropic_quadratic_with_a_falling_trace():
    stiff = torch.tensor([1.0, 10.0, 100.0], dtype=torch.float64)  # eV/Å^2 along x, y, z: condition number 100
    target = torch.randn(7, 3, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    mol = torch.tensor([0, 0, 0, 1, 1, 1, 1])

    def energy(numbers, x, m, n, keys):
        d = x - target[numbers]
        return Evaluation(torch.zeros(n, dtype=torch.float64).index_add_(0, m, 0.5 * (stiff * d * d).sum(1)),
                          -stiff * d, [None] * n)

    start = target + 0.3
    out = lbfgs(energy, torch.arange(7), start, mol, 2, fmax=1e-6, max_steps=200)
    assert bool(out.converged.all()) and torch.allclose(out.positions, target, atol=1e-7)
    assert all(np.all(np.diff(t) <= 0) and len(t) == s + 1 for t, s in zip(out.trace, out.steps.tolist()))
    assert int(out.steps.max()) < 40  # quasi-Newton: far fewer steps than FIRE on this conditioning
    fire = minimise(energy, torch.arange(7), start, mol, 2, optimizer="fire", fmax=1e-6, max_steps=2000)
    assert bool(fire.converged.all()) and int(fire.steps.min()) > int(out.steps.max())


def test_lbfgs_flags_forces_that_disagree_with_the_energy():
    def uphill(numbers, x, mol, n, keys):  # energy |x|^2 / 2 but forces pointing away from the minimum
        return Evaluation(torch.zeros(n, dtype=torch.float64).index_add_(0, mol, 0.5 * (x * x).sum(1)), x, [None] * n)

    out = lbfgs(uphill, torch.ones(2, dtype=torch.long), torch.ones(2, 3, dtype=torch.float64),
                torch.tensor([0, 0]), 1, fmax=1e-3, max_steps=10)
    assert out.errors == ["no_descent"] and not bool(out.converged[0])
    assert verdict(out.trace[0], 2, AcceptSettings(), out.errors[0]).accepted is False


def test_guidance_off_is_bit_identical_to_plain_sampling(model):
    z, mol = _batch([WATER, METHANOL, WATER])
    seeds = torch.tensor([3, 4, 5])
    x = centre(keyed_noise(seeds, torch.full((3,), -1), mol, 3), mol, 3)

    def noise(index, steps, m, n):
        return keyed_noise(seeds[index], steps, m, n)

    plain = sample(model, SCHEDULE, model.species(z), mol, 3, x=x.clone(), noise=noise)
    calls = []

    def counting(numbers, x, m, n, keys):
        calls.append(n)
        return _well()(numbers, x, m, n, keys)

    # a window that ends before t = 1 (start 0.99 of 40 steps: only t <= 0) never calls the energy model
    empty = Guide(GuidanceSettings(start=0.99), counting, z, mol, 3, SCHEDULE)
    guided_off = sample(model, SCHEDULE, model.species(z), mol, 3, x=x.clone(), noise=noise, guide=empty)
    assert torch.equal(plain.positions, guided_off.positions) and calls == []
    # the hybrid generator with every strategy off: the same molecules, seeded by attempt_seeds(seed, 0)
    out = generate(model, SCHEDULE, [WATER, METHANOL, WATER], [3, 4, 5], slots=2)
    again = sample(model, SCHEDULE, model.species(z), mol, 3, noise=lambda i, s, m, n: keyed_noise(
        attempt_seeds(torch.tensor([3, 4, 5]), torch.zeros(3, dtype=torch.long))[i], s, m, n),
        x=centre(keyed_noise(attempt_seeds(torch.tensor([3, 4, 5]), torch.zeros(3, dtype=torch.long)),
                             torch.full((3,), -1), mol, 3), mol, 3))
    assert np.array_equal(np.concatenate([h.positions for h in out]), again.positions.numpy())


@pytest.mark.parametrize("target", ["x0", "xt"])
def test_a_harmonic_well_pulls_guided_molecules_towards_it(gaussian, target):
    molecules = [METHANOL] * 6
    free = generate(gaussian, SCHEDULE, molecules, list(range(6)))
    settings = GuidanceSettings(start=0.5, every=2, iterations=10, target=target)
    guided = generate(gaussian, SCHEDULE, molecules, list(range(6)), guidance=settings,
                      energies=HybridEnergies(guidance=_well()))
    spread = lambda out: np.array([np.linalg.norm(h.positions, axis=1).mean() for h in out])  # noqa: E731
    assert np.all(spread(guided) < spread(free)), (spread(guided), spread(free))
    assert all(h.interventions == 10 and h.guidance_steps > 0 and h.guidance_dropped is None for h in guided)


def test_verdict_accepts_a_falling_trace_within_the_threshold_and_rejects_rising_or_large_drops():
    settings = AcceptSettings(threshold_mev_per_atom=25.0)
    assert verdict([-10.0, -10.05, -10.06], 3, settings).accepted  # 20 meV/atom, monotonic
    rising = verdict([-10.0, -10.01, -9.99, -10.02], 3, settings)
    assert not rising.accepted and "rose" in rising.reason
    deep = verdict([-10.0, -10.2], 3, settings)
    assert not deep.accepted and deep.drop_mev_per_atom == pytest.approx(66.667, abs=1e-2)
    assert verdict([-10.0, -10.0 + 5e-7, -10.01], 3, settings).accepted  # SCF noise below the tolerance


def test_restarts_are_bounded_counted_and_batching_changes_nothing(gaussian):
    molecules = [WATER, METHANOL, WATER, METHANOL, WATER]
    settings = AcceptSettings(threshold_mev_per_atom=25.0, max_restarts=2, steps=50)
    # a deep well: every generated molecule drops by far more than 25 meV/atom, so every attempt is rejected
    never = generate(gaussian, SCHEDULE, molecules, list(range(5)), accept=settings,
                     energies=HybridEnergies(accept=_well(k=50.0)), slots=2)
    assert [h.restarts for h in never] == [2] * 5 and not any(h.accepted for h in never)
    assert all("meV/atom" in h.verdict.reason for h in never)
    # a flat energy: every molecule is accepted at its first try
    flat = generate(gaussian, SCHEDULE, molecules, list(range(5)), accept=settings,
                    energies=HybridEnergies(accept=_well(k=0.0)), slots=3)
    assert [h.restarts for h in flat] == [0] * 5 and all(h.accepted for h in flat)
    # a well around the origin, shallow: molecules whose atoms sit far out are rejected and restarted; the result of
    # each molecule is the same with 1, 2 or 5 molecules per batch (restarts re-enter whichever batch comes next)
    runs = [generate(gaussian, SCHEDULE, molecules, list(range(5)), accept=AcceptSettings(3.0, max_restarts=3),
                     energies=HybridEnergies(accept=_well(k=0.02)), slots=slots) for slots in (1, 2, 5)]
    assert any(h.restarts > 0 for h in runs[0]) and all(h.restarts <= 3 for h in runs[0])
    for other in runs[1:]:
        assert [h.restarts for h in other] == [h.restarts for h in runs[0]]
        assert all(np.allclose(a.positions, b.positions, atol=1e-10) for a, b in zip(runs[0], other))


def test_post_relaxation_reaches_the_well_minimum_and_keeps_its_trajectory(gaussian):
    out = generate(gaussian, SCHEDULE, [METHANOL, WATER], [0, 1],
                   post_relax=PostRelaxSettings(fmax=1e-4, record_every=2),
                   energies=HybridEnergies(post_relax=_well()))
    for h in out:
        assert h.post_converged and np.abs(h.post_positions).max() < 1e-4 / 2.0 + 1e-12
        assert h.post_frames[0][0] == 0 and h.post_frames[-1][0] == h.post_steps
        assert np.array_equal(h.post_frames[0][1], h.positions) and np.all(np.diff(h.post_trace) <= 0)


def test_a_failing_energy_model_drops_guidance_for_that_molecule_only(gaussian):
    def nan_for_water(numbers, x, mol, n, keys):  # NaN energies for every 3-atom molecule
        ev = _well()(numbers, x, mol, n, keys)
        sizes = torch.bincount(mol, minlength=n)
        return Evaluation(torch.where(sizes == 3, torch.nan, ev.energy), ev.forces, ev.errors)

    out = generate(gaussian, SCHEDULE, [METHANOL, WATER, METHANOL], [0, 1, 2],
                   guidance=GuidanceSettings(start=0.5, every=2, iterations=5),
                   energies=HybridEnergies(guidance=nan_for_water))
    assert out[1].guidance_dropped == "non-finite energy or forces" and out[1].interventions == 0
    assert [h.guidance_dropped for h in (out[0], out[2])] == [None, None]
    assert out[0].interventions == out[2].interventions == 10
    # the dropped molecule continues unguided: the same as with no guidance at all
    free = generate(gaussian, SCHEDULE, [METHANOL, WATER, METHANOL], [0, 1, 2])
    assert np.array_equal(out[1].positions, free[1].positions)


def test_an_scf_that_does_not_converge_is_that_molecules_error():
    from ase.build import molecule

    water, methane = molecule("H2O"), molecule("CH4")
    z, mol = _batch([water.numbers, methane.numbers])
    x = torch.tensor(np.concatenate([water.positions, methane.positions]))
    good = ase_energy("xtb_gfn2")(z, x, mol, 2, torch.arange(2))
    assert good.errors == [None, None] and np.isfinite(good.energy.numpy()).all()
    failing = ase_energy("xtb_gfn2", {"max_iterations": 1})(z, x, mol, 2, torch.arange(2))
    assert all(e is not None for e in failing.errors) and torch.isnan(failing.energy).all()
    ff = ase_energy("xtb_gfnff")(z, x, mol, 2, torch.arange(2))
    assert ff.errors == [None, None] and abs(float(ff.energy[0]) - float(good.energy[0])) > 1.0  # a different model


def test_the_rm_energy_matches_its_ase_calculator():
    from ase.build import molecule
    from conftest import REPO

    from atomscreen.potentials.calculator import RMCalculator
    from atomscreen.potentials.train import Checkpoint

    rm = Checkpoint.load(REPO / "models" / "qm7b_like.pt").build()
    atoms = [molecule("CH3OH"), molecule("H2O")]
    z, mol = _batch([a.numbers for a in atoms])
    x = torch.tensor(np.concatenate([a.positions for a in atoms]))
    ev = rm_energy(rm)(z, x, mol, 2, torch.arange(2))
    for k, a in enumerate(atoms):
        a.calc = RMCalculator(rm)
        assert float(ev.energy[k]) == pytest.approx(a.get_potential_energy(), abs=1e-9)
        assert np.allclose(ev.forces[mol == k].numpy(), a.get_forces(), atol=1e-9)


def test_a_torch_calculator_gives_forces_inside_the_samplers_no_grad():
    pytest.importorskip("chgnet")
    from ase.build import molecule

    water = molecule("H2O")
    z, mol = _batch([water.numbers])
    with torch.no_grad():  # as inside diffusion.sample
        ev = ase_energy("chgnet")(z, torch.tensor(water.positions), mol, 1, torch.arange(1))
    assert ev.errors == [None] and torch.isfinite(ev.forces).all() and float(ev.forces.abs().max()) > 0


def test_the_rm_energy_of_atoms_out_of_each_others_reach_is_the_sum_of_free_atoms():
    """No pair within the cutoff (an early x0 estimate can be that spread out): free-atom energies, zero forces."""
    from conftest import REPO

    from atomscreen.potentials.train import Checkpoint

    rm = Checkpoint.load(REPO / "models" / "qm7b_like.pt").build()
    energy = rm_energy(rm)
    spread = torch.tensor([[0.0, 0.0, 0.0], [0.0, 0.0, 30.0]], dtype=torch.float64)
    apart = energy(torch.tensor([6, 1]), spread, torch.tensor([0, 0]), 1, torch.arange(1))
    alone = [energy(torch.tensor([z]), torch.zeros(1, 3, dtype=torch.float64), torch.tensor([0]), 1, torch.arange(1))
             for z in (6, 1)]
    assert float(apart.energy[0]) == pytest.approx(sum(float(a.energy[0]) for a in alone), abs=1e-10)
    assert float(apart.forces.abs().max()) == 0.0


CRASHING_CALCULATOR = '''
import os
import os

import numpy as np
from ase.calculators.calculator import Calculator, all_changes


class Crashing(Calculator):
    """A harmonic well at the origin that aborts the process (as libxtb's free() did) far from it."""

    implemented_properties = ["energy", "forces"]

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
        super().calculate(atoms, properties, system_changes)
        x = self.atoms.positions
        if np.abs(x).max() > 50:
            os.abort()
        self.results = {"energy": float((x ** 2).sum()), "forces": -2 * x}


def make():
    return Crashing()
'''


def test_an_isolated_calculator_that_aborts_fails_that_molecule_only(tmp_path, monkeypatch):
    """Native code that aborts the process (SIGABRT) costs one molecule's evaluation; a fresh child takes the rest."""
    (tmp_path / "crashcalc.py").write_text(CRASHING_CALCULATOR)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv("PYTHONPATH", f"{tmp_path}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
    energy = ase_energy("crashcalc:make", isolate=True)
    z, mol = _batch([np.array([1, 1]), np.array([1, 1]), np.array([1, 1])])
    x = torch.tensor([[0.1, 0, 0], [0, 0.2, 0], [60.0, 0, 0], [0, 0, 0], [0.3, 0, 0], [0, 0, 0.4]], dtype=torch.float64)
    ev = energy(z, x, mol, 3, torch.arange(3))
    assert ev.errors[0] is None and ev.errors[2] is None and "died" in ev.errors[1]
    assert ev.energy[0].item() == pytest.approx(0.05) and ev.energy[2].item() == pytest.approx(0.25)
    assert torch.isnan(ev.energy[1]) and torch.allclose(ev.forces[4:], -2 * x[4:])
    assert energy.molecule_energy.died == 1
    again = energy(z, x * torch.tensor([[1.0], [1.0], [0.0], [1.0], [1.0], [1.0]], dtype=torch.float64),
                   mol, 3, torch.arange(3))
    assert again.errors == [None, None, None] and again.energy[1].item() == 0.0
