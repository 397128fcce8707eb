"""Energy models: the RM pseudo potential, autograd forces/stress, fictitious responses and training."""

from atomscreen.potentials.calculator import RMCalculator
from atomscreen.potentials.forces import EnergyModel, Response, compute
from atomscreen.potentials.rm import RMConfig, RMPotential, count_parameters

__all__ = ["EnergyModel", "RMCalculator", "RMConfig", "RMPotential", "Response", "compute", "count_parameters"]
