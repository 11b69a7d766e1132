"""Every LLVM intrinsic of the engine, in one place.

Each is an ``@intrinsic`` because numba has no cacheable way to say it: a
ctypes or cffi function pointer is lowered as a dynamic address constant,
which turns off ``cache=True`` for every caller, and numba lowers byte-slice
assignment to an element loop. Declaring a C symbol or an LLVM intrinsic by
name leaves it to the JIT linker, so the cached object code carries no
process-specific address and loads again in a new process.

* ``memcpy_bytes`` / ``stream_bytes`` / ``store_fence``: the copy engine's byte
  copies (``llvm.memcpy``, streaming stores and their fence);
* ``get_thread_count`` / ``set_thread_count``: numba's threading-layer
  functions, by symbol name;
* ``now_ns``: ``CLOCK_MONOTONIC`` in nanoseconds (Linux, x86-64 / aarch64
  ``struct timespec``);
* ``prefetch_for_write``: ``llvm.prefetch`` of an array element;
* ``array_at``: a C-contiguous array view of raw memory (the state handle);
* ``state_with``: a namedtuple with one field replaced (a thread's own
  counters), without writing out the field list.
"""

import numba
from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic

#: Linux clock id of the monotonic clock (``<linux/time.h>``).
CLOCK_MONOTONIC = 1
_NS_PER_S = 1_000_000_000
_LINE = 64  # bytes per cache line, and per streamed vector


@intrinsic
def memcpy_bytes(typingctx, dst, dst_off, src, src_off, nbytes):
    """memcpy_bytes() - copy bytes between two 1-D uint8 arrays with llvm.memcpy.

    Arguments:
        dst: 1-D uint8 array written to.
        dst_off: byte offset into ``dst``.
        src: 1-D uint8 array read from (may be the same array as ``dst``).
        src_off: byte offset into ``src``.
        nbytes: number of bytes.

    Preconditions:
        ``0 <= dst_off``, ``dst_off + nbytes <= dst.size``, likewise for
        ``src``; the two byte ranges do not overlap. Nothing is checked:
        this is a raw memcpy.

    Postconditions:
        ``dst[dst_off:dst_off + nbytes]`` equals the former
        ``src[src_off:src_off + nbytes]``. Returns None.

    Why not ``dst[a:b] = src[c:d]``: numba lowers uint8 slice assignment to
    an element loop that runs ~4x slower than memcpy in serial code.
    """
    sig = _byte_copy_signature(dst, dst_off, src, src_off, nbytes)
    if sig is None:
        return None

    def codegen(context, builder, signature, args):
        aty = signature.args
        dptr = _array_byte_pointer(context, builder, aty[0], args[0], args[1], aty[1])
        sptr = _array_byte_pointer(context, builder, aty[2], args[2], args[3], aty[3])
        count = context.cast(builder, args[4], aty[4], types.intp)
        cgutils.raw_memcpy(builder, dptr, sptr, count, 1)
        return context.get_dummy_value()

    return sig, codegen


def _byte_copy_signature(dst, dst_off, src, src_off, nbytes):
    """The signature of a byte copy between two 1-D uint8 arrays, or None."""
    for arr in (dst, src):
        if not (isinstance(arr, types.Array) and arr.ndim == 1 and arr.dtype == types.uint8):
            return None
    for off in (dst_off, src_off, nbytes):
        if not isinstance(off, types.Integer):
            return None
    return types.none(dst, dst_off, src, src_off, nbytes)


def _array_byte_pointer(context, builder, arrty, arr, off, offty):
    array = context.make_array(arrty)(context, builder, arr)
    return builder.gep(array.data, [context.cast(builder, off, offty, types.intp)])


