"""Errors of dataset readers and the shared skip-or-stop policy."""

from __future__ import annotations

import logging
from typing import Literal

from atomscreen.errors import AtomscreenError

OnError = Literal["raise", "skip"]
log = logging.getLogger("atomscreen.data")


class DataError(AtomscreenError, ValueError):
    """A malformed entry in a dataset: which file, which row (1-based data row) and why."""

    def __init__(self, source: str, row: int | None, reason: str):
        self.source, self.row, self.reason = source, row, reason
        where = f"{source}, row {row}" if row is not None else source
        super().__init__(f"{where}: {reason}")


def reason(exc: BaseException) -> str:
    """An exception as a reason: its message, or its type when the message is empty (ASE's parsers often raise
    bare errors)."""
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text}" if text else f"{type(exc).__name__} (no message; not in this format?)"


def check_on_error(on_error: str) -> None:
    if on_error not in ("raise", "skip"):
        raise ValueError(f"on_error must be 'raise' or 'skip', got {on_error!r}")


def handle(error: DataError, on_error: OnError) -> None:
    """Stop (raise) or log and skip a malformed entry."""
    if on_error == "raise":
        raise error
    log.warning("skipped %s", error)
