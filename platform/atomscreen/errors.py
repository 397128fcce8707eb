"""One base class for every error a user can act on, and one way to turn an exception into a line of text.

The CLI catches :class:`AtomscreenError` once and prints its message; anything
else is a bug and keeps its traceback.
"""

from __future__ import annotations

import traceback


class AtomscreenError(Exception):
    """An error whose message tells the user what was wrong and what to do instead."""


def error_text(exc: BaseException, limit: int | None = None) -> str:
    """``Type: message`` of an exception, as stored with a failed task or structure (at most ``limit`` characters)."""
    text = "".join(traceback.format_exception_only(type(exc), exc)).strip()
    return text if limit is None else text[:limit]
