"""Molecules as flat arrays (numbers, positions, sizes) for denoiser training, and the seeded train/val/test split."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch


@dataclass(frozen=True)
class MoleculeSet:
    """M molecules: numbers [N] int64, positions [N, 3] float64 (Å), sizes [M], ids [M] (e.g. the QM9 index)."""

    numbers: np.ndarray
    positions: np.ndarray
    sizes: np.ndarray
    ids: np.ndarray

    def __post_init__(self):
        if self.numbers.shape[0] != self.positions.shape[0] or int(self.sizes.sum()) != self.numbers.shape[0]:
            raise ValueError(f"inconsistent molecule set: {self.numbers.shape[0]} numbers, "
                             f"{self.positions.shape[0]} positions, sizes summing to {int(self.sizes.sum())}")
        if self.ids.shape[0] != self.sizes.shape[0]:
            raise ValueError(f"{self.ids.shape[0]} ids for {self.sizes.shape[0]} molecules")

    def __len__(self) -> int:
        return int(self.sizes.shape[0])

    @property
    def starts(self) -> np.ndarray:
        return np.concatenate([[0], np.cumsum(self.sizes)[:-1]]).astype(np.int64)

    def batch(self, index: Sequence[int], device="cpu") -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(numbers [n], positions [n, 3] float64, mol [n]) of the molecules ``index``, in that order."""
        index = np.asarray(index, dtype=np.int64)
        starts, sizes = self.starts[index], self.sizes[index]
        atoms = np.concatenate([np.arange(s, s + n) for s, n in zip(starts, sizes)])
        mol = np.repeat(np.arange(len(index)), sizes)
        return (torch.as_tensor(self.numbers[atoms], device=device),
                torch.as_tensor(self.positions[atoms], dtype=torch.float64, device=device),
                torch.as_tensor(mol, device=device))

    def formulas(self) -> list[str]:
        """Hill formula of every molecule."""
        from ase.data import chemical_symbols
        from ase.formula import Formula

        return [Formula("".join(chemical_symbols[z] for z in self.numbers[s:s + n])).format("hill")
                for s, n in zip(self.starts, self.sizes)]

    def sha256(self) -> str:
        digest = hashlib.sha256()
        for a in (self.numbers.astype(np.int64), self.positions.astype(np.float64), self.sizes.astype(np.int64)):
            digest.update(np.ascontiguousarray(a).tobytes())
        return digest.hexdigest()


def from_atoms(structures, ids: Sequence[int] | None = None) -> MoleculeSet:
    """A MoleculeSet of ASE molecules (ids: default atoms.info['qm9_index'], else the position in the list)."""
    if not structures:
        raise ValueError("no molecules to train on")
    if ids is None:
        ids = [int(a.info.get("qm9_index", k)) for k, a in enumerate(structures)]
    return MoleculeSet(np.concatenate([a.numbers for a in structures]).astype(np.int64),
                       np.concatenate([a.positions for a in structures]).astype(np.float64),
                       np.array([len(a) for a in structures], dtype=np.int64), np.asarray(ids, dtype=np.int64))


def load_npz(path) -> MoleculeSet:
    """A MoleculeSet packed by scripts/pack_qm9.py."""
    with np.load(path) as data:
        return MoleculeSet(data["numbers"].astype(np.int64), data["positions"].astype(np.float64),
                           data["sizes"].astype(np.int64), data["ids"].astype(np.int64))


@dataclass(frozen=True)
class Split:
    """Positions (into the MoleculeSet) of the training and validation molecules; the test split is the rest."""

    train: np.ndarray
    validation: np.ndarray
    seed: int

    def test(self, n: int) -> np.ndarray:
        used = np.zeros(n, dtype=bool)
        used[self.train] = True
        used[self.validation] = True
        return np.flatnonzero(~used)


def split(n: int, n_train: int, n_validation: int, seed: int) -> Split:
    """A seeded random split (MoreRed App. B.1: 55k train, 10k validation, the rest test)."""
    if n_train < 1 or n_validation < 1 or n_train + n_validation > n:
        raise ValueError(f"split needs 1 <= train, 1 <= validation and train + validation <= {n} molecules, got "
                         f"train={n_train}, validation={n_validation}")
    order = np.random.default_rng(seed).permutation(n)
    return Split(np.sort(order[:n_train]), np.sort(order[n_train:n_train + n_validation]), seed)


def draw_compositions(histogram: dict[str, int], n: int, seed: int) -> list[str]:
    """n compositions drawn at random with replacement, weighted by count (MoreRed App. B.5 draws generation
    compositions from the molecules of the test split)."""
    if n < 1 or not histogram:
        raise ValueError(f"need n >= 1 and a non-empty composition histogram, got n={n}, {len(histogram)} entries")
    formulas = sorted(histogram)
    weights = np.array([histogram[f] for f in formulas], dtype=float)
    picks = np.random.default_rng(seed).choice(len(formulas), size=n, p=weights / weights.sum())
    return [formulas[k] for k in picks]
