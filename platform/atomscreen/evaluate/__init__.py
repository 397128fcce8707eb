"""Real-physics evaluation: ASE calculators for re-scoring (CHGNet, GFN2-xTB, any factory) and structure matching."""

from atomscreen.evaluate.calculators import CalculatorError, make_calculator, method_name
from atomscreen.evaluate.match import MatchSettings, ReferenceMatch, match_references

__all__ = ["CalculatorError", "MatchSettings", "ReferenceMatch", "make_calculator", "match_references", "method_name"]
