"""NumPy arrays as compressed blobs that round-trip bit for bit.

A blob is zlib-compressed ``.npy`` bytes: the ``.npy`` header records dtype
(with byte order) and shape, so nothing about the array lives outside it.
"""

from __future__ import annotations

import io
import zlib

import numpy as np
from sqlalchemy import LargeBinary
from sqlalchemy.types import TypeDecorator

_ZLIB_LEVEL = 6


def encode_array(array: np.ndarray) -> bytes:
    """Serialize an array (any numeric dtype, any shape) to compressed bytes."""
    array = np.asarray(array)
    if array.dtype.hasobject:
        raise TypeError(f"cannot store an object array (dtype {array.dtype}); use a numeric dtype")
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    return zlib.compress(buffer.getvalue(), _ZLIB_LEVEL)


def decode_array(blob: bytes) -> np.ndarray:
    """Inverse of :func:`encode_array`."""
    return np.load(io.BytesIO(zlib.decompress(blob)), allow_pickle=False)


class NDArray(TypeDecorator):
    """Column type holding a NumPy array as an :func:`encode_array` blob."""

    impl = LargeBinary
    cache_ok = True

    def process_bind_param(self, value, dialect):
        return None if value is None else encode_array(value)

    def process_result_value(self, value, dialect):
        return None if value is None else decode_array(bytes(value))
