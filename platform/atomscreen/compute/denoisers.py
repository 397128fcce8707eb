"""Denoisers on the driver side: training from a `platform train` file (kind: denoiser), with a periodic
sample-quality figure; and the checks a campaign's diffusion blocks must pass before anything is written."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Callable

from atomscreen.campaign import CampaignError, CampaignSpec, Problem, TrainFileSpec
from atomscreen.chem import parse_formula


def check_models(spec: CampaignSpec, source: str) -> None:
    """Every checkpoint is of its model's kind, the compositions use only the elements and sizes of every denoiser
    that generates, relaxes or polishes, and a polish fits in its schedule; a CampaignError naming the file,
    composition or field otherwise (before anything is stored)."""
    from atomscreen.diffusion.checkpoint import DenoiserCheckpoint
    from atomscreen.potentials.train import CheckpointError, read_checkpoint, rm_checkpoint_problem

    problems: list[Problem] = []
    denoisers, periodic = {}, {}
    for name, block in spec.model_specs().items():
        if block.checkpoint is None:
            continue
        field = f"models.{name}.checkpoint"
        try:
            data = read_checkpoint(block.checkpoint)  # read once: its kind, and a denoiser's elements and sizes
        except CheckpointError as exc:
            problems.append(Problem(field, block.checkpoint, str(exc)))
            continue
        kind = data.get("kind") if isinstance(data, dict) else None
        if kind != block.kind:
            problems.append(Problem(field, block.checkpoint,
                                    f"{block.checkpoint} is a checkpoint of kind {kind!r}, not {block.kind!r}"))
        elif kind == "rm_potential" and (problem := rm_checkpoint_problem(data, block.checkpoint)):
            problems.append(Problem(field, block.checkpoint, problem))
        elif kind == "denoiser":
            denoisers[name] = DenoiserCheckpoint.from_contents(data, block.checkpoint)
        else:
            periodic[name] = bool((data.get("training_data") or {}).get("periodic", 1))
    polish = spec.rescore.polish if spec.rescore is not None else None
    used = [b.model for b in spec.generators.diffusion_blocks] + [spec.relaxation.model, spec.relaxation.time_model]
    for name in dict.fromkeys(n for n in used + [polish and polish.model] if n is not None):
        if name in denoisers:
            problems += _unmakeable(spec, name, denoisers[name])
    problems += _schedule_limits(spec, denoisers) + _crystals(spec, periodic)
    if problems:
        raise CampaignError(source, problems)


def _schedule_limits(spec: CampaignSpec, denoisers: dict) -> list[Problem]:
    """A polish longer than its denoiser's schedule, or a relaxation threshold at or past its end."""
    problems = []
    polish = spec.rescore.polish if spec.rescore is not None else None
    if polish is not None and polish.model in denoisers:
        T = int(denoisers[polish.model].schedule["T"])
        if polish.steps > T:
            problems.append(Problem("rescore.polish.steps", polish.steps, f"{polish.steps} reverse steps, more than "
                                    f"the {T} of the denoiser {polish.model!r}'s schedule"))
    r = spec.relaxation
    if r.model in denoisers and r.stop_at >= int(denoisers[r.model].schedule["T"]):
        problems.append(Problem("relaxation.stop_at", r.stop_at, f"must be below the {denoisers[r.model].schedule['T']}"
                                f" steps of the denoiser {r.model!r}'s schedule"))
    return problems


def _crystals(spec: CampaignSpec, periodic: dict[str, bool]) -> list[Problem]:
    """RSS blocks that make crystals (periodic unset and a model trained on crystals) in a campaign that relaxes or
    polishes by diffusion, which treats molecules."""
    wants = [what for what, on in (("relaxation.method", spec.relaxation.diffusion_method is not None),
                                   ("rescore.polish", spec.rescore is not None and spec.rescore.polish is not None))
             if on]
    if not wants:
        return []
    crystals = [b.name for b in spec.generators.rss_blocks if b.periodic is None and periodic.get(b.model, False)]
    return [Problem(f"generators.rss.{name}.periodic", None, f"this block makes crystals (its model was trained on "
                    f"periodic structures), but {' and '.join(wants)} treat molecules: set periodic: false")
            for name in crystals]


