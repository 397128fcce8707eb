"""Pure task functions run on Dask workers: same payload and model, same result; they never open the database.

A task returns plain Python/numpy data; the driver writes it. Models arrive as
:class:`ModelRef` (scattered to every worker once) and are built once per
worker process, cached by the sha256 of their weights.
"""

from __future__ import annotations

import time
import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np
import spglib
from ase import Atoms

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


def _nthreads() -> int:
    """The Dask worker's thread count (1 off a worker)."""
    try:
        from distributed import get_worker

        return max(1, get_worker().state.nthreads)
    except ValueError:  # not on a Dask worker
        return 1


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


def _relaxed_records(starts, results, symprec: float) -> list[dict[str, Any]]:
    out = []
    for start, result in zip(starts, results):
        atoms = result.atoms
        periodic = bool(atoms.pbc.all())
        sg = spacegroup_number(atoms.numbers, atoms.positions, atoms.cell.array, symprec) if periodic and result.status != "exploded" else None
        traj = result.trajectory
        out.append({
            "numbers": np.asarray(atoms.numbers), "positions": np.asarray(atoms.positions), "cell": np.asarray(atoms.cell.array),
            "pbc": np.asarray(atoms.pbc), "energy": result.energy, "fmax": result.fmax, "n_steps": result.n_steps,
            "status": result.status, "spacegroup": sg, "start_volume_per_atom": float(start.get_volume() / len(start)) if periodic else None,
            "trajectory": None if traj is None else {"steps": traj.steps, "energies": traj.energies, "fmax": traj.fmax,
                                                    "positions": traj.positions, "cells": traj.cells},
        })
    return out


def payload_atoms(records: list[dict[str, Any]]) -> list[Atoms]:
    """ASE Atoms of the structures a task payload carries (numbers, positions, cell, pbc as lists)."""
    return [Atoms(numbers=r["numbers"], positions=r["positions"], cell=r["cell"], pbc=r["pbc"]) for r in records]


def structure_payload(atoms: Atoms, **extra: Any) -> dict[str, Any]:
    """A structure as JSON-safe lists for a task payload."""
    return {"numbers": [int(z) for z in atoms.numbers], "positions": np.asarray(atoms.positions).tolist(),
            "cell": np.asarray(atoms.cell.array).tolist(), "pbc": [bool(p) for p in atoms.pbc], **extra}


def rss_task(payload: dict[str, Any], model: ModelRef) -> dict[str, Any]:
    """Random structures of one composition relaxed on the pseudo potential (atoms and, if asked, cell)."""
    from atomscreen.relax import RelaxSettings, relax

    t0 = time.perf_counter()
    _threads()
    r = payload["random"]
    spec = RandomSpec(volume_per_atom=r["volume_per_atom"], volume_factor=tuple(r["volume_factor"]),
                      min_separation=r["min_separation"], periodic=r.get("periodic", True))
    starts = [random_structure(payload["counts"], spec, structure_rng(payload, k)) for k in range(payload["count"])]
    device = _device()
    settings = RelaxSettings(**payload["relax"])
    results = relax(_model(model, device), starts, settings, device=device)
    kick = payload.get("kick")
    for round_ in range(kick["rounds"] if kick else 0):
        kicked = []
        for k, r in enumerate(results):
            rng = np.random.default_rng([payload["seed"], payload["composition_seed"], payload["start"] + k, 1 + round_])
            atoms = r.atoms.copy()
            atoms.positions += rng.uniform(-kick["displacement"], kick["displacement"], size=(len(atoms), 3))
            kicked.append(atoms)
        again = relax(_model(model, device), kicked, settings, device=device)
        results = [b if b.status != "exploded" and (a.status == "exploded" or b.energy < a.energy) else a for a, b in zip(results, again)]
    return {"structures": _relaxed_records(starts, results, payload["symprec"]), "wall_time_s": time.perf_counter() - t0, "device": device}


def reference_task(payload: dict[str, Any], model: ModelRef) -> dict[str, Any]:
    """Known structures (hull references) relaxed on the pseudo potential, so they join the pseudo hull."""
    from atomscreen.relax import RelaxSettings, relax

    t0 = time.perf_counter()
    _threads()
    starts = payload_atoms(payload["structures"])
    device = _device()
    settings = RelaxSettings(**{**payload["relax"], "constant_volume": False})
    results = relax(_model(model, device), starts, settings, device=device)
    records = _relaxed_records(starts, results, payload["symprec"])
    for record, source in zip(records, payload["structures"]):
        record["info"] = source.get("info", {})
    return {"structures": records, "wall_time_s": time.perf_counter() - t0, "device": device}


def rescore_task(payload: dict[str, Any], model: ModelRef | None = None) -> dict[str, Any]:
    """Candidates relaxed (or single-pointed) with a real calculator; a structure that fails is reported, not raised."""
    from atomscreen.evaluate.calculators import calculate_all, make_calculator
    from atomscreen.relax.ase_relax import CalcSettings

    t0 = time.perf_counter()
    _threads()
    device = _device()
    # chgnet converts a tensor that requires grad to a float on every call: a harmless warning per structure
    warnings.filterwarnings("ignore", message="Converting a tensor with requires_grad=True to a scalar", category=UserWarning)
    settings = CalcSettings(**payload["settings"])
    atoms_list = payload_atoms(payload["structures"])
    if payload.get("timeout_s") is None:  # a calculator that cannot be made fails the whole task
        make_calculator(payload["method"], device=device, options=payload.get("options"))
    results = calculate_all(atoms_list, payload["method"], settings, options=payload.get("options"), timeout_s=payload.get("timeout_s"),
                            device=device, threads=_nthreads())
    out = []
    for source, result in zip(payload["structures"], results):
        relaxed = result.atoms
        periodic = bool(relaxed.pbc.all())
        sg = None
        if periodic and result.status != "failed":
            sg = spacegroup_number(relaxed.numbers, relaxed.positions, relaxed.cell.array, payload["symprec"])
        traj = result.trajectory
        out.append({
            "parent_id": source["parent_id"], "status": result.status, "error": result.error, "energy": result.energy,
            "fmax": result.fmax, "n_steps": result.n_steps, "wall_time_s": result.wall_time_s, "spacegroup": sg,
            "numbers": np.asarray(relaxed.numbers), "positions": np.asarray(relaxed.positions), "cell": np.asarray(relaxed.cell.array),
            "pbc": np.asarray(relaxed.pbc),
            "trajectory": None if traj is None else {"steps": traj.steps, "energies": traj.energies, "fmax": traj.fmax,
                                                    "positions": traj.positions, "cells": traj.cells},
        })
    return {"structures": out, "wall_time_s": time.perf_counter() - t0, "device": device}


TASKS = {"rss": rss_task, "reference": reference_task, "rescore": rescore_task}


def validity_task(payload: dict[str, Any], model: ModelRef | None = None) -> dict[str, Any]:
    """Chemical validity checks of molecules (each in a child process with a time limit); never raises per molecule."""
    from atomscreen.evaluate.validity import check_molecules

    t0 = time.perf_counter()
    results = check_molecules(payload_atoms(payload["structures"]), timeout_s=payload["timeout_s"])
    checks = [{"structure_id": s["structure_id"], "status": r.status, "error": r.error, "checks": r.checks, "passes_all": r.passes_all,
               "smiles": r.smiles, "atoms_stable": r.atoms_stable, "molecule_stable": r.molecule_stable, "wall_time_s": r.wall_time_s}
              for s, r in zip(payload["structures"], results)]
    return {"checks": checks, "wall_time_s": time.perf_counter() - t0}


TASKS["validity"] = validity_task
