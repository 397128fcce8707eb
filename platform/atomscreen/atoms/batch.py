"""AtomsBatch: B structures with N atoms in total as flat tensors, on any device and dtype.

Molecules and crystals share a batch: pbc is per system, and a non-periodic
system's cell is carried along but never used for images. Any dataclass whose
fields are declared per atom, per system or as the system index (TorchSim's
SimState idea) can be subset and joined system-wise with select_systems and
concatenate_systems; AtomsBatch is one, the relaxation loop's states are others.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields, replace
from typing import Any, Sequence, TypeVar

import numpy as np
import torch
from ase import Atoms

T = TypeVar("T")
_KIND = "batched"  # field metadata key: "atom", "system" or "index"


def per_atom() -> Any:
    """A field with one entry per atom (or per row of a system's degrees of freedom), grouped system by system."""
    return field(metadata={_KIND: "atom"})


def per_system() -> Any:
    """A field with one entry per system."""
    return field(metadata={_KIND: "system"})


def system_index() -> Any:
    """The per-atom system index (0..B-1, non-decreasing): renumbered by select, offset by concatenate."""
    return field(metadata={_KIND: "index"})


def derived() -> Any:
    """An optional field derived from the others (a neighbour list): dropped (None) by select and concatenate."""
    return field(default=None, metadata={_KIND: "derived"})


def _kinds(obj) -> list[tuple[str, str]]:
    kinds = [(f.name, f.metadata.get(_KIND)) for f in fields(obj)]
    undeclared = [name for name, kind in kinds if kind is None]
    if undeclared:
        raise TypeError(
            f"{type(obj).__name__} fields {undeclared} are not declared per_atom, per_system or system_index"
        )
    return kinds


def n_systems_of(obj) -> int:
    """Number of systems of a batched dataclass: the length of its first per-system field."""
    for name, kind in _kinds(obj):
        if kind == "system":
            return getattr(obj, name).shape[0]
    raise TypeError(f"{type(obj).__name__} has no per_system field")


def select_systems(obj: T, keep: torch.Tensor, system: torch.Tensor | None = None) -> T:
    """The systems where ``keep`` [B] is True, renumbered 0..kept-1.

    Per-atom fields follow ``system`` [N], by default the object's own system_index field.
    """
    kinds = _kinds(obj)
    if system is None:
        system = next(getattr(obj, name) for name, kind in kinds if kind == "index")
    atom_keep = keep[system]
    renumber = torch.cumsum(keep.long(), 0) - 1
    out = {}
    for name, kind in kinds:
        value = getattr(obj, name)
        if kind == "derived":
            continue
        if kind == "index":
            out[name] = renumber[value[atom_keep]]
        else:
            out[name] = value[atom_keep] if kind == "atom" else value[keep]
    return type(obj)(**out)


def where_systems(mask: torch.Tensor, a: T, b: T, system: torch.Tensor | None = None) -> T:
    """Field by field, ``a``'s values for the systems where ``mask`` [B] and ``b``'s elsewhere (per-atom fields
    follow ``system`` [N], by default the object's own system_index field)."""
    kinds = _kinds(a)
    if system is None:
        system = next(getattr(a, name) for name, kind in kinds if kind == "index")
    out = {}
    for name, kind in kinds:
        x, y = getattr(a, name), getattr(b, name)
        if kind in ("index", "derived"):
            out[name] = y
            continue
        m = mask[system] if kind == "atom" else mask
        out[name] = torch.where(m.reshape(m.shape + (1,) * (x.dim() - 1)), x, y)
    return type(a)(**out)


def concatenate_systems(parts: Sequence[T]) -> T:
    """One object holding all systems of ``parts`` in order (system indices offset by the systems before)."""
    kinds = _kinds(parts[0])
    offsets = np.cumsum([0] + [n_systems_of(p) for p in parts[:-1]]) if any(k == "index" for _, k in kinds) else None
    out = {}
    for name, kind in kinds:
        if kind == "derived":
            continue
        values = [getattr(p, name) for p in parts]
        if kind == "index":
            values = [v + int(o) for v, o in zip(values, offsets)]
        out[name] = torch.cat(values)
    return type(parts[0])(**out)


@dataclass
class AtomsBatch:
    """positions [N,3] Å, numbers [N], system [N] (0..B-1, non-decreasing), cell [B,3,3] Å (rows), pbc [B,3].

    ``pairs`` (atoms.verlet.CandidatePairs), where set, holds every pair within some cutoff plus skin of this
    geometry; neighbor_list then filters it instead of searching.
    """

    positions: torch.Tensor = per_atom()
    numbers: torch.Tensor = per_atom()
    system: torch.Tensor = system_index()
    cell: torch.Tensor = per_system()
    pbc: torch.Tensor = per_system()
    pairs: Any = derived()

    @property
    def n_systems(self) -> int:
        return self.cell.shape[0]

    @property
    def n_atoms(self) -> torch.Tensor:
        """Atoms per system [B]."""
        return torch.bincount(self.system, minlength=self.n_systems)

    @property
    def device(self) -> torch.device:
        return self.positions.device

    @property
    def dtype(self) -> torch.dtype:
        return self.positions.dtype

    def volume(self) -> torch.Tensor:
        """Cell volumes [B] in Å^3 (meaningful only for periodic systems)."""
        return torch.linalg.det(self.cell).abs()

    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> AtomsBatch:
        """A copy on another device and/or float dtype (integer fields keep their dtype)."""
        return AtomsBatch(
            positions=self.positions.to(device=device, dtype=dtype),
            numbers=self.numbers.to(device=device),
            system=self.system.to(device=device),
            cell=self.cell.to(device=device, dtype=dtype),
            pbc=self.pbc.to(device=device),
            pairs=None if self.pairs is None else self.pairs.to(device),
        )

    def with_(self, **changes) -> AtomsBatch:
        """A shallow copy with some fields replaced."""
        return replace(self, **changes)


def from_ase(
    atoms_list: Sequence[Atoms], device: torch.device | str = "cpu", dtype: torch.dtype = torch.float64
) -> AtomsBatch:
    """Batch a list of ASE Atoms."""
    if len(atoms_list) == 0:
        raise ValueError("cannot batch an empty list of structures")
    if any(len(a) == 0 for a in atoms_list):
        raise ValueError("every structure needs at least one atom")
    positions = np.concatenate([a.positions for a in atoms_list])
    numbers = np.concatenate([a.numbers for a in atoms_list])
    system = np.repeat(np.arange(len(atoms_list)), [len(a) for a in atoms_list])
    cell = np.stack([a.cell.array for a in atoms_list])
    pbc = np.stack([a.pbc for a in atoms_list])
    return AtomsBatch(
        positions=torch.as_tensor(positions, dtype=dtype, device=device),
        numbers=torch.as_tensor(numbers, dtype=torch.long, device=device),
        system=torch.as_tensor(system, dtype=torch.long, device=device),
        cell=torch.as_tensor(cell, dtype=dtype, device=device),
        pbc=torch.as_tensor(pbc, dtype=torch.bool, device=device),
    )


def to_ase(batch: AtomsBatch) -> list[Atoms]:
    """Split a batch back into ASE Atoms (on the CPU, float64)."""
    positions = batch.positions.detach().cpu().double().numpy()
    numbers = batch.numbers.cpu().numpy()
    cell = batch.cell.detach().cpu().double().numpy()
    pbc = batch.pbc.cpu().numpy()
    bounds = np.concatenate([[0], np.cumsum(batch.n_atoms.cpu().numpy())])
    return [
        Atoms(numbers=numbers[lo:hi], positions=positions[lo:hi], cell=cell[b], pbc=pbc[b])
        for b, (lo, hi) in enumerate(zip(bounds[:-1], bounds[1:]))
    ]


def from_pymatgen(
    structures: Sequence, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float64
) -> AtomsBatch:
    """Batch pymatgen Structure (periodic) and Molecule (non-periodic) objects."""
    from pymatgen.io.ase import AseAtomsAdaptor

    return from_ase([AseAtomsAdaptor.get_atoms(s) for s in structures], device=device, dtype=dtype)


def to_pymatgen(batch: AtomsBatch) -> list:
    """Structures for fully periodic systems, Molecules for non-periodic ones."""
    from pymatgen.io.ase import AseAtomsAdaptor

    out = []
    for atoms in to_ase(batch):
        if atoms.pbc.all():
            out.append(AseAtomsAdaptor.get_structure(atoms))
        elif not atoms.pbc.any():
            out.append(AseAtomsAdaptor.get_molecule(atoms))
        else:
            raise ValueError(f"pymatgen has no type for partial periodicity pbc={atoms.pbc.tolist()}")
    return out


def concatenate(batches: Sequence[AtomsBatch]) -> AtomsBatch:
    """One batch holding all systems of ``batches`` in order."""
    return concatenate_systems(batches)


def select(batch: AtomsBatch, systems: torch.Tensor) -> AtomsBatch:
    """The systems whose indices are in ``systems`` (sorted ascending), renumbered 0..len-1."""
    systems = torch.as_tensor(systems, dtype=torch.long, device=batch.device)
    keep = torch.zeros(batch.n_systems, dtype=torch.bool, device=batch.device)
    keep[systems] = True
    return select_systems(batch, keep)
