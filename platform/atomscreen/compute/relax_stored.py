"""`platform relax`: chosen stored molecules of a campaign relaxed by reverse diffusion (MoreRed ITP / AS / JT) on one
of its denoisers (or a checkpoint), here in the driver, stored as children (origin diffusion_relax) in one transaction;
molecules already relaxed by the same method and model are skipped, so running it again adds nothing."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

from sqlalchemy.engine import Engine

from atomscreen.compute import plan
from atomscreen.compute.diffusion_tasks import diffusion_relax_task
from atomscreen.compute.workers import ModelRef
from atomscreen.errors import AtomscreenError
from atomscreen.jobs import Origin
from atomscreen.store import (
    add_model,
    campaign_models,
    children,
    get_campaign,
    structures,
    transaction,
    write_structures,
)


class RelaxError(AtomscreenError, ValueError):
    """A `platform relax` request that cannot run (unknown campaign, model or structure, a crystal)."""


@dataclass(frozen=True)
class RelaxOutcome:
    """What `platform relax` did: the new child ids, how many converged, and the molecules skipped as done."""

    new_ids: list[int]
    converged: int
    skipped: dict[int, int]  # parent id -> its existing child


def _denoiser(engine: Engine, campaign_id: int, name: str) -> tuple[int, ModelRef]:
    """(model id, ModelRef) of the campaign's denoiser ``name``, or of a denoiser checkpoint file (stored once)."""
    with transaction(engine) as session:
        linked = campaign_models(session, campaign_id)
        row = linked.get(name)
        if row is None and Path(name).is_file():
            from atomscreen.diffusion.checkpoint import DenoiserCheckpoint

            try:
                checkpoint = DenoiserCheckpoint.load(name)
            except (ValueError, KeyError) as exc:
                raise RelaxError(f"--model {name}: not a denoiser checkpoint ({exc})") from None
            row = add_model(session, kind=checkpoint.kind, weights=checkpoint.weights_bytes(),
                            hyperparameters=checkpoint.hyperparameters(), training_data=checkpoint.training_data,
                            metrics=checkpoint.metrics, name=Path(name).stem)
        if row is None:
            raise RelaxError(f"--model {name!r} is neither a model of this campaign ({', '.join(linked) or 'none'}) "
                             "nor a checkpoint file")
        if row.kind != "denoiser":
            raise RelaxError(f"--model {name!r} is of kind {row.kind}; relaxation by diffusion needs a denoiser")
        return row.id, ModelRef(row.sha256, row.hyperparameters["model"], row.weights, row.kind,
                                row.hyperparameters.get("schedule"))


def relax_stored(engine: Engine, campaign: str, structure_ids: Sequence[int], *, method: str, model: str,
                 time_model: str | None = None, max_steps: int = 1000, stop_at: int = 0, trajectory_every: int = 10,
                 seed: int | None = None, batch_size: int = 64,
                 progress: Callable[[int, int], None] = lambda done, total: None) -> RelaxOutcome:
    """Relax the campaign's molecules ``structure_ids`` by ``method`` (morered_itp / morered_as / morered_jt) on the
    denoiser ``model``; seeds default to the campaign's, each molecule's noise keyed by its id."""
    name = _method(method, time_model, max_steps, stop_at, batch_size)
    campaign_id, spec_seed, found = _molecules(engine, campaign, structure_ids)
    model_id, ref = _denoiser(engine, campaign_id, model)
    _fits(ref, found, stop_at)
    timer = _denoiser(engine, campaign_id, time_model)[1] if time_model is not None else None
    seed = spec_seed if seed is None else seed
    settings = {"max_steps": max_steps, "stop_at": stop_at, "seed": seed, "time_model": time_model}
    with transaction(engine) as session:  # done before with these settings: skipped
        made = children(session, campaign_id, Origin.DIFFUSION_RELAX, parents=structure_ids, sampler=name,
                        model_id=model_id)
        done = {a.info["structure_id"]: a.info.get("settings") for a in structures(session, ids=list(made.values()))}
    skipped = {p: c for p, c in made.items() if done.get(c) == settings}
    todo = [found[i] for i in dict.fromkeys(structure_ids) if i not in skipped]
    jobs = plan.diffusion_relax_jobs(todo, name, max_steps=max_steps, stop_at=stop_at,
                                     trajectory_every=trajectory_every, seed=seed, model=model, time_model=time_model,
                                     batch_size=batch_size)
    outs = []
    for _, job in jobs:
        outs += diffusion_relax_task(job, ref, timer).structures
        progress(len(outs), len(todo))
    with transaction(engine) as session:  # all or nothing
        new_ids = write_structures(session, campaign_id, Origin.DIFFUSION_RELAX, outs, model_id=model_id)
    return RelaxOutcome(new_ids, sum(o.info["converged"] for o in outs), skipped)


