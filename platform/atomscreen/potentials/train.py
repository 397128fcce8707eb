"""Train an RM pseudo potential on fictitious responses (RM paper Eq. 12), with fresh noise every epoch.

Loss = mean |F_model - F~|^2 over atom components + beta * mean |sigma_model - sigma~|^2
over stress components of periodic structures. Adam, cosine learning-rate decay,
exponential moving average (EMA) of the weights, seeded data order and noise.
"""

from __future__ import annotations

import hashlib
import io
import logging
import math
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Sequence

import numpy as np
import torch
from ase import Atoms
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from atomscreen.atoms.batch import from_ase
from atomscreen.atoms.neighbors import neighbor_list
from atomscreen.atoms.random import fit_element_volumes
from atomscreen.errors import AtomscreenError
from atomscreen.potentials.forces import compute
from atomscreen.potentials.responses import NoisedSample, ResponseConfig, noise_many
from atomscreen.potentials.rm import RMConfig, RMPotential, count_parameters

log = logging.getLogger("atomscreen.train")


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation settings."""

    epochs: int = 200
    batch_size: int = 16  # structures per step
    steps_per_epoch: int | None = None  # default: enough batches to see every structure once (at least one)
    lr: float = 5e-3
    lr_final_fraction: float = 0.05
    ema_decay: float = 0.99
    validation_size: int = 32  # noised structures held fixed for the validation loss
    validate_every: int = 1  # epochs between validation losses (always after the first and the last epoch)
    seed: int = 0
    device: str = "cpu"
    dtype: str = "float32"
    amsgrad: bool = False  # Adam's AMSGrad variant (the RM authors')
    warmup_epochs: int = 0  # linear learning-rate warm-up over this many epochs
    schedule: str = "cosine"  # cosine decay to lr * lr_final_fraction, or plateau (ReduceLROnPlateau on val loss)
    plateau_factor: float = 0.8
    plateau_patience: int = 10  # validations without improvement before the rate is cut
    grad_clip: float | None = None  # gradient norm clipped to this (the RM authors: 10)
    keep: str = "final"  # the EMA weights to return: final, or best (lowest validation loss)
    max_seconds: float | None = None  # stop after the epoch that passes this wall time (validated at that epoch)

    def __post_init__(self):
        for name in ("epochs", "batch_size", "validation_size", "validate_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.schedule not in ("cosine", "plateau") or self.keep not in ("final", "best"):
            raise ValueError(f"schedule must be cosine or plateau and keep final or best, got {self.schedule!r}, "
                             f"{self.keep!r}")
        if self.warmup_epochs < 0 or (self.grad_clip is not None and self.grad_clip <= 0):
            raise ValueError(f"need warmup_epochs >= 0 and grad_clip > 0, got {self.warmup_epochs}, {self.grad_clip}")


@dataclass
class Checkpoint:
    """A trained model as stored: weights (EMA) plus everything needed to rebuild and judge it."""

    model: dict[str, Any]  # RMConfig.to_dict()
    responses: dict[str, Any]  # ResponseConfig.to_dict()
    training: dict[str, Any]  # TrainConfig as dict
    training_data: dict[str, Any]  # description of the training set
    metrics: dict[str, Any]
    state_dict: dict[str, torch.Tensor] = field(repr=False)

    kind: str = "rm_potential"

    def weights_bytes(self) -> bytes:
        buffer = io.BytesIO()
        torch.save({k: v.detach().cpu() for k, v in self.state_dict.items()}, buffer)
        return buffer.getvalue()

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.weights_bytes()).hexdigest()

    def hyperparameters(self) -> dict[str, Any]:
        return {"model": self.model, "responses": self.responses, "training": self.training}

    def build(self, dtype: torch.dtype = torch.float64, device: str = "cpu") -> RMPotential:
        """The trained model, ready to evaluate."""
        return load_model(self.model, self.state_dict, dtype=dtype, device=device)

    def save(self, path) -> None:
        described = {k: getattr(self, k) for k in ("model", "responses", "training", "training_data", "metrics")}
        weights = {k: v.detach().cpu() for k, v in self.state_dict.items()}
        torch.save({"kind": self.kind, **described, "state_dict": weights}, path)

    @classmethod
    def load(cls, path) -> Checkpoint:
        """The checkpoint at ``path``, checked (kind, keys, weights that fit its config, finite) or CheckpointError."""
        data = read_checkpoint(path)
        problem = rm_checkpoint_problem(data, path)
        if problem:
            raise CheckpointError(problem)
        return cls(**{k: data[k] for k in CHECKPOINT_KEYS})


CHECKPOINT_KEYS = ("model", "responses", "training", "training_data", "metrics", "state_dict")


class CheckpointError(AtomscreenError, ValueError):
    """A file that is not a usable checkpoint, and why."""


def read_checkpoint(path) -> Any:
    """What ``torch.load`` reads from ``path`` with weights only (pickled code is never run), or CheckpointError."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise CheckpointError(f"{path}: no such file") from None
    except Exception as exc:  # text, an empty or truncated file, a pickle of code that weights_only refuses
        import pickle

        # not torch's own advice for UnpicklingError (load with weights_only=False: that would run the file's code)
        why = ("not a weights-only torch file" if isinstance(exc, pickle.UnpicklingError)
               else (str(exc).strip().splitlines() or [""])[0][:160] or type(exc).__name__)
        raise CheckpointError(f"{path} is not a checkpoint atomscreen can read ({why}); files holding code are "
                              "refused, never run") from None


