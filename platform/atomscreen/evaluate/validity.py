"""Chemical validity of 3D molecules: RDKit bond perception, the PoseBusters molecule checks, EDM valence stability.

Bonds and bond orders come from the coordinates alone (RDKit ``rdDetermineBonds``
with total charge 0); the molecule then goes through PoseBusters' ``mol``
configuration (Buttenschoen et al., Chem. Sci. 15, 3130 (2024)): sanitisation,
InChI, connectivity, radicals, bond lengths, angles and internal clashes
against distance-geometry bounds, ring and double-bond flatness, and the
force-field energy ratio against an ETKDG conformer ensemble. This is the
evaluation of the Response Matching paper's Fig. 2a. Perception and the
checks run in a child process per batch with a time limit per molecule
(:mod:`atomscreen.evaluate.isolated`), so a molecule that hangs RDKit is
recorded as ``timeout``.

EDM stability (Hoogeboom et al., ICML 2022) is the simpler count used by
diffusion papers: bond orders from interatomic distances against typical
single/double/triple bond lengths plus margins, and an atom is stable when
its bond orders add up to its usual valence.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
from ase import Atoms

from atomscreen.evaluate.isolated import map_isolated

# PoseBusters' boolean outputs (config "mol"), with names usable as SQL columns
POSEBUSTERS_CHECKS = {
    "sanitization": "sanitization",
    "inchi_convertible": "inchi_convertible",
    "all_atoms_connected": "all_atoms_connected",
    "no_radicals": "no_radicals",
    "bond_lengths": "bond_lengths",
    "bond_angles": "bond_angles",
    "internal_steric_clash": "internal_steric_clash",
    "aromatic_ring_flatness": "aromatic_ring_flatness",
    "non-aromatic_ring_non-flatness": "nonaromatic_ring_nonflatness",
    "double_bond_flatness": "double_bond_flatness",
    "internal_energy": "internal_energy",
}
CHECKS = ("bonds_determined", *POSEBUSTERS_CHECKS.values())  # the molecule_check columns, in table order
# short column headers for tables (`platform report`)
CHECK_LABELS = dict(zip(CHECKS, ("bonds", "sanit.", "InChI", "conn.", "no rad.", "lengths", "angles", "clash",
                                 "arom. flat", "ring pucker", "C=C flat", "energy")))
ENSEMBLE_ENERGY_FLOOR = 0.01  # kcal/mol: below it PoseBusters' energy ratio is not defined
# the second checker, closer to the RM paper's: Open Babel's bond perception (xyz -> MDL molfile), then the checks of
# PoseBusters' 2024 `mol` configuration (v0.2.12), the list the paper gives
OPENBABEL_CHECKS = ("sanitization", "all_atoms_connected", "bond_lengths", "bond_angles", "internal_steric_clash",
                    "aromatic_ring_flatness", "double_bond_flatness", "internal_energy")
OPENBABEL_COLUMNS = (*(f"ob_{c}" for c in OPENBABEL_CHECKS), "ob_passes_all")  # molecule_check columns
# MoreRed Table B1's validity (G-SchNet's rule on Open Babel bonds: connected, standard valences) and the Open Babel
# canonical SMILES its uniqueness and novelty compare (atomscreen.evaluate.generation)
MORERED_COLUMNS = ("connected_valence", "ob_smiles")


@dataclass
class Validity:
    """The checks of one molecule: ``status`` ok, error (the checks raised) or timeout (stopped after the limit);
    every check True/False, None when it could not run."""

    status: str
    checks: dict[str, bool | None] = field(default_factory=dict)
    smiles: str | None = None  # canonical, without stereochemistry, hydrogens implicit
    atoms_stable: float | None = None  # EDM: fraction of atoms with their usual valence
    molecule_stable: bool | None = None  # EDM: every atom stable
    error: str | None = None
    wall_time_s: float = 0.0

    @property
    def passes_all(self) -> bool:
        """Checked, bonds perceived, and no check failed (one that could not run, e.g. the energy ratio when RDKit
        cannot embed a conformer ensemble of a strained cage, does not count against it)."""
        return (self.status == "ok" and self.checks.get("bonds_determined") is True
                and not any(self.checks.get(c) is False for c in CHECKS))


def rdkit_molecule(atoms: Atoms, charge: int = 0):
    """An RDKit molecule with the 3D conformer of ``atoms`` and bonds and orders perceived from it (raises if none
    fit)."""
    from rdkit import Chem
    from rdkit.Chem import rdDetermineBonds
    from rdkit.Geometry import Point3D

    mol = Chem.RWMol()
    for z in atoms.numbers:
        mol.AddAtom(Chem.Atom(int(z)))
    conformer = Chem.Conformer(len(atoms))
    for i, (x, y, z) in enumerate(np.asarray(atoms.positions, dtype=float)):
        conformer.SetAtomPosition(i, Point3D(x, y, z))
    mol.AddConformer(conformer, assignId=True)
    mol = mol.GetMol()
    rdDetermineBonds.DetermineBonds(mol, charge=charge)
    return mol


def openbabel_molecule(atoms: Atoms):
    """An RDKit molecule (not sanitised) with the bonds and orders Open Babel perceives from the coordinates."""
    from openbabel import pybel
    from rdkit import Chem

    lines = [f"{s} {x:.8f} {y:.8f} {z:.8f}" for s, (x, y, z) in zip(atoms.get_chemical_symbols(), atoms.positions)]
    molblock = pybel.readstring("xyz", f"{len(atoms)}\n\n" + "\n".join(lines) + "\n").write("mol")
    mol = Chem.MolFromMolBlock(molblock, sanitize=False, removeHs=False)
    if mol is None:
        raise ValueError("RDKit cannot read Open Babel's molfile")
    return mol


def canonical_smiles(smiles: str) -> str | None:
    """RDKit canonical SMILES without stereochemistry (None if RDKit cannot parse it), for uniqueness and novelty."""
    from rdkit import Chem, RDLogger

    RDLogger.DisableLog("rdApp.*")
    mol = Chem.MolFromSmiles(smiles)
    return None if mol is None else Chem.MolToSmiles(mol, isomericSmiles=False)


_BUSTER = None


def _posebusters():
    global _BUSTER
    if _BUSTER is None:
        from posebusters import PoseBusters

        _BUSTER = PoseBusters(config="mol")
    return _BUSTER


def _check_one(item: tuple[np.ndarray, np.ndarray]) -> dict:
    """Runs in the child process: perception, PoseBusters, SMILES."""
    import warnings

    from rdkit import Chem, RDLogger

    RDLogger.DisableLog("rdApp.*")
    warnings.filterwarnings("ignore")
    numbers, positions = item
    atoms = Atoms(numbers=numbers, positions=positions)
    checks: dict[str, bool | None] = {**dict.fromkeys(CHECKS), **_openbabel_checks(atoms), **_morered(atoms)}
    try:
        mol = rdkit_molecule(atoms)
    except Exception as exc:  # no bond orders fit the geometry with charge 0
        checks.update(dict.fromkeys(CHECKS, False))
        return {"checks": checks, "smiles": None, "note": f"bond perception failed: {exc}"}
    checks["bonds_determined"] = True
    checks.update(_busted(mol, POSEBUSTERS_CHECKS))
    smiles = None
    if checks["sanitization"]:
        try:
            clean = Chem.Mol(mol)
            Chem.SanitizeMol(clean)
            smiles = Chem.MolToSmiles(Chem.RemoveHs(clean), isomericSmiles=False)
        except Exception:
            smiles = None
    return {"checks": checks, "smiles": smiles, "note": None}


def _busted(mol, names: dict[str, str]) -> dict[str, bool | None]:
    """PoseBusters' `mol` checks of ``mol``, renamed by ``names`` (PoseBusters name -> column); None: not run."""
    row = _posebusters().bust([mol], full_report=True).iloc[0]
    checks = {}
    for name, column in names.items():
        value = row.get(name)
        checks[column] = None if value is None or (isinstance(value, float) and np.isnan(value)) else bool(value)
    # the energy ratio divides by the mean force-field energy of an ETKDG ensemble; for molecules such as CH4, NH3
    # or H2O that mean is ~0 kcal/mol and the ratio is undefined (1e6-1e10 for their DFT geometries): not assessed
    ensemble = row.get("ensemble_avg_energy")
    energy = next(c for n, c in names.items() if n == "internal_energy")
    if ensemble is not None and np.isfinite(ensemble) and abs(float(ensemble)) < ENSEMBLE_ENERGY_FLOOR:
        checks[energy] = None
    return checks


