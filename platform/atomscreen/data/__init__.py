"""Dataset readers; each returns ASE Atoms with the source's metadata in ``atoms.info``."""

from __future__ import annotations

from pathlib import Path

from ase import Atoms

from atomscreen.data.ase_files import COLLECTIONS, read_cif, read_collection, read_file, read_xyz
from atomscreen.data.cdvae_csv import read_cdvae_csv
from atomscreen.data.checks import check_structure
from atomscreen.data.errors import DataError, OnError, handle
from atomscreen.data.qm9 import iter_qm9, read_qm9

FORMATS = ("auto", "extxyz", "ase", "cif", "cdvae-csv", "qm9", "ase-collection")


def read_dataset(
    format: str = "auto",
    path: str | Path | None = None,
    *,
    name: str | None = None,
    limit: int | None = None,
    skip: int = 0,
    on_error: OnError = "raise",
) -> list[Atoms]:
    """Read a dataset as a campaign's ``dataset:`` block names it (``limit`` structures after the first ``skip``);
    ``auto`` picks by file extension. Every structure passes :func:`check_structure` (or is skipped with
    ``on_error='skip'``); a data set without structures is a DataError."""
    source = str(path) if path is not None else (name or format)
    kept = []
    for k, atoms in enumerate(_read(format, path, name=name, limit=limit, skip=skip, on_error=on_error)):
        try:
            check_structure(atoms, source, atoms.info.get("source_row", k + 1 + skip))
        except DataError as error:
            handle(error, on_error)
            continue
        kept.append(atoms)
    if not kept:
        raise DataError(source, None, "holds no usable structure")
    return kept


def _read(format: str, path: str | Path | None, *, name: str | None, limit: int | None, skip: int,
          on_error: OnError) -> list[Atoms]:
    if format not in FORMATS:
        raise ValueError(f"unknown dataset format {format!r}; allowed: {', '.join(FORMATS)}")
    if skip < 0:
        raise ValueError(f"skip must be >= 0, got {skip}")
    if format == "qm9":
        return read_qm9(limit=limit, skip=skip, on_error=on_error)
    if skip:
        upto = None if limit is None else skip + limit
        return _read(format, path, name=name, limit=upto, skip=0, on_error=on_error)[skip:]
    if format == "ase-collection":
        return read_collection(name or "", limit=limit)
    if path is None:
        raise ValueError(f"dataset format {format!r} needs a path")
    suffix = Path(path).suffix.lower()
    if format == "cdvae-csv" or (format == "auto" and suffix == ".csv"):
        return read_cdvae_csv(path, limit=limit, on_error=on_error)
    if format == "cif":
        return read_cif(path, limit=limit)
    return read_file(path, format="extxyz" if format == "extxyz" else None, limit=limit, on_error=on_error)


__all__ = [
    "COLLECTIONS",
    "FORMATS",
    "DataError",
    "check_structure",
    "iter_qm9",
    "read_cdvae_csv",
    "read_cif",
    "read_collection",
    "read_dataset",
    "read_file",
    "read_qm9",
    "read_xyz",
]
