"""The denoiser: a PaiNN backbone (Schütt et al., ICML 2021) with an equivariant noise head and an invariant time head.

MoreRed App. C (Kahouli et al. 2024): PaiNN with Gaussian radial functions under a cosine cutoff, every pair of atoms
of a molecule connected (the cutoff still shapes the filters), and two heads of gated equivariant blocks whose widths
halve layer by layer. The time t/T enters the noise head as one more scalar feature per atom (the MoreRed code's
choice: appending it to the vector features, as the paper's Fig. C2 caption says, would break equivariance). The
time head reads only the backbone's scalars, so it predicts t from the positions alone (MoreRed-JT, eq. 6).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class DenoiserConfig:
    """Sizes of the denoiser. The MoreRed paper's model: 256 features, 3 interactions, 20 radial functions, 5 Å."""

    elements: tuple[int, ...] = (1, 6, 7, 8, 9)  # atomic numbers it knows, in embedding order
    features: int = 64
    interactions: int = 3
    radial: int = 20
    cutoff: float = 5.0  # Å
    head_layers: int = 3
    max_atoms: int = 29  # the largest molecule of its training set

    def __post_init__(self):
        if self.features < 4 or self.interactions < 1 or self.radial < 1 or self.head_layers < 1:
            raise ValueError(f"denoiser sizes must be positive (features >= 4), got {self}")
        if self.cutoff <= 0 or len(set(self.elements)) != len(self.elements) or not self.elements:
            raise ValueError(f"denoiser needs a positive cutoff and distinct elements, got {self}")

    def to_dict(self) -> dict:
        return {**asdict(self), "elements": list(self.elements)}

    @classmethod
    def from_dict(cls, data: dict) -> DenoiserConfig:
        return cls(**{**data, "elements": tuple(int(z) for z in data["elements"])})


def size_groups(mol: torch.Tensor, n_mol: int) -> list[torch.Tensor]:
    """Atom index tables [b, n], one per molecule size n: the b molecules of that size, atoms in order (atoms come
    grouped molecule by molecule). Molecules never interact, so each group runs as dense [b, n, n] arrays."""
    counts = torch.bincount(mol, minlength=n_mol)
    starts = torch.cumsum(counts, 0) - counts
    groups = []
    for n in torch.unique(counts).tolist():
        if n == 0:
            continue
        members = torch.nonzero(counts == n).squeeze(1)
        groups.append(starts[members][:, None] + torch.arange(n, device=mol.device))
    return groups


class _Radial(nn.Module):
    def __init__(self, n: int, cutoff: float):
        super().__init__()
        self.cutoff = cutoff
        self.register_buffer("centres", torch.linspace(0.0, cutoff, n), persistent=False)
        self.width = cutoff / max(n - 1, 1)

    def forward(self, r: torch.Tensor) -> torch.Tensor:
        """Gaussian radial functions [..., R]."""
        return torch.exp(-0.5 * ((r[..., None] - self.centres.to(r.dtype)) / self.width) ** 2)

    def envelope(self, r: torch.Tensor) -> torch.Tensor:
        """Cosine cutoff, applied to the filters (so a pair beyond the cutoff contributes exactly nothing)."""
        return 0.5 * (torch.cos(math.pi * r / self.cutoff) + 1.0) * (r < self.cutoff)


