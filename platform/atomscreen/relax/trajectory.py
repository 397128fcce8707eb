"""What a relaxation gives back besides the structure, shared by the batched loop and the ASE-calculator path.

Torch-free, so a process that only runs ASE calculators does not load torch.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

import numpy as np


class RelaxStatus(StrEnum):
    """How a relaxation (or single point) ended; the values are the words stored with results."""

    CONVERGED = "converged"
    NOT_CONVERGED = "not_converged"  # max_steps reached first
    EXPLODED = "exploded"  # non-finite or huge energy or forces (batched loop)
    FAILED = "failed"  # the calculator or optimizer raised (ASE path)
    SINGLE_POINT = "single_point"  # no relaxation asked for


@dataclass
class Trajectory:
    """Subsampled frames: steps [F], energies [F] eV, fmax [F] eV/Å, positions [F,N,3] Å, cells [F,3,3] Å."""

    steps: np.ndarray
    energies: np.ndarray
    fmax: np.ndarray
    positions: np.ndarray
    cells: np.ndarray
