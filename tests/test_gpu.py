"""CUDA against the CPU: neighbour lists edge for edge, relaxations to the same minima, the authors' QM7b model.

Imports only torch, numpy, ase and the science core (plus what conftest needs): the device machine has no more.
"""

from __future__ import annotations

import pytest
import torch
from conftest import random_systems, well_conditioned_starts

from atomscreen.atoms import from_ase, neighbor_list
from atomscreen.relax import RelaxSettings, relax

pytestmark = pytest.mark.gpu


@pytest.mark.gpu
def test_neighbor_list_on_cuda_matches_cpu():
    systems = random_systems(seed=11)
    cpu = neighbor_list(from_ase(systems), 4.0, method="vesin")
    gpu = neighbor_list(from_ase(systems, device="cuda"), 4.0, method="torch")
    cpu_edges = {(int(i), int(j), tuple(s)) for i, j, s in zip(cpu.i, cpu.j, cpu.shifts.tolist())}
    gpu_edges = {(int(i), int(j), tuple(s)) for i, j, s in zip(gpu.i.cpu(), gpu.j.cpu(), gpu.shifts.cpu().tolist())}
    assert cpu_edges == gpu_edges


@pytest.mark.gpu
def test_relaxation_on_cuda_matches_cpu(trained_checkpoint):
    checkpoint, reference = trained_checkpoint
    starts = well_conditioned_starts(reference, n=16, seed=6)
    settings = RelaxSettings(fmax=0.01, max_steps=500, cell=True)
    cpu = relax(checkpoint.build(), starts, settings)
    gpu = relax(checkpoint.build(device="cuda"), starts, settings, device="cuda")
    for a, b in zip(cpu, gpu):
        assert a.status == b.status and abs(a.energy - b.energy) / len(a.atoms) < 1e-6


def test_the_authors_qm7b_model_gives_the_same_forces_on_cuda():
    from ase.build import molecule

    from atomscreen.potentials.forces import compute
    from atomscreen.potentials.rm import RMConfig, RMPotential

    torch.manual_seed(0)
    config = RMConfig(cutoff=4.5, l_max=3, nu_max=3, n_embedding=3, n_bessel=6, radial_mixing="per_channel",
                      bessel_trainable=True, envelope_p=2, hidden=(24, 12), linear_readout=True)
    model = RMPotential(config).double()
    molecules = [molecule(name) for name in ("CH3CH2OH", "C6H6", "CH3COOH")]
    cpu = compute(model, from_ase(molecules, dtype=torch.float64))
    gpu = compute(model.to("cuda"), from_ase(molecules, device="cuda", dtype=torch.float64))
    assert torch.allclose(gpu.forces.cpu(), cpu.forces, atol=1e-9) and torch.allclose(gpu.energy.cpu(), cpu.energy)


@pytest.mark.gpu
def test_the_denoiser_on_cuda_matches_cpu_and_trains_with_bf16_autocast():
    """The same weights give the same noise and time on CUDA as on the CPU (float32), and a few training steps under
    bf16 autocast on CUDA run and lower nothing to NaN (one code path for both devices)."""
    from atomscreen.diffusion.data import MoleculeSet, split
    from atomscreen.diffusion.painn import Denoiser, DenoiserConfig
    from atomscreen.diffusion.train import DenoiserTraining, train_denoiser

    torch.manual_seed(0)
    model = Denoiser(DenoiserConfig(features=16, interactions=2, radial=8)).eval()
    g = torch.Generator().manual_seed(1)
    mol = torch.repeat_interleave(torch.arange(3), torch.tensor([5, 9, 7]))
    x = torch.randn(21, 3, generator=g) * 1.3
    species = torch.randint(0, 5, (21,), generator=g)
    time = torch.tensor([0.2, 0.5, 0.9])
    with torch.no_grad():
        eps, tau = model(species, x, mol, 3, time=time)
        cuda = model.to("cuda")
        eps_c, tau_c = cuda(species.cuda(), x.cuda(), mol.cuda(), 3, time=time.cuda())
    assert torch.allclose(eps, eps_c.cpu(), atol=1e-4) and torch.allclose(tau, tau_c.cpu(), atol=1e-4)
    numbers = torch.tensor([6, 1, 1, 1, 1] * 40).numpy()
    data = MoleculeSet(numbers, (torch.randn(200, 3, generator=g) * 1.0).double().numpy(),
                       torch.full((40,), 5).numpy(), torch.arange(40).numpy())
    checkpoint = train_denoiser(data, split(40, 30, 5, 0), DenoiserConfig(features=16, interactions=1, radial=8),
                                DenoiserTraining(steps=10, batch_size=8, validate_every=5, validation_size=5,
                                                 device="cuda", amp=True))
    assert checkpoint.metrics["skipped_steps"] == 0
    assert all(torch.isfinite(v).all() for v in checkpoint.state_dict.values())