class _Interaction(nn.Module):
    """One PaiNN message + update block (Schütt et al. 2021, eqs. 7-12) on one size group of molecules."""

    def __init__(self, f: int, radial: int):
        super().__init__()
        self.phi = nn.Sequential(nn.Linear(f, f), nn.SiLU(), nn.Linear(f, 3 * f))
        self.filter = nn.Linear(radial, 3 * f)
        self.U = nn.Linear(f, f, bias=False)
        self.V = nn.Linear(f, f, bias=False)
        self.update = nn.Sequential(nn.Linear(2 * f, f), nn.SiLU(), nn.Linear(f, 3 * f))
        self.f = f

    def forward(self, s, v, radial, unit, first: bool):
        """s [b, n, F], v [b, n, 3, F]; ``radial`` [b, n, n, R + 1]: the radial functions times the cutoff, then the
        cutoff itself (so one product gives filter(rbf) * fcut, bias included); unit [b, n, n, 3]: (x_i - x_j) / r,
        zero on the diagonal. ``first``: v is still zero, so its message term is skipped."""
        f = self.f
        w = radial @ torch.cat([self.filter.weight, self.filter.bias[:, None]], 1).t()
        w_s, w_vv, w_vs = w.split(f, dim=-1)
        phi_s, phi_vv, phi_vs = self.phi(s).split(f, dim=-1)
        s = s + torch.einsum("bijf,bjf->bif", w_s, phi_s)  # eq. 7: sum over neighbours j
        dv = torch.einsum("bijf,bijc->bicf", w_vs * phi_vs[:, None], unit)  # eq. 8, the direction term
        if not first:
            dv = dv + torch.einsum("bijf,bjcf->bicf", w_vv, phi_vv[:, :, None, :] * v)
        v = v + dv
        uv, vv = self.U(v), self.V(v)
        norm = torch.sqrt((vv ** 2).sum(dim=2) + 1e-8)
        a_vv, a_sv, a_ss = self.update(torch.cat([s, norm], dim=-1)).split(f, dim=-1)
        v = v + a_vv[:, :, None, :] * uv
        s = s + a_sv * (uv * vv).sum(dim=2) + a_ss
        return s, v


class _Gated(nn.Module):
    """Gated equivariant block (Schütt et al. 2021, Fig. 3): scalars gate the vectors, vector norms feed the scalars."""

    def __init__(self, f_in: int, f_out: int, last: bool):
        super().__init__()
        self.W1 = nn.Linear(f_in, f_out, bias=False)
        self.W2 = nn.Linear(f_in, f_out, bias=False)
        self.mlp = nn.Sequential(nn.Linear(f_in + f_out, f_in), nn.SiLU(), nn.Linear(f_in, 2 * f_out))
        self.last, self.f_out = last, f_out

    def forward(self, s, v):
        v2 = self.W2(v)
        s_out, gate = self.mlp(torch.cat([s, torch.sqrt((v2 ** 2).sum(dim=1) + 1e-8)], dim=-1)).split(self.f_out, -1)
        v_out = self.W1(v) * gate[:, None, :]
        return (s_out if self.last else nn.functional.silu(s_out)), v_out