def _unmakeable(spec: CampaignSpec, name: str, checkpoint) -> list[Problem]:
    """Compositions with an element the denoiser never saw, or more atoms than its largest training molecule."""
    from ase.data import atomic_numbers

    elements, largest = set(checkpoint.config.elements), checkpoint.config.max_atoms
    where = f"the denoiser {name!r} ({_path(spec, name)})"
    problems = []
    for formula in spec.compositions.expand():
        counts = parse_formula(formula)
        unknown = sorted(e for e in counts if atomic_numbers[e] not in elements)
        if unknown:
            trained = ", ".join(_symbols(sorted(elements)))
            problems.append(Problem("compositions", formula, f"element(s) {', '.join(unknown)} unknown to {where}, "
                                    f"trained on {trained}"))
        elif sum(counts.values()) > largest:
            problems.append(Problem("compositions", formula, f"{sum(counts.values())} atoms, more than the {largest} "
                                    f"of the largest molecule {where} was trained on"))
    return problems


def _path(spec: CampaignSpec, name: str) -> str:
    return spec.model_specs()[name].checkpoint


def _symbols(numbers) -> list[str]:
    from ase.data import chemical_symbols

    return [chemical_symbols[z] for z in numbers]


def sample_quality(model, schedule, data, index, *, n: int, seed: int) -> float:
    """% of ``n`` molecules (compositions of ``index``) generated by DDPM that are valid by MoreRed's rule."""
    import torch

    from atomscreen.diffusion.sample import sample
    from atomscreen.evaluate.generation import connected_valence

    chosen = index[:n]
    numbers, _, mol = data.batch(chosen)
    was_training = model.training
    model.eval()
    out = sample(model, schedule, model.species(numbers), mol, len(chosen), sampler="ddpm",
                 generator=torch.Generator().manual_seed(seed))
    model.train(was_training)
    positions = out.positions.numpy()
    valid = [connected_valence(numbers[mol == k].numpy(), positions[(mol == k).numpy()])[0] for k in range(len(chosen))]
    return 100.0 * sum(valid) / len(valid)


def train_denoiser_from_spec(spec: TrainFileSpec, *, device: str | None = None, max_seconds: float | None = None,
                             batch_size: int | None = None, resume_path: Path | None = None,
                             progress: Callable[[int, dict], None] | None = None, sample_every: int = 0,
                             sample_molecules: int = 32, figure: Path | None = None):
    """Train the denoiser a train file describes (resuming from ``resume_path`` if it exists); every
    ``sample_every`` steps, ``sample_molecules`` DDPM samples of validation compositions are scored and ``figure``
    redrawn."""
    from atomscreen.diffusion.data import from_atoms, split
    from atomscreen.diffusion.train import split_denoiser_hyperparameters, train_denoiser

    model_cfg, train_cfg = split_denoiser_hyperparameters(spec.hyperparameters)
    changes: dict[str, Any] = {} if "seed" in spec.hyperparameters else {"seed": spec.seed}
    changes.update({k: v for k, v in {"device": device, "max_seconds": max_seconds, "batch_size": batch_size}.items()
                    if v is not None})
    train_cfg = dataclasses.replace(train_cfg, **changes)
    data = from_atoms(spec.dataset.read())
    molecules = split(len(data), spec.split.train, spec.split.validation, train_cfg.seed)
    quality: list[tuple[int, float]] = []

    def hook(step: int, model, schedule) -> dict:
        if not sample_every or step % sample_every:
            return {}
        quality.append((step, sample_quality(model, schedule, data, molecules.validation, n=sample_molecules,
                                             seed=step)))
        if figure is not None:
            from atomscreen.analysis.plots import training_figure

            training_figure(history, quality, figure)
        return {"sample_valid_pct": quality[-1][1]}

    history: list[dict] = []

    def tracked(step: int, record: dict) -> None:
        if "val_loss" in record:
            history.append(record)
        if progress is not None:
            progress(step, record)

    return train_denoiser(data, molecules, model_cfg, train_cfg, source=spec.dataset.label, resume_path=resume_path,
                          progress=tracked, on_validate=hook)
