"""Dataset readers: full files load with atom counts matching the files' own formula columns; bad rows are named."""

from __future__ import annotations

import ast
import csv
import importlib.util
import logging
import re
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from ase.build import bulk, molecule
from ase.io import write
from pymatgen.core import Composition

from atomscreen.data import DataError, read_cdvae_csv, read_collection, read_dataset, read_file, read_qm9

QM9_STOICHIOMETRY_ORDER = ("H", "C", "N", "O", "F")


def _formula_sum(cif: str) -> Counter:
    """Element counts from the CIF's own _chemical_formula_sum line, parsed without ASE."""
    line = re.search(r"_chemical_formula_sum\s+'?([^'\n]+)'?", cif).group(1)
    return Counter({el: int(n or 1) for el, n in re.findall(r"([A-Z][a-z]?)(\d*)", line)})


def test_carbon24_loads_every_row_with_formula_counts(carbon24_csv):
    with open(carbon24_csv, newline="") as f:
        rows = list(csv.DictReader(f))
    structures = read_cdvae_csv(carbon24_csv)
    assert len(structures) == len(rows) == 2032  # the data README says 2,031; the file has 2,032 data rows
    for atoms, row in zip(structures, rows):
        assert Counter(atoms.get_chemical_symbols()) == _formula_sum(row["cif"])
        assert atoms.info["material_id"] == row["material_id"]
        assert atoms.info["energy_per_atom"] == pytest.approx(float(row["energy_per_atom"]))
        assert atoms.pbc.all() and 6 <= len(atoms) <= 24


def test_perov5_atoms_match_formula_column(perov5_csv):
    structures = read_cdvae_csv(perov5_csv, limit=500)
    assert len(structures) == 500
    for atoms in structures:
        assert Composition(atoms.get_chemical_formula()) == Composition(atoms.info["formula"])
        assert len(atoms) == 5


def test_qm9_first_ten_thousand_match_n_atoms_and_stoichiometry():
    molecules = read_qm9(limit=10_000)
    assert len(molecules) == 10_000
    data = Path(importlib.util.find_spec("qm9pack").submodule_search_locations[0]) / "data" / "qm9_part1.csv"
    with open(data, newline="") as f:
        reader = csv.DictReader(f)
        for atoms, row in zip(molecules, reader):
            counts = dict(zip(QM9_STOICHIOMETRY_ORDER, ast.literal_eval(row["Stoichiometry"])))
            assert len(atoms) == int(row["N_atoms"])
            assert Counter(atoms.get_chemical_symbols()) == Counter({k: v for k, v in counts.items() if v})
            assert atoms.info["smiles"] == row["SMILES"]
    assert molecules[0].info["u0"] == pytest.approx(-40.47893 * 27.211386, rel=1e-6)  # Hartree -> eV
    assert not molecules[0].pbc.any()


def _csv_with_bad_row(tmp_path, perov5_csv):
    with open(perov5_csv, newline="") as f:
        reader = csv.DictReader(f)
        rows = [next(reader) for _ in range(3)]
        fields = reader.fieldnames
    rows[1]["cif"] = rows[1]["cif"].replace("_cell_length_a", "_cell_length_x")
    path = tmp_path / "broken.csv"
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)
    return path


def test_malformed_csv_row_stops_with_file_and_row(tmp_path, perov5_csv):
    path = _csv_with_bad_row(tmp_path, perov5_csv)
    with pytest.raises(DataError, match=r"broken\.csv, row 2") as info:
        read_cdvae_csv(path)
    assert info.value.row == 2 and info.value.source == str(path)


def test_malformed_csv_row_is_skipped_when_asked(tmp_path, perov5_csv, caplog):
    path = _csv_with_bad_row(tmp_path, perov5_csv)
    with caplog.at_level(logging.WARNING, logger="atomscreen.data"):
        structures = read_cdvae_csv(path, on_error="skip")
    assert [a.info["source_row"] for a in structures] == [1, 3]
    assert "row 2" in caplog.text


def test_csv_without_cif_column_is_refused(tmp_path):
    path = tmp_path / "plain.csv"
    path.write_text("a,b\n1,2\n")
    with pytest.raises(DataError, match="no 'cif' column"):
        read_cdvae_csv(path)


def test_extxyz_frames_keep_info_and_bad_frame_is_named(tmp_path):
    frames = [molecule("H2O"), bulk("Si", "diamond", a=5.43), molecule("CH4")]
    frames[0].info["energy_ref"] = -14.2
    path = tmp_path / "set.extxyz"
    write(path, frames, format="extxyz")
    good = read_file(path)
    assert [len(a) for a in good] == [3, 2, 5]
    assert good[0].info["energy_ref"] == -14.2 and good[1].pbc.all()

    lines = path.read_text().splitlines(keepends=True)
    lines[2 + 3 + 1] = lines[2 + 3 + 1].replace("Lattice=", "Latt1ce=\"oops").replace('pbc="T T T"', "")
    lines[2 + 3 + 2 + 1] = "Si 0.0 zero 0.0\n"
    path.write_text("".join(lines))
    with pytest.raises(DataError, match=r"set\.extxyz, row 2"):
        read_file(path)
    assert [len(a) for a in read_file(path, on_error="skip")] == [3, 5]


def test_cif_files_and_ase_collections(tmp_path):
    path = tmp_path / "nacl.cif"
    write(path, bulk("NaCl", "rocksalt", a=5.64), format="cif")
    (atoms,) = read_dataset("cif", path)
    assert atoms.get_chemical_formula() == "ClNa" and atoms.get_volume() == pytest.approx(5.64**3 / 4)
    g2 = read_collection("g2")
    assert len(g2) > 100 and all(a.info["source"] == "ase.collections.g2" for a in g2)
    with pytest.raises(ValueError, match="allowed: g2, s22, dcdft"):
        read_collection("qm7")


def test_read_dataset_dispatches_by_format(perov5_csv):
    assert len(read_dataset("auto", perov5_csv, limit=3)) == 3
    assert len(read_dataset("ase-collection", name="s22", limit=2)) == 2
    with pytest.raises(ValueError, match="unknown dataset format"):
        read_dataset("xlsx", perov5_csv)


def test_skip_passes_over_the_first_rows_in_every_format(perov5_csv):
    rows = read_qm9(limit=30)
    skipped = read_dataset("qm9", skip=20, limit=5)
    assert [a.info["qm9_index"] for a in skipped] == [a.info["qm9_index"] for a in rows[20:25]]
    assert np.array_equal(skipped[0].positions, rows[20].positions)
    csv_rows = read_dataset("cdvae-csv", perov5_csv, limit=6)
    csv_skipped = read_dataset("cdvae-csv", perov5_csv, skip=4, limit=2)
    assert [a.info["source_row"] for a in csv_skipped] == [a.info["source_row"] for a in csv_rows[4:6]]
    with pytest.raises(ValueError, match="skip must be >= 0"):
        read_dataset("qm9", skip=-1)
