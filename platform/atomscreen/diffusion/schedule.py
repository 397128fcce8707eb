"""The polynomial_2 noise schedule of EDM / MoreRed (T = 1000, precision s = 1e-5), in float64.

Convention (stored with every checkpoint): integer steps t = 0..T, the network's time is t / T, and
abar_t = (1 - 2 s) * clip((1 - (t/T)^2)^2) + s, where clip keeps every step ratio abar_t / abar_{t-1} >= 0.001
(EDM's clip_noise_schedule; it only acts in the last step). beta_t = 1 - abar_t / abar_{t-1}.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

CONVENTION = "t in 0..T, time input t/T, time target t/T"


@dataclass(frozen=True)
class Schedule:
    """Tabulated schedule on t = 0..T (float64 tensors of length T + 1; index t)."""

    T: int
    s: float
    alpha_bar: torch.Tensor  # abar_t, MoreRed eq. 2
    beta: torch.Tensor  # beta_t (beta_0 = 0)
    posterior_variance: torch.Tensor  # sigma_t^2 of MoreRed eq. 3 (0 at t = 0)

    @property
    def sqrt_alpha_bar(self) -> torch.Tensor:
        return self.alpha_bar.sqrt()

    @property
    def sigma(self) -> torch.Tensor:
        """Noise standard deviation of x_t given x_0, Å per Cartesian component."""
        return (1.0 - self.alpha_bar).sqrt()

    def to_dict(self) -> dict:
        return {"name": "polynomial_2", "T": self.T, "s": self.s, "convention": CONVENTION}


def polynomial_schedule(T: int = 1000, s: float = 1e-5, power: float = 2.0, clip: float = 0.001) -> Schedule:
    """EDM's polynomial schedule (power 2 is MoreRed's 'polynomial approximation of the cosine schedule')."""
    if T < 1 or not 0.0 < s < 0.5:
        raise ValueError(f"schedule needs T >= 1 and 0 < s < 0.5, got T={T}, s={s}")
    t = np.arange(T + 1, dtype=np.float64)
    raw = (1.0 - (t / T) ** power) ** 2
    ratios = np.clip(raw / np.concatenate([[1.0], raw[:-1]]), clip, 1.0)
    alpha_bar = (1.0 - 2.0 * s) * np.cumprod(ratios) + s
    beta = np.concatenate([[0.0], 1.0 - alpha_bar[1:] / alpha_bar[:-1]])
    posterior = np.concatenate([[0.0], (1.0 - alpha_bar[:-1]) / (1.0 - alpha_bar[1:]) * beta[1:]])
    as_tensor = lambda a: torch.as_tensor(a, dtype=torch.float64)  # noqa: E731
    return Schedule(T, s, as_tensor(alpha_bar), as_tensor(beta), as_tensor(posterior))


def schedule_from_dict(data: dict) -> Schedule:
    """The schedule a checkpoint was trained with."""
    if data.get("name") != "polynomial_2" or data.get("convention") != CONVENTION:
        raise ValueError(f"unknown schedule {data!r} (this build knows polynomial_2 with '{CONVENTION}')")
    return polynomial_schedule(int(data["T"]), float(data["s"]))
