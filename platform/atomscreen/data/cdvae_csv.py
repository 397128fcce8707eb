"""CDVAE-style CSV files (carbon_24, perov_5, mp_20): one CIF text per row plus property columns."""

from __future__ import annotations

import csv
import io
import math
import warnings
from pathlib import Path
from typing import Any

import numpy as np
from ase import Atoms
from ase.io import read

from atomscreen.data.errors import DataError, OnError, check_on_error, handle, reason


def _value(text: str) -> Any:
    try:
        number = float(text)
    except ValueError:
        return text
    if number.is_integer() and text.strip().lstrip("-").isdigit():
        return int(text)
    return number if math.isfinite(number) else None


def _structure(cif: str) -> Atoms:
    if not cif.strip():
        raise ValueError("empty cif")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        atoms = read(io.StringIO(cif), format="cif")
    if len(atoms) == 0:
        raise ValueError("the CIF holds no atoms")
    if not np.isfinite(atoms.positions).all() or not np.isfinite(atoms.cell.array).all():
        raise ValueError("non-finite coordinates or cell")
    if abs(atoms.cell.volume) < 1e-6:
        raise ValueError("the cell has zero volume")
    # a fresh Atoms drops the CIF reader's extra arrays and info (spacegroup objects, occupancies)
    return Atoms(numbers=atoms.numbers, positions=atoms.positions, cell=atoms.cell.array, pbc=True)


def read_cdvae_csv(path: str | Path, *, limit: int | None = None, on_error: OnError = "raise") -> list[Atoms]:
    """Structures of a CDVAE CSV; the other columns (material_id, energy_per_atom, ...) go to ``atoms.info``."""
    check_on_error(on_error)
    source = str(path)
    out: list[Atoms] = []
    with open(path, newline="") as handle_:
        reader = csv.DictReader(handle_)
        if reader.fieldnames is None or "cif" not in reader.fieldnames:
            raise DataError(source, None,
                            f"no 'cif' column (columns: {reader.fieldnames}); a CDVAE CSV has one CIF text per row")
        for row, record in enumerate(reader, start=1):
            if limit is not None and len(out) >= limit:
                break
            try:
                if None in record or None in record.values():
                    raise ValueError(f"expected {len(reader.fieldnames)} columns")
                atoms = _structure(record["cif"])
            except Exception as exc:
                handle(DataError(source, row, f"line {reader.line_num}: {reason(exc)}"), on_error)
                continue
            info = {("csv_index" if k == "" else k): _value(v) for k, v in record.items() if k != "cif"}
            atoms.info = {k: v for k, v in info.items() if v is not None}
            atoms.info.update(source=source, source_row=row)
            out.append(atoms)
    return out
