"""Neighbour lists for a whole AtomsBatch, periodic or not, differentiable in positions and cell.

Finding pairs is discrete (no gradient): vesin per system on the CPU, or a
batched image search in torch (any device, used on GPU). Edge vectors are then
recomputed from positions, cells and integer image shifts, so autograd reaches
positions and cell through them:  r_ij = x_j - x_i + S_ij · cell.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from atomscreen.atoms.batch import AtomsBatch

MAX_CANDIDATES = 4_000_000  # pair-image candidates per chunk of the torch search (memory bound)


@dataclass
class Neighbors:
    """Directed edges i -> j (both directions present). ``shifts`` are integer image shifts [E,3]."""

    i: torch.Tensor
    j: torch.Tensor
    shifts: torch.Tensor
    vectors: torch.Tensor  # [E,3] Å, x_j - x_i + shifts · cell
    distances: torch.Tensor  # [E] Å
    sorted_by_i: bool = False  # edges come in non-decreasing i


def edge_vectors(batch: AtomsBatch, i: torch.Tensor, j: torch.Tensor, shifts: torch.Tensor) -> torch.Tensor:
    """Differentiable r_ij = x_j - x_i + S · cell[system of i]."""
    offsets = torch.einsum("ek,ekl->el", shifts.to(batch.dtype), batch.cell[batch.system[i]])
    return batch.positions[j] - batch.positions[i] + offsets


def neighbor_list(batch: AtomsBatch, cutoff: float, method: str = "auto") -> Neighbors:
    """All pairs closer than ``cutoff`` (Å) within each system, including periodic images of any order; from
    ``batch.pairs`` (a Verlet list's candidates, atoms/verlet.py) where set, else by a search."""
    if cutoff <= 0:
        raise ValueError(f"cutoff must be positive, got {cutoff}")
    presorted = False
    if batch.pairs is not None and batch.pairs.cutoff >= cutoff:
        i, j, shifts = batch.pairs.i, batch.pairs.j, batch.pairs.shifts
        with torch.no_grad():
            keep = torch.nonzero(edge_vectors(batch, i, j, shifts).square().sum(dim=1) < cutoff * cutoff).flatten()
        i, j, shifts, presorted = i[keep], j[keep], shifts[keep], batch.pairs.sorted_by_i
    else:
        i, j, shifts = find_pairs(batch, cutoff, method)
    vectors = edge_vectors(batch, i, j, shifts)
    return Neighbors(i=i, j=j, shifts=shifts, vectors=vectors, distances=torch.linalg.norm(vectors, dim=1),
                     sorted_by_i=presorted)


def find_pairs(batch: AtomsBatch, cutoff: float, method: str = "auto") -> tuple[torch.Tensor, ...]:
    """(i, j, shifts) of every pair closer than ``cutoff``: vesin per system on the CPU, the torch search elsewhere."""
    if method == "auto":
        method = "vesin" if batch.device.type == "cpu" else "torch"
    with torch.no_grad():
        if method == "vesin":
            return _pairs_vesin(batch, cutoff)
        if method == "torch":
            return _pairs_torch(batch, cutoff)
    raise ValueError(f"unknown neighbour-list method {method!r}; allowed: auto, vesin, torch")


def _pairs_vesin(batch: AtomsBatch, cutoff: float):
    from vesin import NeighborList

    finder = NeighborList(cutoff=cutoff, full_list=True)
    positions = batch.positions.detach().double().cpu().numpy()
    cells = batch.cell.detach().double().cpu().numpy()
    pbc = batch.pbc.cpu().numpy()
    bounds = np.concatenate([[0], np.cumsum(batch.n_atoms.cpu().numpy())])
    out_i, out_j, out_s = [], [], []
    for b in range(batch.n_systems):
        lo, hi = bounds[b], bounds[b + 1]
        box = cells[b] if pbc[b].any() else np.zeros((3, 3))
        i, j, s = finder.compute(points=positions[lo:hi], box=box, periodic=pbc[b].tolist(), quantities="ijS")
        out_i.append(i.astype(np.int64) + lo)
        out_j.append(j.astype(np.int64) + lo)
        out_s.append(s.astype(np.int64))
    device = batch.device
    return (
        torch.as_tensor(np.concatenate(out_i), device=device),
        torch.as_tensor(np.concatenate(out_j), device=device),
        torch.as_tensor(np.concatenate(out_s).reshape(-1, 3), device=device),
    )


def plane_spacings(cell: np.ndarray) -> np.ndarray:
    """Distances between opposite faces of a cell (Å), one per cell vector: 1 / |reciprocal vector|."""
    return 1.0 / np.linalg.norm(np.linalg.inv(cell), axis=0)  # columns of inv(cell) are reciprocal vectors


def _image_counts(batch: AtomsBatch, inverse_cell: torch.Tensor, cutoff: float) -> torch.Tensor:
    """Images needed per cell direction [B,3]: ceil(cutoff / plane spacing) along periodic directions, else 0."""
    spacing = 1.0 / torch.linalg.norm(inverse_cell, dim=1)  # as plane_spacings, batched
    counts = torch.ceil(cutoff / spacing).long()
    return torch.where(batch.pbc, counts, torch.zeros_like(counts))


def _wrapped(batch: AtomsBatch) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(inverse cells [B,3,3], integer wraps [N,3], positions wrapped into [0, 1) along periodic directions [N,3]).

    Wrapped positions need no more images than _image_counts gives.
    """
    positions, cell = batch.positions.detach(), batch.cell.detach()
    eye = torch.eye(3, dtype=batch.dtype, device=batch.device).expand_as(cell)
    inv = torch.linalg.inv(torch.where(batch.pbc.any(dim=1)[:, None, None], cell, eye))
    frac = torch.einsum("nk,nkl->nl", positions, inv[batch.system])
    wrap = torch.where(batch.pbc[batch.system], torch.floor(frac), torch.zeros_like(frac)).long()
    return inv, wrap, positions - torch.einsum("nk,nkl->nl", wrap.to(batch.dtype), cell[batch.system])


def _decode(flat: torch.Tensor, starts, first_atom, n_atoms, counts, widths, n_images):
    """Candidates numbered system by system, pair by pair, image by image -> (system, i, j, image shift)."""
    s = torch.searchsorted(starts, flat, right=True) - 1
    local = flat - starts[s]
    image = local % n_images[s]
    pair = local // n_images[s]
    i = first_atom[s] + pair // n_atoms[s]
    j = first_atom[s] + pair % n_atoms[s]
    w = widths[s]
    digits = [image // (w[:, 1] * w[:, 2]), (image // w[:, 2]) % w[:, 1], image % w[:, 2]]
    return s, i, j, torch.stack(digits, dim=1) - counts[s]


def _pairs_torch(batch: AtomsBatch, cutoff: float):
    """Batched search over all atom pairs and all needed images, chunked to bound memory."""
    device, dtype, cell = batch.device, batch.dtype, batch.cell.detach()
    n_atoms = batch.n_atoms
    first_atom = torch.cumsum(n_atoms, 0) - n_atoms
    inv, wrap, wrapped = _wrapped(batch)
    counts = _image_counts(batch, inv, cutoff)
    widths = 2 * counts + 1
    n_images = widths.prod(dim=1)
    per_system = n_atoms * n_atoms * n_images
    starts = torch.cumsum(per_system, 0) - per_system
    total = int(per_system.sum())
    out_i, out_j, out_s = [], [], []
    for chunk_start in range(0, total, MAX_CANDIDATES):
        flat = torch.arange(chunk_start, min(total, chunk_start + MAX_CANDIDATES), device=device)
        s, i, j, shift = _decode(flat, starts, first_atom, n_atoms, counts, widths, n_images)
        vec = wrapped[j] - wrapped[i] + torch.einsum("ek,ekl->el", shift.to(dtype), cell[s])
        keep = (vec.square().sum(dim=1) < cutoff * cutoff) & ((i != j) | (shift != 0).any(dim=1))
        i, j, shift = i[keep], j[keep], shift[keep]
        out_i.append(i)
        out_j.append(j)
        out_s.append(shift - wrap[j] + wrap[i])
    empty = torch.zeros(0, dtype=torch.long, device=device)
    return (
        torch.cat(out_i) if out_i else empty,
        torch.cat(out_j) if out_j else empty,
        torch.cat(out_s) if out_s else empty.reshape(0, 3),
    )
