"""Train a denoiser with MoreRed's joint loss (§2.4: eta L_DDPM + (1 - eta) L_DTP, eq. 4 and eq. 6), one time step
per molecule, EMA weights, gradient clipping, mixed precision on CUDA, checkpoints every N steps and exact resume.

Every random draw of step k (its noise and time steps) comes from a generator seeded by (seed, k), and the batch order
of epoch e from (seed, e); so a run resumed from a checkpoint takes exactly the steps an uninterrupted run takes.
"""

from __future__ import annotations

import logging
import math
import os
import time
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from atomscreen.diffusion.checkpoint import DenoiserCheckpoint
from atomscreen.diffusion.data import MoleculeSet, Split
from atomscreen.diffusion.forward import noised
from atomscreen.diffusion.painn import Denoiser, DenoiserConfig, count_parameters, molecule_time
from atomscreen.diffusion.schedule import Schedule, polynomial_schedule

log = logging.getLogger("atomscreen.diffusion")


@dataclass(frozen=True)
class DenoiserTraining:
    """Optimisation settings (MoreRed App. C.2 where it gives them)."""

    steps: int = 1000  # optimisation steps in all
    batch_size: int = 128  # molecules per step, one time step each
    lr: float = 1e-4  # the MoreRed code's (the paper gives none)
    eta: float = 0.9  # weight of the noise loss in the joint loss
    jt_fraction: float = 1.0  # share of molecules whose noise head sees the predicted time (1: MoreRed-JT, 0: DDPM)
    ema_decay: float = 0.999
    grad_clip: float = 0.5  # global gradient norm
    plateau_patience: int = 150  # validations without improvement before the rate is halved
    validate_every: int = 100  # steps
    validation_size: int = 512  # validation molecules in the fixed validation loss
    checkpoint_every: int = 500  # steps between resume checkpoints
    seed: int = 0
    device: str = "cpu"
    amp: bool = True  # bfloat16 autocast on CUDA (ignored on CPU)
    max_seconds: float | None = None  # stop after the step that passes this wall time

    def __post_init__(self):
        for name in ("steps", "batch_size", "validate_every", "validation_size", "checkpoint_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if not 0.0 <= self.eta <= 1.0 or not 0.0 <= self.jt_fraction <= 1.0:
            raise ValueError(f"eta and jt_fraction must lie in [0, 1], got {self.eta}, {self.jt_fraction}")
        if self.lr <= 0 or self.grad_clip <= 0 or not 0.0 < self.ema_decay < 1.0:
            raise ValueError(f"need lr > 0, grad_clip > 0, 0 < ema_decay < 1, got {self.lr}, {self.grad_clip}, "
                             f"{self.ema_decay}")


def split_denoiser_hyperparameters(values: dict[str, Any]) -> tuple[DenoiserConfig, DenoiserTraining]:
    """(model config, training config) from one flat dict; unknown keys are a ValueError naming them."""
    model_keys = {f.name for f in fields(DenoiserConfig)} - {"elements", "max_atoms"}
    train_keys = {f.name for f in fields(DenoiserTraining)}
    unknown = sorted(set(values) - model_keys - train_keys)
    if unknown:
        raise ValueError(f"unknown denoiser hyperparameter(s) {', '.join(unknown)}; known: "
                         f"{', '.join(sorted(model_keys | train_keys))}")
    return (DenoiserConfig(**{k: v for k, v in values.items() if k in model_keys}),
            DenoiserTraining(**{k: v for k, v in values.items() if k in train_keys}))


def _step_generator(seed: int, step: int, device) -> torch.Generator:
    generator = torch.Generator(device=device)
    generator.manual_seed((seed * 1_000_003 + step) % (2 ** 63))
    return generator


def _batch_index(split: Split, cfg: DenoiserTraining, step: int) -> np.ndarray:
    per_epoch = max(1, len(split.train) // cfg.batch_size)
    epoch, k = divmod(step, per_epoch)
    order = np.random.default_rng([cfg.seed, epoch]).permutation(split.train)
    return order[k * cfg.batch_size:(k + 1) * cfg.batch_size]


def joint_loss(model: Denoiser, schedule: Schedule, species, x0, mol, n_mol: int, cfg: DenoiserTraining,
               generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(joint, noise, time) losses of one batch: t ~ U{1..T} per molecule, eps centred (Algorithm 1)."""
    device = x0.device
    t = torch.randint(1, schedule.T + 1, (n_mol,), generator=generator, device=device)
    jt = torch.rand(n_mol, generator=generator, device=device) < cfg.jt_fraction
    x_t, eps = noised(x0, t, mol, schedule, generator=generator)
    dtype = next(model.parameters()).dtype
    s, v = model.backbone(species, x_t.to(dtype), mol, n_mol)
    tau = model.time(s)
    target = (t.to(dtype) / schedule.T)
    time_in = torch.where(jt, molecule_time(tau, mol, n_mol), target)
    eps_hat = model.noise(s, v, time_in[mol])
    noise_loss = ((eps_hat.float() - eps.float()) ** 2).mean()
    time_loss = ((tau.float() - target[mol].float()) ** 2).mean()
    return cfg.eta * noise_loss + (1.0 - cfg.eta) * time_loss, noise_loss, time_loss


@torch.no_grad()
def validation_loss(model, schedule, data: MoleculeSet, split: Split, cfg: DenoiserTraining) -> dict[str, float]:
    """Joint, noise and time loss on a fixed validation subset with fixed time steps and noise."""
    index = split.validation[:cfg.validation_size]
    totals, count = np.zeros(3), 0
    for k, start in enumerate(range(0, len(index), cfg.batch_size)):
        chunk = index[start:start + cfg.batch_size]
        numbers, x0, mol = data.batch(chunk, device=cfg.device)
        losses = joint_loss(model, schedule, model.species(numbers), x0, mol, len(chunk), cfg,
                            _step_generator(cfg.seed + 7919, k, cfg.device))
        totals += np.array([float(v) for v in losses]) * len(chunk)
        count += len(chunk)
    joint, noise, time_ = totals / count
    return {"val_loss": float(joint), "val_noise": float(noise), "val_time": float(time_)}


@dataclass
class _State:
    model: Denoiser
    ema: AveragedModel
    optimizer: torch.optim.Optimizer
    plateau: torch.optim.lr_scheduler.ReduceLROnPlateau
    step: int = 0
    best: float = math.inf
    skipped: int = 0
    seconds: float = 0.0
    history: list | None = None


def _new_state(config: DenoiserConfig, cfg: DenoiserTraining) -> _State:
    torch.manual_seed(cfg.seed)
    model = Denoiser(config).to(cfg.device)
    ema = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(cfg.ema_decay), use_buffers=False)
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    plateau = torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, factor=0.5, patience=cfg.plateau_patience)
    return _State(model, ema, optimizer, plateau, history=[])


def _resume_blob(state: _State) -> dict:
    return {"model": state.model.state_dict(), "ema": state.ema.state_dict(), "optimizer": state.optimizer.state_dict(),
            "plateau": state.plateau.state_dict(), "step": state.step, "best": state.best, "skipped": state.skipped,
            "seconds": state.seconds, "history": state.history}


def _restore(state: _State, blob: dict) -> None:
    state.model.load_state_dict(blob["model"])
    state.ema.load_state_dict(blob["ema"])
    state.optimizer.load_state_dict(blob["optimizer"])
    state.plateau.load_state_dict(blob["plateau"])
    state.step, state.best, state.skipped = int(blob["step"]), float(blob["best"]), int(blob["skipped"])
    state.seconds, state.history = float(blob["seconds"]), list(blob["history"])


def _atomic_save(obj: Any, path: Path) -> None:
    tmp = path.with_name(path.name + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def _train_step(state: _State, schedule, data, split, cfg) -> float | None:
    numbers, x0, mol = data.batch(_batch_index(split, cfg, state.step), device=cfg.device)
    generator = _step_generator(cfg.seed, state.step, cfg.device)
    use_amp = cfg.amp and str(cfg.device).startswith("cuda")
    with torch.autocast("cuda", dtype=torch.bfloat16, enabled=use_amp):
        loss, _, _ = joint_loss(state.model, schedule, state.model.species(numbers), x0, mol, int(mol.max()) + 1,
                                cfg, generator)
    value = float(loss.detach())
    state.step += 1
    if not math.isfinite(value) or value > 1e10:  # the MoreRed code skips exploding batches (App. C.2, Fig. C3)
        state.skipped += 1
        return None
    state.optimizer.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(state.model.parameters(), cfg.grad_clip)
    state.optimizer.step()
    state.ema.update_parameters(state.model)
    return value


def train_denoiser(data: MoleculeSet, split: Split, config: DenoiserConfig, cfg: DenoiserTraining, *,
                   source: str = "", resume_path: str | Path | None = None,
                   progress: Callable[[int, dict], None] | None = None,
                   on_validate: Callable[[int, Denoiser, Schedule], dict] | None = None) -> DenoiserCheckpoint:
    """Train (or continue from ``resume_path`` if it exists) and return the EMA weights as a checkpoint;
    ``on_validate(step, ema_model, schedule)`` may add entries (e.g. sample quality) to each validation record."""
    schedule = polynomial_schedule()
    config = replace(config, elements=tuple(int(z) for z in np.unique(data.numbers)), max_atoms=int(data.sizes.max()))
    state = _new_state(config, cfg)
    resume_path = Path(resume_path) if resume_path is not None else None
    if resume_path is not None and resume_path.exists():
        _restore(state, torch.load(resume_path, map_location=cfg.device, weights_only=False))
        log.info("resumed from %s at step %d", resume_path, state.step)
    started, last = time.perf_counter() - state.seconds, None
    if state.step == 0:  # the untrained model's validation loss, the reference for progress
        state.history.append({"step": 0, "loss": None, "lr": cfg.lr,
                              **validation_loss(state.ema.module, schedule, data, split, cfg)})
    while state.step < cfg.steps:
        loss = _train_step(state, schedule, data, split, cfg)
        last = loss if loss is not None else last
        record = {"step": state.step, "loss": last, "lr": state.optimizer.param_groups[0]["lr"]}
        if state.step % cfg.validate_every == 0 or state.step == cfg.steps:
            record.update(validation_loss(state.ema.module, schedule, data, split, cfg))
            if on_validate is not None:
                record.update(on_validate(state.step, state.ema.module, schedule))
            state.best = min(state.best, record["val_loss"])
            state.plateau.step(record["val_loss"])
            state.history.append(record)
        state.seconds = time.perf_counter() - started
        if resume_path is not None and (state.step % cfg.checkpoint_every == 0 or state.step == cfg.steps):
            _atomic_save(_resume_blob(state), resume_path)
        if progress is not None:
            progress(state.step, record)
        if cfg.max_seconds is not None and state.seconds > cfg.max_seconds:
            break
    if resume_path is not None:
        _atomic_save(_resume_blob(state), resume_path)
    metrics = {"steps": state.step, "skipped_steps": state.skipped, "seconds": round(state.seconds, 1),
               "parameters": count_parameters(state.model), "best_val_loss": state.best,
               "history": state.history, "molecules_seen": state.step * cfg.batch_size}
    return DenoiserCheckpoint.of(state.ema.module, schedule, cfg, data, split, source, metrics)
