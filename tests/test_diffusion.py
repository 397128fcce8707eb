"""The diffusion core: schedule against its closed form and the spec's table, forward process, the denoiser's
equivariance and invariances (float64), batched samplers."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.spatial.transform import Rotation

from atomscreen.diffusion.forward import centre, noised
from atomscreen.diffusion.painn import Denoiser, DenoiserConfig
from atomscreen.diffusion.sample import sample
from atomscreen.diffusion.schedule import polynomial_schedule

# sigma_t and sqrt(abar_t) of polynomial_2, T = 1000, s = 1e-5 (design/diffusion-spec.md §6.1, computed with the
# EDM/MoreRed formula)
SPEC_TABLE = {1: (0.0035, 1.0000), 50: (0.0707, 0.9975), 100: (0.1411, 0.9900), 200: (0.2800, 0.9600),
              500: (0.6614, 0.7500), 1000: (1.0000, 0.0032)}


@pytest.mark.parametrize("t", [1, 50, 100, 200, 500, 1000])
def test_schedule_matches_the_closed_form_and_the_spec_table(t):
    schedule = polynomial_schedule(1000, 1e-5)
    s = 1e-5
    closed = (1 - 2 * s) * (1 - (t / 1000) ** 2) ** 2 + s
    if t == 1000:  # the step-ratio clip (>= 0.001) replaces the last ratio 0 by 0.001
        closed = (1 - 2 * s) * 0.001 * (1 - (999 / 1000) ** 2) ** 2 + s
    assert schedule.alpha_bar[t].item() == pytest.approx(closed, rel=1e-12, abs=1e-15)
    sigma, sqrt_abar = SPEC_TABLE[t]
    assert schedule.sigma[t].item() == pytest.approx(sigma, abs=5e-5)
    assert schedule.sqrt_alpha_bar[t].item() == pytest.approx(sqrt_abar, abs=5e-5)


def test_schedule_betas_and_posterior_variance_follow_from_alpha_bar():
    schedule = polynomial_schedule()
    abar = schedule.alpha_bar.numpy()
    assert np.allclose(np.cumprod(1 - schedule.beta.numpy()[1:]) * abar[0], abar[1:], rtol=1e-10)
    t = 300
    expected = (1 - abar[t - 1]) / (1 - abar[t]) * (1 - abar[t] / abar[t - 1])
    assert schedule.posterior_variance[t].item() == pytest.approx(expected, rel=1e-12)
    assert schedule.alpha_bar.dtype == torch.float64 and (np.diff(abar) < 0).all()


def _molecules(sizes, seed=0):
    g = torch.Generator().manual_seed(seed)
    mol = torch.repeat_interleave(torch.arange(len(sizes)), torch.tensor(sizes))
    x = torch.randn(len(mol), 3, generator=g, dtype=torch.float64) * 1.5
    species = torch.randint(0, 5, (len(mol),), generator=g)
    return species, x, mol


def test_forward_samples_have_zero_centre_of_geometry_per_molecule():
    schedule = polynomial_schedule()
    species, x0, mol = _molecules([5, 9, 3, 12])
    x0 = x0 + torch.tensor([3.0, -2.0, 7.0], dtype=torch.float64)
    t = torch.tensor([1, 250, 999, 1000])
    x_t, eps = noised(x0, t, mol, schedule, generator=torch.Generator().manual_seed(1))
    for a in (x_t, eps):
        means = torch.zeros(4, 3, dtype=torch.float64).index_add_(0, mol, a)
        assert means.abs().max().item() < 1e-12
    # at t = 1000 the sample is nearly pure noise: sqrt(abar) = 0.0032
    last = mol == 3
    assert torch.allclose(x_t[last], (schedule.sigma[1000] * eps[last]) + schedule.sqrt_alpha_bar[1000]
                          * centre(x0, mol, 4)[last], atol=1e-12)



@pytest.fixture(scope="module")
def model64():
    torch.manual_seed(3)
    model = Denoiser(DenoiserConfig(features=16, interactions=2, radial=8)).double().eval()
    for p in model.parameters():  # non-trivial weights everywhere (some start at zero)
        p.data.add_(0.1 * torch.randn_like(p))
    model.noise_head[-1].W1.weight.data *= 1e4  # predicted noise of order 1 (the output is linear in this layer)
    return model


def test_rotating_and_translating_rotates_the_noise_and_keeps_the_time(model64):
    species, x, mol = _molecules([6, 4, 11], seed=2)
    time = torch.tensor([0.1, 0.5, 0.9], dtype=torch.float64)
    eps, tau = model64(species, x, mol, 3, time=time)
    R = torch.as_tensor(Rotation.random(random_state=4).as_matrix())
    eps_r, tau_r = model64(species, x @ R.T + torch.tensor([1.0, -4.0, 2.5], dtype=torch.float64), mol, 3, time=time)
    assert eps.abs().mean() > 0.1 and tau.abs().max() > 0.1
    assert torch.allclose(eps_r, eps @ R.T, atol=1e-6, rtol=0)
    assert torch.allclose(tau_r, tau, atol=1e-6, rtol=0)
    # the joint mode (time from the time head) is equivariant too
    eps_j, _ = model64(species, x, mol, 3)
    eps_jr, _ = model64(species, x @ R.T, mol, 3)
    assert torch.allclose(eps_jr, eps_j @ R.T, atol=1e-6, rtol=0)


def test_reflection_maps_the_noise_like_a_vector(model64):
    species, x, mol = _molecules([7], seed=5)
    mirror = torch.diag(torch.tensor([-1.0, 1.0, 1.0], dtype=torch.float64))
    eps, tau = model64(species, x, mol, 1, time=torch.tensor([0.3], dtype=torch.float64))
    eps_m, tau_m = model64(species, x @ mirror, mol, 1, time=torch.tensor([0.3], dtype=torch.float64))
    assert torch.allclose(eps_m, eps @ mirror, atol=1e-6) and torch.allclose(tau_m, tau, atol=1e-6)


def test_permuting_atoms_permutes_the_output(model64):
    species, x, mol = _molecules([8, 5], seed=6)
    time = torch.tensor([0.2, 0.7], dtype=torch.float64)
    eps, tau = model64(species, x, mol, 2, time=time)
    perm = torch.cat([torch.randperm(8, generator=torch.Generator().manual_seed(0)),
                      8 + torch.randperm(5, generator=torch.Generator().manual_seed(1))])
    eps_p, tau_p = model64(species[perm], x[perm], mol[perm], 2, time=time)
    assert torch.allclose(eps_p, eps[perm], atol=1e-10) and torch.allclose(tau_p, tau[perm], atol=1e-10)


def test_molecules_in_a_batch_do_not_see_each_other(model64):
    species, x, mol = _molecules([6, 9], seed=7)
    time = torch.tensor([0.4, 0.4], dtype=torch.float64)
    eps, _ = model64(species, x, mol, 2, time=time)
    first = mol == 0
    eps_alone, _ = model64(species[first], x[first], mol[first], 1, time=time[:1])
    assert torch.allclose(eps[first], eps_alone, atol=1e-12)


def _edge_list_backbone(model, species, x, mol):
    """PaiNN (Schütt et al. 2021, eqs. 7-12) read literally: a message per ordered pair within the cutoff, summed
    onto the receiving atom. The independent reference for the model's dense per-size-group evaluation."""
    i, j = (k.reshape(-1) for k in torch.meshgrid(torch.arange(len(mol)), torch.arange(len(mol)), indexing="ij"))
    d = x[i] - x[j]
    r = d.norm(dim=-1)
    keep = (mol[i] == mol[j]) & (i != j) & (r < model.config.cutoff)
    i, j, d, r = i[keep], j[keep], d[keep], r[keep]
    fcut = 0.5 * (torch.cos(math.pi * r / model.config.cutoff) + 1.0)
    s = model.embedding(species).to(x.dtype)
    v = torch.zeros(len(mol), 3, s.shape[1], dtype=x.dtype)
    for block in model.interactions:
        f = block.f
        ds, dvv, dvs = (block.phi(s)[j] * block.filter(model.radial(r)) * fcut[:, None]).split(f, dim=-1)
        s = s + torch.zeros_like(s).index_add_(0, i, ds)
        v = v + torch.zeros_like(v).index_add_(0, i, v[j] * dvv[:, None] + dvs[:, None] * (d / r[:, None])[:, :, None])
        uv, vv = block.U(v), block.V(v)
        a_vv, a_sv, a_ss = block.update(torch.cat([s, vv.pow(2).sum(1).add(1e-8).sqrt()], -1)).split(f, dim=-1)
        v = v + a_vv[:, None] * uv
        s = s + a_sv * (uv * vv).sum(1) + a_ss
    return s, v


