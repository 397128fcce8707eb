"""Energy, forces and stress of any energy model by autograd (the one model contract of the engine).

A model maps an AtomsBatch to energies per system [B]. Forces are -dE/dx;
stress is (1/V) dE/d(epsilon) for a homogeneous strain epsilon applied to
positions and cell together (ASE's sign convention: positive = tensile).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from atomscreen.allocator import keep_freed_memory
from atomscreen.atoms.batch import AtomsBatch

EnergyModel = Callable[[AtomsBatch], torch.Tensor]


@dataclass
class Response:
    """energy [B] eV, forces [N,3] eV/Å, stress [B,3,3] eV/Å^3 (zero for systems that are not fully periodic)."""

    energy: torch.Tensor
    forces: torch.Tensor
    stress: torch.Tensor


def compute(model: EnergyModel, batch: AtomsBatch, *, stress: bool = True, create_graph: bool = False) -> Response:
    """Energies, forces and (optionally) stresses; ``create_graph`` keeps the graph for force/stress losses."""
    keep_freed_memory()  # once per process: the same large temporaries come back at every evaluation
    positions = batch.positions.detach().requires_grad_(True)
    strain = torch.zeros_like(batch.cell, requires_grad=stress)
    deformation = torch.eye(3, dtype=batch.dtype, device=batch.device) + strain
    strained = batch.with_(
        positions=torch.einsum("ni,nij->nj", positions, deformation[batch.system]),
        cell=torch.einsum("bij,bjk->bik", batch.cell.detach(), deformation),
    )
    energy = model(strained)
    inputs = [positions, strain] if stress else [positions]
    grads = torch.autograd.grad(energy.sum(), inputs, create_graph=create_graph)
    forces = -grads[0]
    if stress:
        periodic = batch.pbc.all(dim=1)
        volume = torch.where(periodic, batch.volume(), torch.ones_like(energy))
        sigma = torch.where(periodic[:, None, None], grads[1] / volume[:, None, None], torch.zeros_like(grads[1]))
    else:
        sigma = torch.zeros_like(batch.cell)
    if not create_graph:
        energy, forces, sigma = energy.detach(), forces.detach(), sigma.detach()
    return Response(energy=energy, forces=forces, stress=sigma)
