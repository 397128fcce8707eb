"""Subsampled relaxation frames, shared by the batched FIRE loop and the ASE-calculator path (no torch needed)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class Trajectory:
    """Subsampled frames: steps [F], energies [F] eV, fmax [F] eV/Å, positions [F,N,3] Å, cells [F,3,3] Å."""

    steps: np.ndarray
    energies: np.ndarray
    fmax: np.ndarray
    positions: np.ndarray
    cells: np.ndarray
