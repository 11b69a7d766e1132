"""prefetch(): ask the CPU to start loading an array element before it is needed.

The sweeps of a large migration run right after the copy has pushed every
struct page out of the caches, and the source pages come in fragmented runs
the hardware prefetcher cannot predict. Naming the element tens of slots ahead
lets those misses overlap instead of stalling one after another.
"""

from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic

# Slots. A slot of a sweep takes ~5-10 ns a thread and a DRAM miss ~100 ns, but a
# slot misses on several lines (two struct pages, free-stack entries), so the
# distance must keep many misses in flight, not just cover one latency. On cold
# struct pages (as in the bench: right after a 256 MiB copy) a stripped-down
# setup sweep took a median 5.9 ns/page at 16 ahead and 4.0-4.4 at 64, with no
# gain at 128 or 256; the finish sweep 4.4-4.7 and 3.8-4.3. Warm, the farther
# prefetches cost nothing measurable.
PREFETCH_AHEAD = 64


@intrinsic
def prefetch_for_write(typingctx, arr, index):
    """prefetch_for_write(arr, index) - llvm.prefetch of ``&arr[index]``, write intent.

    Arguments:
        arr: a 1-D array of any dtype (records included).
        index: an integer; a value outside ``[0, arr.size)`` is ignored.

    Postconditions:
        Nothing observable: a prefetch is a hint and never faults.
    """
    if not (isinstance(arr, types.Array) and arr.ndim == 1 and isinstance(index, types.Integer)):
        return None

    def codegen(context, builder, signature, args):
        arr_t, idx_t = signature.args
        array = context.make_array(arr_t)(context, builder, args[0])
        idx = context.cast(builder, args[1], idx_t, types.intp)
        size = builder.extract_value(array.shape, 0)
        # One unsigned compare tests both ends: a negative index is a huge one.
        inside = builder.icmp_unsigned("<", idx, size)
        with builder.if_then(inside, likely=True):
            ptr = cgutils.get_item_pointer(context, builder, arr_t, array, [idx])
            i8p = ir.IntType(8).as_pointer()
            i32 = ir.IntType(32)
            fnty = ir.FunctionType(ir.VoidType(), [i8p, i32, i32, i32])
            fn = cgutils.get_or_insert_function(builder.module, fnty, "llvm.prefetch.p0i8")
            rw, locality, data_cache = ir.Constant(i32, 1), ir.Constant(i32, 3), ir.Constant(i32, 1)
            builder.call(fn, [builder.bitcast(ptr, i8p), rw, locality, data_cache])
        return context.get_dummy_value()

    return types.none(arr, index), codegen
