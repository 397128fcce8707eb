"""Batched atoms: AtomsBatch tensors, neighbour lists, random structures."""

from atomscreen.atoms.batch import AtomsBatch, concatenate, from_ase, from_pymatgen, select, to_ase, to_pymatgen
from atomscreen.atoms.neighbors import Neighbors, edge_vectors, neighbor_list

__all__ = [
    "AtomsBatch",
    "Neighbors",
    "concatenate",
    "edge_vectors",
    "from_ase",
    "from_pymatgen",
    "neighbor_list",
    "select",
    "to_ase",
    "to_pymatgen",
]