def rm_checkpoint_problem(data: Any, path) -> str | None:
    """Why ``data`` (a loaded file) is not a usable RM potential checkpoint, or None."""
    if not isinstance(data, dict):
        return f"{path} holds a {type(data).__name__}, not an atomscreen checkpoint"
    if data.get("kind") != "rm_potential":
        return f"{path} is not an RM potential checkpoint (kind {data.get('kind')!r})"
    missing = [k for k in CHECKPOINT_KEYS if k not in data]
    if missing:
        return f"{path} lacks {', '.join(missing)}: not a complete RM potential checkpoint"
    weights = data["state_dict"]
    if not isinstance(weights, dict) or not all(isinstance(v, torch.Tensor) for v in weights.values()):
        return f"{path}: state_dict is not a mapping of tensors"
    bad = [k for k, v in weights.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
    if bad:
        return f"{path} holds non-finite weights ({', '.join(bad[:3])}{', ...' if len(bad) > 3 else ''})"
    try:
        load_model(data["model"], weights)
    except Exception as exc:  # a config that builds a model of other shapes, or no model at all
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
        return f"{path}: its weights do not fit its stored model config ({first})"
    return None


def load_model(
    model_config: dict, weights: dict[str, torch.Tensor] | bytes, *, dtype=torch.float64, device="cpu"
) -> RMPotential:
    """Rebuild an RMPotential from its config dict and weights (a state dict or torch-saved bytes)."""
    if isinstance(weights, (bytes, bytearray)):
        weights = torch.load(io.BytesIO(weights), map_location="cpu", weights_only=True)
    model = RMPotential(RMConfig.from_dict(model_config))
    model.load_state_dict(weights)
    return model.to(device=device, dtype=dtype).eval()


def describe(structures: Sequence[Atoms], source: str = "") -> dict[str, Any]:
    """A training-set description for the model table: size, elements, sha256 of the structures."""
    digest = hashlib.sha256()
    for a in structures:
        digest.update(np.asarray(a.numbers, dtype=np.int64).tobytes())
        digest.update(np.asarray(a.positions, dtype=np.float64).tobytes())
        digest.update(np.asarray(a.cell.array, dtype=np.float64).tobytes())
        digest.update(np.asarray(a.pbc, dtype=bool).tobytes())
    return {
        "source": source,
        "n_structures": len(structures),
        "n_atoms": int(sum(len(a) for a in structures)),
        "elements": sorted({int(z) for a in structures for z in a.numbers}),
        "periodic": int(sum(bool(a.pbc.all()) for a in structures)),
        # the most common compositions (Hill formulas, most frequent first): campaigns can draw theirs from it
        "compositions": dict(Counter(a.get_chemical_formula(mode="hill") for a in structures).most_common(200)),
        "sha256": digest.hexdigest(),
        # per-element volumes (Å^3) fitted on the periodic structures: random search's default density
        "element_volumes": fit_element_volumes(structures) if any(a.pbc.all() for a in structures) else {},
    }


def average_neighbors(structures: Sequence[Atoms], cutoff: float) -> float:
    """Mean number of neighbours within the cutoff over all atoms of the clean structures."""
    nb = neighbor_list(from_ase(list(structures)), cutoff)
    return max(1.0, len(nb.i) / sum(len(a) for a in structures))


def _loss(model, samples: list[NoisedSample], responses: ResponseConfig, device, dtype):
    batch = from_ase([s.atoms for s in samples], device=device, dtype=dtype)
    periodic = batch.pbc.all(dim=1)
    result = compute(model, batch, stress=bool(periodic.any()), create_graph=model.training)
    target_f = torch.as_tensor(np.concatenate([s.forces for s in samples]), dtype=dtype, device=device)
    force_loss = (result.forces - target_f).square().mean()
    stress_loss = torch.zeros((), dtype=dtype, device=device)
    if periodic.any():
        target_s = torch.as_tensor(np.stack([s.stress for s in samples]), dtype=dtype, device=device)
        stress_loss = (result.stress - target_s)[periodic].square().mean()
    return force_loss + responses.beta * stress_loss, force_loss, stress_loss


def train(
    structures: Sequence[Atoms],
    model_config: RMConfig = RMConfig(),
    responses: ResponseConfig = ResponseConfig(),
    config: TrainConfig = TrainConfig(),
    *,
    source: str = "",
    progress: Callable[[int, dict], None] | None = None,
) -> Checkpoint:
    """Train on equilibrium ``structures``; returns the EMA weights as a Checkpoint."""
    if len(structures) == 0:
        raise ValueError("training needs at least one equilibrium structure")
    dtype, device = getattr(torch, config.dtype), config.device
    model_config, run = _start(structures, model_config, config, device, dtype)
    order_rng = np.random.default_rng([config.seed, 1])
    held_out = [structures[i % len(structures)] for i in range(config.validation_size)]
    validation = noise_many(held_out, responses, [config.seed, 2])
    history, start = [], time.perf_counter()
    for epoch in range(config.epochs):
        samples = _epoch_samples(structures, responses, config, run.steps_per_epoch, order_rng, epoch)
        train_loss = _train_epoch(run, samples, responses, config, device, dtype)
        out_of_time = config.max_seconds is not None and time.perf_counter() - start > config.max_seconds
        if epoch == 0 or epoch == config.epochs - 1 or (epoch + 1) % config.validate_every == 0 or out_of_time:
            run.ema.module.eval()
            val, val_f, val_s = (float(x) for x in _loss(run.ema.module, validation, responses, device, dtype))
            _after_validation(run, config, epoch, val)
        record = {"epoch": epoch + 1, "train_loss": train_loss, "val_loss": val, "val_force_mse": val_f,
                  "val_stress_mse": val_s, "lr": run.optimizer.param_groups[0]["lr"],
                  "elapsed_s": time.perf_counter() - start}
        history.append(record)
        if progress is not None:
            progress(epoch + 1, record)
        log.info("epoch %d/%d train %.4g val %.4g", epoch + 1, config.epochs, train_loss, val)
        if out_of_time:
            break
    weights = run.best[2] if config.keep == "best" else _cpu_state(run.ema.module, copy=False)
    return Checkpoint(model=model_config.to_dict(), responses=responses.to_dict(), training=asdict(config),
                      training_data=describe(structures, source), metrics=_metrics(history, config, run),
                      state_dict=weights)


def _cpu_state(module: torch.nn.Module, copy: bool = True) -> dict[str, torch.Tensor]:
    """The module's weights on the CPU (a snapshot when ``copy``)."""
    return {k: (v.detach().cpu().clone() if copy else v.detach().cpu()) for k, v in module.state_dict().items()}


def _after_validation(run: _Run, config: TrainConfig, epoch: int, val: float) -> None:
    """Keep the best EMA weights (keep: best) and step a plateau schedule once warm-up is over."""
    if config.keep == "best" and val < run.best[0]:
        run.best = (val, epoch + 1, _cpu_state(run.ema.module))
    if config.schedule == "plateau" and epoch + 1 > config.warmup_epochs:
        run.scheduler.step(val)


@dataclass
class _Run:
    """The moving parts of one training run."""

    model: RMPotential
    ema: AveragedModel
    optimizer: torch.optim.Optimizer
    scheduler: Any  # stepped per step (cosine) or per validation (plateau)
    steps_per_epoch: int
    warmup_steps: int = 0
    step: int = 0
    best: tuple = (math.inf, 0, None)  # (validation loss, epoch, EMA weights) of the best validation so far


def _start(structures: Sequence[Atoms], model_config: RMConfig, config: TrainConfig, device, dtype):
    """The model (seeded; its elements and average neighbour count from the data), its EMA, Adam, cosine decay."""
    torch.manual_seed(config.seed)
    elements = tuple(sorted({int(z) for a in structures for z in a.numbers}))
    model_config = RMConfig.from_dict({**model_config.to_dict(), "elements": list(elements),
                                       "avg_neighbors": average_neighbors(structures, model_config.cutoff)
                                       if model_config.neighbor_normalization else 1.0})
    model = RMPotential(model_config).to(device=device, dtype=dtype)
    ema = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(config.ema_decay))
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr, amsgrad=config.amsgrad)
    steps_per_epoch = config.steps_per_epoch or max(1, math.ceil(len(structures) / config.batch_size))
    warmup = config.warmup_epochs * steps_per_epoch
    return model_config, _Run(model, ema, optimizer, _scheduler(optimizer, config, steps_per_epoch, warmup),
                              steps_per_epoch, warmup)


