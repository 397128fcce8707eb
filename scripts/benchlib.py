"""What the bench scripts share: one JSON line per result, printed and (with an output file) appended; one single
point in a worker process."""

from __future__ import annotations

import json
from pathlib import Path


def emit(line: dict, out: Path | None = None) -> None:
    """Print ``line`` as one JSON line and append it to ``out`` when given (its folder is made)."""
    text = json.dumps(line)
    print(text, flush=True)
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        with out.open("a") as stream:
            stream.write(text + "\n")


def single_point(item: tuple) -> tuple[float, str | None]:
    """(energy eV, error) of ``method`` (a calculators.single_points method: xtb, dft, ...) at one geometry;
    ``item`` = (method, numbers, positions, options), picklable for a process pool."""
    from ase import Atoms

    from atomscreen.evaluate.calculators import single_points

    method, numbers, positions, options = item
    energies, _, errors = single_points([Atoms(numbers=numbers, positions=positions)], method, options=options)
    return energies[0], errors[0]
