"""A trained denoiser as stored: EMA weights, its sizes, schedule, training settings and data split."""

from __future__ import annotations

import hashlib
import io
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch

from atomscreen.diffusion.painn import Denoiser, DenoiserConfig
from atomscreen.diffusion.schedule import Schedule, schedule_from_dict

KIND = "denoiser"


@dataclass
class DenoiserCheckpoint:
    """Everything needed to rebuild, judge and reproduce a denoiser."""

    model: dict[str, Any]  # DenoiserConfig.to_dict()
    schedule: dict[str, Any]  # Schedule.to_dict()
    training: dict[str, Any]  # DenoiserTraining as dict
    training_data: dict[str, Any]  # source, sha256, split (id lists), compositions of the test split
    metrics: dict[str, Any]
    state_dict: dict[str, torch.Tensor] = field(repr=False)
    kind: str = KIND

    @classmethod
    def of(cls, model: Denoiser, schedule: Schedule, cfg, data, split, source: str,
           metrics: dict) -> DenoiserCheckpoint:
        test = split.test(len(data))
        formulas = np.array(data.formulas())
        names, counts = np.unique(formulas[test], return_counts=True)
        described = {"source": source, "n_molecules": len(data), "sha256": data.sha256(),
                     "split": {"seed": split.seed, "train_ids": data.ids[split.train].tolist(),
                               "validation_ids": data.ids[split.validation].tolist(), "test": "the rest"},
                     "n_train": int(len(split.train)), "n_validation": int(len(split.validation)),
                     "n_test": int(len(test)), "elements": list(model.config.elements),
                     "max_atoms": model.config.max_atoms,
                     "test_compositions": {str(n): int(c) for n, c in zip(names, counts)}}
        weights = {k: v.detach().cpu().float() for k, v in model.state_dict().items()}
        return cls(model.config.to_dict(), schedule.to_dict(), asdict(cfg), described, metrics, weights)

    @property
    def config(self) -> DenoiserConfig:
        return DenoiserConfig.from_dict(self.model)

    def seen_ids(self) -> set[int]:
        """Ids of the molecules the denoiser was trained or validated on; every other molecule of its data set is its
        test split."""
        split = self.training_data["split"]
        return set(split["train_ids"]) | set(split["validation_ids"])

    def weights_bytes(self) -> bytes:
        buffer = io.BytesIO()
        torch.save(self.state_dict, buffer)
        return buffer.getvalue()

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.weights_bytes()).hexdigest()

    def hyperparameters(self) -> dict[str, Any]:
        return {"model": self.model, "schedule": self.schedule, "training": self.training}

    def build(self, dtype: torch.dtype = torch.float32, device: str = "cpu") -> tuple[Denoiser, Schedule]:
        return load_denoiser(self.model, self.state_dict, dtype=dtype, device=device), schedule_from_dict(self.schedule)

    def save(self, path) -> None:
        torch.save({"kind": self.kind, "model": self.model, "schedule": self.schedule, "training": self.training,
                    "training_data": self.training_data, "metrics": self.metrics, "state_dict": self.state_dict}, path)

    @classmethod
    def load(cls, path) -> DenoiserCheckpoint:
        try:
            data = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:
            raise ValueError(f"{path} is not a readable checkpoint: {exc}") from None
        return cls.from_contents(data, path)

    @classmethod
    def from_contents(cls, data: Any, path) -> DenoiserCheckpoint:
        """The checkpoint from the contents of file ``path`` as torch.load gave them (ValueError if not a denoiser)."""
        if not isinstance(data, dict) or data.get("kind") != KIND:
            kind = data.get("kind") if isinstance(data, dict) else type(data).__name__
            raise ValueError(f"{path} is not a denoiser checkpoint (kind {kind!r})")
        return cls(**{k: data[k] for k in ("model", "schedule", "training", "training_data", "metrics",
                                            "state_dict")})


def load_denoiser(model_config: dict, weights: dict[str, torch.Tensor] | bytes, *, dtype=torch.float32,
                  device="cpu") -> Denoiser:
    """A Denoiser from its config dict and weights (a state dict or torch-saved bytes), in eval mode."""
    if isinstance(weights, (bytes, bytearray)):
        weights = torch.load(io.BytesIO(weights), map_location="cpu", weights_only=True)
    model = Denoiser(DenoiserConfig.from_dict(model_config))
    model.load_state_dict(weights)
    return model.to(device=device, dtype=dtype).eval()
