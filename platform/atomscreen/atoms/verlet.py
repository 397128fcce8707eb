"""A Verlet (skin) neighbour list carried through a relaxation: pairs found within cutoff + skin are reused until
some atom could have come within the cutoff from outside the list, system by system.

Reuse bound (exact, no tolerance): a system's list was built at positions x0 and cell C0. Map today's positions
back into the build frame with M = C^-1 C0 (identity for a molecule): x' = x M. For any pair, r0 - r M =
(x0_j - x'_j) - (x0_i - x'_i), so |r0| <= |r| ||M||_2 + 2 max_k |x0_k - x'_k|. Every pair now closer than rc was
therefore closer than rc + skin at the build while rc ||M||_2 + 2 max|x0 - x'| < rc + skin; the system is searched
again when that fails. The forces are those of a fresh list at every step; only the search is saved.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch

from atomscreen.atoms.batch import AtomsBatch, select_systems


@dataclass(frozen=True)
class CandidatePairs:
    """Directed pairs i -> j with integer image shifts [E,3] that include every pair closer than ``cutoff`` Å in
    the batch they were made for (and others, which neighbor_list filters out)."""

    i: torch.Tensor
    j: torch.Tensor
    shifts: torch.Tensor
    cutoff: float
    sorted_by_i: bool = False  # i non-decreasing: the model's neighbour sum needs no sort

    def to(self, device) -> CandidatePairs:
        return replace(self, i=self.i.to(device), j=self.j.to(device), shifts=self.shifts.to(device))


@dataclass(frozen=True)
class VerletList:
    """Pairs within cutoff + skin for the systems of a relaxation, with the geometry each system's were found at.

    ``built`` [B] is False for systems admitted since the last update; ``searches`` counts system searches and
    ``updates`` system evaluations, so searches / updates is the rebuild fraction.
    """

    cutoff: float
    skin: float
    i: torch.Tensor  # [E] atom indices in the current batch
    j: torch.Tensor
    shifts: torch.Tensor  # [E,3]
    positions0: torch.Tensor  # [N,3] at each system's last search
    cell0: torch.Tensor  # [B,3,3]
    built: torch.Tensor  # [B]
    searches: int = 0
    updates: int = 0

    @classmethod
    def empty(cls, cutoff: float, skin: float, device, dtype) -> VerletList:
        if cutoff <= 0 or skin < 0:
            raise ValueError(f"need cutoff > 0 and skin >= 0, got cutoff={cutoff}, skin={skin}")
        long = torch.zeros(0, dtype=torch.long, device=device)
        return cls(cutoff, skin, long, long, long.reshape(0, 3), torch.zeros(0, 3, dtype=dtype, device=device),
                   torch.zeros(0, 3, 3, dtype=dtype, device=device), torch.zeros(0, dtype=torch.bool, device=device))


def extend(state: VerletList, n_atoms: int, n_systems: int) -> VerletList:
    """Room for systems appended to the batch (not yet searched)."""
    p, c = state.positions0, state.cell0
    return replace(state, positions0=torch.cat([p, p.new_zeros(n_atoms, 3)]),
                   cell0=torch.cat([c, c.new_zeros(n_systems, 3, 3)]),
                   built=torch.cat([state.built, state.built.new_zeros(n_systems)]))


def keep_systems(state: VerletList, keep: torch.Tensor, system: torch.Tensor) -> VerletList:
    """The systems where ``keep`` [B], with their pairs renumbered (``system`` [N]: each atom's system now)."""
    atom_keep = keep[system]
    new_index = torch.cumsum(atom_keep.long(), 0) - 1
    edge_keep = atom_keep[state.i]
    return replace(state, i=new_index[state.i[edge_keep]], j=new_index[state.j[edge_keep]],
                   shifts=state.shifts[edge_keep], positions0=state.positions0[atom_keep], cell0=state.cell0[keep],
                   built=state.built[keep])


def _stale(state: VerletList, batch: AtomsBatch) -> torch.Tensor:
    """Systems [B] whose list may miss a pair within the cutoff (the bound in the module docstring)."""
    periodic, partial = batch.pbc.all(dim=1), batch.pbc.any(dim=1) & ~batch.pbc.all(dim=1)
    eye = torch.eye(3, dtype=batch.dtype, device=batch.device).expand_as(batch.cell)
    usable = periodic & state.built
    inv = torch.linalg.inv(torch.where(usable[:, None, None], batch.cell.detach(), eye))
    m = torch.where(usable[:, None, None], inv @ state.cell0, eye)  # C^-1 C0 (row vectors: x' = x M)
    back = torch.einsum("nk,nkl->nl", batch.positions.detach(), m[batch.system])
    moved = torch.linalg.norm(state.positions0 - back, dim=1)
    max_moved = torch.zeros(batch.n_systems, dtype=moved.dtype, device=moved.device)
    max_moved = max_moved.scatter_reduce(0, batch.system, moved, "amax", include_self=True)
    reach = state.cutoff * torch.linalg.matrix_norm(m, ord=2) + 2 * max_moved
    return ~state.built | partial | ~(reach < state.cutoff + state.skin)


def update(state: VerletList, batch: AtomsBatch, method: str = "auto") -> tuple[VerletList, CandidatePairs]:
    """Search again the systems whose list may be stale (one host sync), keep the others' pairs; the candidate
    pairs for ``batch`` at ``state.cutoff``."""
    from atomscreen.atoms.neighbors import find_pairs

    stale = _stale(state, batch)
    n_stale = int(stale.sum())
    if n_stale:
        atom_stale = stale[batch.system]
        kept = ~atom_stale[state.i]
        sub = select_systems(batch.with_(pairs=None), stale)
        i, j, shifts = find_pairs(sub, state.cutoff + state.skin, method)
        atoms = torch.nonzero(atom_stale).flatten()  # sub's atom k is batch atom atoms[k]
        positions0 = torch.where(atom_stale[:, None], batch.positions.detach(), state.positions0)
        cell0 = torch.where(stale[:, None, None], batch.cell.detach(), state.cell0)
        i, j = torch.cat([state.i[kept], atoms[i]]), torch.cat([state.j[kept], atoms[j]])
        order = torch.argsort(i, stable=True)  # kept sorted by i (selection keeps the order), so sums need no sort
        state = replace(state, i=i[order], j=j[order], shifts=torch.cat([state.shifts[kept], shifts])[order],
                        positions0=positions0, cell0=cell0, built=torch.ones_like(state.built),
                        searches=state.searches + n_stale)
    state = replace(state, updates=state.updates + batch.n_systems)
    return state, CandidatePairs(state.i, state.j, state.shifts, state.cutoff, sorted_by_i=True)
