"""Pure task functions run on Dask workers: same payload and model, same result; they never open the database.

A task returns plain Python/numpy data; the driver writes it. Models arrive as
:class:`ModelRef` (scattered to every worker once) and are built once per
worker process, cached by the sha256 of their weights.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import spglib

from atomscreen.atoms.random import RandomSpec, random_structure

_MODELS: dict[tuple[str, str], Any] = {}


@dataclass(frozen=True)
class ModelRef:
    """What a worker needs to rebuild a stored RM potential."""

    sha256: str
    config: dict[str, Any]
    weights: bytes


def _device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def _model(ref: ModelRef, device: str):
    key = (ref.sha256, device)
    if key not in _MODELS:
        import torch

        from atomscreen.potentials.train import load_model

        _MODELS[key] = load_model(ref.config, ref.weights, dtype=torch.float64, device=device)
    return _MODELS[key]


def _threads() -> None:
    """Use the worker's thread count for torch (one process per worker, no oversubscription)."""
    import torch

    try:
        from distributed import get_worker

        torch.set_num_threads(max(1, get_worker().state.nthreads))
    except ValueError:  # not on a Dask worker
        pass


def structure_rng(payload: dict[str, Any], k: int) -> np.random.Generator:
    """The generator of structure ``start + k`` of a composition: independent of how samples are split into tasks."""
    return np.random.default_rng([payload["seed"], payload["composition_seed"], payload["start"] + k])


def spacegroup_number(numbers: np.ndarray, positions: np.ndarray, cell: np.ndarray, symprec: float) -> int | None:
    """International space-group number by spglib, None if it finds none."""
    frac = np.linalg.solve(cell.T, positions.T).T
    dataset = spglib.get_symmetry_dataset((cell, frac % 1.0, numbers), symprec=symprec)
    return None if dataset is None else int(dataset.number)


def rss_task(payload: dict[str, Any], model: ModelRef) -> dict[str, Any]:
    """Random structures of one composition relaxed on the pseudo potential (atoms and, if asked, cell)."""
    from atomscreen.relax import RelaxSettings, relax

    t0 = time.perf_counter()
    _threads()
    r = payload["random"]
    spec = RandomSpec(volume_per_atom=r["volume_per_atom"], volume_factor=tuple(r["volume_factor"]),
                      min_separation=r["min_separation"])
    starts = [random_structure(payload["counts"], spec, structure_rng(payload, k)) for k in range(payload["count"])]
    settings = RelaxSettings(**payload["relax"])
    device = _device()
    results = relax(_model(model, device), starts, settings, device=device)
    out = []
    for start, result in zip(starts, results):
        atoms = result.atoms
        periodic = bool(atoms.pbc.all())
        sg = spacegroup_number(atoms.numbers, atoms.positions, atoms.cell.array, payload["symprec"]) if periodic and result.status != "exploded" else None
        traj = result.trajectory
        out.append({
            "numbers": np.asarray(atoms.numbers), "positions": np.asarray(atoms.positions), "cell": np.asarray(atoms.cell.array),
            "pbc": np.asarray(atoms.pbc), "energy": result.energy, "fmax": result.fmax, "n_steps": result.n_steps,
            "status": result.status, "spacegroup": sg, "start_volume_per_atom": float(start.get_volume() / len(start)),
            "trajectory": None if traj is None else {"steps": traj.steps, "energies": traj.energies, "fmax": traj.fmax,
                                                    "positions": traj.positions, "cells": traj.cells},
        })
    return {"structures": out, "wall_time_s": time.perf_counter() - t0, "device": device}