def _openbabel_checks(atoms: Atoms) -> dict[str, bool | None]:
    """The Open Babel checker's columns: PoseBusters' 2024 checks on Open Babel's bonds, and whether none failed."""
    try:
        mol = openbabel_molecule(atoms)
    except Exception:  # Open Babel or RDKit could not read the geometry: every check fails
        return {**dict.fromkeys(OPENBABEL_COLUMNS[:-1], False), "ob_passes_all": False}
    checks = _busted(mol, {c: f"ob_{c}" for c in OPENBABEL_CHECKS})
    return {**checks, "ob_passes_all": not any(v is False for v in checks.values())}


def _morered(atoms: Atoms) -> dict:
    from atomscreen.evaluate.generation import connected_valence

    try:
        valid, smiles = connected_valence(atoms.numbers, atoms.positions)
    except Exception:  # Open Babel could not read the geometry
        return {"connected_valence": False, "ob_smiles": None}
    return {"connected_valence": valid, "ob_smiles": smiles}


def check_molecules(structures: Sequence[Atoms], timeout_s: float | None = 30.0) -> list[Validity]:
    """Validity of each molecule (perception and PoseBusters in a child process, ``timeout_s`` per molecule) and
    its EDM stability."""
    items = [(np.asarray(a.numbers), np.asarray(a.positions, dtype=float)) for a in structures]
    outcomes = map_isolated("atomscreen.evaluate.validity:_check_one", items, timeout_s)
    out = []
    for atoms, outcome in zip(structures, outcomes):
        stable = edm_stability(atoms)
        common = {"atoms_stable": stable[0], "molecule_stable": stable[1], "wall_time_s": outcome.wall_time_s}
        if outcome.status == "ok":
            v = outcome.value
            out.append(Validity("ok", v["checks"], v["smiles"], error=v["note"], **common))
        else:
            out.append(Validity(outcome.status, dict.fromkeys(CHECKS + OPENBABEL_COLUMNS + MORERED_COLUMNS), None,
                                error=outcome.error,
                                **common))
    return out