def test_dense_size_groups_equal_the_edge_list_reading_of_painn(model64):
    species, x, mol = _molecules([6, 4, 11, 6, 4], seed=8)
    x[mol == 2] *= 3.0  # the 11-atom molecule spans more than the 5 Å cutoff: some of its pairs must drop out
    far = (x[mol == 2][:, None] - x[mol == 2][None]).norm(dim=-1) > model64.config.cutoff
    assert far.any() and (~far).sum() > 11
    s, v = model64.backbone(species, x, mol, 5)
    s_ref, v_ref = _edge_list_backbone(model64, species, x, mol)
    assert s.abs().max() > 0.1 and v.abs().max() > 0.01
    assert torch.allclose(s, s_ref, atol=1e-10) and torch.allclose(v, v_ref, atol=1e-10)


def test_unknown_element_is_named():
    model = Denoiser(DenoiserConfig(features=8, interactions=1, elements=(1, 6, 8)))
    with pytest.raises(ValueError, match=r"not \[7\]"):
        model.species(torch.tensor([1, 6, 7]))


@pytest.mark.parametrize("sampler", ["ddpm", "morered-jt"])
def test_samplers_return_centred_molecules_and_are_reproducible(model64, sampler):
    schedule = polynomial_schedule(T=20)
    species, _, mol = _molecules([4, 7, 3], seed=8)
    runs = [sample(model64, schedule, species, mol, 3, sampler=sampler, max_steps=15, record_every=5,
                   generator=torch.Generator().manual_seed(11)) for _ in range(2)]
    a, b = runs
    assert torch.equal(a.positions, b.positions) and torch.equal(a.steps, b.steps)
    means = torch.zeros(3, 3, dtype=torch.float64).index_add_(0, mol, a.positions)
    assert means.abs().max().item() < 1e-10 and torch.isfinite(a.positions).all()
    if sampler == "ddpm":
        assert a.steps.tolist() == [20, 20, 20] and a.converged.all()
    else:
        assert (a.steps <= 15).all() and a.frames[-1][0] <= 15
    assert a.frames[0][0] == 0 and len(a.frames) >= 2