def _method(method: str, time_model: str | None, max_steps: int, stop_at: int, batch_size: int) -> str:
    """The science name of ``method`` (morered_jt -> morered-jt), after checking the settings that go with it."""
    from atomscreen.diffusion.relax import METHODS

    name = method.replace("_", "-")
    if name not in METHODS:
        raise RelaxError(f"--method must be one of {', '.join(m.replace('-', '_') for m in METHODS)}, got {method!r}")
    if time_model is not None and name == "morered-jt":
        raise RelaxError("--time-model goes with morered_itp or morered_as; morered_jt reads the denoiser's own time")
    if max_steps < 1 or stop_at < 0 or batch_size < 1:
        raise RelaxError(f"--max-steps and --batch-size must be >= 1 and --stop-at >= 0, got {max_steps}, "
                         f"{batch_size} and {stop_at}")
    return name


def _fits(ref: ModelRef, found: dict, stop_at: int) -> None:
    """The denoiser knows every molecule's elements and size, and stop_at lies inside its schedule."""
    from ase.data import chemical_symbols

    elements, largest, T = set(ref.config["elements"]), int(ref.config["max_atoms"]), int(ref.schedule["T"])
    if stop_at >= T:
        raise RelaxError(f"--stop-at {stop_at} is not below the denoiser's {T} steps")
    unknown = {i: sorted({chemical_symbols[z] for z in a.numbers if z not in elements}) for i, a in found.items()}
    bad = {i: e for i, e in unknown.items() if e}
    if bad:
        raise RelaxError(f"structures {sorted(bad)} have element(s) the denoiser never saw: "
                         f"{', '.join(sorted({x for e in bad.values() for x in e}))}")
    big = sorted(i for i, a in found.items() if len(a) > largest)
    if big:
        raise RelaxError(f"structures {big} have more atoms than the {largest} of the denoiser's largest molecule")


def _molecules(engine: Engine, campaign: str, structure_ids: Sequence[int]):
    """(campaign id, campaign seed, {id: Atoms}) of the chosen molecules, which must be the campaign's and not
    periodic."""
    with transaction(engine) as session:
        row = get_campaign(session, campaign)
        if row is None:
            raise RelaxError(f"no campaign named {campaign!r}")
        campaign_id, spec_seed = row.id, _campaign_seed(row.spec)
        found = {a.info["structure_id"]: a for a in structures(session, ids=list(structure_ids))}
    missing = [i for i in structure_ids if i not in found or found[i].info["campaign_id"] != campaign_id]
    if missing:
        raise RelaxError(f"structures {missing} are not in campaign {campaign!r}")
    periodic = [i for i in structure_ids if found[i].pbc.any()]
    if periodic:
        raise RelaxError(f"structures {periodic} are periodic: relaxation by diffusion treats molecules")
    return campaign_id, spec_seed, found


def structures_of_origin(engine: Engine, campaign: str, origin: str) -> list[int]:
    """Ids of the campaign's molecules of ``origin`` that did not explode."""
    from atomscreen.store import structure_ids

    with transaction(engine) as session:
        row = get_campaign(session, campaign)
        if row is None:
            raise RelaxError(f"no campaign named {campaign!r}")
        ids = structure_ids(session, row.id, [origin])
        kept = [a.info["structure_id"] for a in structures(session, ids=ids)
                if a.info.get("relax_status") != "exploded" and not a.pbc.any()]
    if not kept:
        raise RelaxError(f"campaign {campaign!r} has no molecules of origin {origin!r}")
    return kept


def _campaign_seed(text: str) -> int:
    import yaml

    data = yaml.safe_load(text) or {}
    return int(data.get("seed", 0)) if isinstance(data, dict) else 0
