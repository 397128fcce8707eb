"""Random starting structures in the spirit of AIRSS buildcell (Pickard & Needs, JPCM 23, 053201 (2011)).

A crystal gets a random cell shape (bounded aspect ratio and angles, optionally
Niggli-reduced), a volume from a target volume per atom times a random factor,
and atoms placed one by one at random with per-species-pair minimum
separations (periodic images included). A molecule gets an orthorhombic box
without periodicity: a cube by default, edges in given ratios, or a fixed box.
Structure k of a request uses the generator seeded by (seed, k), so it does
not depend on how a request is split into tasks.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping, Sequence

import numpy as np
from ase import Atoms
from ase.cell import Cell
from ase.data import atomic_numbers
from ase.geometry import cellpar_to_cell
from scipy.optimize import nnls

from atomscreen.atoms.neighbors import plane_spacings
from atomscreen.errors import AtomscreenError


class RandomStructureError(AtomscreenError, ValueError):
    """The constraints of a random structure request cannot be met."""


@dataclass(frozen=True)
class RandomSpec:
    """How to build random structures of one composition (Å, Å^3/atom, degrees)."""

    volume_per_atom: float
    volume_factor: tuple[float, float] = (1.0, 1.0)
    min_separation: float | Mapping[str, float] = 0.7  # global, or per pair "C-C"
    periodic: bool = True
    max_aspect: float = 2.0
    angle_range: tuple[float, float] = (60.0, 120.0)
    niggli: bool = True
    max_attempts: int = 50  # whole structures tried before giving up
    tries_per_atom: int = 200
    cell_volume_fraction: float = field(default=0.35)  # rejects cells flatter than this fraction of a cuboid's volume
    # molecules: a fixed orthorhombic box (Å; volume_per_atom and volume_factor then unused), or the edge ratios of a
    # box of volume_per_atom x atoms x factor (default a cube)
    box: tuple[float, float, float] | None = None
    box_aspect: tuple[float, float, float] = (1.0, 1.0, 1.0)


def separation(spec: RandomSpec, a: str, b: str) -> float:
    """Minimum distance between species a and b (Å)."""
    if isinstance(spec.min_separation, (int, float)):
        return float(spec.min_separation)
    key = "-".join(sorted((a, b)))
    return float(spec.min_separation.get(key, spec.min_separation.get("default", 0.0)))


def _random_cell(rng: np.random.Generator, volume: float, spec: RandomSpec) -> np.ndarray:
    lo, hi = np.radians(spec.angle_range)
    for _ in range(1000):
        lengths = rng.uniform(1.0, spec.max_aspect, size=3)
        angles = rng.uniform(lo, hi, size=3)
        c = np.cos(angles)
        fraction = 1 - (c**2).sum() + 2 * c.prod()  # (V / abc)^2
        if fraction > spec.cell_volume_fraction**2:
            break
    cell = cellpar_to_cell(np.concatenate([lengths, np.degrees(angles)]))
    cell *= (volume / abs(np.linalg.det(cell))) ** (1 / 3)
    if spec.niggli:
        cell = Cell(cell).niggli_reduce()[0].array
    return cell


def _molecule_box(volume: float, spec: RandomSpec) -> np.ndarray:
    """The orthorhombic box of a molecule: spec.box, or edges in spec.box_aspect with this volume (Å^3)."""
    if spec.box is not None:
        return np.diag(np.asarray(spec.box, dtype=float))
    aspect = np.asarray(spec.box_aspect, dtype=float)
    if (aspect == 1.0).all():
        return np.eye(3) * volume ** (1 / 3)
    return np.diag(aspect * (volume / aspect.prod()) ** (1 / 3))


def _image_shifts(cell: np.ndarray, reach: float) -> np.ndarray:
    n = np.ceil(reach / plane_spacings(cell)).astype(int)
    grid = np.array(np.meshgrid(*[np.arange(-k, k + 1) for k in n], indexing="ij")).reshape(3, -1).T
    return grid @ cell


def _place(rng, symbols, cell, periodic, spec, sep_matrix, species_index) -> np.ndarray | None:
    n = len(symbols)
    reach = float(sep_matrix.max()) if n else 0.0
    images = _image_shifts(cell, reach) if periodic else np.zeros((1, 3))
    own_images = images[np.linalg.norm(images, axis=1) > 0]
    positions = np.zeros((0, 3))
    for k in range(n):
        need_self = sep_matrix[species_index[k], species_index[k]]
        if periodic and len(own_images) and np.linalg.norm(own_images, axis=1).min() < need_self:
            return None  # the atom would sit too close to its own periodic images
        need = sep_matrix[species_index[k], species_index[:k]]
        for _ in range(spec.tries_per_atom):
            candidate = rng.random(3) @ cell
            if k == 0:
                break
            offsets = candidate[None, None, :] - positions[:, None, :] - images[None, :, :]
            d = np.linalg.norm(offsets, axis=2).min(axis=1)
            if (d >= need).all():
                break
        else:
            return None
        positions = np.vstack([positions, candidate])
    return positions


def random_structure(counts: Mapping[str, int], spec: RandomSpec, rng: np.random.Generator) -> Atoms:
    """One random structure of composition ``counts`` (e.g. {"C": 8}); raises RandomStructureError when impossible."""
    symbols = [s for s, c in sorted(counts.items()) for _ in range(c)]
    if not symbols:
        raise ValueError("a composition needs at least one atom")
    unknown = [s for s in counts if s not in atomic_numbers]
    if unknown:
        raise ValueError(f"unknown element symbols {unknown}")
    species = sorted(counts)
    species_index = np.array([species.index(s) for s in symbols])
    sep_matrix = np.array([[separation(spec, a, b) for b in species] for a in species])
    formula = "".join(f"{s}{counts[s] if counts[s] > 1 else ''}" for s in species)
    volume = None
    for _ in range(spec.max_attempts):
        volume = len(symbols) * spec.volume_per_atom * rng.uniform(*spec.volume_factor)
        cell = _random_cell(rng, volume, spec) if spec.periodic else _molecule_box(volume, spec)
        order = rng.permutation(len(symbols))
        positions = _place(rng, [symbols[i] for i in order], cell, spec.periodic, spec, sep_matrix,
                           species_index[order])
        if positions is not None:
            atoms = Atoms([symbols[i] for i in order], positions=positions, cell=cell, pbc=spec.periodic)
            return atoms[np.argsort(order, kind="stable")]
    pairs = ", ".join(f"{a}-{b} {sep_matrix[i, j]:.2f} Å"
                      for i, a in enumerate(species) for j, b in enumerate(species) if j >= i)
    low, high = (spec.volume_per_atom * factor for factor in spec.volume_factor)
    raise RandomStructureError(
        f"cannot build {formula}: minimum separations {pairs} do not fit in a volume of {low:.2f}-{high:.2f} Å^3/atom "
        f"(last tried {volume:.1f} Å^3 for {len(symbols)} atoms) after {spec.max_attempts} attempts; "
        "lower min_separation or raise volume_per_atom"
    )


def random_structures(counts: Mapping[str, int], n: int, spec: RandomSpec, seed: int) -> list[Atoms]:
    """``n`` random structures; structure k is reproducible from (seed, k) alone."""
    return [random_structure(counts, spec, np.random.default_rng([seed, k])) for k in range(n)]


def fit_element_volumes(structures: Sequence[Atoms]) -> dict[str, float]:
    """Per-element volumes (Å^3) by non-negative least squares of cell volume on element counts."""
    periodic = [a for a in structures if a.pbc.all()]
    if not periodic:
        raise ValueError("fitting element volumes needs periodic structures")
    elements = sorted({s for a in periodic for s in a.get_chemical_symbols()}, key=lambda s: atomic_numbers[s])
    counts = np.array([[list(a.get_chemical_symbols()).count(e) for e in elements] for a in periodic], dtype=float)
    volumes = np.array([a.get_volume() for a in periodic])
    solution, _ = nnls(counts, volumes)
    return {e: float(v) for e, v in zip(elements, solution)}


def volume_per_atom(counts: Mapping[str, int], element_volumes: Mapping[str, float]) -> float:
    """Estimated volume per atom (Å^3) of a composition from fitted element volumes."""
    missing = [s for s in counts if s not in element_volumes]
    if missing:
        raise ValueError(f"no fitted volume for {missing}; fitted elements: {sorted(element_volumes)}")
    total = sum(c * element_volumes[s] for s, c in counts.items())
    return total / sum(counts.values())


__all__ = [
    "RandomSpec",
    "RandomStructureError",
    "fit_element_volumes",
    "random_structure",
    "random_structures",
    "volume_per_atom",
]
