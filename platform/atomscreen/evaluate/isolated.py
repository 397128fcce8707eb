"""Run a function over items in a child process with a time limit per item.

Native code (an xtb SCF, RDKit's bond perception) can hang or crash the
interpreter; a thread cannot be stopped, a process can. The child is a plain
``python -m atomscreen.evaluate.isolated`` subprocess (Dask workers are daemon
processes and may not fork multiprocessing children), fed length-prefixed
pickles on stdin. An item that runs past ``timeout_s`` is recorded as
``timeout``, the child is killed and a fresh one takes the remaining items.
"""

from __future__ import annotations

import importlib
import os
import pickle
import select
import struct
import subprocess
import sys
import time
from dataclasses import dataclass
from typing import Any, Callable, Sequence

from atomscreen.errors import error_text

_HEADER = struct.Struct("!Q")


@dataclass
class Outcome:
    """What happened to one item: ``ok`` (value set), ``error`` (the exception text) or ``timeout``."""

    status: str
    value: Any = None
    error: str | None = None
    wall_time_s: float = 0.0


def _resolve(path: str) -> Callable[[Any], Any]:
    module, _, name = path.partition(":")
    return getattr(importlib.import_module(module), name)


def _write(stream, obj: Any) -> None:
    data = pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
    stream.write(_HEADER.pack(len(data)) + data)
    stream.flush()


def _read_exact(fd: int, n: int, deadline: float | None) -> bytes | None:
    """n bytes from fd, or None when the deadline passes first; EOFError when the child is gone."""
    chunks, got = [], 0
    while got < n:
        if deadline is not None:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([fd], [], [], left)[0]:
                return None
        chunk = os.read(fd, n - got)
        if not chunk:
            raise EOFError("the child process exited")
        chunks.append(chunk)
        got += len(chunk)
    return b"".join(chunks)


class _Child:
    def __init__(self, func: str, env: dict[str, str] | None):
        self.proc = subprocess.Popen([sys.executable, "-m", "atomscreen.evaluate.isolated", func],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env)

    def ask(self, item: Any, timeout_s: float | None) -> Outcome:
        t0 = time.monotonic()
        try:
            _write(self.proc.stdin, item)
            deadline = None if timeout_s is None else t0 + timeout_s
            header = _read_exact(self.proc.stdout.fileno(), _HEADER.size, deadline)
            if header is None:
                return Outcome("timeout", error=f"no result within {timeout_s:g} s", wall_time_s=time.monotonic() - t0)
            body = _read_exact(self.proc.stdout.fileno(), _HEADER.unpack(header)[0], None)
        except (EOFError, BrokenPipeError) as exc:
            code = self.proc.wait()
            return Outcome("error", error=f"the worker process died (exit code {code}): {exc}",
                           wall_time_s=time.monotonic() - t0)
        status, payload = pickle.loads(body)
        elapsed = time.monotonic() - t0
        if status == "ok":
            return Outcome("ok", value=payload, wall_time_s=elapsed)
        return Outcome("error", error=payload, wall_time_s=elapsed)

    def close(self, kill: bool = False) -> None:
        if kill:
            self.proc.kill()
        else:
            self.proc.stdin.close()
        self.proc.wait()
        self.proc.stdout.close()
        if not self.proc.stdin.closed:
            self.proc.stdin.close()


def _child_env(threads: int) -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads),
            "OMP_STACKSIZE": os.environ.get("OMP_STACKSIZE", "1G")}


def start_child(func: str, *, threads: int = 1) -> _Child:
    """A persistent child process serving ``func`` ("module:function"): ``.ask(item, timeout_s)`` -> Outcome; after
    a crash (``.proc.poll()`` is set) the caller closes it and starts another."""
    return _Child(func, _child_env(threads))


def map_isolated(func: str, items: Sequence[Any], timeout_s: float | None, *, threads: int = 1) -> list[Outcome]:
    """``func(item)`` ("module:function", importable in a fresh interpreter) for every item, in a child process;
    an item past ``timeout_s`` seconds (None: no limit) becomes a ``timeout`` outcome and the others go on."""
    if timeout_s is not None and timeout_s <= 0:
        raise ValueError(f"timeout_s must be positive or None, got {timeout_s}")
    env = _child_env(threads)
    out: list[Outcome] = []
    child: _Child | None = None
    try:
        for item in items:
            if child is None:
                child = _Child(func, env)
            outcome = child.ask(item, timeout_s)
            if outcome.status == "timeout" or child.proc.poll() is not None:
                child.close(kill=True)
                child = None
            out.append(outcome)
    finally:
        if child is not None:
            child.close()
    return out


def _serve(func_path: str) -> None:
    """The child's loop: read an item, call the function, write ('ok', value) or ('error', text)."""
    # the channel gets a private copy of fd 1; fd 1 itself goes to stderr, so prints of native code (Fortran, C++)
    # and of Python cannot corrupt it
    channel = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    stdin, stdout = sys.stdin.buffer, channel
    func = _resolve(func_path)
    while True:
        header = stdin.read(_HEADER.size)
        if len(header) < _HEADER.size:
            return
        item = pickle.loads(stdin.read(_HEADER.unpack(header)[0]))
        try:
            result = ("ok", func(item))
        except Exception as exc:  # the item's failure, reported to the parent
            result = ("error", error_text(exc, 2000))
        _write(stdout, result)


if __name__ == "__main__":
    _serve(sys.argv[1])
