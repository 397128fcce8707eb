"""Settings of energy-guided generation (Cho et al. 2023): guidance, the accept/reject test and post-relaxation.
Plain dataclasses without torch, so campaign jobs can carry them."""

from __future__ import annotations

from dataclasses import dataclass

TARGETS = ("x0", "xt")


@dataclass(frozen=True)
class GuidanceSettings:
    """Where, how often and how hard the energy model steers the reverse process."""

    start: float = 0.8  # fraction of the T steps done before guidance begins (Cho et al.: 80 %)
    every: int = 10  # reverse steps between two interventions on one molecule (the paper leaves it open)
    iterations: int = 30  # optimizer steps per intervention (Cho et al.: at most 30)
    target: str = "x0"
    optimizer: str = "lbfgs"  # lbfgs (with a line search) or fire
    fmax: float = 0.05  # eV/Å: an intervention stops early below this force
    maxstep: float = 0.2  # Å per optimizer step

    def __post_init__(self) -> None:
        if not 0.0 <= self.start < 1.0:
            raise ValueError(f"guidance start must lie in [0, 1), got {self.start}")
        if self.every < 1 or self.iterations < 1:
            raise ValueError(f"guidance every and iterations must be >= 1, got {self.every}, {self.iterations}")
        if self.target not in TARGETS:
            raise ValueError(f"guidance target must be one of {', '.join(TARGETS)}, got {self.target!r}")
        if self.optimizer not in ("lbfgs", "fire"):
            raise ValueError(f"guidance optimizer must be lbfgs or fire, got {self.optimizer!r}")

    def window(self, T: int) -> int:
        """The highest step that is guided."""
        return int((1.0 - self.start) * T)


@dataclass(frozen=True)
class AcceptSettings:
    """The stability test: accept when the energy falls monotonically by at most ``threshold_mev_per_atom``."""

    threshold_mev_per_atom: float = 25.0  # Cho et al.: 25 meV/atom (~kT at 300 K)
    max_restarts: int = 3
    steps: int = 200  # optimizer steps of the test
    fmax: float = 0.05  # eV/Å: the test ends when converged
    rise_tolerance_ev: float = 1e-6  # an energy rise below this is numerical noise (SCF), not a barrier

    def __post_init__(self) -> None:
        if self.threshold_mev_per_atom <= 0 or self.max_restarts < 0 or self.steps < 1 or self.fmax <= 0:
            raise ValueError(f"accept needs threshold > 0, max_restarts >= 0, steps >= 1 and fmax > 0, got {self}")


@dataclass(frozen=True)
class PostRelaxSettings:
    """Post-relaxation of accepted molecules on the energy model (Cho et al.: to convergence, no step limit)."""

    fmax: float = 0.01  # eV/Å
    max_steps: int = 1000
    optimizer: str = "lbfgs"
    record_every: int = 10

    def __post_init__(self) -> None:
        if self.fmax <= 0 or self.max_steps < 1 or self.record_every < 0:
            raise ValueError(f"post_relax needs fmax > 0, max_steps >= 1 and record_every >= 0, got {self}")
