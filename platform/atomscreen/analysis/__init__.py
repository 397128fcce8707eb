"""After generation: dedupe, rank and (pseudo) convex hulls; plain arrays and ASE Atoms in, plain results out."""

from atomscreen.analysis.dedupe import MatchSettings, representatives
from atomscreen.analysis.hull import HullPoint, SkippedSystem, pseudo_hulls
from atomscreen.analysis.ranking import rank

__all__ = ["HullPoint", "MatchSettings", "SkippedSystem", "pseudo_hulls", "rank", "representatives"]
