"""One way to name a composition: parse a formula, write it in Hill order, its reduced formula and chemical system."""

from __future__ import annotations

import functools
import re
from typing import Any, Sequence

from ase.data import chemical_symbols
from ase.formula import Formula

ELEMENTS = frozenset(chemical_symbols[1:])
_FORMULA = re.compile(r"(?:[A-Z][a-z]?\d*)+")
_TOKEN = re.compile(r"([A-Z][a-z]?)(\d*)")


def parse_formula(text: str) -> dict[str, int]:
    """Element counts of a formula such as ``Li4S2`` or ``C7H10O2`` (no brackets, positive integer counts)."""
    if not isinstance(text, str) or not _FORMULA.fullmatch(text.strip()):
        raise ValueError(
            "not a formula: expected element symbols each followed by a positive count, e.g. Li4S2 or C7H10O2"
        )
    counts: dict[str, int] = {}
    for symbol, count in _TOKEN.findall(text.strip()):
        if symbol not in ELEMENTS:
            raise ValueError(f"{symbol!r} is not an element symbol; allowed: H, He, Li, ... Og")
        n = int(count) if count else 1
        if n <= 0:
            raise ValueError(f"count of {symbol} is {n}; counts must be positive integers")
        counts[symbol] = counts.get(symbol, 0) + n
    return counts


def hill_formula(counts: dict[str, int]) -> str:
    """Hill-order formula with explicit counts > 1, e.g. ``C7H10O2``, ``Li4S2``."""
    order = sorted(counts)
    if "C" in counts:
        order = ["C"] + (["H"] if "H" in counts else []) + [s for s in order if s not in ("C", "H")]
    return "".join(f"{s}{counts[s] if counts[s] != 1 else ''}" for s in order)


def chemsys(formula: str) -> str:
    """The chemical system of a formula, elements sorted and joined by '-', e.g. ``Li-S``."""
    return "-".join(sorted(parse_formula(formula)))


def composition_fields(numbers: Sequence[int]) -> dict[str, Any]:
    """Hill formula, reduced Hill formula, chemical system and atom count of a list of atomic numbers."""
    if len(numbers) == 0:
        raise ValueError("a structure needs at least one atom")
    return dict(_composition_fields(tuple(map(int, numbers))))


@functools.lru_cache(maxsize=4096)  # a campaign writes 1e5 structures of a few compositions
def _composition_fields(numbers: tuple[int, ...]) -> dict[str, Any]:
    formula = Formula.from_list([chemical_symbols[z] for z in numbers])
    reduced, _ = formula.reduce()
    return {
        "formula": formula.format("hill"),
        "reduced_formula": reduced.format("hill"),
        "chemsys": "-".join(sorted(formula.count())),
        "n_atoms": len(numbers),
    }
