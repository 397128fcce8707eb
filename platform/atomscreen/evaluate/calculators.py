"""ASE calculators for re-scoring, by name: ``chgnet`` (pretrained weights shipped in the package), ``xtb``
(GFN2-xTB via xtb-python), or any factory ``module.path:function`` that returns an ASE calculator.

Calculators are built once per process and reused (loading CHGNet takes seconds); xtb's calculator keeps
per-structure state, so a fresh one is made each time.
"""

from __future__ import annotations

import importlib
from typing import Any

BUILTIN_NAMES = {"chgnet": "chgnet", "xtb": "xtb_gfn2"}
_CACHE: dict[tuple[str, str], Any] = {}


class CalculatorError(RuntimeError):
    """A calculator that cannot be made (package missing, factory not found or returning something else)."""


def method_name(method: str) -> str:
    """The energy method stored for a re-scoring method: chgnet -> chgnet, xtb -> xtb_gfn2, 'pkg.mod:f' -> 'pkg.mod:f'."""
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


def make_calculator(method: str, device: str = "cpu"):
    """An ASE calculator for ``method`` (see the module docstring); raises CalculatorError with the reason if impossible."""
    if method == "xtb":
        try:
            from xtb.ase.calculator import XTB
        except ImportError as exc:
            raise CalculatorError(f"xtb-python is not importable ({exc}); install the xtb package") from None
        return XTB(method="GFN2-xTB")
    key = (method, device)
    if key in _CACHE:
        return _CACHE[key]
    if method == "chgnet":
        try:
            from chgnet.model.dynamics import CHGNetCalculator
        except ImportError as exc:
            raise CalculatorError(f"chgnet is not importable ({exc}); install the chgnet package") from None
        calc = CHGNetCalculator(use_device=device)
    elif ":" in method:
        calc = _factory(method)()
        if not callable(getattr(calc, "get_potential_energy", None)):
            raise CalculatorError(f"calculator {method!r} returned {type(calc).__name__}, not an ASE calculator")
    else:
        raise CalculatorError(f"unknown re-scoring method {method!r}; allowed: chgnet, xtb, or 'module.path:function'")
    _CACHE[key] = calc
    return calc
