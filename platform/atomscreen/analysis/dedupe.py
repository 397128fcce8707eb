"""Duplicate structures within a composition: same StructureMatcher class and nearly the same energy.

Two relaxed structures are duplicates when pymatgen's StructureMatcher fits
them (tolerances below, pymatgen's defaults) and their energies per atom differ
by at most ``energy_tol``: the same local minimum found twice. The
lowest-energy member of each group represents it. Non-periodic structures are
not compared (each is its own representative).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from ase import Atoms
from pymatgen.analysis.structure_matcher import StructureMatcher
from pymatgen.core import Structure
from pymatgen.io.ase import AseAtomsAdaptor


@dataclass(frozen=True)
class MatchSettings:
    """StructureMatcher tolerances (fractional length, site, degrees) and an energy window (eV/atom)."""

    ltol: float = 0.2
    stol: float = 0.3
    angle_tol: float = 5.0
    energy_tol: float = 0.01

    def matcher(self) -> StructureMatcher:
        return StructureMatcher(ltol=self.ltol, stol=self.stol, angle_tol=self.angle_tol, primitive_cell=True,
                                scale=True)


def representatives(
    structures: Sequence[Atoms], energies_per_atom: Sequence[float], settings: MatchSettings = MatchSettings()
) -> list[int]:
    """For each structure the index of its representative: itself when unique, else the lowest-energy match."""
    if len(structures) != len(energies_per_atom):
        raise ValueError(f"{len(energies_per_atom)} energies for {len(structures)} structures")
    matcher = settings.matcher()
    out = list(range(len(structures)))
    by_formula: dict[str, list[int]] = {}
    for i, atoms in enumerate(structures):
        if atoms.pbc.all():
            by_formula.setdefault(atoms.get_chemical_formula("hill"), []).append(i)
    for members in by_formula.values():
        members.sort(key=lambda i: (energies_per_atom[i], i))
        # each structure reduced once (Niggli cell, then primitive: what fit() would redo for every pair); only
        # primitive cells of the same size can fit (StructureMatcher without supercells)
        kept: dict[int, list[tuple[int, Structure]]] = {}  # primitive size -> representatives, ascending energy
        for i in members:
            reduced = reduce_structure(structures[i])
            same_size = kept.setdefault(len(reduced), [])
            for r, other in reversed(same_size):
                if energies_per_atom[i] - energies_per_atom[r] > settings.energy_tol:
                    break
                if matcher.fit(other, reduced, skip_structure_reduction=True):
                    out[i] = r
                    break
            else:
                same_size.append((i, reduced))
    return out


def reduce_structure(atoms: Atoms) -> Structure:
    """The Niggli-reduced primitive cell of ``atoms`` as a pymatgen Structure (StructureMatcher's own reduction)."""
    return AseAtomsAdaptor.get_structure(atoms).get_reduced_structure("niggli").get_primitive_structure()
