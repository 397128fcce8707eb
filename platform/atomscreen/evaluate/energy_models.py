"""Batched energy functions (relax.lbfgs.BatchEnergy) for energy-guided diffusion (Cho et al. 2023): the RM pseudo
potential, batched on its device; and any ASE calculator called molecule by molecule: GFN2-xTB and GFN-FF
(xtb-python), CHGNet, DFT (PySCF) or a factory 'module.path:function'. A molecule whose calculation raises comes back
with the error; the others go on.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import threading
from typing import Any

import numpy as np
import torch
from ase import Atoms

from atomscreen.relax.lbfgs import BatchEnergy, Evaluation

ASE_ENERGIES = ("xtb_gfn2", "xtb_gfnff", "chgnet", "dft")
_GFNFF_LOCK = threading.Lock()


def rm_energy(model: torch.nn.Module) -> BatchEnergy:
    """The RM pseudo potential on molecules (no cell, no images), on the model's device and dtype."""
    from atomscreen.atoms.batch import AtomsBatch
    from atomscreen.potentials.forces import compute

    parameter = next(model.parameters())

    def energy(numbers, positions, mol, n_mol, keys) -> Evaluation:
        batch = AtomsBatch(positions=positions.to(device=parameter.device, dtype=parameter.dtype),
                           numbers=numbers.to(parameter.device), system=mol.to(parameter.device),
                           cell=torch.zeros(n_mol, 3, 3, dtype=parameter.dtype, device=parameter.device),
                           pbc=torch.zeros(n_mol, 3, dtype=torch.bool, device=parameter.device))
        with torch.enable_grad():  # forces by autograd, also inside the samplers' no_grad
            out = compute(model, batch, stress=False)
        return Evaluation(out.energy.to(positions.device, torch.float64),
                          out.forces.to(positions.device, torch.float64), [None] * n_mol)

    return energy


def _flush_fortran() -> None:
    """Flush libgfortran's buffered units (xtb's own copy), so what GFN-FF printed goes to /dev/null, not to the
    process's stdout later."""
    import ctypes
    import glob

    import xtb

    for path in glob.glob(os.path.join(os.path.dirname(xtb.__file__), "..", "xtb.libs", "libgfortran*")):
        ctypes.CDLL(path)._gfortran_flush_i4(None)


@contextlib.contextmanager
def _quiet_scratch(folder: str):
    """GFN-FF writes its topology files (gfnff_topo, gfnff_adjacency) into the working directory and prints to
    the process's stdout whatever the verbosity: run it in a scratch folder with file descriptor 1 on /dev/null."""
    with _GFNFF_LOCK:
        here = os.getcwd()
        saved = os.dup(1)
        null = os.open(os.devnull, os.O_WRONLY)
        try:
            os.dup2(null, 1)
            os.chdir(folder)
            yield
        finally:
            with contextlib.suppress(Exception):
                _flush_fortran()
            os.chdir(here)
            os.dup2(saved, 1)
            os.close(saved)
            os.close(null)


def _calculator(method: str, options: dict[str, Any], device: str):
    if method == "xtb_gfnff":
        try:
            from xtb.ase.calculator import XTB
        except ImportError as exc:
            from atomscreen.evaluate.calculators import CalculatorError

            raise CalculatorError(f"xtb-python is not importable ({exc}); install the xtb package") from None
        return XTB(method="GFN-FF", **options)
    from atomscreen.evaluate.calculators import make_calculator

    return make_calculator("xtb" if method == "xtb_gfn2" else method, device, options)


def ase_energy(method: str, options: dict[str, Any] | None = None, device: str = "cpu",
               keep: int = 1024) -> BatchEnergy:
    """An ASE calculator as a batched energy, one molecule after another. Each molecule (by key) keeps its own
    calculator between calls (GFN-FF its topology, xtb and PySCF their last density), at most ``keep`` at a time.
    Bad options fail here, before any molecule."""
    options = dict(options or {})
    quiet = method == "xtb_gfnff"
    scratch = tempfile.mkdtemp(prefix="atomscreen-gfnff-") if quiet else None
    _calculator(method, options, device)  # unknown methods and bad options raise here
    calcs: dict[int, Any] = {}

    def one(key: int, numbers: np.ndarray, positions: np.ndarray) -> tuple[float, np.ndarray, str | None]:
        calc = calcs.get(key)
        if calc is None:
            if len(calcs) >= keep:
                calcs.clear()
            calc = calcs[key] = _calculator(method, options, device)
        atoms = Atoms(numbers=numbers, positions=positions)
        if method == "chgnet":  # a crystal model: the molecule in a periodic box with 15 Å of vacuum (forces unmoved)
            atoms.center(vacuum=7.5)
            atoms.pbc = True
        atoms.calc = calc
        try:  # torch calculators (CHGNet, a factory's MLIP) take forces by autograd, also inside the samplers' no_grad
            with _quiet_scratch(scratch) if quiet else contextlib.nullcontext(), torch.enable_grad():
                return float(atoms.get_potential_energy()), np.asarray(atoms.get_forces(), dtype=np.float64), None
        except Exception as exc:  # any calculator failure (SCF, topology, NaN) belongs to this molecule only
            calcs.pop(key, None)
            return float("nan"), np.full((len(numbers), 3), np.nan), f"{type(exc).__name__}: {exc}"[:300]

    def energy(numbers, positions, mol, n_mol, keys) -> Evaluation:
        z, x, m = numbers.cpu().numpy(), positions.detach().cpu().numpy(), mol.cpu().numpy()
        energies, forces, errors = np.zeros(n_mol), np.zeros_like(x), []
        for i, key in enumerate(keys.tolist()):
            atoms = m == i
            energies[i], forces[atoms], error = one(key, z[atoms], x[atoms])
            errors.append(error)
        return Evaluation(torch.as_tensor(energies, device=positions.device),
                          torch.as_tensor(forces, device=positions.device), errors)

    return energy
