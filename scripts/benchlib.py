"""What the bench scripts share: one JSON line per result, printed and (with an output file) appended."""

from __future__ import annotations

import json
from pathlib import Path


def emit(line: dict, out: Path | None = None) -> None:
    """Print ``line`` as one JSON line and append it to ``out`` when given (its folder is made)."""
    text = json.dumps(line)
    print(text, flush=True)
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        with out.open("a") as stream:
            stream.write(text + "\n")
