"""Radial and angular edge bases of the CACE descriptor (RM paper Eq. 2)."""

from __future__ import annotations

import functools
import itertools
import math

import torch


def bessel(r: torch.Tensor, n_radial: int, cutoff: float, frequencies: torch.Tensor | None = None) -> torch.Tensor:
    """Bessel radial basis sqrt(2/rc) sin(w_n r) / r  -> [E, n_radial]; w_n = n pi / rc (n = 1..n_radial) unless
    ``frequencies`` (trainable, as CACE's) are given."""
    if frequencies is None:
        n = torch.arange(1, n_radial + 1, dtype=r.dtype, device=r.device)
        return math.sqrt(2.0 / cutoff) * torch.sin(n * math.pi * r[:, None] / cutoff) / r[:, None]
    return math.sqrt(2.0 / cutoff) * torch.sin(frequencies * r[:, None]) / r[:, None]


def polynomial_cutoff(r: torch.Tensor, cutoff: float, p: int = 6) -> torch.Tensor:
    """Smooth envelope going to zero with p-1 continuous derivatives at the cutoff (DimeNet's polynomial)."""
    x = r / cutoff
    envelope = 1.0 - (p + 1) * (p + 2) / 2 * x**p + p * (p + 2) * x ** (p + 1) - p * (p + 1) / 2 * x ** (p + 2)
    return torch.where(x < 1.0, envelope, torch.zeros_like(x))


def cartesian_angular(unit: torch.Tensor, l_max: int) -> list[torch.Tensor]:
    """Full Cartesian tensors r^ (x) ... (x) r^ of rank l = 0..l_max, each flattened to [E, 3**l]."""
    out = [torch.ones(unit.shape[0], 1, dtype=unit.dtype, device=unit.device)]
    for _ in range(l_max):
        out.append((out[-1][:, :, None] * unit[:, None, :]).reshape(unit.shape[0], out[-1].shape[1] * 3))
    return out


@functools.lru_cache(maxsize=None)
def symmetric_plan(l_max: int) -> tuple[list[tuple[int, int, int]], tuple[int, ...]]:
    """How to build the distinct components of r^ (x) ... (x) r^ (monomials x^a y^b z^c, a+b+c = l; (l+1)(l+2)/2 of
    them instead of 3^l) by slices only, and where each full component finds its monomial.

    Monomials of rank l are sorted tuples in colexicographic order, built as: for axis a = x, y, z, every rank l-1
    monomial whose largest axis is <= a (a prefix of the colex order), times r^_a. Returns, per l >= 1, the three
    prefix lengths; and for the concatenation of all full tensors l = 0..l_max (flattened, row-major), the index of
    each component's monomial in the concatenated monomials.
    """
    monomials, prefixes = [[()]], []
    for _ in range(l_max):
        previous = monomials[-1]
        lengths = tuple(sum(1 for m in previous if (max(m) if m else -1) <= a) for a in range(3))
        monomials.append([m + (a,) for a in range(3) for m in previous[:lengths[a]]])
        prefixes.append(lengths)
    expand, offset = [], 0
    for ell, here in enumerate(monomials):
        index = {m: k for k, m in enumerate(here)}
        expand += [offset + index[tuple(sorted(full))] for full in itertools.product(range(3), repeat=ell)]
        offset += len(here)
    return prefixes, tuple(expand)


def symmetric_angular(unit: torch.Tensor, l_max: int) -> torch.Tensor:
    """The distinct components of the Cartesian tensors of rank 0..l_max of unit vectors [E,3], concatenated
    [E, sum (l+1)(l+2)/2]; ``symmetric_plan(l_max)[1]`` indexes them back into cartesian_angular's full layout."""
    prefixes, _ = symmetric_plan(l_max)
    out = [torch.ones(unit.shape[0], 1, dtype=unit.dtype, device=unit.device)]
    for lengths in prefixes:
        out.append(torch.cat([out[-1][:, :n] * unit[:, a:a + 1] for a, n in enumerate(lengths)], dim=1))
    return torch.cat(out, dim=1)


def three_body_patterns(l_max: int) -> list[tuple[int, int, int]]:
    """Index-sharing patterns (k12, k13, k23) for nu = 3 invariants A1 A2 A3 fully contracted.

    Tensor a has rank k_ab + k_ac. Patterns with a rank-0 factor (products of lower
    invariants) and permutations of the same contraction are left out.
    """
    seen, patterns = set(), []
    for k12, k13, k23 in itertools.product(range(l_max + 1), repeat=3):
        ranks = (k12 + k13, k12 + k23, k13 + k23)
        if min(ranks) < 1 or max(ranks) > l_max:
            continue
        pair = {(0, 1): k12, (0, 2): k13, (1, 2): k23}
        forms = []
        for perm in itertools.permutations(range(3)):
            forms.append(tuple(pair[tuple(sorted((perm[a], perm[b])))] for a, b in ((0, 1), (0, 2), (1, 2))))
        key = min(forms)
        if key not in seen:
            seen.add(key)
            patterns.append(key)
    return patterns


def einsum_for(pattern: tuple[int, int, int]) -> tuple[str, tuple[int, int, int]]:
    """einsum equation contracting three full Cartesian tensors [..., 3, ..., 3] by ``pattern``; and their ranks."""
    k12, k13, k23 = pattern
    letters = iter("abcdefghijklmnopqrstuvw")
    s12 = "".join(next(letters) for _ in range(k12))
    s13 = "".join(next(letters) for _ in range(k13))
    s23 = "".join(next(letters) for _ in range(k23))
    return f"...{s12}{s13},...{s12}{s23},...{s13}{s23}->...", (k12 + k13, k12 + k23, k13 + k23)
