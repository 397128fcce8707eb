"""Model provisioning: each named model of a campaign is already linked, loaded from a checkpoint, reused from the
store by training recipe, or trained now; and training from a `train:` block, for campaigns and `platform train`."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass
from typing import Any, Callable

from sqlalchemy.engine import Engine

from atomscreen.campaign import CampaignSpec, ModelSpec, TrainSpec
from atomscreen.compute.progress import Reporter
from atomscreen.compute.tasks import ModelRef
from atomscreen.jobs import DEFAULT_MODEL
from atomscreen.store import StoredModel, add_model, campaign_models, link_model, model_by_recipe, transaction


@dataclass(frozen=True)
class ProvidedModel:
    """A campaign's model as the run needs it: its row id, what workers rebuild it from, its training-set
    description."""

    name: str
    id: int
    ref: ModelRef
    training_data: dict[str, Any]


def _provided(name: str, row: StoredModel) -> ProvidedModel:
    ref = ModelRef(row.sha256, row.hyperparameters["model"], row.weights, row.kind,
                   row.hyperparameters.get("schedule"))
    return ProvidedModel(name, row.id, ref, dict(row.training_data))


def training_recipe(block: TrainSpec, data_sha256: str) -> str:
    """sha256 of what determines a trained model: the training set, hyperparameters and seed."""
    recipe = {"data": data_sha256, "hyperparameters": block.hyperparameters, "seed": block.seed}
    blob = json.dumps(recipe, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()


def configs(block: Any, device: str | None = None, **overrides: Any) -> tuple:
    """(RMConfig, ResponseConfig, TrainConfig) of a `train:` block (or a train file): the block's seed applies unless
    the hyperparameters set one; ``device`` and other TrainConfig ``overrides`` (None: keep) replace the file's."""
    from atomscreen.potentials.train import split_hyperparameters

    model_cfg, response_cfg, train_cfg = split_hyperparameters(block.hyperparameters)
    changes: dict[str, Any] = {} if "seed" in block.hyperparameters else {"seed": block.seed}
    changes.update({k: v for k, v in {"device": device, **overrides}.items() if v is not None})
    return model_cfg, response_cfg, dataclasses.replace(train_cfg, **changes)


def train_from_spec(block: Any, structures: list, *, device: str | None = None,
                    progress: Callable[[int, dict], None] | None = None, **overrides: Any):
    """Train an RM potential as a `train:` block (or a train file) says; returns the Checkpoint."""
    from atomscreen.potentials.train import train

    model_cfg, response_cfg, train_cfg = configs(block, device, **overrides)
    return train(structures, model_cfg, response_cfg, train_cfg, source=block.dataset.label, progress=progress)


def provide_models(engine: Engine, campaign_id: int, spec: CampaignSpec,
                   reporter: Reporter) -> dict[str, ProvidedModel]:
    """Every named model of the campaign, linked to it in the store (so resume uses the same ones)."""
    with transaction(engine) as session:
        linked = campaign_models(session, campaign_id)
    provided = {}
    for name, block in spec.model_specs().items():
        if name in linked:
            provided[name] = _provided(name, linked[name])
            continue
        row = _provide(engine, spec, name, block, reporter)
        with transaction(engine) as session:
            link_model(session, campaign_id, name, row.id)
        provided[name] = _provided(name, row)
    return provided


def _provide(engine: Engine, spec: CampaignSpec, name: str, block: ModelSpec, reporter: Reporter) -> StoredModel:
    """Load, reuse or train one model and store it (keyed by the sha256 of its weights)."""
    from atomscreen.potentials.train import Checkpoint, describe

    label = "" if name == DEFAULT_MODEL else f" {name!r}"
    recipe = None
    if block.checkpoint is not None:
        if block.kind == "denoiser":
            from atomscreen.diffusion.checkpoint import DenoiserCheckpoint

            checkpoint = DenoiserCheckpoint.load(block.checkpoint)
        else:
            checkpoint = Checkpoint.load(block.checkpoint)
        reporter.message(f"model{label} from checkpoint {block.checkpoint}")
    else:
        train = block.train
        structures = train.dataset.read()
        recipe = training_recipe(train, describe(structures)["sha256"])
        with transaction(engine) as session:
            stored = model_by_recipe(session, block.kind, recipe)
        if stored is not None:
            reporter.message(f"reusing stored model {stored.id} (sha256 {stored.sha256[:12]}) "
                             f"for{label or ' the model'}: same data, hyperparameters and seed")
            return stored
        n_epochs = configs(train)[2].epochs
        reporter.message(f"training the RM potential{label} on {len(structures)} structure(s) from "
                         f"{train.dataset.label} ({n_epochs} epochs)")
        progress = None
        if reporter.training is not None:
            progress = lambda epoch, r: reporter.training(epoch, n_epochs, r["val_loss"])  # noqa: E731
        checkpoint = train_from_spec(train, structures, progress=progress)
    training_data = dict(checkpoint.training_data, **({"recipe": recipe} if recipe else {}))
    with transaction(engine) as session:
        return add_model(session, kind=checkpoint.kind, weights=checkpoint.weights_bytes(),
                         hyperparameters=checkpoint.hyperparameters(), training_data=training_data,
                         metrics=checkpoint.metrics, name=spec.name if name == DEFAULT_MODEL else f"{spec.name}:{name}")
