"""Structures from any ASE-readable file (extxyz, CIF, ASE db, ...) and from ASE's bundled collections."""

from __future__ import annotations

import io
from pathlib import Path

from ase import Atoms
from ase.io import read

from atomscreen.data.errors import DataError, OnError, check_on_error, handle, reason

COLLECTIONS = ("g2", "s22", "dcdft")


def _tag(atoms: Atoms, source: str, row: int, keep_info: bool = True) -> Atoms:
    info = {k: v for k, v in atoms.info.items() if isinstance(v, (str, int, float, bool))} if keep_info else {}
    atoms.info = {**info, "source": source, "source_row": row}
    return atoms


def _xyz_frames(text: str, source: str):
    """Split an (ext)xyz file into (row, first line, frame text) without parsing atoms."""
    lines = text.splitlines(keepends=True)
    i, row = 0, 0
    while i < len(lines):
        if not lines[i].strip():
            i += 1
            continue
        row += 1
        try:
            n = int(lines[i].split()[0])
        except ValueError:
            got = lines[i].strip()[:60]
            raise DataError(source, row, f"line {i + 1}: expected an atom count, got {got!r}") from None
        yield row, i + 1, "".join(lines[i : i + n + 2]), n
        i += n + 2


def read_xyz(path: str | Path, *, limit: int | None = None, on_error: OnError = "raise") -> list[Atoms]:
    """Every frame of an xyz/extxyz file, one at a time, so a malformed frame can be skipped."""
    check_on_error(on_error)
    source = str(path)
    out: list[Atoms] = []
    for row, line, frame, n in _xyz_frames(Path(path).read_text(), source):
        if limit is not None and len(out) >= limit:
            break
        try:
            atoms = read(io.StringIO(frame), format="extxyz")
            if len(atoms) != n:
                raise ValueError(f"frame declares {n} atoms but holds {len(atoms)}")
        except Exception as exc:  # ASE raises many types for bad frames
            handle(DataError(source, row, f"frame starting at line {line}: {reason(exc)}"), on_error)
            continue
        out.append(_tag(atoms, source, row))
    return out


def read_file(
    path: str | Path, *, format: str | None = None, limit: int | None = None, on_error: OnError = "raise"
) -> list[Atoms]:
    """All structures in a file ASE can read; xyz/extxyz are read frame by frame."""
    check_on_error(on_error)
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no such file: {path}")
    if format in ("xyz", "extxyz") or (format is None and path.suffix in (".xyz", ".extxyz")):
        return read_xyz(path, limit=limit, on_error=on_error)
    try:
        frames = read(path, index=":" if limit is None else f":{limit}", format=format)
    except Exception as exc:
        as_format = f" as {format}" if format else ""
        raise DataError(str(path), None, f"ASE cannot read it{as_format}: {reason(exc)}") from exc
    keep_info = format != "cif" and path.suffix != ".cif"
    return [_tag(atoms, str(path), i + 1, keep_info=keep_info) for i, atoms in enumerate(frames)]


def read_cif(path: str | Path, *, limit: int | None = None) -> list[Atoms]:
    """Every data block of a CIF file."""
    return read_file(path, format="cif", limit=limit)


def read_collection(name: str, *, limit: int | None = None) -> list[Atoms]:
    """A collection shipped with ASE (g2, s22: molecules; dcdft: elemental crystals)."""
    if name not in COLLECTIONS:
        raise ValueError(f"unknown ASE collection {name!r}; allowed: {', '.join(COLLECTIONS)}")
    import ase.collections

    collection = getattr(ase.collections, name)
    out = []
    for i, key in enumerate(collection.names):
        if limit is not None and i >= limit:
            break
        atoms = _tag(collection[key], f"ase.collections.{name}", i + 1)
        atoms.info["name"] = key
        out.append(atoms)
    return out
