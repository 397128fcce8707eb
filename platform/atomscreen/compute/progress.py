"""What a run tells its front end while it goes (Reporter hooks) and how it ended (Outcome)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

from atomscreen.errors import AtomscreenError


class RunnerError(AtomscreenError):
    """A campaign that cannot be submitted or resumed as asked; the message says what to do instead."""


@dataclass
class Reporter:
    """Progress hooks for a front end (all optional)."""

    message: Callable[[str], None] = lambda text: None
    training: Callable[[int, int, float], None] | None = None  # epoch, epochs, validation loss
    # all tasks of a stage, done before, structures to make, stage ("generation", "re-scoring", "validity")
    tasks_started: Callable[[int, int, int, str], None] = lambda total, done, structures, stage: None
    task_finished: Callable[[str, bool, int], None] = lambda key, ok, n_structures: None


@dataclass
class Outcome:
    """How a run ended."""

    name: str
    status: str
    tasks: dict[str, int]
    n_structures: int
    dashboard: str | None = None
    notes: list[str] = field(default_factory=list)
