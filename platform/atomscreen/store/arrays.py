"""NumPy arrays as compressed blobs that round-trip bit for bit.

A blob is ``.npy`` bytes, zlib-compressed when they are ``COMPRESS_FROM`` bytes
or more: the ``.npy`` header records dtype (with byte order) and shape, so
nothing about the array lives outside it. Small arrays (a cell, a few atoms'
positions) are stored as they are: deflate saves them a few bytes and costs
more than the rest of their write. A raw blob starts with the ``.npy`` magic
``\\x93NUMPY``, a compressed one with a zlib header, so both read back.
"""

from __future__ import annotations

import functools
import io
import zlib

import numpy as np
from numpy.lib import format as npy_format
from sqlalchemy import LargeBinary
from sqlalchemy.types import TypeDecorator

_ZLIB_LEVEL = 6
COMPRESS_FROM = 1024  # bytes of .npy
_MAGIC = npy_format.MAGIC_PREFIX


def encode_array(array: np.ndarray) -> bytes:
    """Serialize an array (any numeric dtype, any shape) to compressed bytes."""
    array = np.asarray(array)
    if array.dtype.hasobject:
        raise TypeError(f"cannot store an object array (dtype {array.dtype}); use a numeric dtype")
    fortran = bool(array.flags.f_contiguous and not array.flags.c_contiguous)  # as np.save writes it
    header = _npy_header(npy_format.dtype_to_descr(array.dtype), array.shape, fortran)
    raw = header + array.tobytes(order="F" if fortran else "C")
    return raw if len(raw) < COMPRESS_FROM else zlib.compress(raw, _ZLIB_LEVEL)


@functools.lru_cache(maxsize=4096)
def _npy_header(descr, shape: tuple[int, ...], fortran: bool) -> bytes:
    """The ``.npy`` header np.save writes for these arrays (built once per dtype and shape: half the cost of a
    small array's blob)."""
    buffer = io.BytesIO()
    npy_format.write_array_header_1_0(buffer, {"descr": descr, "fortran_order": fortran, "shape": shape})
    return buffer.getvalue()


def decode_array(blob: bytes) -> np.ndarray:
    """Inverse of :func:`encode_array`."""
    raw = blob if blob.startswith(_MAGIC) else zlib.decompress(blob)
    return np.load(io.BytesIO(raw), allow_pickle=False)


class NDArray(TypeDecorator):
    """Column type holding a NumPy array as an :func:`encode_array` blob."""

    impl = LargeBinary
    cache_ok = True

    def process_bind_param(self, value, dialect):
        return None if value is None else encode_array(value)

    def process_result_value(self, value, dialect):
        return None if value is None else decode_array(bytes(value))
