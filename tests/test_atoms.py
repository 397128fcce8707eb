"""AtomsBatch conversions and batched neighbour lists, checked edge for edge against ASE."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest
import torch
from ase.build import bulk, molecule
from ase.neighborlist import neighbor_list as ase_neighbor_list
from conftest import random_systems
from pymatgen.core import Lattice, Molecule, Structure

from atomscreen.atoms import concatenate, from_ase, from_pymatgen, neighbor_list, select, to_ase, to_pymatgen
from atomscreen.atoms.batch import concatenate_systems, per_atom, per_system, select_systems, system_index


def edges_by_system(systems, nb):
    bounds = np.concatenate([[0], np.cumsum([len(a) for a in systems])])
    i, j, s = nb.i.cpu().numpy(), nb.j.cpu().numpy(), nb.shifts.cpu().numpy()
    for b, atoms in enumerate(systems):
        m = (i >= bounds[b]) & (i < bounds[b + 1])
        yield atoms, set(zip(i[m] - bounds[b], j[m] - bounds[b], map(tuple, s[m])))


@pytest.mark.parametrize("method", ["vesin", "torch"])
@pytest.mark.parametrize("cutoff", [1.5, 4.5])
def test_neighbor_list_matches_ase_edge_for_edge(method, cutoff):
    systems = random_systems(seed=int(cutoff * 10))
    nb = neighbor_list(from_ase(systems), cutoff, method=method)
    for atoms, mine in edges_by_system(systems, nb):
        i, j, s = ase_neighbor_list("ijS", atoms, cutoff)
        assert mine == set(zip(i, j, map(tuple, s)))
    reference = np.concatenate([ase_neighbor_list("d", a, cutoff) for a in systems])
    assert np.allclose(np.sort(nb.distances.numpy()), np.sort(reference))


def test_small_cell_sees_several_images_of_each_neighbour():
    atoms = bulk("Cu", "fcc", a=3.6)  # one atom, 2.5 Å nearest neighbour
    nb = neighbor_list(from_ase([atoms]), 6.0, method="torch")
    assert len(nb.i) == len(ase_neighbor_list("i", atoms, 6.0)) and len(nb.i) > 50


def test_edge_vectors_are_differentiable_in_positions_and_cell():
    atoms = bulk("Si", "diamond", a=5.43)
    atoms.rattle(0.05, seed=0)
    batch = from_ase([atoms])
    positions = batch.positions.clone().requires_grad_(True)
    cell = batch.cell.clone().requires_grad_(True)
    nb = neighbor_list(batch.with_(positions=positions, cell=cell), 3.0)
    nb.distances.sum().backward()
    assert positions.grad.abs().sum() > 0 and cell.grad.abs().sum() > 0


def test_batch_round_trips_through_ase_and_pymatgen():
    systems = [bulk("NaCl", "rocksalt", a=5.6), molecule("CH3CH2OH"), bulk("Fe", "bcc", a=2.87, cubic=True)]
    batch = from_ase(systems)
    assert batch.n_atoms.tolist() == [2, 9, 2] and batch.system.tolist() == [0, 0, 1, 1, 1, 1, 1, 1, 1, 1, 1, 2, 2]
    for a, b in zip(systems, to_ase(batch)):
        assert np.array_equal(a.numbers, b.numbers) and np.allclose(a.positions, b.positions)
        assert np.allclose(a.cell, b.cell)
        assert a.pbc.tolist() == b.pbc.tolist()
    pmg = to_pymatgen(batch)
    assert isinstance(pmg[0], Structure) and isinstance(pmg[1], Molecule)
    back = from_pymatgen([Structure(Lattice.cubic(4.0), ["Cu"], [[0, 0, 0]]), pmg[1]])
    assert back.pbc.tolist() == [[True] * 3, [False] * 3] and back.n_atoms.tolist() == [1, 9]


def test_select_and_concatenate_are_inverse():
    systems = random_systems(seed=3, n=6)
    batch = from_ase(systems)
    parts = [select(batch, torch.tensor([0, 2, 4])), select(batch, torch.tensor([1, 3, 5]))]
    joined = concatenate(parts)
    order = [0, 2, 4, 1, 3, 5]
    for k, atoms in enumerate(to_ase(joined)):
        assert np.allclose(atoms.positions, systems[order[k]].positions)


@dataclass
class Walkers:
    x: torch.Tensor = per_atom()
    system: torch.Tensor = system_index()
    label: torch.Tensor = per_system()


@dataclass
class RowState:  # no index of its own: its rows follow an index held elsewhere
    v: torch.Tensor = per_atom()
    t: torch.Tensor = per_system()


def test_select_and_concatenate_work_on_any_batched_dataclass():
    w = Walkers(x=torch.arange(6.0), system=torch.tensor([0, 0, 1, 2, 2, 2]), label=torch.tensor([10, 11, 12]))
    kept = select_systems(w, torch.tensor([True, False, True]))
    assert kept.x.tolist() == [0, 1, 3, 4, 5] and kept.system.tolist() == [0, 0, 1, 1, 1]
    assert kept.label.tolist() == [10, 12]
    joined = concatenate_systems([kept, w])
    assert joined.system.tolist() == [0, 0, 1, 1, 1, 2, 2, 3, 4, 4, 4] and joined.label.tolist() == [10, 12, 10, 11, 12]
    rows = RowState(v=torch.arange(6.0), t=torch.tensor([1.0, 2.0, 3.0]))
    assert select_systems(rows, torch.tensor([False, True, True]), w.system).v.tolist() == [2, 3, 4, 5]
    assert concatenate_systems([rows, rows]).t.tolist() == [1, 2, 3, 1, 2, 3]


def test_undeclared_fields_are_refused():
    @dataclass
    class Loose:
        x: torch.Tensor

    with pytest.raises(TypeError, match="not declared"):
        select_systems(Loose(torch.zeros(2)), torch.tensor([True]), torch.tensor([0, 0]))


def test_dtype_and_device_conversion():
    batch = from_ase([bulk("Al")], dtype=torch.float32)
    assert batch.dtype == torch.float32 and batch.to(dtype=torch.float64).dtype == torch.float64
    assert batch.to(dtype=torch.float64).numbers.dtype == torch.long


