"""Fictitious responses of noised equilibrium structures: the training targets of Response Matching.

RM paper, Methods: displacements dr (minimum image under PBC) give harmonic
forces F = -k dr (Eq. 8); pairs closer than r_c repel with
g(r) = m (1 - r^2/r_c^2)^n (Eqs. 9-10); a cell strain gamma gives the isotropic
elastic stress sigma = C gamma (Eq. 11), here with Lamé constants from a Young's
modulus and a Poisson ratio (ASE sign convention: tensile strain, positive stress).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Sequence

import numpy as np
from ase import Atoms
from ase.geometry import find_mic
from vesin import NeighborList

from atomscreen.atoms.neighbors import plane_spacings


@dataclass(frozen=True)
class ResponseConfig:
    """Noise and response hyperparameters; units Å, eV, eV/Å^2, eV/Å^3."""

    max_displacement: float = 0.8  # Å
    # "ball": each atom uniform in a ball of radius max_displacement; "levels": each structure draws a level
    # in [0, max] and each atom a step of uniform length up to it (more weight on small displacements);
    # "ladder": each structure draws a level from ``ladder`` (fractions of max_displacement) and every Cartesian
    # component of every atom is uniform in [-level, level] (the noise schedule of the RM authors' diamond example)
    displacement: str = "levels"
    ladder: tuple[float, ...] = (0.0, 1 / 32, 2 / 32, 3 / 32, 4 / 32, 6 / 32, 8 / 32, 10 / 32, 12 / 32, 16 / 32, 1.0)
    max_strain: float = 0.1  # largest component of the random symmetric strain for periodic structures
    # an isotropic strain uniform in [-hydrostatic_strain, hydrostatic_strain] added to the random one, so compressed
    # and expanded copies of the equilibrium cell (zero force, stress only) cover a wide range of volumes
    hydrostatic_strain: float = 0.0
    k: float = 1.0  # eV/Å^2, Eq. 8
    repulsion_cutoff: float = 0.7  # Å, r_c of Eq. 9
    repulsion_strength: float = 2.0  # eV, m of Eq. 9
    repulsion_power: int = 3  # n of Eq. 9
    youngs_modulus: float = 1.0  # eV/Å^3 (160 GPa)
    poisson_ratio: float = 0.25
    beta: float = 10.0  # stress weight of Eq. 12
    # noise a supercell at least this wide (Å, between opposite faces) so displacements of periodic images are
    # independent; 0 noises the cell as given (a 2-atom cell then moves every image of an atom in lockstep)
    supercell_width: float = 0.0
    # add the virial of the harmonic and repulsive forces, (k/V) sum dr (x) dr + (1/V) sum g'(r) r (x) r / r,
    # to the elastic stress, so force and stress targets are derivatives of one energy (the paper uses C gamma alone)
    virial: bool = False

    def __post_init__(self):
        if self.max_displacement < 0 or self.max_strain < 0 or self.k <= 0:
            raise ValueError("max_displacement and max_strain must be >= 0 and k > 0")
        if self.displacement not in ("ball", "levels", "ladder"):
            raise ValueError(f"displacement must be 'ball', 'levels' or 'ladder', got {self.displacement!r}")
        if not self.ladder or any(not 0.0 <= f <= 1.0 for f in self.ladder):
            raise ValueError(f"ladder must be a non-empty list of fractions in [0, 1], got {list(self.ladder)}")
        if not 0.0 <= self.hydrostatic_strain < 1.0:
            raise ValueError(f"hydrostatic_strain must lie in [0, 1), got {self.hydrostatic_strain}")
        object.__setattr__(self, "ladder", tuple(float(f) for f in self.ladder))
        if not -1.0 < self.poisson_ratio < 0.5:
            raise ValueError(f"poisson_ratio must lie in (-1, 0.5), got {self.poisson_ratio}")

    def to_dict(self) -> dict:
        d = asdict(self)
        d["ladder"] = list(self.ladder)
        return d

    def elastic_stress(self, strain: np.ndarray) -> np.ndarray:
        """sigma = lambda tr(gamma) I + 2 mu gamma (isotropic Hooke's law, Eq. 11)."""
        E, nu = self.youngs_modulus, self.poisson_ratio
        lam = E * nu / ((1 + nu) * (1 - 2 * nu))
        mu = E / (2 * (1 + nu))
        return lam * np.trace(strain) * np.eye(3) + 2 * mu * strain


@dataclass
class NoisedSample:
    """A noised structure with its target forces [n,3] (eV/Å) and stress [3,3] (eV/Å^3; zero if not periodic)."""

    atoms: Atoms
    forces: np.ndarray
    stress: np.ndarray


def minimum_image(vectors: np.ndarray, cell: np.ndarray, pbc: np.ndarray) -> np.ndarray:
    """Shortest periodic images of displacement vectors [n,3] (ASE's find_mic, any cell shape)."""
    if not np.any(pbc):
        return vectors
    return find_mic(vectors, cell, pbc)[0]


def repulsion(atoms: Atoms, config: ResponseConfig) -> tuple[np.ndarray, np.ndarray]:
    """Forces F_i = -sum_j dg(r_ij)/dr_i for g(r) = m (1 - r^2/r_c^2)^n, r < r_c (Eqs. 9-10), and their
    contribution sum over pairs of g'(r) r (x) r / r to V times the stress (eV)."""
    forces, virial = np.zeros((len(atoms), 3)), np.zeros((3, 3))
    rc, m, n = config.repulsion_cutoff, config.repulsion_strength, config.repulsion_power
    if rc <= 0 or m == 0 or len(atoms) < 2 and not atoms.pbc.any():
        return forces, virial
    box = atoms.cell.array if atoms.pbc.any() else np.zeros((3, 3))
    pairs = NeighborList(cutoff=rc, full_list=True)
    i, D, d = pairs.compute(atoms.positions, box, atoms.pbc.tolist(), quantities="iDd")
    # dg/dr = -2 m n r / rc^2 (1 - r^2/rc^2)^(n-1); D = r_j - r_i, so dr/dr_i = -D / r
    dg_dr = -2.0 * m * n * d / rc**2 * (1.0 - d**2 / rc**2) ** (n - 1)
    weight = dg_dr / np.maximum(d, 1e-12)
    np.add.at(forces, i, weight[:, None] * D)
    virial = 0.5 * np.einsum("e,ea,eb->ab", weight, D, D)  # the full list counts each pair twice
    return forces, virial


def repulsion_forces(atoms: Atoms, config: ResponseConfig) -> np.ndarray:
    """The repulsive forces of Eq. 10 alone."""
    return repulsion(atoms, config)[0]


def supercell(atoms: Atoms, width: float) -> Atoms:
    """The smallest diagonal supercell whose periodic directions are all at least ``width`` Å wide."""
    if width <= 0 or not atoms.pbc.any():
        return atoms
    repeats = [int(np.ceil(width / d)) if p else 1 for d, p in zip(plane_spacings(atoms.cell.array), atoms.pbc)]
    return atoms.repeat(repeats) if max(repeats) > 1 else atoms


def _displacements(n: int, config: ResponseConfig, rng: np.random.Generator) -> np.ndarray:
    """Random atomic displacements [n,3] (Å) drawn as ``config.displacement`` says."""
    if config.displacement == "ladder":
        level = config.max_displacement * config.ladder[rng.integers(len(config.ladder))]
        return rng.uniform(-level, level, size=(n, 3))
    directions = rng.normal(size=(n, 3))
    directions /= np.linalg.norm(directions, axis=1, keepdims=True)
    if config.displacement == "ball":
        lengths = config.max_displacement * rng.uniform(0.0, 1.0, size=(n, 1)) ** (1 / 3)
    else:
        lengths = rng.uniform(0.0, rng.uniform(0.0, config.max_displacement), size=(n, 1))
    return directions * lengths


def noise(atoms: Atoms, config: ResponseConfig, rng: np.random.Generator) -> NoisedSample:
    """One noised copy of an equilibrium structure (a supercell of it, if supercell_width asks) with its targets."""
    atoms = supercell(atoms, config.supercell_width)
    periodic = bool(atoms.pbc.all())
    strain = np.zeros((3, 3))
    if periodic and config.max_strain > 0:
        upper = rng.uniform(-config.max_strain, config.max_strain, size=(3, 3))
        strain = np.triu(upper) + np.triu(upper, 1).T
    if periodic and config.hydrostatic_strain > 0:
        strain = strain + rng.uniform(-config.hydrostatic_strain, config.hydrostatic_strain) * np.eye(3)
    deformation = np.eye(3) + strain
    step = _displacements(len(atoms), config, rng)

    noised = atoms.copy()
    noised.calc = None
    noised.info = {}
    noised.set_cell(atoms.cell.array @ deformation, scale_atoms=False)
    reference = atoms.positions @ deformation
    noised.positions = reference + step
    displacement = minimum_image(noised.positions - reference, noised.cell.array, noised.pbc)
    f_repulsion, w_repulsion = repulsion(noised, config)
    forces = -config.k * displacement + f_repulsion
    stress = np.zeros((3, 3))
    if periodic:
        stress = config.elastic_stress(strain)
        if config.virial:
            stress = stress + (config.k * displacement.T @ displacement + w_repulsion) / noised.get_volume()
    return NoisedSample(atoms=noised, forces=forces, stress=stress)


def noise_many(structures: Sequence[Atoms], config: ResponseConfig, seed: int | Sequence[int]) -> list[NoisedSample]:
    """Noised copies of ``structures`` from one seed (reproducible)."""
    rng = np.random.default_rng(seed)
    return [noise(a, config, rng) for a in structures]
