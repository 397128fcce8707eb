"""NumPy arrays as compressed blobs that round-trip bit for bit.

A blob is zlib-compressed ``.npy`` bytes: the ``.npy`` header records dtype
(with byte order) and shape, so nothing about the array lives outside it.
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


def encode_array(array: np.ndarray) -> bytes:
    """Serialize an array (any numeric dtype, any shape) to compressed bytes."""
    array = np.asarray(array)
    if array.dtype.hasobject:
        raise TypeError(f"cannot store an object array (dtype {array.dtype}); use a numeric dtype")
    fortran = bool(array.flags.f_contiguous and not array.flags.c_contiguous)  # as np.save writes it
    header = _npy_header(npy_format.dtype_to_descr(array.dtype), array.shape, fortran)
    return zlib.compress(header + array.tobytes(order="F" if fortran else "C"), _ZLIB_LEVEL)


@functools.lru_cache(maxsize=4096)
def _npy_header(descr, shape: tuple[int, ...], fortran: bool) -> bytes:
    """The ``.npy`` header np.save writes for these arrays (built once per dtype and shape: half the cost of a
    small array's blob)."""
    buffer = io.BytesIO()
    npy_format.write_array_header_1_0(buffer, {"descr": descr, "fortran_order": fortran, "shape": shape})
    return buffer.getvalue()


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
