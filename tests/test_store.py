"""The store round-trips structures bit for bit and writes all-or-nothing, on SQLite and PostgreSQL."""

from __future__ import annotations

import numpy as np
import pytest
from ase import Atoms
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from pymatgen.core import Composition as PmgComposition
from sqlalchemy import func, select

from atomscreen import store
from atomscreen.store.arrays import decode_array, encode_array
from atomscreen.store.models import Composition, Energy, Structure, Trajectory


def random_structures(n: int, seed: int) -> list[Atoms]:
    """Periodic, partly periodic and non-periodic structures of 1-200 atoms with mixed elements."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        n_atoms = int(rng.integers(1, 201))
        numbers = rng.integers(1, 95, size=n_atoms)
        pbc = [True] * 3 if i % 3 == 0 else [False] * 3 if i % 3 == 1 else list(rng.integers(0, 2, size=3).astype(bool))
        cell = rng.normal(size=(3, 3)) * 10 if any(pbc) or i % 2 else np.zeros((3, 3))
        positions = rng.normal(size=(n_atoms, 3)) * 10
        out.append(Atoms(numbers=numbers, positions=positions, cell=cell, pbc=pbc))
    return out


def test_thousand_random_structures_round_trip_bit_identical(engine):
    originals = random_structures(1000, seed=7)
    with store.transaction(engine) as session:
        ids = store.add_structures(session, originals, origin="import")
    with store.transaction(engine) as session:
        loaded = store.structures(session, ids=ids)
    assert [a.info["structure_id"] for a in loaded] == ids
    for original, back in zip(originals, loaded):
        for name in ("numbers", "positions"):
            a, b = original.arrays[name], back.arrays[name]
            assert a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()
        assert original.cell.array.tobytes() == back.cell.array.tobytes()
        assert original.pbc.tolist() == back.pbc.tolist()


def test_composition_columns_agree_with_pymatgen(engine):
    atoms = [Atoms("Li4S2"), Atoms("C6H12O"), Atoms("SiO2SiO2"), Atoms("CH4"), Atoms("Fe")]
    with store.transaction(engine) as session:
        store.add_structures(session, atoms, origin="import")
        rows = {c.formula: c for c in session.scalars(select(Composition))}
    assert sorted(rows) == ["C6H12O", "CH4", "Fe", "Li4S2", "O4Si2"]
    for a in atoms:
        reference = PmgComposition(a.get_chemical_formula())
        row = rows[a.get_chemical_formula(mode="hill")]
        assert PmgComposition(row.reduced_formula) == PmgComposition(reference.reduced_formula)
        assert row.chemsys == reference.chemical_system
        assert row.n_atoms == len(a)


def test_energies_and_trajectories_round_trip(engine):
    rng = np.random.default_rng(1)
    atoms = random_structures(3, seed=2)
    frames = 4
    trajectories = [
        [store.TrajectoryRecord("rm_pseudo", np.arange(frames) * 10, rng.normal(size=frames), rng.random(frames),
                                rng.normal(size=(frames, len(a), 3)), rng.normal(size=(frames, 3, 3)))]
        for a in atoms
    ]
    energies = [[store.EnergyRecord("rm_pseudo", total=-5.0 * len(a), fmax=0.01, converged=True, n_steps=40)]
                for a in atoms]
    with store.transaction(engine) as session:
        ids = store.add_structures(session, atoms, origin="rss", energies=energies, trajectories=trajectories)
    with store.transaction(engine) as session:
        loaded = store.structures(session, ids=ids)
        for i, sid in enumerate(ids):
            traj = store.trajectory(session, sid)
            for name in ("steps", "energies", "fmax", "positions", "cells"):
                assert np.array_equal(getattr(traj, name), getattr(trajectories[i][0], name))
        per_atom = session.scalars(select(Energy.per_atom).order_by(Energy.structure_id)).all()
    assert per_atom == pytest.approx([-5.0] * 3)
    assert [a.info["energies"]["rm_pseudo"] for a in loaded] == [-5.0 * len(a) for a in atoms]


def test_analysis_rows_agree_with_the_full_structures(engine):
    """The array-free read the analysis uses gives the formula, origin, parent, periodicity, selection and energies
    per atom that the full read gives (JSON `selected` read in SQL on both databases)."""
    atoms = random_structures(12, seed=5)
    for i, a in enumerate(atoms):
        if i % 4 == 1:
            a.info["selected"] = False
        elif i % 4 == 2:
            a.info["selected"] = True
    energies = [[store.EnergyRecord("rm_pseudo", total=-2.5 * len(a))] + ([store.EnergyRecord("xtb", total=-1.0)]
                                                                          if i % 3 == 0 else [])
                for i, a in enumerate(atoms)]
    with store.transaction(engine) as session:
        campaign = store.add_campaign(session, "rows", "name: rows\n")
        parents = store.add_structures(session, atoms[:2], origin="rss", campaign_id=campaign.id,
                                       energies=energies[:2])
        store.add_structures(session, atoms[2:], origin="rescore", campaign_id=campaign.id, energies=energies[2:],
                             parent_ids=[parents[i % 2] for i in range(10)])
        store.add_structures(session, atoms[:1], origin="rss")  # another campaign's (none): not read
    with store.transaction(engine) as session:
        rows = store.analysis_rows(session, campaign.id)
        full = store.structures(session, campaign_id=campaign.id)
    assert [r.structure_id for r in rows] == [a.info["structure_id"] for a in full]
    for r, a in zip(rows, full):
        assert (r.formula, r.origin, r.parent_id) == (a.info["formula"], a.info["origin"], a.info["parent_id"])
        assert r.periodic == bool(a.pbc.all())
        assert r.selected == a.info.get("selected", True)
        assert r.energies_per_atom == pytest.approx({m: e / len(a) for m, e in a.info["energies"].items()})


def test_failed_write_rolls_back_everything(engine):
    atoms = random_structures(5, seed=3)
    energies = [[store.EnergyRecord("rm_pseudo", total=-1.0)] for _ in atoms]
    energies[-1] = [store.EnergyRecord("rm_pseudo", total=float("nan"))]
    with pytest.raises(ValueError, match="not finite"):
        with store.transaction(engine) as session:
            store.add_structures(session, atoms, origin="rss", energies=energies)
    with store.transaction(engine) as session:
        assert session.scalar(select(func.count(Structure.id))) == 0
        assert session.scalar(select(func.count(Composition.id))) == 0
        assert session.scalar(select(func.count(Energy.id))) == 0


def test_trajectory_with_wrong_shape_is_refused_and_nothing_written(engine):
    atoms = random_structures(1, seed=4)
    bad = store.TrajectoryRecord("rm_pseudo", np.arange(2), np.zeros(2), np.zeros(2),
                                 np.zeros((2, len(atoms[0]) + 1, 3)), np.zeros((2, 3, 3)))
    with pytest.raises(ValueError, match="positions .* has shape"):
        with store.transaction(engine) as session:
            store.add_structures(session, atoms, origin="rss", trajectories=[[bad]])
    with store.transaction(engine) as session:
        assert session.scalar(select(func.count(Trajectory.id))) == 0
        assert session.scalar(select(func.count(Structure.id))) == 0


def test_duplicate_energy_method_for_a_structure_is_refused(engine):
    import sqlalchemy as sa

    with store.transaction(engine) as session:
        (sid,) = store.add_structures(session, [Atoms("H2", positions=[[0, 0, 0], [0, 0, 0.74]])], origin="import")
        store.add_energies(session, [sid], [store.EnergyRecord("xtb_gfn2", total=-27.0)])
    with pytest.raises(sa.exc.IntegrityError):
        with store.transaction(engine) as session:
            store.add_energies(session, [sid], [store.EnergyRecord("xtb_gfn2", total=-26.0)])


def test_same_model_weights_are_stored_once(engine):
    with store.transaction(engine) as session:
        first = store.add_model(session, kind="rm_potential", weights=b"abc", hyperparameters={"cutoff": 4.5})
        second = store.add_model(session, kind="rm_potential", weights=b"abc", hyperparameters={"cutoff": 4.5})
        other = store.add_model(session, kind="rm_potential", weights=b"abd", hyperparameters={"cutoff": 4.5})
    assert first.id == second.id != other.id
    assert first.sha256 == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"  # sha256("abc")


def test_campaign_names_are_unique(engine):
    with store.transaction(engine) as session:
        store.add_campaign(session, "carbon", "name: carbon\n")
    with pytest.raises(ValueError, match="already exists"):
        with store.transaction(engine) as session:
            store.add_campaign(session, "carbon", "name: carbon\n")


arrays = hnp.arrays(
    dtype=st.one_of(hnp.integer_dtypes(endianness="="), hnp.floating_dtypes(endianness="<"),
                    hnp.floating_dtypes(endianness=">"), hnp.boolean_dtypes()),
    shape=hnp.array_shapes(min_dims=0, max_dims=4, min_side=0, max_side=6),
)


@settings(max_examples=200, deadline=None)
@given(arrays)
def test_array_blobs_keep_dtype_shape_and_bits(array):
    back = decode_array(encode_array(array))
    assert back.dtype == array.dtype and back.shape == array.shape and back.tobytes() == array.tobytes()


def test_non_contiguous_arrays_round_trip():
    array = np.arange(24.0).reshape(4, 6)[:, ::2].T
    assert np.array_equal(decode_array(encode_array(array)), array)


def test_small_blobs_are_plain_npy_large_ones_zlib_and_both_read_back():
    """Small arrays are stored as .npy bytes (np.load reads them), large ones compressed; blobs that earlier versions
    compressed whatever their size still decode."""
    import io
    import zlib

    from atomscreen.store.arrays import COMPRESS_FROM

    small, large = np.eye(3), np.zeros((COMPRESS_FROM // 8, 3))
    assert np.array_equal(np.load(io.BytesIO(encode_array(small))), small)
    assert np.array_equal(np.load(io.BytesIO(zlib.decompress(encode_array(large)))), large)
    buffer = io.BytesIO()
    np.save(buffer, small)
    assert np.array_equal(decode_array(zlib.compress(buffer.getvalue())), small)


def test_object_arrays_are_refused():
    with pytest.raises(TypeError, match="object array"):
        encode_array(np.array([{"a": 1}], dtype=object))