def _scheduler(optimizer, config: TrainConfig, steps_per_epoch: int, warmup: int):
    """Cosine decay over the steps after warm-up (warm-up itself is applied in _train_epoch), or ReduceLROnPlateau."""
    lr_scheduler = torch.optim.lr_scheduler
    if config.schedule == "plateau":
        return lr_scheduler.ReduceLROnPlateau(optimizer, factor=config.plateau_factor,
                                              patience=config.plateau_patience)
    total_steps = config.epochs * steps_per_epoch - warmup
    return lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(1, total_steps),
                                          eta_min=config.lr * config.lr_final_fraction)


def _epoch_samples(structures, responses: ResponseConfig, config: TrainConfig, steps_per_epoch: int,
                   order_rng: np.random.Generator, epoch: int) -> list[NoisedSample]:
    """This epoch's structures (shuffled passes over the data) with fresh noise."""
    n_needed = steps_per_epoch * config.batch_size
    passes = math.ceil(n_needed / len(structures))
    order = np.concatenate([order_rng.permutation(len(structures)) for _ in range(passes)])[:n_needed]
    return noise_many([structures[i] for i in order], responses, [config.seed, 3, epoch])


def _train_epoch(run: _Run, samples: list[NoisedSample], responses: ResponseConfig, config: TrainConfig,
                 device, dtype) -> float:
    """One pass of optimizer steps over ``samples``; returns the mean training loss."""
    run.model.train()
    train_loss, batch_size = 0.0, config.batch_size
    for step in range(run.steps_per_epoch):
        chunk = samples[step * batch_size : (step + 1) * batch_size]
        loss, _, _ = _loss(run.model, chunk, responses, device, dtype)
        run.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if config.grad_clip is not None:
            torch.nn.utils.clip_grad_norm_(run.model.parameters(), config.grad_clip)
        if run.step < run.warmup_steps:  # linear warm-up of the learning rate
            for group in run.optimizer.param_groups:
                group["lr"] = config.lr * (run.step + 1) / run.warmup_steps
        run.optimizer.step()
        if config.schedule == "cosine" and run.step >= run.warmup_steps:
            run.scheduler.step()
        run.step += 1
        run.ema.update_parameters(run.model)
        train_loss += float(loss.detach()) / run.steps_per_epoch
    return train_loss


