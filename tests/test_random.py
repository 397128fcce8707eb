"""Random structures: constraints met, reproducible per seed, clear failure when impossible."""

from __future__ import annotations

import numpy as np
import pytest
from ase.build import bulk
from ase.geometry import cell_to_cellpar
from ase.neighborlist import neighbor_list

from atomscreen.atoms.random import (
    RandomSpec,
    RandomStructureError,
    fit_element_volumes,
    random_structures,
    volume_per_atom,
)


def test_crystals_meet_separations_volumes_and_shape_bounds():
    spec = RandomSpec(volume_per_atom=15.0, volume_factor=(0.9, 1.1),
                      min_separation={"Li-Li": 2.2, "Li-S": 2.0, "S-S": 1.9},
                      niggli=False, max_aspect=2.0, angle_range=(60, 120))
    structures = random_structures({"Li": 4, "S": 2}, 40, spec, seed=1)
    for atoms in structures:
        assert atoms.get_chemical_formula() == "Li4S2" and atoms.pbc.all()
        assert 0.9 * 90 - 1e-9 <= atoms.get_volume() <= 1.1 * 90 + 1e-9
        lengths, angles = cell_to_cellpar(atoms.cell)[:3], cell_to_cellpar(atoms.cell)[3:]
        assert (lengths.max() / lengths.min() <= 2.0 + 1e-9
                and (angles >= 60 - 1e-9).all() and (angles <= 120 + 1e-9).all())
        i, j, d = neighbor_list("ijd", atoms, 2.3)
        symbols = np.array(atoms.get_chemical_symbols())
        need = np.array([spec.min_separation["-".join(sorted((a, b)))] for a, b in zip(symbols[i], symbols[j])])
        assert (d >= need - 1e-9).all()


def test_tiny_cells_check_periodic_images_too():
    structures = random_structures({"C": 2}, 30, RandomSpec(volume_per_atom=5.0, min_separation=1.3), seed=2)
    for atoms in structures:
        assert neighbor_list("d", atoms, 1.3).size == 0


def test_same_seed_same_structures_independent_of_request_size():
    spec = RandomSpec(volume_per_atom=6.0, volume_factor=(0.8, 1.2), min_separation=1.2)
    many = random_structures({"C": 8}, 10, spec, seed=7)
    few = random_structures({"C": 8}, 3, spec, seed=7)
    other = random_structures({"C": 8}, 3, spec, seed=8)
    for a, b in zip(few, many):
        assert np.array_equal(a.positions, b.positions) and np.array_equal(a.cell, b.cell)
    assert not np.allclose(other[0].positions, few[0].positions)


def test_molecules_sit_in_a_box_without_periodicity():
    (mol,) = random_structures({"C": 7, "H": 10, "O": 2}, 1,
                               RandomSpec(volume_per_atom=8.0, periodic=False, min_separation=0.7), seed=0)
    assert not mol.pbc.any() and len(mol) == 19
    d = mol.get_all_distances()
    assert d[np.triu_indices(19, 1)].min() >= 0.7


def test_impossible_separation_fails_naming_composition_separation_and_volume():
    spec = RandomSpec(volume_per_atom=2.0, min_separation=2.5, max_attempts=20)
    with pytest.raises(RandomStructureError) as info:
        random_structures({"C": 8}, 1, spec, seed=0)
    message = str(info.value)
    assert ("C8" in message and "2.50 Å" in message and "2.00-2.00 Å^3/atom" in message
            and "after 20 attempts" in message)


def test_element_volumes_fit_recovers_known_volumes():
    v_si, v_c = 5.43**3 / 8, 3.567**3 / 8
    additive = bulk("SiC", "zincblende", a=(4 * (v_si + v_c)) ** (1 / 3))  # volume exactly V_Si + V_C per formula unit
    structures = [bulk("Si", "diamond", a=5.43), bulk("C", "diamond", a=3.567), additive, additive * (2, 1, 1)]
    volumes = fit_element_volumes(structures)
    assert volumes["Si"] == pytest.approx(v_si, rel=1e-9) and volumes["C"] == pytest.approx(v_c, rel=1e-9)
    assert volume_per_atom({"Si": 1, "C": 1}, volumes) == pytest.approx((volumes["Si"] + volumes["C"]) / 2)