# --- EDM valence stability ----------------------------------------------------------------------------------------

# Typical bond lengths in pm (single, double, triple) of organic molecules, from standard tables of covalent bond
# lengths; the margins (EDM's) widen them by 10, 5 and 3 pm.
_SINGLE = {("H", "H"): 74, ("C", "H"): 109, ("H", "N"): 101, ("H", "O"): 96, ("F", "H"): 92, ("C", "C"): 154,
           ("C", "N"): 147, ("C", "O"): 143, ("C", "F"): 135, ("N", "N"): 145, ("N", "O"): 140, ("F", "N"): 136,
           ("O", "O"): 148, ("F", "O"): 142, ("F", "F"): 142}
_DOUBLE = {("C", "C"): 134, ("C", "N"): 129, ("C", "O"): 120, ("N", "N"): 125, ("N", "O"): 121, ("O", "O"): 121}
_TRIPLE = {("C", "C"): 120, ("C", "N"): 116, ("N", "N"): 110, ("C", "O"): 113}
_MARGINS = (10, 5, 3)
VALENCE = {"H": 1, "C": 4, "N": 3, "O": 2, "F": 1}


def bond_order(a: str, b: str, distance: float) -> int:
    """EDM's bond order from a distance in Å: the highest order whose typical length plus margin exceeds it."""
    key = tuple(sorted((a, b)))
    d = 100.0 * distance  # pm
    if key not in _SINGLE or d >= _SINGLE[key] + _MARGINS[0]:
        return 0
    if key in _DOUBLE and d < _DOUBLE[key] + _MARGINS[1]:
        if key in _TRIPLE and d < _TRIPLE[key] + _MARGINS[2]:
            return 3
        return 2
    return 1


def edm_stability(atoms: Atoms) -> tuple[float | None, bool | None]:
    """(fraction of atoms whose bond orders sum to their valence, whether all do); (None, None) for elements
    outside H, C, N, O, F."""
    symbols = atoms.get_chemical_symbols()
    if not symbols or any(s not in VALENCE for s in symbols):
        return None, None
    distances = atoms.get_all_distances()
    valence = np.zeros(len(symbols), dtype=int)
    for i in range(len(symbols)):
        for j in range(i + 1, len(symbols)):
            order = bond_order(symbols[i], symbols[j], distances[i, j])
            valence[i] += order
            valence[j] += order
    stable = np.array([valence[i] == VALENCE[s] for i, s in enumerate(symbols)])
    return float(stable.mean()), bool(stable.all())
