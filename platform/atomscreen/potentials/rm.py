"""The Response-Matching pseudo potential: a local CACE-style model without message passing.

RM paper Eqs. 1-5: element embeddings theta; edge type T = theta_i (x) theta_j;
Bessel radial basis with a smooth cutoff; Cartesian angular basis up to l_max;
A features summed over neighbours (Eq. 3); rotation-invariant B features of body
order nu <= 3 by full tensor contraction (Eq. 4); an MLP to atomic energies
(Eq. 5); E = sum_i E_i (Eq. 1).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import torch
from torch import nn

from atomscreen.atoms.batch import AtomsBatch
from atomscreen.atoms.neighbors import neighbor_list
from atomscreen.potentials.basis import (
    bessel,
    einsum_for,
    polynomial_cutoff,
    symmetric_angular,
    symmetric_plan,
    three_body_patterns,
)

MAX_Z = 118


@dataclass(frozen=True)
class RMConfig:
    """Architecture hyperparameters (paper: r_cut 4-4.5 Å, l_max 2-3, nu_max 2-3, N_embedding 1-4)."""

    cutoff: float = 4.5  # Å
    l_max: int = 3
    nu_max: int = 3
    n_embedding: int = 1
    n_radial: int = 8
    # > 0: that many Bessel functions mixed linearly into n_radial learnable radial channels (as CACE does);
    # 0: n_radial fixed Bessel functions
    n_bessel: int = 0
    # with n_bessel: one mixing matrix for everything ("shared"), or one per angular order l and per edge-type
    # channel ("per_channel": every element pair gets its own radial functions per l, as the RM authors' QM7b model)
    radial_mixing: str = "shared"
    bessel_trainable: bool = False  # Bessel frequencies learned (initialised n pi / cutoff)
    envelope_p: int = 6  # polynomial cutoff envelope (the RM authors' QM7b model: 2)
    hidden: tuple[int, ...] = (24, 24)
    linear_readout: bool = False  # a linear map of the features to E_i added to the MLP's (CACE's add_linear_nn)
    neighbor_normalization: bool = True  # A divided by the training set's mean neighbour count (False: not at all)
    avg_neighbors: float = 10.0  # A features are divided by this so they stay O(1)
    elements: tuple[int, ...] = field(default_factory=tuple)  # atomic numbers the model knows; empty = all

    def __post_init__(self):
        if self.cutoff <= 0:
            raise ValueError(f"cutoff must be positive, got {self.cutoff}")
        if not 0 <= self.l_max <= 4:
            raise ValueError(f"l_max must be in 0..4, got {self.l_max}")
        if self.nu_max not in (1, 2, 3):
            raise ValueError(f"nu_max must be 1, 2 or 3, got {self.nu_max}")
        if self.n_embedding < 1 or self.n_radial < 1:
            raise ValueError("n_embedding and n_radial must be positive")
        if self.n_bessel < 0:
            raise ValueError(f"n_bessel must be >= 0, got {self.n_bessel}")
        if self.radial_mixing not in ("shared", "per_channel"):
            raise ValueError(f"radial_mixing must be shared or per_channel, got {self.radial_mixing!r}")
        if self.radial_mixing == "per_channel" and not self.n_bessel:
            raise ValueError("radial_mixing per_channel mixes n_bessel Bessel functions: set n_bessel (e.g. 6)")
        if self.envelope_p < 2:
            raise ValueError(f"envelope_p must be at least 2, got {self.envelope_p}")

    def to_dict(self) -> dict:
        d = asdict(self)
        d["hidden"] = list(self.hidden)
        d["elements"] = list(self.elements)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> RMConfig:
        d = dict(d)
        d["hidden"] = tuple(d.get("hidden", cls.hidden))
        d["elements"] = tuple(d.get("elements", ()))
        return cls(**d)


class RMPotential(nn.Module):
    """Pseudo energy per structure of an AtomsBatch (eV); forces and stress come from autograd (see forces.py)."""

    def __init__(self, config: RMConfig = RMConfig()):
        super().__init__()
        self.config = config
        self.embedding = nn.Embedding(MAX_Z + 1, config.n_embedding)
        nn.init.uniform_(self.embedding.weight, 0.5, 1.5)
        shared = config.n_bessel and config.radial_mixing == "shared"
        self.radial_mixing = nn.Linear(config.n_bessel, config.n_radial, bias=False) if shared else None
        if config.radial_mixing == "per_channel":  # [l, edge channel, n_radial, n_bessel], nn.Linear's init per matrix
            bound = 1.0 / config.n_bessel**0.5
            self.channel_mixing = nn.Parameter(torch.empty(config.l_max + 1, config.n_embedding**2, config.n_radial,
                                                           config.n_bessel).uniform_(-bound, bound))
        if config.bessel_trainable:
            n = config.n_bessel or config.n_radial
            self.frequencies = nn.Parameter(torch.arange(1, n + 1, dtype=torch.get_default_dtype()) * torch.pi
                                            / config.cutoff)
        self.patterns = [einsum_for(p) for p in three_body_patterns(config.l_max)] if config.nu_max >= 3 else []
        channels = config.n_embedding**2 * config.n_radial
        n_invariants = 1 + (config.l_max if config.nu_max >= 2 else 0) + len(self.patterns)
        self.mlp = _mlp(channels * n_invariants, config.hidden)
        self.linear = nn.Linear(channels * n_invariants, 1) if config.linear_readout else None
        if config.elements:
            known = torch.zeros(MAX_Z + 1, dtype=torch.bool)
            known[list(config.elements)] = True
        else:
            known = torch.ones(MAX_Z + 1, dtype=torch.bool)
        self.register_buffer("known_elements", known, persistent=False)

    @property
    def cutoff(self) -> float:
        return self.config.cutoff

    def descriptors(self, batch: AtomsBatch) -> torch.Tensor:
        """Invariant B features per atom [N, channels * invariants]."""
        cfg = self.config
        unknown = ~self.known_elements[batch.numbers]
        if unknown.any():
            z = sorted(set(batch.numbers[unknown].tolist()))
            raise ValueError(f"the model was not trained on atomic numbers {z}; it knows {list(cfg.elements)}")
        nb = neighbor_list(batch, cfg.cutoff)
        theta = self.embedding(batch.numbers)
        edge_type = (theta[nb.i][:, :, None] * theta[nb.j][:, None, :]).flatten(1)  # [E, C]
        radial = bessel(nb.distances, cfg.n_bessel or cfg.n_radial, cfg.cutoff, getattr(self, "frequencies", None))
        radial = radial * polynomial_cutoff(nb.distances, cfg.cutoff, cfg.envelope_p)[:, None]
        if self.radial_mixing is not None:
            radial = self.radial_mixing(radial)
        type_radial = (edge_type[:, :, None] * radial[:, None, :]).flatten(1)  # [E, C*n]
        # Eq. 3 on the distinct components of the symmetric angular tensors (20 instead of 40 for l_max = 3), then
        # expanded per atom to the full Cartesian layout [N, C*n, sum 3^l] the contractions read
        angular = symmetric_angular(nb.vectors / nb.distances[:, None], cfg.l_max)  # [E, sum (l+1)(l+2)/2]
        A_sym = _sum_outer_over_neighbours(nb.i, type_radial, angular, batch.positions.shape[0],
                                           nb.sorted_by_i) / cfg.avg_neighbors
        A_flat = A_sym[:, :, list(symmetric_plan(cfg.l_max)[1])]
        A = self._per_l(A_flat, edge_type.shape[1])
        return torch.cat(self._invariants(A), dim=1)

    def _per_l(self, A_flat: torch.Tensor, n_channels: int) -> list[torch.Tensor]:
        """A features per angular order l, [N, C*n_radial, 3, ..., 3]; with per-channel mixing the Bessel functions
        are mixed here, per l and per edge channel (exact: the mixing is linear, so it commutes with Eq. 3's sum)."""
        cfg, A, start = self.config, [], 0
        for ell in range(cfg.l_max + 1):
            block = A_flat[:, :, start : start + 3**ell]
            if cfg.radial_mixing == "per_channel":
                block = block.reshape(block.shape[0], n_channels, cfg.n_bessel, 3**ell)
                block = torch.einsum("ckn,acnm->ackm", self.channel_mixing[ell], block).flatten(1, 2)
            A.append(block.reshape(block.shape[:2] + (3,) * ell))
            start += 3**ell
        return A

    def _invariants(self, A: list[torch.Tensor]) -> list[torch.Tensor]:
        """B features of body order nu <= nu_max (Eq. 4): A_0, |A_l|^2, and the nu = 3 contractions."""
        cfg = self.config
        features = [A[0]]
        if cfg.nu_max >= 2:
            features += [A[ell].flatten(2).square().sum(dim=2) for ell in range(1, cfg.l_max + 1)]
        for equation, (l1, l2, l3) in self.patterns:
            features.append(torch.einsum(equation, A[l1], A[l2], A[l3]))
        return features

    def atomic_energies(self, batch: AtomsBatch) -> torch.Tensor:
        """E_i [N] (eV)."""
        features = self.descriptors(batch)
        energies = self.mlp(features).squeeze(-1)
        return energies if self.linear is None else energies + self.linear(features).squeeze(-1)

    def forward(self, batch: AtomsBatch) -> torch.Tensor:
        """Total pseudo energy per system [B] (eV)."""
        e_atoms = self.atomic_energies(batch)
        total = torch.zeros(batch.n_systems, dtype=e_atoms.dtype, device=e_atoms.device)
        return total.index_add_(0, batch.system, e_atoms)


def _mlp(width: int, hidden: tuple[int, ...]) -> nn.Sequential:
    """SiLU MLP from ``width`` features through ``hidden`` layers to one atomic energy (Eq. 5)."""
    layers: list[nn.Module] = []
    for size in hidden:
        layers += [nn.Linear(width, size), nn.SiLU()]
        width = size
    layers.append(nn.Linear(width, 1))
    return nn.Sequential(*layers)


def _sum_outer_over_neighbours(i: torch.Tensor, left: torch.Tensor, right: torch.Tensor, n_atoms: int,
                               presorted: bool = False) -> torch.Tensor:
    """A_i = sum over edges of atom i of left_e (x) right_e  [N, a, b], as one padded batched matmul.

    Equivalent to index_add of per-edge outer products (Eq. 3) without materialising [E, a, b]; edges already in
    non-decreasing i (``presorted``, a Verlet list's) skip the sort and its gathers.
    """
    if presorted:
        centre = i
    else:
        order = torch.argsort(i, stable=True)
        centre, left, right = i[order], left[order], right[order]
    counts = torch.bincount(centre, minlength=n_atoms)
    slot = torch.arange(centre.shape[0], device=i.device) - (torch.cumsum(counts, 0) - counts)[centre]
    width = int(counts.max()) if centre.numel() else 0
    padded_left = left.new_zeros(n_atoms, width, left.shape[1]).index_put_((centre, slot), left)
    padded_right = right.new_zeros(n_atoms, width, right.shape[1]).index_put_((centre, slot), right)
    return torch.bmm(padded_left.transpose(1, 2), padded_right)


def count_parameters(model: nn.Module) -> int:
    """Trainable parameters, counting only the embedding rows of the model's elements."""
    total = sum(p.numel() for name, p in model.named_parameters() if name != "embedding.weight")
    elements = getattr(model, "config", None)
    n_rows = len(elements.elements) if elements is not None and elements.elements else MAX_Z + 1
    return total + n_rows * model.embedding.weight.shape[1]
