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
import weakref
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


def _molecule_energy(method: str, options: dict[str, Any], device: str, keep: int):
    """(key, numbers, positions) -> (energy, forces, error) for one molecule; each key keeps its own calculator
    (GFN-FF its topology, xtb and PySCF their last density), at most ``keep`` at a time."""
    quiet = method == "xtb_gfnff"
    scratch = tempfile.mkdtemp(prefix="atomscreen-gfnff-") if quiet else None
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

    return one


_CHILD_MODELS: dict[tuple, Any] = {}


def child_call(item: tuple) -> tuple[float, np.ndarray, str | None]:
    """One molecule's energy inside the isolated child process (evaluate.isolated); the child keeps one
    ``_molecule_energy`` per (method, options, device, keep), so calculators live across calls."""
    method, options, device, keep, key, numbers, positions = item
    spec = (method, repr(sorted(options.items())), device, keep)
    if spec not in _CHILD_MODELS:
        _CHILD_MODELS[spec] = _molecule_energy(method, options, device, keep)
    return _CHILD_MODELS[spec](key, numbers, positions)


class _Isolated:
    """One persistent child process for ``child_call``; a fresh one replaces it when it dies."""

    def __init__(self, method: str, options: dict[str, Any], device: str, keep: int):
        from atomscreen.evaluate.isolated import start_child

        self.spec, self.start, self.child = (method, options, device, keep), start_child, None
        self.died = 0
        weakref.finalize(self, _Isolated._close, self.__dict__)

    @staticmethod
    def _close(state: dict) -> None:
        if state.get("child") is not None:
            state["child"].close(kill=True)

    def __call__(self, key: int, numbers: np.ndarray, positions: np.ndarray) -> tuple[float, np.ndarray, str | None]:
        if self.child is None:
            self.child = self.start("atomscreen.evaluate.energy_models:child_call", threads=1)
        outcome = self.child.ask((*self.spec, key, numbers, positions), None)
        if outcome.status == "ok":
            return outcome.value
        if self.child.proc.poll() is not None:  # a crash of native code (libxtb's abort): this molecule fails only
            self.child.close(kill=True)
            self.child, self.died = None, self.died + 1
        return float("nan"), np.full((len(numbers), 3), np.nan), (outcome.error or "the child process failed")[:300]


def ase_energy(method: str, options: dict[str, Any] | None = None, device: str = "cpu",
               keep: int = 1024, isolate: bool | None = None) -> BatchEnergy:
    """An ASE calculator as a batched energy, one molecule after another, each molecule (by key) keeping its own
    calculator between calls. ``isolate`` (default: for xtb) runs the calculators in a child process, so an abort
    inside native code fails the molecule it was computing, not the process. Bad options fail here."""
    options = dict(options or {})
    _calculator(method, options, device)  # unknown methods and bad options raise here, before any molecule
    if isolate is None:
        isolate = method in ("xtb_gfn2", "xtb_gfnff")
    one = _Isolated(method, options, device, keep) if isolate else _molecule_energy(method, options, device, keep)

    def energy(numbers, positions, mol, n_mol, keys) -> Evaluation:
        z, x, m = numbers.cpu().numpy(), positions.detach().cpu().numpy(), mol.cpu().numpy()
        energies, forces, errors = np.zeros(n_mol), np.zeros_like(x), []
        for i, key in enumerate(keys.tolist()):
            atoms = m == i
            energies[i], forces[atoms], error = one(int(key), z[atoms], x[atoms])
            errors.append(error)
        return Evaluation(torch.as_tensor(energies, device=positions.device),
                          torch.as_tensor(forces, device=positions.device), errors)

    energy.molecule_energy = one  # the isolated child's crash count (``died``) is read by tests and benchmarks
    return energy
