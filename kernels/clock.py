"""Monotonic nanosecond clock for compiled code.

``now_ns()`` reads ``CLOCK_MONOTONIC`` from inside ``@njit`` functions, so the
copy engine can time its copy without returning to the interpreter.

Why an intrinsic that names ``clock_gettime``: numba has no ``time`` support
in nopython mode, and the usual workaround (a ctypes/cffi function pointer)
is lowered as a dynamic address constant, which turns off ``cache=True`` for
every caller. Declaring the C symbol by name leaves it to the JIT linker to
resolve it from the process's libc, so the cached object code carries no
process-specific address and loads again in a new process.

Linux only: the ``CLOCK_MONOTONIC`` id and the ``struct timespec`` layout
(two 64-bit fields) are those of x86-64 and aarch64 Linux.
"""

from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic

__all__ = ["CLOCK_MONOTONIC", "now_ns"]

#: Linux clock id of the monotonic clock (``<linux/time.h>``).
CLOCK_MONOTONIC = 1

_NS_PER_S = 1_000_000_000


@intrinsic
def now_ns(typingctx):
    """now_ns() - read the monotonic clock in nanoseconds.

    Returns:
        int64 nanoseconds of ``CLOCK_MONOTONIC``; only differences between
        two readings are meaningful.

    Preconditions:
        Called from nopython code (an intrinsic cannot run in the
        interpreter; use ``time.monotonic_ns()`` there). Linux.

    Postconditions:
        No side effects; successive readings in one thread never decrease.
        The return code of ``clock_gettime`` is ignored: it cannot fail for
        ``CLOCK_MONOTONIC`` with a valid buffer.
    """
    sig = types.int64()

    def codegen(context, builder, signature, args):
        i32 = ir.IntType(32)
        i64 = ir.IntType(64)
        timespec = ir.LiteralStructType([i64, i64])
        fnty = ir.FunctionType(i32, [i32, timespec.as_pointer()])
        clock_gettime = cgutils.get_or_insert_function(builder.module, fnty, "clock_gettime")
        # alloca_once puts the buffer in the entry block, so calling now_ns()
        # in a loop does not grow the stack.
        ts = cgutils.alloca_once(builder, timespec)
        builder.call(clock_gettime, [ir.Constant(i32, CLOCK_MONOTONIC), ts])
        sec = builder.load(cgutils.gep_inbounds(builder, ts, 0, 0))
        nsec = builder.load(cgutils.gep_inbounds(builder, ts, 0, 1))
        return builder.add(builder.mul(sec, ir.Constant(i64, _NS_PER_S)), nsec)

    return sig, codegen
