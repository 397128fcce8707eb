"""What every task function shares on a Dask worker: the model reference that travels, the per-process model cache,
the device, and the worker's thread count."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

_MODELS: dict[tuple[str, str], Any] = {}


@dataclass(frozen=True)
class ModelRef:
    """What a worker needs to rebuild a stored model (an RM potential, or a denoiser with its schedule)."""

    sha256: str
    config: dict[str, Any]
    weights: bytes
    kind: str = "rm_potential"
    schedule: dict[str, Any] | None = None  # denoisers


def _device() -> str:
    """cpu, or this worker's GPU: cuda:k for LocalCluster worker k (dask-cuda workers each see one device, k = 0)."""
    import torch

    if not torch.cuda.is_available():
        return "cpu"
    try:
        from distributed import get_worker

        name = get_worker().name
    except ValueError:  # not on a Dask worker
        return "cuda"
    index = name if isinstance(name, int) else 0
    return f"cuda:{index % torch.cuda.device_count()}"


def _model(ref: ModelRef, device: str):
    key = (ref.sha256, device)
    if key not in _MODELS:
        import torch

        if ref.kind == "denoiser":
            from atomscreen.diffusion.checkpoint import load_denoiser
            from atomscreen.diffusion.schedule import schedule_from_dict

            _MODELS[key] = (load_denoiser(ref.config, ref.weights, device=device), schedule_from_dict(ref.schedule))
        else:
            from atomscreen.potentials.train import load_model

            _MODELS[key] = load_model(ref.config, ref.weights, dtype=torch.float64, device=device)
    return _MODELS[key]


def worker_threads() -> int:
    """The Dask worker's thread count (1 off a worker); torch uses as many (one process per worker)."""
    try:
        from distributed import get_worker

        return max(1, get_worker().state.nthreads)
    except ValueError:  # not on a Dask worker
        return 1


def _use_worker_threads() -> None:
    """On a Dask worker, torch gets the worker's thread count (no oversubscription); elsewhere it is left alone."""
    import torch

    try:
        from distributed import get_worker

        torch.set_num_threads(max(1, get_worker().state.nthreads))
    except ValueError:  # not on a Dask worker
        pass
