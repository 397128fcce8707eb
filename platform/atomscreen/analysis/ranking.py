"""Rank structures by energy per atom, within each composition and over all of them (1 = lowest)."""

from __future__ import annotations

from typing import Sequence


def rank(formulas: Sequence[str], energies_per_atom: Sequence[float]) -> tuple[list[int], list[int]]:
    """(rank within its composition, overall rank) for each structure; ties keep input order."""
    if len(formulas) != len(energies_per_atom):
        raise ValueError(f"{len(energies_per_atom)} energies for {len(formulas)} formulas")
    order = sorted(range(len(formulas)), key=lambda i: (energies_per_atom[i], i))
    overall = [0] * len(order)
    within = [0] * len(order)
    seen: dict[str, int] = {}
    for position, i in enumerate(order, start=1):
        overall[i] = position
        seen[formulas[i]] = seen.get(formulas[i], 0) + 1
        within[i] = seen[formulas[i]]
    return within, overall