def test_morered_relaxation_on_cuda_matches_cpu():
    """Keyed noise is the same on both devices, so a relaxation is too (up to float32 network rounding)."""
    from atomscreen.diffusion.forward import keyed_noise, noised
    from atomscreen.diffusion.painn import Denoiser, DenoiserConfig
    from atomscreen.diffusion.relax import relax
    from atomscreen.diffusion.schedule import polynomial_schedule

    mol = torch.tensor([0] * 7 + [1] * 5)
    seeds, steps = torch.tensor([3, 9]), torch.tensor([0, 17])
    assert torch.equal(keyed_noise(seeds, steps, mol, 2), keyed_noise(seeds.cuda(), steps.cuda(), mol.cuda(), 2).cpu())
    torch.manual_seed(0)
    model = Denoiser(DenoiserConfig(features=16, interactions=2, radial=8)).eval()
    schedule = polynomial_schedule()
    species = torch.tensor([1, 0, 0, 2, 0, 0, 0, 1, 1, 0, 0, 0])
    x0 = torch.randn(12, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    x_t, _ = noised(x0, torch.tensor([80, 80]), mol, schedule, generator=torch.Generator().manual_seed(2))
    cpu = relax(model, schedule, species, mol, 2, x_t, method="morered-itp", seeds=5, max_steps=100)
    gpu = relax(model.to("cuda"), schedule, species.cuda(), mol.cuda(), 2, x_t.cuda(), method="morered-itp", seeds=5,
                max_steps=100)
    assert torch.equal(cpu.steps, gpu.steps.cpu())
    assert torch.allclose(cpu.positions, gpu.positions.cpu(), atol=1e-4)


def test_rm_guided_generation_on_cuda_matches_cpu():
    """Guidance, accept/reject and post-relaxation on the shipped RM potential, batched on CUDA: the same restarts and
    nearly the same molecules as on the CPU (keyed noise is device-independent)."""
    from pathlib import Path

    import numpy as np

    from atomscreen.diffusion.hybrid import HybridEnergies, generate
    from atomscreen.diffusion.hybrid_settings import AcceptSettings, GuidanceSettings, PostRelaxSettings
    from atomscreen.diffusion.painn import Denoiser, DenoiserConfig
    from atomscreen.diffusion.schedule import polynomial_schedule
    from atomscreen.evaluate.energy_models import rm_energy
    from atomscreen.potentials.train import Checkpoint

    checkpoint = Checkpoint.load(Path(__file__).resolve().parents[1] / "models" / "qm7b_like.pt")
    torch.manual_seed(0)
    model = Denoiser(DenoiserConfig(features=16, interactions=2, radial=8)).double().eval()
    schedule = polynomial_schedule(T=100)
    molecules = [np.array([6, 8, 1, 1, 1, 1]), np.array([6, 6, 8, 1, 1, 1, 1, 1, 1])] * 2
    kw = dict(guidance=GuidanceSettings(start=0.5, every=5, iterations=10), accept=AcceptSettings(max_restarts=2),
              post_relax=PostRelaxSettings(fmax=0.05, max_steps=100))
    runs = []
    for device in ("cpu", "cuda"):
        energy = rm_energy(checkpoint.build(device=device))
        runs.append(generate(model.to(device), schedule, molecules, [1, 2, 3, 4], device=device,
                             energies=HybridEnergies(energy, energy, energy), **kw))
    for a, b in zip(*runs):
        assert a.restarts == b.restarts and a.accepted == b.accepted and a.interventions == b.interventions
        assert np.allclose(a.positions, b.positions, atol=1e-5)


@pytest.mark.gpu
def test_the_memory_estimate_bounds_the_measured_cuda_peak(trained_checkpoint):
    """The batch relax/memory.py sizes for a budget peaks below that budget on the device."""
    from atomscreen.potentials.forces import compute
    from atomscreen.relax.memory import max_systems

    checkpoint, reference = trained_checkpoint
    model = checkpoint.build(device="cuda")
    starts = well_conditioned_starts(reference, n=64, seed=9)
    budget = 256 * 2**20
    n = max_systems(model, starts, device="cuda", budget_bytes=budget)
    batch = from_ase((starts * (n // len(starts) + 1))[:n], device="cuda")
    torch.cuda.synchronize()
    before = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    compute(model, batch, stress=True)
    torch.cuda.synchronize()
    assert torch.cuda.max_memory_allocated() - before <= budget
