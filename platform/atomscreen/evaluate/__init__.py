"""Real-physics evaluation: ASE calculators for re-scoring (CHGNet, GFN2-xTB, any factory), structure matching,
chemical validity of molecules, and time-limited child processes.

Names are imported on first use (pymatgen, RDKit and torch load slowly; a child process needs only its own part).
"""

from importlib import import_module

_NAMES = {"CalculatorError": "calculators", "make_calculator": "calculators", "method_name": "calculators",
          "calculate_all": "calculators",
          "MatchSettings": "match", "ReferenceMatch": "match", "match_references": "match",
          "Validity": "validity", "check_molecules": "validity",
          "map_isolated": "isolated"}

__all__ = sorted(_NAMES)


def __getattr__(name: str):
    if name in _NAMES:
        return getattr(import_module(f"atomscreen.evaluate.{_NAMES[name]}"), name)
    raise AttributeError(f"module 'atomscreen.evaluate' has no attribute {name!r}")
