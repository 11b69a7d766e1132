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
from llvmlite import ir
from numba import njit, types
from numba.core import cgutils
from numba.extending import intrinsic

from .device import _migrate_to_system, _run_driver, migrate_to_device
from .state import PAGE_DTYPE, VMA_DTYPE, State

_SLOTS = 3  # per field: data address, shape[0], shape[1] (0 for 1-D)
HANDLE_WORDS = _SLOTS * len(State._fields)
EBADARG = 1000  # returned negated: an argument the fast path does not take


def _element_type(dtype):
    if isinstance(dtype, types.DType):
        return dtype.dtype
    if isinstance(dtype, types.NumberClass):
        return dtype.instance_type
    return None


@intrinsic
def array_at(typingctx, addr, shape0, shape1, dtype):
    """array_at(addr, shape0, shape1, dtype) - a C-contiguous array view of raw memory.

    Arguments:
        addr: int64 address of the first element.
        shape0: int64 length of the first dimension.
        shape1: int64 length of the second dimension, or None for a 1-D array.
        dtype: the element type (a numpy scalar type or a record dtype).
    Preconditions:
        ``addr`` points to live memory of that shape that outlives the view.
    Postconditions:
        The view owns nothing (no meminfo): nothing is counted or freed.
    """
    elem = _element_type(dtype)
    if elem is None or not isinstance(addr, types.Integer):
        return None
    two_d = not isinstance(shape1, types.NoneType | types.Omitted)
    arr_t = types.Array(elem, 2 if two_d else 1, "C")

    def codegen(context, builder, signature, args):
        i64 = ir.IntType(64)
        ary = context.make_array(arr_t)(context, builder)
        itemsize = ir.Constant(i64, context.get_abi_sizeof(context.get_data_type(elem)))
        shape = [args[1], args[2]] if two_d else [args[1]]
        strides = [builder.mul(args[2], itemsize), itemsize] if two_d else [itemsize]
        context.populate_array(
            ary,
            data=builder.inttoptr(args[0], ary.data.type),
            shape=cgutils.pack_array(builder, shape),
            strides=cgutils.pack_array(builder, strides),
            itemsize=itemsize,
            meminfo=None,
        )
        return ary._getvalue()

    return arr_t(addr, shape0, shape1, dtype), codegen


@njit(cache=True, nogil=True, _nrt=False, inline="always")
def _one(table, k, dtype):
    return array_at(table[_SLOTS * k], table[_SLOTS * k + 1], None, dtype)


@njit(cache=True, nogil=True, _nrt=False, inline="always")
def _two(table, k, dtype):
    return array_at(table[_SLOTS * k], table[_SLOTS * k + 1], table[_SLOTS * k + 2], dtype)


@njit(cache=True, nogil=True, _nrt=False, inline="always")
def state_at(handle):
    """The ``State`` a handle describes (field order of ``State._fields``)."""
    t = array_at(handle, HANDLE_WORDS, None, np.int64)
    i64, u64, f64, u8 = np.int64, np.uint64, np.float64, np.uint8
    return State(
        _one(t, 0, PAGE_DTYPE),
        _one(t, 1, u8),
        _one(t, 2, i64),
        _one(t, 3, i64),
        _one(t, 4, VMA_DTYPE),
        _one(t, 5, u64),
        _one(t, 6, i64),
        _one(t, 7, u64),
        _one(t, 8, i64),
        _one(t, 9, i64),
        _one(t, 10, i64),
        _one(t, 11, i64),
        _one(t, 12, u8),
        _two(t, 13, i64),
        _one(t, 14, i64),
        _one(t, 15, i64),
        _one(t, 16, i64),
        _one(t, 17, u64),
        _one(t, 18, f64),
        _one(t, 19, f64),
        _one(t, 20, i64),
        _one(t, 21, u64),
        _two(t, 22, i64),
        _one(t, 23, f64),
        _one(t, 24, u64),
        _one(t, 25, u64),
        _two(t, 26, i64),
        _two(t, 27, i64),
        _two(t, 28, i64),
    )


def make_handle(state: State) -> np.ndarray:
    """The int64 table behind a handle (its address is ``table.ctypes.data``).

    Checks that every array has the rank and C layout ``state_at`` assumes. The
    dtypes are not checked: states come from ``new_state``/``reserve``, which fix them.
    """
    table = np.zeros(HANDLE_WORDS, np.int64)
    for k, (name, arr) in enumerate(zip(State._fields, state, strict=True)):
        if not arr.flags.c_contiguous or arr.ndim not in (1, 2):
            raise ValueError(f"state.{name} must be a C-contiguous 1-D or 2-D array")
        table[_SLOTS * k] = arr.ctypes.data
        table[_SLOTS * k + 1] = arr.shape[0]
        table[_SLOTS * k + 2] = arr.shape[1] if arr.ndim == 2 else 0
    return table


@njit(cache=True, nogil=True, _nrt=False, inline="always")
def _overlap(a, b):
    lo_a, lo_b = a.ctypes.data, b.ctypes.data
    return lo_a < lo_b + b.nbytes and lo_b < lo_a + a.nbytes


@njit(cache=True, nogil=True, _nrt=False)
def migrate_vma_to_device_at(handle, vma_index, start, end, src, dst):
    """me.migrate_vma(m.device.ops, ...) from Python: the device's pipeline on
    the state behind ``handle``.

    Returns 0, -EINVAL for the kernel's argument checks, or -EBADARG when
    ``src`` and ``dst`` overlap; in both error cases nothing has changed, so
    the caller can validate again in Python and raise the precise error.
    """
    if _overlap(src, dst):
        return -EBADARG
    return min(_run_driver(state_at(handle), True, vma_index, start, end, src, dst, 0), 0)


@njit(cache=True, nogil=True, _nrt=False)
def migrate_to_device_at(handle, mm_id, start, end):
    """m.device.migrate_to_device() from Python: device.migrate_to_device() on the
    state behind ``handle`` (the Python layer has validated the arguments)."""
    return migrate_to_device(state_at(handle), mm_id, start, end)


@njit(cache=True, nogil=True, _nrt=False)
def migrate_to_system_at(handle, mm_id, start, end):
    """m.device.migrate_to_system() from Python, on the state behind ``handle``."""
    return _migrate_to_system(state_at(handle), mm_id, start, end, np.int64(0))


MPFN_ARRAY = types.Array(types.uint64, 1, "C")
#: The one signature the Python fast path calls migrate_vma_to_device_at with.
FAST_SIGNATURE = types.int64(
    types.int64, types.int64, types.int64, types.int64, MPFN_ARRAY, MPFN_ARRAY
)