def _widths(f: int, layers: int) -> list[int]:
    return [max(f // 2 ** k, 1) for k in range(layers)] + [1]


class Denoiser(nn.Module):
    """eps_theta(x, Z, t) [N, 3] and tau_theta(x, Z) [N] (per-atom t/T, averaged per molecule at inference)."""

    def __init__(self, config: DenoiserConfig):
        super().__init__()
        self.config = config
        f = config.features
        self.register_buffer("z_index", self._index_table(config.elements), persistent=False)
        self.embedding = nn.Embedding(len(config.elements), f)
        self.radial = _Radial(config.radial, config.cutoff)
        self.interactions = nn.ModuleList(_Interaction(f, config.radial) for _ in range(config.interactions))
        widths = _widths(f, config.head_layers)
        self.noise_in = nn.Linear(f + 1, f)
        self.noise_head = nn.ModuleList(_Gated(a, b, k == len(widths) - 2) for k, (a, b) in
                                        enumerate(zip(widths[:-1], widths[1:])))
        layers: list[nn.Module] = []
        for k, (a, b) in enumerate(zip(widths[:-1], widths[1:])):
            layers += [nn.Linear(a, b)] + ([nn.SiLU()] if k < len(widths) - 2 else [])
        self.time_head = nn.Sequential(*layers)

    @staticmethod
    def _index_table(elements) -> torch.Tensor:
        table = torch.full((max(elements) + 1,), -1, dtype=torch.long)
        table[torch.tensor(elements)] = torch.arange(len(elements))
        return table

    def species(self, numbers: torch.Tensor) -> torch.Tensor:
        """Embedding indices of atomic numbers (ValueError for an element the model does not know)."""
        known = (numbers >= 0) & (numbers < self.z_index.shape[0])
        index = torch.where(known, self.z_index[numbers.clamp(0, self.z_index.shape[0] - 1)], -1)
        if bool((index < 0).any()):
            unknown = sorted({int(z) for z in numbers[index < 0]})
            raise ValueError(f"the denoiser knows elements {list(self.config.elements)}, not {unknown}")
        return index

    def backbone(self, species, x, mol, n_mol):
        """Scalar [N, F] and vector [N, 3, F] features. Every atom pair of a molecule interacts (the cosine cutoff
        still shapes the filters); molecules of one size are computed together as dense [b, n, n] arrays, far less
        memory traffic than gathering and scattering an edge list."""
        f = self.config.features
        s_out = x.new_zeros(x.shape[0], f)
        v_out = x.new_zeros(x.shape[0], 3, f)
        for atoms in size_groups(mol, n_mol):
            s, v = self._group(species[atoms], x[atoms])
            flat = atoms.reshape(-1)
            s_out = s_out.index_copy(0, flat, s.reshape(-1, f))
            v_out = v_out.index_copy(0, flat, v.reshape(-1, 3, f))
        return s_out, v_out

    def _group(self, species, x):
        """Backbone features of b molecules of n atoms: species [b, n], x [b, n, 3] -> [b, n, F], [b, n, 3, F]."""
        n = x.shape[1]
        d = x[:, :, None, :] - x[:, None, :, :]
        r = torch.sqrt((d ** 2).sum(-1) + 1e-12)
        fcut = self.radial.envelope(r) * ~torch.eye(n, dtype=torch.bool, device=x.device)
        radial = torch.cat([self.radial(r) * fcut[..., None], fcut[..., None]], dim=-1)
        unit = d / r[..., None]
        s = self.embedding(species).to(x.dtype)
        v = s.new_zeros(*s.shape[:2], 3, s.shape[-1])
        for k, block in enumerate(self.interactions):
            s, v = block(s, v, radial, unit, first=k == 0)
        return s, v

    def time(self, s: torch.Tensor) -> torch.Tensor:
        """Per-atom predicted t/T from backbone scalars."""
        return self.time_head(s).squeeze(-1)

    def noise(self, s, v, time_per_atom: torch.Tensor) -> torch.Tensor:
        """Predicted noise [N, 3] given backbone features and t/T per atom."""
        s = self.noise_in(torch.cat([s, time_per_atom[:, None].to(s.dtype)], dim=-1))
        for block in self.noise_head:
            s, v = block(s, v)
        return v.squeeze(-1)

    def forward(self, species, x, mol, n_mol: int, time: torch.Tensor | None = None):
        """(eps_hat [N, 3], tau [N]); ``time`` [n_mol] is t/T for the noise head, None: the predicted time (JT)."""
        s, v = self.backbone(species, x, mol, n_mol)
        tau = self.time(s)
        if time is None:
            time = molecule_time(tau, mol, n_mol)
        return self.noise(s, v, time[mol]), tau


def molecule_time(tau: torch.Tensor, mol: torch.Tensor, n_mol: int) -> torch.Tensor:
    """Per-molecule t/T: per-atom predictions clamped to [0, 1] and averaged (the MoreRed code's reading)."""
    counts = torch.bincount(mol, minlength=n_mol).to(tau.dtype).clamp(min=1)
    total = torch.zeros(n_mol, dtype=tau.dtype, device=tau.device).index_add_(0, mol, tau.clamp(0.0, 1.0))
    return total / counts


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
