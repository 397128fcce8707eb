"""Names shared by the campaign spec, the jobs and the store: the pseudo-energy method and the default model."""

from __future__ import annotations

PSEUDO = "rm_pseudo"  # energy method of the default RM pseudo potential
DEFAULT_MODEL = "default"  # the model a campaign's plain `model:` key names


def pseudo_method(model: str) -> str:
    """Energy method name of structures relaxed on the RM model named ``model``: rm_pseudo for the default model,
    rm_pseudo:NAME for the others (energies of different potentials are never ranked together)."""
    return PSEUDO if model == DEFAULT_MODEL else f"{PSEUDO}:{model}"
