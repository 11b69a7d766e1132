"""Argument validation shared by the Python API: clear errors before any change."""

from __future__ import annotations

import numbers
import os

import numpy as np

_INT64_MIN = -(2**63)
_INT64_MAX = 2**63 - 1


def as_int(value: object, name: str) -> int:
    """An integer argument that fits the engine's int64 (numpy integers accepted,
    bool and floats refused). ValueError, not numba's OverflowError, past int64."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an integer, not {type(value).__name__}")
    n = int(value)
    if not _INT64_MIN <= n <= _INT64_MAX:
        raise ValueError(f"{name} {n} does not fit in 64 bits")
    return n


def as_uint64(value: object, name: str) -> int:
    """An unsigned 64-bit word (a migrate pfn): 0 to 2**64 - 1."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an integer, not {type(value).__name__}")
    n = int(value)
    if not 0 <= n < 2**64:
        raise ValueError(f"{name} {n} is not an unsigned 64-bit word")
    return n


def as_bool(value: object, name: str) -> bool:
    """A flag: True or False (numpy bools accepted), nothing else."""
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be True or False, not {value!r}")
    return bool(value)


def as_count(value: object, name: str, minimum: int = 0) -> int:
    n = as_int(value, name)
    if n < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {n}")
    return n


def mpfn_array(arr: object, name: str, npages: int) -> np.ndarray:
    """A writable, C-contiguous uint64 array of at least ``npages`` entries."""
    if not isinstance(arr, np.ndarray):
        raise TypeError(f"{name} must be a numpy uint64 array, not {type(arr).__name__}")
    if arr.dtype != np.uint64:
        raise TypeError(f"{name} must have dtype uint64, not {arr.dtype}")
    if arr.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got {arr.ndim}-D")
    if not arr.flags.c_contiguous:
        raise ValueError(f"{name} must be C-contiguous")
    if not arr.flags.writeable:
        raise ValueError(f"{name} must be writable")
    if arr.shape[0] < npages:
        raise ValueError(f"{name} has {arr.shape[0]} entries, the range needs {npages}")
    return arr


def physical_memory() -> int:
    """This machine's RAM in bytes (0 when the platform does not say)."""
    try:
        return int(os.sysconf("SC_PAGE_SIZE")) * int(os.sysconf("SC_PHYS_PAGES"))
    except (ValueError, OSError, AttributeError):
        return 0


def check_fits(nbytes: int, what: str) -> None:
    """ValueError, before anything is allocated, when ``what`` would need more
    bytes than this machine's RAM (numpy would raise MemoryError part way, or
    the system would start swapping)."""
    ram = physical_memory()
    if ram and nbytes > ram:
        raise ValueError(
            f"{what} would need {nbytes / 2**30:,.1f} GiB, more than this machine's "
            f"{ram / 2**30:,.1f} GiB of RAM"
        )