def _metrics(history: list[dict], config: TrainConfig, run: _Run) -> dict[str, Any]:
    final = history[-1]
    metrics = {**{k: final[k] for k in ("val_loss", "val_force_mse", "val_stress_mse")}, "epochs": final["epoch"],
               "train_time_s": final["elapsed_s"], "n_parameters": count_parameters(run.model), "steps": run.step,
               "history": [{k: h[k] for k in ("epoch", "train_loss", "val_loss")} for h in history]}
    if config.keep == "best":
        metrics.update(best_val_loss=run.best[0], best_epoch=run.best[1])
    return metrics


def split_hyperparameters(flat: dict[str, Any]) -> tuple[RMConfig, ResponseConfig, TrainConfig]:
    """Sort one flat hyperparameter mapping into model, response and training settings; unknown keys are errors."""
    groups = {"model": RMConfig, "responses": ResponseConfig, "training": TrainConfig}
    owners = {name: group for group, cls in groups.items() for name in cls.__dataclass_fields__ if name != "elements"}
    unknown = sorted(set(flat) - set(owners))
    if unknown:
        raise ValueError(f"unknown hyperparameter(s) {', '.join(unknown)}; allowed: {', '.join(sorted(owners))}")
    parts = {group: {k: v for k, v in flat.items() if owners[k] == group} for group in groups}
    if "hidden" in parts["model"]:
        parts["model"]["hidden"] = tuple(parts["model"]["hidden"])
    try:
        return RMConfig(**parts["model"]), ResponseConfig(**parts["responses"]), TrainConfig(**parts["training"])
    except TypeError as exc:
        raise ValueError(str(exc)) from None
