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
