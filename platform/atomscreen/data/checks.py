"""What every structure read from a data set must be before anything trains on it or stores it: real elements,
finite coordinates, a usable cell, no two atoms on one spot. Each failure is a DataError naming file and row."""

from __future__ import annotations

import numpy as np
from ase import Atoms

from atomscreen.data.errors import DataError

MIN_DISTANCE = 0.1  # Å: closer than this, two atoms are one position written twice (H2's bond is 0.74 Å)
MAX_CELL_LENGTH = 1e4  # Å: a longer periodic vector is a molecule written as a crystal (use pbc False)
MAX_Z = 118


def check_structure(atoms: Atoms, source: str, row: int | None) -> None:
    """Raise DataError if ``atoms`` cannot be trained on or stored (see the module docstring)."""
    if len(atoms) == 0:
        raise DataError(source, row, "a structure without atoms")
    numbers = atoms.numbers
    bad = sorted({int(z) for z in numbers if not 1 <= z <= MAX_Z})
    if bad:
        raise DataError(source, row, f"atomic number {bad[0]} is not an element (a ghost atom 'X' is 0); allowed "
                                     f"1-{MAX_Z}")
    positions, cell, pbc = atoms.positions, atoms.cell.array, atoms.pbc
    if not np.isfinite(positions).all():
        i = int(np.argwhere(~np.isfinite(positions))[0, 0])
        raise DataError(source, row, f"atom {i + 1} has a non-finite coordinate: {positions[i].tolist()}")
    if not np.isfinite(cell).all():
        raise DataError(source, row, f"the cell has non-finite entries: {cell.tolist()}")
    lengths = np.linalg.norm(cell, axis=1)
    for axis in np.flatnonzero(pbc):
        if lengths[axis] > MAX_CELL_LENGTH:
            raise DataError(source, row, f"periodic cell vector {axis + 1} is {lengths[axis]:.3g} Å long (at most "
                                         f"{MAX_CELL_LENGTH:g}); an isolated structure takes pbc false")
    if pbc.any() and _degenerate(cell, pbc, lengths):
        raise DataError(source, row, f"the cell is degenerate along its periodic directions (vectors "
                                     f"{cell[pbc].tolist()})")
    close = _closest_pair(positions, cell, pbc)
    if close is not None:
        i, j, d = close
        raise DataError(source, row, f"atoms {i + 1} and {j + 1} are {d:.3g} Å apart (less than {MIN_DISTANCE} Å: "
                                     "the same position twice?)")


def _degenerate(cell: np.ndarray, pbc: np.ndarray, lengths: np.ndarray) -> bool:
    """The periodic vectors are zero or (nearly) linearly dependent."""
    vectors = cell[pbc]
    if (lengths[pbc] < 1e-6).any():
        return True
    gram = vectors @ vectors.T / np.outer(lengths[pbc], lengths[pbc])
    return bool(np.linalg.det(gram) < 1e-8)


def _closest_pair(positions: np.ndarray, cell: np.ndarray, pbc: np.ndarray) -> tuple[int, int, float] | None:
    """The first pair closer than MIN_DISTANCE (periodic images included), or None."""
    if len(positions) < 2 and not pbc.any():
        return None
    if pbc.all() or not pbc.any():
        from vesin import NeighborList

        box = cell if pbc.all() else np.zeros((3, 3))
        i, j, d = NeighborList(cutoff=MIN_DISTANCE, full_list=False).compute(
            points=positions, box=box, periodic=bool(pbc.all()), quantities="ijd")
    else:  # partly periodic: vesin takes all-or-nothing periodicity
        from ase.neighborlist import neighbor_list

        i, j, d = neighbor_list("ijd", Atoms(positions=positions, cell=cell, pbc=pbc), MIN_DISTANCE)
    if len(d) == 0:
        return None
    k = int(np.argmin(d))
    return int(min(i[k], j[k])), int(max(i[k], j[k])), float(d[k])
