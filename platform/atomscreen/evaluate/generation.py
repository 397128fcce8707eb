"""Validity, uniqueness and novelty of generated molecules as MoreRed's Table B1 counts them (the G-SchNet analysis of
Gebauer et al., NeurIPS 2019): Open Babel perceives bonds and bond orders from the coordinates; a molecule is valid
when it is one connected fragment and every atom's bond orders add up to its standard valence (H 1, C 4, N 3, O 2,
F 1; no charges); unique and novel compare Open Babel canonical SMILES (no stereochemistry), novel against QM9.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

STANDARD_VALENCE = {1: 1, 6: 4, 7: 3, 8: 2, 9: 1}


def _obmol(numbers: Sequence[int], positions: np.ndarray):
    from ase.data import chemical_symbols
    from openbabel import pybel

    pybel.ob.obErrorLog.SetOutputLevel(0)
    lines = [f"{chemical_symbols[int(z)]} {x:.8f} {y:.8f} {z_:.8f}" for z, (x, y, z_) in zip(numbers, positions)]
    return pybel.readstring("xyz", f"{len(lines)}\n\n" + "\n".join(lines) + "\n")  # bonds and orders perceived


def connected_valence(numbers: Sequence[int], positions: np.ndarray) -> tuple[bool, str | None]:
    """(valid, canonical SMILES) of one molecule by the G-SchNet rule; SMILES None when Open Babel gives none."""
    from openbabel import openbabel as ob

    molecule = _obmol(numbers, np.asarray(positions, dtype=float))
    valence_ok = all(
        int(atom.GetAtomicNum()) in STANDARD_VALENCE
        and sum(b.GetBondOrder() for b in ob.OBAtomBondIter(atom)) == STANDARD_VALENCE[int(atom.GetAtomicNum())]
        for atom in ob.OBMolAtomIter(molecule.OBMol))
    connected = len(molecule.OBMol.Separate()) == 1
    smiles = molecule.write("can", opt={"i": None}).split("\t")[0].strip() or None
    return bool(valence_ok and connected), smiles


@dataclass(frozen=True)
class TableB1:
    """MoreRed Table B1 for n generated molecules: % valid, valid and unique, valid, unique and novel."""

    n: int
    valid_pct: float
    valid_unique_pct: float
    valid_unique_novel_pct: float | None  # None without a reference set


def table_b1(results: Sequence[tuple[bool, str | None]], reference: set[str] | None) -> TableB1:
    """Percentages over all ``results`` (valid, SMILES) of generated molecules; novel: SMILES not in ``reference``."""
    n = len(results)
    if n == 0:
        raise ValueError("no generated molecules to count")
    valid = [s for ok, s in results if ok and s]
    unique = set(valid)
    novel = None if reference is None else 100.0 * len(unique - reference) / n
    return TableB1(n, 100.0 * sum(ok for ok, _ in results) / n, 100.0 * len(unique) / n, novel)


def reference_smiles(molecules: Iterable[tuple[Sequence[int], np.ndarray]]) -> set[str]:
    """Canonical SMILES (same perception) of reference molecules (e.g. all of QM9, for novelty)."""
    out = set()
    for numbers, positions in molecules:
        smiles = connected_valence(numbers, positions)[1]
        if smiles:
            out.add(smiles)
    return out


def qm9_reference(cache_dir: str | Path | None = None) -> set[str]:
    """Canonical SMILES of all QM9 molecules by the same perception (novelty's reference, as G-SchNet's script), read
    from ``cache_dir`` (default $ATOMSCREEN_CACHE, else ~/.cache/atomscreen) or computed once (~2.5 min) and cached."""
    import gzip
    import os

    from atomscreen.data.qm9 import iter_qm9

    folder = Path(cache_dir or os.environ.get("ATOMSCREEN_CACHE") or Path.home() / ".cache" / "atomscreen")
    path = folder / "qm9_openbabel_smiles.txt.gz"
    if path.exists():
        with gzip.open(path, "rt") as stream:
            return {line.strip() for line in stream if line.strip()}
    smiles = reference_smiles((a.numbers, a.positions) for a in iter_qm9())
    folder.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    with gzip.open(tmp, "wt") as stream:
        stream.write("\n".join(sorted(smiles)) + "\n")
    os.replace(tmp, path)
    return smiles
