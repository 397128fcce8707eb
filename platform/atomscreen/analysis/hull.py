"""Pseudo convex hulls with pymatgen's PhaseDiagram, one per chemical system of a campaign.

Formation energies are taken relative to the lowest-energy elemental structure
of each element found in the same campaign (PhaseDiagram's elemental
references). A chemical system whose elements are not all present as pure
elements is skipped with the missing elements named, rather than guessed.
Systems are the largest element sets among the structures; a sub-system's
structures (e.g. Li and S in Li-S) get their point from the first complete
system that holds them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from pymatgen.analysis.phase_diagram import PDEntry, PhaseDiagram
from pymatgen.core import Composition


@dataclass(frozen=True)
class HullPoint:
    """One structure on the hull of ``chemsys`` (eV/atom)."""

    index: int
    chemsys: str
    formation_energy_per_atom: float
    e_above_hull: float
    is_stable: bool


@dataclass(frozen=True)
class SkippedSystem:
    """A chemical system left without a hull, and why."""

    chemsys: str
    missing_elements: tuple[str, ...]

    def __str__(self) -> str:
        return (f"hull of {self.chemsys} skipped: no structure of pure {', '.join(self.missing_elements)} "
                "to serve as elemental reference")


def pseudo_hulls(
    formulas: Sequence[str], energies_per_atom: Sequence[float], *, stable_tol: float = 1e-8
) -> tuple[list[HullPoint], list[SkippedSystem]]:
    """Hull points for every structure whose chemical system has all its elemental references; plus the skipped
    systems."""
    if len(formulas) != len(energies_per_atom):
        raise ValueError(f"{len(energies_per_atom)} energies for {len(formulas)} formulas")
    compositions: dict[str, Composition] = {}  # one Composition per distinct formula (campaigns repeat a few)
    entries = []
    for formula, e in zip(formulas, energies_per_atom):
        composition = compositions.get(formula) or compositions.setdefault(formula, Composition(formula))
        entries.append(PDEntry(composition, e * composition.num_atoms))
    element_sets = {formula: frozenset(str(el) for el in c.elements) for formula, c in compositions.items()}
    systems = [element_sets[formula] for formula in formulas]
    distinct = set(element_sets.values())
    maximal = sorted({s for s in distinct if not any(s < other for other in distinct)},
                     key=lambda s: (-len(s), sorted(s)))
    points: dict[int, HullPoint] = {}
    skipped = []
    for system in maximal:
        members = [i for i, s in enumerate(systems) if s <= system]
        present = {next(iter(systems[i])) for i in members if len(systems[i]) == 1}
        missing = tuple(sorted(system - present))
        name = "-".join(sorted(system))
        if missing:
            skipped.append(SkippedSystem(name, missing))
            continue
        diagram = PhaseDiagram([entries[i] for i in members])
        # both quantities are the energy per atom less a term of the composition alone: the hull energy there
        # (PhaseDiagram.get_e_above_hull) and the elemental references' mix (get_form_energy_per_atom)
        hull_at: dict[str, float] = {}
        refs_at: dict[str, float] = {}
        for i in members:
            if i in points:
                continue
            formula = formulas[i]
            if formula not in hull_at:
                composition = compositions[formula]
                hull_at[formula] = float(diagram.get_hull_energy_per_atom(composition))
                refs_at[formula] = sum(composition.get_atomic_fraction(el) * diagram.el_refs[el].energy_per_atom
                                       for el in composition.elements)
            e = energies_per_atom[i]
            e_hull = max(0.0, e - hull_at[formula])
            points[i] = HullPoint(i, name, e - refs_at[formula], e_hull, e_hull <= stable_tol)
    return [points[i] for i in sorted(points)], skipped
