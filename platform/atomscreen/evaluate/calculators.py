"""ASE calculators for re-scoring, by name: ``chgnet`` (pretrained weights shipped in the package), ``xtb`` (GFN2-xTB
via xtb-python), ``dft`` (PySCF, evaluate.dft; B3LYP/6-31G(2df,p) by default), or any factory
``module.path:function`` that returns an ASE calculator. Calculators are built once per process and reused (loading
CHGNet takes seconds); xtb's calculator keeps per-structure state, so a fresh one is made each time (and so does DFT,
whose density seeds the next geometry).
"""

from __future__ import annotations

import dataclasses
import importlib
import inspect
from typing import Any, Sequence

from ase import Atoms

from atomscreen.errors import AtomscreenError
from atomscreen.evaluate.isolated import map_isolated
from atomscreen.relax.ase_relax import CalcResult, CalcSettings, calculate
from atomscreen.relax.trajectory import RelaxStatus

BUILTIN_NAMES = {"chgnet": "chgnet", "xtb": "xtb_gfn2", "dft": "dft"}
FRESH_PER_STRUCTURE = ("xtb", "dft")  # calculators that keep per-structure state
XTB_OPTIONS = ("accuracy", "electronic_temperature", "max_iterations", "solvent")
_CACHE: dict[tuple[str, str, str], Any] = {}


class CalculatorError(AtomscreenError, RuntimeError):
    """A calculator that cannot be made (package missing, factory not found or returning something else)."""


def method_name(method: str) -> str:
    """The energy method stored for a re-scoring method: chgnet -> chgnet, xtb -> xtb_gfn2,
    'pkg.mod:f' -> 'pkg.mod:f'."""
    return BUILTIN_NAMES.get(method, method)


def _factory(path: str):
    module_name, _, attr = path.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise CalculatorError(f"calculator {path!r}: cannot import module {module_name!r} ({exc})") from None
    try:
        return getattr(module, attr)
    except AttributeError:
        raise CalculatorError(f"calculator {path!r}: module {module_name!r} has no attribute {attr!r}") from None


def check_options(path: str, options: dict[str, Any]) -> None:
    """Refuse, before any task runs, options that the factory ``path`` cannot take: keywords outside its signature,
    or, for an ASE calculator class taking ``**kwargs``, outside its ``default_parameters`` (ASE keeps unknown keywords
    without a word). A factory taking ``**kwargs`` that is not such a class is trusted."""
    factory = _factory(path)
    try:
        signature = inspect.signature(factory)
    except (TypeError, ValueError):  # a builtin without a signature
        return
    named = [p.name for p in signature.parameters.values()
             if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) and p.name != "self"]
    takes_any = any(p.kind == p.VAR_KEYWORD for p in signature.parameters.values())
    if takes_any and inspect.isclass(factory):
        from ase.calculators.calculator import BaseCalculator

        if not issubclass(factory, BaseCalculator):
            return
        allowed = sorted({*named, *getattr(factory, "default_parameters", {}), "label", "directory", "atoms",
                          "restart", "ignore_bad_restart_file"})
    elif takes_any:
        return
    else:
        allowed = named
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        raise CalculatorError(f"calculator {path!r} takes no option(s) {unknown}; it takes: {', '.join(allowed)}")


