"""Relaxation in stages sharing one step budget, with a random kick before a stage: the Response Matching authors'
molecule protocol (cace-rm `qm7b/generate.ipynb`: FIRE to fmax 1e-3 in at most 500 steps, every atom displaced
uniformly in ±0.75 Å per component, FIRE to fmax 2e-4; at most 1,000 steps in all).

Each stage is one batched relaxation; a structure's budget in a stage is what the stages before it left it (and at
most the stage's own ``max_steps``). A structure that explodes stops there. Unlike ASE's optimizer object kept
across the authors' two ``run`` calls, the FIRE state (velocities, dt) starts afresh in every stage.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Callable, Sequence

import numpy as np
from ase import Atoms

from atomscreen.relax.trajectory import RelaxStatus


@dataclass(frozen=True)
class RelaxStage:
    """One stage: relax to ``fmax`` (eV/Å) in at most ``max_steps`` (None: the rest of the budget), after displacing
    every atom by ``kick`` Å at most per Cartesian component (uniform, 0: none)."""

    fmax: float
    max_steps: int | None = None
    kick: float = 0.0

    def __post_init__(self) -> None:
        if self.fmax <= 0 or (self.max_steps is not None and self.max_steps < 0) or self.kick < 0:
            raise ValueError(f"a relaxation stage needs fmax > 0, max_steps >= 0 and kick >= 0, got {self}")


@dataclass
class StagedResult:
    """The outcome after the last stage a structure reached, and the steps it took in each stage."""

    result: object  # RelaxResult of the last stage run
    stage_steps: list[int]
    stage_status: list[str]


def relax_in_stages(model, starts: Sequence[Atoms], stages: Sequence[RelaxStage], settings,
                    kick_rng: Callable[[int, int], np.random.Generator], *, device: str = "cpu") -> list[StagedResult]:
    """Relax ``starts`` through ``stages`` with ``settings`` (RelaxSettings; its max_steps is the shared budget,
    its fmax unused); ``kick_rng(k, stage)`` gives the generator of structure k's kick before ``stage``."""
    from atomscreen.relax.loop import relax

    if not stages:
        raise ValueError("relax_in_stages needs at least one stage")
    current = [a.copy() for a in starts]
    out: list[StagedResult | None] = [None] * len(starts)
    used = [0] * len(starts)
    active = list(range(len(starts)))
    for s, stage in enumerate(stages):
        for k in active:
            if stage.kick:
                current[k].positions += kick_rng(k, s).uniform(-stage.kick, stage.kick, size=(len(current[k]), 3))
        budgets = [max(0, settings.max_steps - used[k]) for k in active]
        if stage.max_steps is not None:
            budgets = [min(b, stage.max_steps) for b in budgets]
        results = relax(model, [current[k] for k in active], replace(settings, fmax=stage.fmax), device=device,
                        max_steps=budgets)
        for k, r in zip(active, results):
            previous = out[k]
            if previous is not None:
                r = replace(r, trajectory=_joined(previous.result.trajectory, r.trajectory, used[k]))
            used[k] += r.n_steps
            out[k] = StagedResult(r, (previous.stage_steps if previous else []) + [r.n_steps],
                                  (previous.stage_status if previous else []) + [str(r.status)])
            current[k] = r.atoms.copy()
        active = [k for k in active if out[k].result.status != RelaxStatus.EXPLODED]
    return [_totalled(o) for o in out]


def _joined(first, second, offset: int):
    """Two stages' trajectories as one, the second's steps counted on from ``offset``."""
    if first is None or second is None:
        return first or second
    from atomscreen.relax.trajectory import Trajectory

    return Trajectory(np.concatenate([first.steps, second.steps + offset]),
                      np.concatenate([first.energies, second.energies]), np.concatenate([first.fmax, second.fmax]),
                      np.concatenate([first.positions, second.positions]), np.concatenate([first.cells, second.cells]))


def _totalled(staged: StagedResult) -> StagedResult:
    """The last stage's result with n_steps counting every stage."""
    staged.result = replace(staged.result, n_steps=sum(staged.stage_steps))
    return staged
