"""How many structures fit in one batched relaxation: a memory estimate measured on the model, not guessed.

One evaluation of a probe batch is run with autograd's saved-tensor hooks counting every tensor the backward pass
keeps (the activations: the dominant memory of a force evaluation). Peak memory is taken as twice that (the
backward builds gradients of the same sizes while they are alive) plus the loop's own rows (positions, forces,
velocities, new positions: 4 x [atoms + 3 cell rows, 3]). Divided into the device's free memory (CUDA:
torch.cuda.mem_get_info; CPU: MemAvailable) times a safety fraction, it gives the systems per batch. A structure
that alone needs more than that budget is refused by name before anything runs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
from ase import Atoms

from atomscreen.atoms.batch import from_ase
from atomscreen.errors import AtomscreenError
from atomscreen.potentials.forces import EnergyModel, compute


class DeviceMemoryError(AtomscreenError):
    """A structure does not fit on the device."""


@dataclass(frozen=True)
class MemoryEstimate:
    """Bytes per atom of one evaluation (saved activations, backward, loop rows), from a probe batch."""

    bytes_per_atom: float
    probe_atoms: int
    budget_bytes: int

    def systems(self, atoms_per_system: float) -> int:
        return max(1, int(self.budget_bytes // (self.bytes_per_atom * atoms_per_system)))


def saved_bytes(model: EnergyModel, structures: Sequence[Atoms], device, dtype, stress: bool) -> int:
    """Bytes of every tensor autograd saves for the backward pass of one force (and stress) evaluation."""
    total = 0

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        nonlocal total
        total += tensor.numel() * tensor.element_size()
        return tensor

    batch = from_ase(list(structures), device=device, dtype=dtype)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        compute(model, batch, stress=stress)
    return total


def free_bytes(device) -> int:
    """Memory free for tensors on ``device``: CUDA's free memory, or the kernel's MemAvailable on the CPU."""
    device = torch.device(device)
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    with open("/proc/meminfo") as stream:
        for line in stream:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    raise OSError("/proc/meminfo has no MemAvailable line")


def estimate(model: EnergyModel, structures: Sequence[Atoms], *, device="cpu", dtype=torch.float64,
             stress: bool = True, fraction: float = 0.8, budget_bytes: int | None = None,
             probe: int = 16) -> MemoryEstimate:
    """Bytes per atom measured on the first ``probe`` structures, and the budget (``fraction`` of the free memory,
    or ``budget_bytes``); every structure is checked against the budget, by its size and the densest probe rate."""
    if not structures:
        raise ValueError("no structures to size a batch for")
    if not 0 < fraction <= 1:
        raise ValueError(f"fraction must be in (0, 1], got {fraction}")
    sample = list(structures[:probe])
    n_atoms = sum(len(a) for a in sample)
    row_bytes = 4 * 3 * torch.finfo(dtype).bits // 8  # x, forces, velocities, new x per row
    rows_per_atom = 1 + 3 * len(sample) / n_atoms  # atom rows and each system's three cell rows
    per_atom = 2 * saved_bytes(model, sample, device, dtype, stress) / n_atoms + row_bytes * rows_per_atom
    budget = int(budget_bytes if budget_bytes is not None else fraction * free_bytes(device))
    result = MemoryEstimate(per_atom, n_atoms, budget)
    largest = max(range(len(structures)), key=lambda k: len(structures[k]))
    need = per_atom * len(structures[largest])
    if need > budget:
        raise DeviceMemoryError(
            f"structure {largest} ({len(structures[largest])} atoms) needs about {need / 2**30:.2f} GiB for one "
            f"evaluation on {device}, more than the {budget / 2**30:.2f} GiB available to a batch: relax it on a "
            "larger device, or with a smaller model cutoff")
    return result


def max_systems(model: EnergyModel, structures: Sequence[Atoms], *, device="cpu", dtype=torch.float64,
                stress: bool = True, fraction: float = 0.8, budget_bytes: int | None = None,
                cap: int | None = None) -> int:
    """Systems per batch that fit: the budget over the mean structure's estimated bytes, at most ``cap``."""
    est = estimate(model, structures, device=device, dtype=dtype, stress=stress, fraction=fraction,
                   budget_bytes=budget_bytes)
    mean_atoms = sum(len(a) for a in structures) / len(structures)
    n = est.systems(mean_atoms)
    return min(n, cap) if cap else n
