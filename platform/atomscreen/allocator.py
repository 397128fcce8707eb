"""glibc malloc settings for batched evaluation: keep freed memory in the process.

A batched model evaluation allocates and frees the same large edge tensors on every step. glibc's defaults hand
every block above its (dynamic) mmap threshold back to the kernel and trim the heap top, so each step faults the
same pages in again: 31-48% of an evaluation of 256-1,024 C8 cells was kernel page-fault time on 2 CPU cores
(shared/design/cpu-profile.md §3.3). The settings below (mallopt, as GLIBC_TUNABLES mmap_threshold=32 MiB,
trim_threshold, top_pad=1 GiB) keep the memory mapped (trim_threshold is capped at 2 GiB: mallopt takes an int);
resident memory then stays at its peak. Other C libraries (musl, macOS) are left alone.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os

# mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD, _M_TOP_PAD, _M_MMAP_THRESHOLD = -1, -2, -3
SETTINGS = {_M_MMAP_THRESHOLD: 32 * 1024**2, _M_TRIM_THRESHOLD: 16 * 1024**3, _M_TOP_PAD: 1024**3}
_TUNED: bool | None = None


def keep_freed_memory() -> bool:
    """Apply the settings once per process (idempotent); True where glibc took them. ATOMSCREEN_MALLOC=default
    leaves the allocator as it is (for measuring the difference)."""
    global _TUNED
    if _TUNED is not None:
        return _TUNED
    _TUNED = False
    if os.environ.get("ATOMSCREEN_MALLOC", "") == "default":
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    _TUNED = all(mallopt(param, min(value, 2**31 - 1)) == 1 for param, value in SETTINGS.items())
    return _TUNED
