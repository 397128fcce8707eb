"""Which candidates reproduce a known structure: pymatgen's StructureMatcher against a reference set.

Tolerances default to those of DiffCSP and the Response Matching paper
(ltol 0.3, stol 0.5, angle_tol 10°). Structures are compared only with
references of the same reduced composition and the same number of sites in
the primitive cell (StructureMatcher with ``primitive_cell=True`` rejects
other pairs anyway), so each primitive cell is found once, not once per pair.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from ase import Atoms
from pymatgen.analysis.structure_matcher import StructureMatcher
from pymatgen.core import Structure
from pymatgen.io.ase import AseAtomsAdaptor


@dataclass(frozen=True)
class MatchSettings:
    """StructureMatcher tolerances: fractional length, site (normalised by (V/n)^(1/3)), degrees."""

    ltol: float = 0.3
    stol: float = 0.5
    angle_tol: float = 10.0

    def matcher(self) -> StructureMatcher:
        return StructureMatcher(ltol=self.ltol, stol=self.stol, angle_tol=self.angle_tol, primitive_cell=False,
                                scale=True, attempt_supercell=False)


@dataclass(frozen=True)
class ReferenceMatch:
    """Structure ``index`` of the candidates matches reference ``reference`` (both positions in the input lists)."""

    index: int
    reference: int


def _key(structure: Structure) -> tuple[str, int, Structure]:
    primitive = structure.get_primitive_structure(tolerance=0.25)
    return structure.composition.reduced_formula, len(primitive), primitive


PreparedReferences = dict[tuple[str, int], list[tuple[int, Structure]]]


def prepare_references(references: Sequence[Atoms], formulas: set[str],
                       order: Sequence[int] | None = None) -> PreparedReferences:
    """Primitive cells of the periodic references whose reduced formula is in ``formulas``, keyed by (formula, sites),
    each list in ``order`` (default list order)."""
    order = list(range(len(references))) if order is None else list(order)
    by_key: PreparedReferences = {}
    for j in order:
        ref = references[j]
        if not ref.pbc.all():
            continue
        s = AseAtomsAdaptor.get_structure(ref)
        if s.composition.reduced_formula not in formulas:
            continue
        formula, n, primitive = _key(s)
        by_key.setdefault((formula, n), []).append((j, primitive))
    return by_key


def reduced_formulas(structures: Sequence[Atoms]) -> set[str]:
    """Reduced formulas (pymatgen's) of the periodic structures."""
    return {AseAtomsAdaptor.get_structure(a).composition.reduced_formula for a in structures if a.pbc.all()}


def match_prepared(structures: Sequence[Atoms], prepared: PreparedReferences,
                   settings: MatchSettings = MatchSettings()) -> list[ReferenceMatch]:
    """For each periodic structure, the first prepared reference StructureMatcher fits (a pure function: run it in
    chunks)."""
    matcher = settings.matcher()
    out = []
    for i, atoms in enumerate(structures):
        if not atoms.pbc.all():
            continue
        formula, n, primitive = _key(AseAtomsAdaptor.get_structure(atoms))
        for j, ref in prepared.get((formula, n), ()):
            if matcher.fit(primitive, ref):
                out.append(ReferenceMatch(i, j))
                break
    return out


def match_references(structures: Sequence[Atoms], references: Sequence[Atoms],
                     settings: MatchSettings = MatchSettings(),
                     order: Sequence[int] | None = None) -> list[ReferenceMatch]:
    """The first reference (in ``order``, default list order, e.g. lowest energy first) each periodic structure
    matches."""
    return match_prepared(structures, prepare_references(references, reduced_formulas(structures), order), settings)
