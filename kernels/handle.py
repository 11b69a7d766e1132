"""A machine's state behind one integer, for calls from Python that must be cheap.

Every call from Python into a kernel that takes ``m.state`` pays numba's
dispatcher to type and unbox each of the state's arrays (about 2 us for all of
them). A *handle* is the address of an int64 table holding each array's data
address and shape; compiled code rebuilds the same ``State`` from it without
touching Python objects. The Python layer keeps the table, and the arrays it
names, alive for as long as the machine uses that state, and builds a new
table whenever the state is replaced (``mmap``/``fork`` growing the tables).

Only the Python layer's fast paths use handles; users' ``@njit`` code takes
``m.state`` itself.
"""

import numpy as np
from numba import types

from ._jit import internal, kernel
from ._llvm import array_at, arrays_at
from .args import arrays_overlap
from .device import run_driver
from .device.common import DEV_INDEX_SHIFT
from .device.ranges import migrate_range_to_device, migrate_range_to_system
from .state import STATE_SPEC, State

_SLOTS = 3  # per field: data address, shape[0], shape[1] (0 for 1-D)
HANDLE_WORDS = _SLOTS * len(STATE_SPEC)
EBADARG = 1000  # returned negated: an argument the fast path does not take


@internal(inline=True)
def state_at(handle):
    """The ``State`` a handle describes (field order of ``STATE_SPEC``).

    Inlined: the views it returns own nothing, and numba returns only arrays it
    was passed (or owns) from a compiled function."""
    return arrays_at(array_at(handle, HANDLE_WORDS, None, np.int64), State)


def make_handle(state: State) -> np.ndarray:
    """The int64 table behind a handle (its address is ``table.ctypes.data``).

    Raises ValueError unless every array has the dtype, rank and C layout
    ``STATE_SPEC`` gives it, since ``state_at`` rebuilds the views from that spec.
    """
    table = np.zeros(HANDLE_WORDS, np.int64)
    for k, ((name, dtype, ndim), arr) in enumerate(zip(STATE_SPEC, state, strict=True)):
        if not arr.flags.c_contiguous or arr.ndim != ndim or arr.dtype != np.dtype(dtype):
            raise ValueError(
                f"state.{name} must be a C-contiguous {ndim}-D {np.dtype(dtype)} array"
            )
        table[_SLOTS * k] = arr.ctypes.data
        table[_SLOTS * k + 1] = arr.shape[0]
        table[_SLOTS * k + 2] = arr.shape[1] if arr.ndim == 2 else 0
    return table


@kernel
def migrate_vma_to_device_at(handle, vma_index, start, end, src, dst):
    """me.migrate_vma(m.device.ops, ...) from Python: the device's pipeline on
    the state behind ``handle``.

    Returns 0, -EINVAL for the kernel's argument checks, or -EBADARG when
    ``src`` and ``dst`` overlap; in both error cases nothing has changed, so
    the caller can validate again in Python and raise the precise error.
    """
    if arrays_overlap(src, dst):
        return -EBADARG
    st = state_at(handle)
    v, s, e = np.int64(vma_index), np.int64(start), np.int64(end)
    return min(run_driver(st, np.bool_(True), v, s, e, src, dst, np.int64(0)), 0)


@kernel
def migrate_to_device_at(handle, mm_id, start, end, d):
    """dev.migrate_to_device() from Python: device ``d``'s migrate_range_to_device()
    on the state behind ``handle``, with its checks (-EINVAL, nothing changed).
    The handle itself is trusted: it is the Python layer's, not an API."""
    s, e = np.int64(start), np.int64(end)
    return migrate_range_to_device(state_at(handle), np.int64(d), np.int64(mm_id), s, e)


@kernel
def migrate_to_system_at(handle, mm_id, start, end, d):
    """dev.migrate_to_system() from Python (device ``d``), on the state behind ``handle``."""
    private = np.int64(d) << DEV_INDEX_SHIFT
    return migrate_range_to_system(state_at(handle), mm_id, start, end, private)


MPFN_ARRAY = types.Array(types.uint64, 1, "C")
#: The one signature the Python fast path calls migrate_vma_to_device_at with.
FAST_SIGNATURE = types.int64(
    types.int64, types.int64, types.int64, types.int64, MPFN_ARRAY, MPFN_ARRAY
)
