"""QM9 molecules from the CSV files inside the qm9pack package, read lazily row by row.

Energies in the files are in Hartree; they are converted to eV here (the edge).
"""

from __future__ import annotations

import ast
import csv
import importlib.util
from importlib import resources
from typing import Iterator

import numpy as np
from ase import Atoms
from ase.units import Hartree

from atomscreen.data.errors import DataError, OnError, check_on_error, handle

PARTS = ("qm9_part1.csv", "qm9_part2.csv", "qm9_part3.csv")
# columns in Hartree -> info keys in eV
_ENERGIES = {
    "InternalEnergy_0K_au": "u0",
    "InternalEnergy_298K_au": "u298",
    "Enthalphy_298K_au": "h298",
    "GibbsFreeEnergy_298K_au": "g298",
    "HOMO_au": "homo",
    "LUMO_au": "lumo",
    "HOMO_LUMO_gap_au": "gap",
    "ZPVE_au": "zpve",
}


def _data_dir() -> resources.abc.Traversable:
    """qm9pack's data folder, found without importing qm9pack (its __init__ needs the removed pkg_resources)."""
    spec = importlib.util.find_spec("qm9pack")
    if spec is None or spec.loader is None:
        raise ModuleNotFoundError("QM9 needs the qm9pack package: pip install 'atomscreen[qm9]'")
    return spec.loader.get_resource_reader(spec.name).files() / "data"


def _molecule(record: dict[str, str]) -> Atoms:
    symbols = ast.literal_eval(record["Elements"])
    positions = np.asarray(ast.literal_eval(record["XYZ_Ang"]), dtype=float)
    n = int(record["N_atoms"])
    if len(symbols) != n or positions.shape != (n, 3):
        raise ValueError(f"N_atoms = {n} but {len(symbols)} elements and positions of shape {positions.shape}")
    if not np.isfinite(positions).all():
        raise ValueError("non-finite positions")
    atoms = Atoms(symbols=symbols, positions=positions)
    atoms.info = {
        "qm9_index": int(record["Index"]),
        "smiles": record["SMILES"],
        "inchi": record["InChi"],
        **{key: float(record[col]) * Hartree for col, key in _ENERGIES.items()},
        "dipole_debye": float(record["Dipole_debye"]),
    }
    return atoms


def iter_qm9(*, limit: int | None = None, skip: int = 0, on_error: OnError = "raise") -> Iterator[Atoms]:
    """QM9 molecules in index order after the first ``skip`` rows (not parsed), reading only as many rows as needed."""
    check_on_error(on_error)
    if skip < 0:
        raise ValueError(f"skip must be >= 0, got {skip}")
    count, seen = 0, 0
    for part in PARTS:
        resource = _data_dir() / part
        with resource.open("r", newline="") as stream:
            for row, record in enumerate(csv.DictReader(stream), start=1):
                if limit is not None and count >= limit:
                    return
                seen += 1
                if seen <= skip:
                    continue
                try:
                    atoms = _molecule(record)
                except Exception as exc:
                    handle(DataError(f"qm9pack/data/{part}", row, str(exc)), on_error)
                    continue
                atoms.info.update(source=f"qm9pack/data/{part}", source_row=row)
                count += 1
                yield atoms


def read_qm9(*, limit: int | None = None, skip: int = 0, on_error: OnError = "raise") -> list[Atoms]:
    """``limit`` QM9 molecules after the first ``skip`` (all 133,885 if neither) as a list."""
    return list(iter_qm9(limit=limit, skip=skip, on_error=on_error))
