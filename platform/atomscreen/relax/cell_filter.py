"""Batched cell filter with ASE FrechetCellFilter's degrees of freedom and forces.

Degrees of freedom per system: atom coordinates u in the reference cell
(positions = u F^T) and the cell variable X = c log(F), where F is the
deformation gradient from the starting cell C0 (cell = C0 F^T) and c the
exp_cell_factor (the atom count). The cell force is the adjoint Frechet
derivative of expm at log F applied to the virial gradient (Tadmor et al.,
PRB 59, 235 (1999); ASE FrechetCellFilter), with virial = -V (sigma + p I).
"""

from __future__ import annotations

import torch


def deformation(cell_x: torch.Tensor, cell_factor: torch.Tensor) -> torch.Tensor:
    """F = expm(X / c)  [B,3,3]."""
    return torch.linalg.matrix_exp(cell_x / cell_factor[:, None, None])


def expm_frechet_adjoint(A: torch.Tensor, G: torch.Tensor) -> torch.Tensor:
    """The matrix D with D_mn = sum_ij L(A, E_mn)_ij G_ij, i.e. L(A^T, G), from one 6x6 block exponential."""
    At = A.transpose(1, 2)
    block = torch.zeros(A.shape[0], 6, 6, dtype=A.dtype, device=A.device)
    block[:, :3, :3] = At
    block[:, 3:, 3:] = At
    block[:, :3, 3:] = G
    return torch.linalg.matrix_exp(block)[:, :3, 3:]


def cell_forces(
    stress: torch.Tensor,
    volume: torch.Tensor,
    F: torch.Tensor,
    cell_x: torch.Tensor,
    cell_factor: torch.Tensor,
    pressure: float = 0.0,
    constant_volume: bool = False,
) -> torch.Tensor:
    """Generalised forces on the cell variables X [B,3,3] (eV/Å per ASE's scaling)."""
    eye = torch.eye(3, dtype=stress.dtype, device=stress.device)
    virial = -volume[:, None, None] * (stress + pressure * eye)
    G = virial @ torch.linalg.inv(F.transpose(1, 2))
    force = expm_frechet_adjoint(cell_x / cell_factor[:, None, None], G)
    if constant_volume:
        force = force - eye * (force.diagonal(dim1=1, dim2=2).sum(dim=1) / 3.0)[:, None, None]
    return force / cell_factor[:, None, None]
