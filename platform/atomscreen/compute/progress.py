"""What a run tells its front end while it goes (Reporter hooks) and how it ended (Outcome)."""

from __future__ import annotations

import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Callable, Iterator

from atomscreen.errors import AtomscreenError


class RunnerError(AtomscreenError):
    """A campaign that cannot be submitted or resumed as asked; the message says what to do instead."""


class CampaignStopped(AtomscreenError):
    """A run that started and stopped on a database fault (disk full, an outage past the retry budget): nothing is
    half-written, and `platform resume` continues it once the database is fixed. The CLI exits 1, as for a run that
    failed."""

    exit_code = 1


@dataclass
class Reporter:
    """Progress hooks for a front end (all optional)."""

    message: Callable[[str], None] = lambda text: None
    training: Callable[[int, int, float], None] | None = None  # epoch, epochs, validation loss
    # all tasks of a stage, done before, structures to make, stage ("generation", "re-scoring", "validity")
    tasks_started: Callable[[int, int, int, str], None] = lambda total, done, structures, stage: None
    task_finished: Callable[[str, bool, int], None] = lambda key, ok, n_structures: None


@dataclass
class Timings:
    """Where a run's wall time went (seconds): models provided, tasks planned and recorded, dispatch (tasks running
    and their results written, overlapping), store writes alone, analysis, the whole run after the models; the tasks'
    own wall time summed over the workers, and the structures written."""

    models_s: float = 0.0
    plan_s: float = 0.0
    dispatch_s: float = 0.0
    write_s: float = 0.0
    analysis_s: float = 0.0
    total_s: float = 0.0
    task_s: float = 0.0
    n_written: int = 0

    @contextmanager
    def add(self, name: str) -> Iterator[None]:
        """Add the wall time of the ``with`` body to field ``name``."""
        t0 = time.perf_counter()
        try:
            yield
        finally:
            setattr(self, name, getattr(self, name) + time.perf_counter() - t0)


@dataclass
class Outcome:
    """How a run ended."""

    name: str
    status: str
    tasks: dict[str, int]
    n_structures: int
    dashboard: str | None = None
    notes: list[str] = field(default_factory=list)
    timings: Timings = field(default_factory=Timings)