@intrinsic
def stream_bytes(typingctx, dst, dst_off, src, src_off, nbytes):
    """stream_bytes() - copy bytes between two 1-D uint8 arrays with streaming stores.

    Arguments:
        Same as :func:`memcpy_bytes`.

    Preconditions:
        Same as :func:`memcpy_bytes`. The caller issues :func:`store_fence`
        before anyone else may read the destination (streaming stores are
        weakly ordered).

    Postconditions:
        ``dst[dst_off:dst_off + nbytes]`` equals the former
        ``src[src_off:src_off + nbytes]``. The bytes up to the first 64-byte
        boundary of the destination and after the last one are copied with
        ``llvm.memcpy``; every whole line in between is written with one
        64-byte load and one ``!nontemporal`` store, which LLVM lowers to
        ``movntdq``/``vmovntdq`` on x86 (a plain store elsewhere).
    """
    sig = _byte_copy_signature(dst, dst_off, src, src_off, nbytes)
    if sig is None:
        return None

    def codegen(context, builder, signature, args):
        aty = signature.args
        i64 = ir.IntType(64)
        line = ir.Constant(i64, _LINE)
        dptr = _array_byte_pointer(context, builder, aty[0], args[0], args[1], aty[1])
        sptr = _array_byte_pointer(context, builder, aty[2], args[2], args[3], aty[3])
        count = context.cast(builder, args[4], aty[4], types.intp)
        misalign = builder.and_(builder.ptrtoint(dptr, i64), ir.Constant(i64, _LINE - 1))
        head = builder.and_(builder.sub(line, misalign), ir.Constant(i64, _LINE - 1))
        head = builder.select(builder.icmp_unsigned("<", count, head), count, head)
        cgutils.raw_memcpy(builder, dptr, sptr, head, 1)
        lines = builder.udiv(builder.sub(count, head), line)
        vec_ptr = ir.VectorType(i64, _LINE // 8).as_pointer()
        dvec = builder.bitcast(builder.gep(dptr, [head]), vec_ptr)
        svec = builder.bitcast(builder.gep(sptr, [head]), vec_ptr)
        nontemporal = builder.module.add_metadata([ir.Constant(ir.IntType(32), 1)])
        with cgutils.for_range(builder, lines) as loop:
            value = builder.load(builder.gep(svec, [loop.index]), align=1)
            store = builder.store(value, builder.gep(dvec, [loop.index]), align=_LINE)
            store.set_metadata("nontemporal", nontemporal)
        done = builder.add(head, builder.mul(lines, line))
        tail = builder.sub(count, done)
        cgutils.raw_memcpy(builder, builder.gep(dptr, [done]), builder.gep(sptr, [done]), tail, 1)
        return context.get_dummy_value()

    return sig, codegen


@intrinsic
def store_fence(typingctx):
    """store_fence() - order every earlier store, streaming ones included (``fence seq_cst``)."""

    def codegen(context, builder, signature, args):
        builder.fence("seq_cst")
        return context.get_dummy_value()

    return types.none(), codegen


def _declare_thread_fn(builder, name, ret, args):
    """Declare a numba threading-layer C function by symbol name.

    numba's own jitted ``get_num_threads``/``set_num_threads`` call ctypes
    pointers, which numba treats as dynamic globals and which therefore turn
    off ``cache=True`` for every caller. The threading layer registers the
    same functions with the JIT linker by name, so a by-name declaration is
    cacheable; a cached library that links a parfor re-launches the layer
    (and so re-registers the names) when it is loaded.
    """
    fnty = ir.FunctionType(ret, args)
    return cgutils.get_or_insert_function(builder.module, fnty, name)


# The by-name declarations below resolve only once numba's threading layer is loaded.
# Typing launches it, but a cache load types nothing: a cached engine_copy called
# first in a process would jump to address 0. Launching it here costs ~10 ms and
# compiles nothing.
numba.get_num_threads()


@intrinsic
def get_thread_count(typingctx):
    """get_thread_count() - numba's current (thread-local) parallel thread count."""
    numba.get_num_threads()  # launches the threading layer so the symbol exists

    def codegen(context, builder, signature, args):
        i32 = ir.IntType(32)
        fn = _declare_thread_fn(builder, "get_num_threads", i32, [])
        return builder.sext(builder.call(fn, []), ir.IntType(64))

    return types.int64(), codegen


@intrinsic
def set_thread_count(typingctx, n):
    """set_thread_count(n) - mask numba's parallel threads down to ``n`` (unchecked)."""
    if not isinstance(n, types.Integer):
        return None
    numba.get_num_threads()

    def codegen(context, builder, signature, args):
        i32 = ir.IntType(32)
        fn = _declare_thread_fn(builder, "set_num_threads", ir.VoidType(), [i32])
        builder.call(fn, [builder.trunc(context.cast(builder, args[0], n, types.int64), i32)])
        return context.get_dummy_value()

    return types.none(n), codegen


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


@intrinsic
def state_with(typingctx, tup, name, value):
    """state_with(tup, name, value) - the namedtuple ``tup`` with field ``name`` replaced.

    Arguments:
        tup: a heterogeneous namedtuple (a ``State``).
        name: a string literal naming one of its fields.
        value: the new field, of exactly the field's type.
    Postconditions:
        A new tuple sharing every other field with ``tup``; ``tup`` is unchanged.
        Written once here, so no caller writes out the field list by position.
    """
    if not isinstance(tup, types.BaseNamedTuple) or not isinstance(name, types.StringLiteral):
        return None
    fields = list(tup.fields)
    if name.literal_value not in fields:
        return None
    k = fields.index(name.literal_value)
    if tup.types[k] != value:
        return None

    def codegen(context, builder, signature, args):
        out = builder.insert_value(args[0], args[2], k)
        if context.enable_nrt:
            context.nrt.incref(builder, signature.return_type, out)
        return out

    return tup(tup, name, value), codegen


@intrinsic
def arrays_at(typingctx, table, cls):
    """arrays_at(table, cls) - a namedtuple of array views from an address table.

    Arguments:
        table: int64 array of ``3 * nfields`` words: each field's data address,
            ``shape[0]`` and ``shape[1]`` (0 for a 1-D array).
        cls: a namedtuple class whose ``ARRAY_TYPES`` attribute lists each
            field's numba array type (C-contiguous, 1-D or 2-D), in field order.
    Preconditions:
        Every address points to live memory of that shape and dtype, which
        outlives the views.
    Postconditions:
        The views own nothing (no meminfo): nothing is counted or freed.
    """
    if not isinstance(cls, types.NamedTupleClass) or not isinstance(table, types.Array):
        return None
    array_types = getattr(cls.instance_class, "ARRAY_TYPES", None)
    if array_types is None:
        return None
    ret = types.NamedTuple(tuple(array_types), cls.instance_class)

    def codegen(context, builder, signature, args):
        i64 = ir.IntType(64)
        tab = context.make_array(signature.args[0])(context, builder, args[0])
        words = tab.data
        out = context.get_constant_undef(ret)
        for k, arr_t in enumerate(array_types):
            addr, shape0, shape1 = (
                builder.load(builder.gep(words, [ir.Constant(i64, 3 * k + j)])) for j in range(3)
            )
            ary = context.make_array(arr_t)(context, builder)
            itemsize = ir.Constant(i64, context.get_abi_sizeof(context.get_data_type(arr_t.dtype)))
            shape = [shape0, shape1] if arr_t.ndim == 2 else [shape0]
            strides = [builder.mul(shape1, itemsize), itemsize] if arr_t.ndim == 2 else [itemsize]
            context.populate_array(
                ary,
                data=builder.inttoptr(addr, ary.data.type),
                shape=cgutils.pack_array(builder, shape),
                strides=cgutils.pack_array(builder, strides),
                itemsize=itemsize,
                meminfo=None,
            )
            out = builder.insert_value(out, ary._getvalue(), k)
        return out

    return ret(table, cls), codegen