def make_calculator(method: str, device: str = "cpu", options: dict[str, Any] | None = None):
    """An ASE calculator for ``method`` (see the module docstring), built with keyword ``options`` (xtb: accuracy,
    electronic_temperature, max_iterations, solvent); raises CalculatorError with the reason if impossible."""
    options = dict(options or {})
    if method == "xtb":
        unknown = sorted(set(options) - set(XTB_OPTIONS))
        if unknown:
            raise CalculatorError(f"xtb options {unknown} are unknown; allowed: {', '.join(XTB_OPTIONS)}")
        try:
            from xtb.ase.calculator import XTB
        except ImportError as exc:
            raise CalculatorError(f"xtb-python is not importable ({exc}); install the xtb package") from None
        return XTB(method="GFN2-xTB", **options)
    if method == "dft":
        from atomscreen.evaluate.dft import PySCFCalculator

        try:
            return PySCFCalculator(device=device, **options)
        except (ValueError, ImportError) as exc:
            raise CalculatorError(str(exc)) from None
    key = (method, device, repr(sorted(options.items())))
    if key in _CACHE:
        return _CACHE[key]
    if method == "chgnet":
        try:
            from chgnet.model.dynamics import CHGNetCalculator
        except ImportError as exc:
            raise CalculatorError(f"chgnet is not importable ({exc}); install the chgnet package") from None
        try:
            calc = CHGNetCalculator(use_device=device, **options)
        except TypeError as exc:
            raise CalculatorError(f"chgnet options {sorted(options)}: {exc}") from None
    elif ":" in method:
        try:
            calc = _factory(method)(**options)
        except TypeError as exc:
            raise CalculatorError(f"calculator {method!r} with options {sorted(options)}: {exc}") from None
        if not callable(getattr(calc, "get_potential_energy", None)):
            raise CalculatorError(f"calculator {method!r} returned {type(calc).__name__}, not an ASE calculator")
    else:
        raise CalculatorError(f"unknown re-scoring method {method!r}; allowed: chgnet, xtb, dft, or "
                              "'module.path:function'")
    _CACHE[key] = calc
    return calc


def _calculate_item(item: tuple[str, dict[str, Any], dict[str, Any], Atoms]) -> CalcResult:
    """One structure in a child process of :func:`calculate_all` (a fresh calculator there)."""
    method, options, settings, atoms = item
    return calculate(atoms, make_calculator(method, "cpu", options), CalcSettings(**settings))


def calculate_all(structures: Sequence[Atoms], method: str, settings: CalcSettings, *,
                  options: dict[str, Any] | None = None, timeout_s: float | None = None, device: str = "cpu",
                  threads: int = 1) -> list[CalcResult]:
    """Relax (or single-point) every structure with ``method``; a structure that fails or, with ``timeout_s``, runs
    longer than that many seconds comes back with status 'failed' and the reason. With a timeout each structure runs
    in a child process (on the CPU) that is killed when it is late; without one, here."""
    if timeout_s is None:
        fresh = method in FRESH_PER_STRUCTURE
        calc = None if fresh else make_calculator(method, device, options)
        return [calculate(atoms, make_calculator(method, device, options) if fresh else calc, settings)
                for atoms in structures]
    if method in FRESH_PER_STRUCTURE:
        make_calculator(method, "cpu", options)  # bad options fail the whole call here, not once per structure
    items = [(method, dict(options or {}), dataclasses.asdict(settings), atoms) for atoms in structures]
    out = []
    outcomes = map_isolated("atomscreen.evaluate.calculators:_calculate_item", items, timeout_s, threads=threads)
    for atoms, outcome in zip(structures, outcomes):
        if outcome.status == "ok":
            out.append(outcome.value)
        else:
            reason = f"timeout: {outcome.error}" if outcome.status == "timeout" else outcome.error
            out.append(CalcResult(atoms.copy(), RelaxStatus.FAILED, None, None, 0, outcome.wall_time_s, error=reason))
    return out


def single_points(
    frames: Sequence[Atoms], method: str, *, options: dict[str, Any] | None = None, timeout_s: float | None = None,
    device: str = "cpu",
) -> tuple[list[float], list[float], list[str | None]]:
    """Energy (eV) and largest force (eV/Å) of ``method`` at each frame, NaN where it failed (with the reason)."""
    results = calculate_all(frames, method, CalcSettings(relax=False, trajectory_every=0), options=options,
                            timeout_s=timeout_s, device=device)
    nan = float("nan")
    return ([nan if r.energy is None else r.energy for r in results],
            [nan if r.fmax is None else r.fmax for r in results],
            [r.error for r in results])