def test_adaptive_sampler_stops_each_molecule_on_its_own():
    """A denoiser whose time head says 'step 0' for molecules of 3 atoms stops those at once and moves the rest."""

    class Fixed(Denoiser):
        def time(self, s):  # per-atom t/T: 0 for atoms of 3-atom molecules (set below), 0.5 elsewhere
            return self._time[-s.shape[0]:]  # molecule 0 (first) drops out of the batch once it stops

    model = Fixed(DenoiserConfig(features=8, interactions=1, radial=4)).double().eval()
    species, _, mol = _molecules([3, 5], seed=9)
    model._time = torch.where(mol == 0, 0.0, 0.5).double()
    out = sample(model, polynomial_schedule(T=10), species, mol, 2, sampler="morered-jt", max_steps=4,
                 generator=torch.Generator().manual_seed(0))
    assert out.steps.tolist() == [0, 4] and out.converged.tolist() == [True, False]
    assert out.final_time.tolist() == [0, 5]
    assert math.isfinite(out.positions.sum().item())
    # a looser stop (a documented variant): step 5 counts as arrived
    loose = sample(model, polynomial_schedule(T=10), species, mol, 2, sampler="morered-jt", max_steps=4, stop_at=5,
                   generator=torch.Generator().manual_seed(0))
    assert loose.steps.tolist() == [0, 0] and loose.converged.all()


class _Oracle(Denoiser):
    """The exact noise predictor for data that is one molecule x0 (a point mass): eps = (x_t - sqrt(abar) x0) /
    sqrt(1 - abar); reverse diffusion with it must end at x0."""

    def __init__(self, x0, schedule):
        super().__init__(DenoiserConfig(features=4, interactions=1, radial=2))
        self.x0, self.schedule = x0, schedule

    def forward(self, species, x, mol, n_mol, time=None):
        t = torch.round(time * self.schedule.T).long()[mol]
        abar = self.schedule.alpha_bar[t][:, None]
        x0 = centre(self.x0, mol, n_mol)
        return (x - abar.sqrt() * x0) / (1 - abar).sqrt(), torch.zeros(x.shape[0], dtype=x.dtype)


def test_ddpm_with_the_exact_denoiser_of_one_molecule_returns_that_molecule():
    from ase.build import molecule

    schedule = polynomial_schedule()
    water = molecule("CH3CH2OH")
    n = len(water)
    x0 = torch.as_tensor(np.tile(water.positions, (3, 1)), dtype=torch.float64)
    mol = torch.repeat_interleave(torch.arange(3), n)
    oracle = _Oracle(x0, schedule).double()
    out = sample(oracle, schedule, torch.zeros(3 * n, dtype=torch.long), mol, 3, sampler="ddpm",
                 generator=torch.Generator().manual_seed(0))
    assert (out.positions - centre(x0, mol, 3)).abs().max().item() < 0.02  # sigma_1 = 0.0035 Å


def test_morered_as_takes_the_step_from_the_separate_time_model(model64):
    """AS: a time model that says 'step 0' everywhere stops every molecule before its first step, whatever the
    denoiser's own time head says; without a time model AS is refused."""

    class Done(Denoiser):
        def time(self, s):
            return torch.zeros(s.shape[0], dtype=s.dtype)

    timer = Done(DenoiserConfig(features=8, interactions=1, radial=4)).double().eval()
    species, _, mol = _molecules([4, 6], seed=10)
    out = sample(model64, polynomial_schedule(T=10), species, mol, 2, sampler="morered-as", max_steps=5,
                 time_model=timer, generator=torch.Generator().manual_seed(0))
    assert out.steps.tolist() == [0, 0] and out.converged.all()
    with pytest.raises(ValueError, match="morered-as needs a separate time model"):
        sample(model64, polynomial_schedule(T=10), species, mol, 2, sampler="morered-as")
