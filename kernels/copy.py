"""Chunked copy engine: descriptor coalescing, byte copy and DMA timing model.

The engine stands in for a device DMA engine (or the kernel's CPU copy) in
the ``alloc_and_copy`` step of ``migrate_vma``. It does three things:

1. ``build_descriptors`` turns a list of ``(src_pfn, dst_pfn)`` pairs into
   copy descriptors: runs that are physically contiguous on *both* sides are
   coalesced, up to ``chunk_pages`` pages per descriptor, the way a driver
   fills a scatter-gather list.
2. ``copy_descriptors_serial`` / ``copy_descriptors_parallel`` move the bytes,
   for a batch of at least ``ENG_STREAM_MIN_BYTES`` with streaming stores
   (``stream_bytes``: no read-for-ownership, no cache pollution, as a DMA
   engine writes), otherwise with ``llvm.memcpy`` (one call per descriptor,
   or per COPY_PIECE_BYTES of a larger one), so the simulator copies at
   memory speed whatever the chunk size.
3. ``model_time_ns`` charges each descriptor ``setup_ns + bytes / rate`` on
   the least-loaded of ``channels`` channels, so the simulator can report
   what a real engine (AMD PTDMA, a PCIe link) would have taken, independent
   of the host's own memcpy speed.

``engine_copy`` is the entry point the migration kernels call. Engine
parameters travel as one float64 array (layout ``ENG_*`` below) and results
accumulate into one float64 stats array (layout ``STAT_*``), so that every
kernel keeps a single fixed signature and stays cacheable: no jitclass, no
callbacks, and the model kind is a runtime integer.

Memory model: ``data`` is one flat uint8 array holding every frame; frame
``pfn`` occupies bytes ``[pfn * page_size, (pfn + 1) * page_size)``. pfns are
int64.
"""

import numba
import numpy as np
from llvmlite import ir
from numba import njit, prange, types
from numba.core import cgutils
from numba.extending import intrinsic

from .clock import now_ns
from .mm import ix

__all__ = [
    "COPY_PIECE_BYTES",
    "DEFAULT_PAR_MIN_BYTES",
    "DEFAULT_PAR_MIN_PAGES",
    "DEFAULT_STREAM_MIN_BYTES",
    "ENGINE_FIELDS",
    "ENG_CHANNELS",
    "ENG_CHUNK_PAGES",
    "ENG_CURVE_B",
    "ENG_GBPS",
    "ENG_MODEL",
    "ENG_PAR_MIN_BYTES",
    "ENG_PAR_MIN_PAGES",
    "ENG_SETUP_NS",
    "ENG_STREAM_MIN_BYTES",
    "ENG_THREADS",
    "MODEL_LINEAR",
    "MODEL_UVM_CURVE",
    "STATS_FIELDS",
    "STAT_BYTES",
    "STAT_CALLS",
    "STAT_DESCRIPTORS",
    "STAT_MODEL_S",
    "STAT_WALL_S",
    "build_descriptors",
    "copy_descriptors_parallel",
    "copy_descriptors_serial",
    "engine_copy",
    "engine_copy_into",
    "memcpy_bytes",
    "model_time_into",
    "model_time_ns",
    "stream_bytes",
]

# Engine parameter array layout (float64[ENGINE_FIELDS]).
ENG_CHUNK_PAGES = 0  # largest descriptor, pages (>= 1)
ENG_CHANNELS = 1  # number of modelled DMA channels (>= 1)
ENG_SETUP_NS = 2  # per-descriptor setup + completion latency, ns
ENG_GBPS = 3  # per-channel rate, GB/s == bytes/ns (curve asymptote for MODEL_UVM_CURVE)
ENG_THREADS = 4  # 0 = engine picks, 1 = serial, k > 1 = at most k threads
ENG_MODEL = 5  # MODEL_LINEAR or MODEL_UVM_CURVE
ENG_CURVE_B = 6  # UVM-Smart curve steepness b, per KiB
ENG_PAR_MIN_BYTES = 7  # batches smaller than this are copied serially
ENG_PAR_MIN_PAGES = 8  # migrations with fewer pages sweep their metadata serially
ENG_STREAM_MIN_BYTES = 9  # batches this large are written with streaming stores; < 0: never
ENGINE_FIELDS = 10

# Stats array layout (float64[STATS_FIELDS]); engine_copy adds to it.
STAT_DESCRIPTORS = 0
STAT_BYTES = 1
STAT_WALL_S = 2  # measured copy time only (descriptor build and model excluded)
STAT_MODEL_S = 3
STAT_CALLS = 4
STATS_FIELDS = 5

MODEL_LINEAR = 0
MODEL_UVM_CURVE = 1

# Serial/parallel crossover, measured on the 2-vCPU EPYC VM (omp, 2 threads),
# interleaved serial vs parallel copy_descriptors_*, best of 15, two runs;
# figures are the parallel speed-up (serial time / parallel time):
#   batch size                     128K       256K       512K       1M         2M
#   cold, contiguous, chunk 16     0.90-1.15  1.12-1.38  1.49-1.52  1.63-1.84  1.37-1.65
#   cold, scattered,  chunk 1      1.06-1.11  1.43-1.48  1.51-1.62  1.46-1.51  1.66-1.76
#   cache-hot, contiguous          0.34-0.35  0.59-0.61  1.15-1.22  1.75-1.88  1.79-1.82
#   cache-hot, scattered           0.31-0.32  0.47-0.51  0.73-0.77  1.10-1.11  1.20-1.27
# Cold batches would already win at 256 KiB, but a batch the workload has just
# written sits in the first core's L2 and the second thread must pull its half
# across: below 1 MiB the parallel copy can be 2-3x *slower*. 1 MiB is the
# smallest size that never lost.
DEFAULT_PAR_MIN_BYTES = 1 << 20

# Metadata sweeps cost ~10 ns a page and a parallel region ~3-5 us here, so
# splitting them over threads pays from a few thousand pages.
DEFAULT_PAR_MIN_PAGES = 4096

# Largest single memcpy call. On the development VM (glibc 2.36, 1 MiB L2 per
# core) copying 256 MiB in calls of 64 KiB-512 KiB ran at ~24-27 GB/s with 2
# threads and calls of 1 MiB or more ~10% slower, with 1 thread as well. Raising
# glibc's non-temporal-store threshold did not change that, so the cause is
# not the store type; splitting large descriptors into 256 KiB calls avoids it
# for ~0.1% extra loop work. The timing model still charges whole descriptors.
COPY_PIECE_BYTES = 256 << 10

# Streaming (non-temporal) stores write whole cache lines straight to memory:
# no read-for-ownership of the destination, so a copy moves 2 bytes of DRAM
# traffic per byte instead of 3, and it does not evict the caches - which is
# also what a DMA engine writing device memory does. On the development VM
# (32 MiB L3), engine_copy of a batch, streamed / memcpy speed, 2 threads:
#   batch               1 MiB  4 MiB  16 MiB  24 MiB  32 MiB  64 MiB  256 MiB
#   source cold         1.07   1.00   1.03    -       1.08    -       1.13-1.26
#   source in cache     0.71   0.72   0.82    1.05    1.10    1.21    -
# A batch the caches still hold is faster through them, so streaming starts at
# 3/4 of that L3 (glibc's own rule for its non-temporal threshold).
DEFAULT_STREAM_MIN_BYTES = 24 << 20
_LINE = 64  # bytes per cache line, and per streamed vector

_S_PER_NS = np.float64(1e-9)
_BYTES_PER_KIB = np.float64(1024.0)
_TWO_OVER_PI = np.float64(2.0 / np.pi)


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
def _get_thread_count(typingctx):
    """_get_thread_count() - numba's current (thread-local) parallel thread count."""
    numba.get_num_threads()  # launches the threading layer so the symbol exists

    def codegen(context, builder, signature, args):
        i32 = ir.IntType(32)
        fn = _declare_thread_fn(builder, "get_num_threads", i32, [])
        return builder.sext(builder.call(fn, []), ir.IntType(64))

    return types.int64(), codegen


@intrinsic
def _set_thread_count(typingctx, n):
    """_set_thread_count(n) - mask numba's parallel threads down to ``n`` (unchecked)."""
    if not isinstance(n, types.Integer):
        return None
    numba.get_num_threads()

    def codegen(context, builder, signature, args):
        i32 = ir.IntType(32)
        fn = _declare_thread_fn(builder, "set_num_threads", ir.VoidType(), [i32])
        builder.call(fn, [builder.trunc(context.cast(builder, args[0], n, types.int64), i32)])
        return context.get_dummy_value()

    return types.none(n), codegen


@njit(cache=True, nogil=True)
def build_descriptors(src_pfns, dst_pfns, n, chunk_pages, desc_src, desc_dst, desc_len):
    """build_descriptors() - coalesce (src, dst) pfn pairs into copy descriptors.

    Arguments:
        src_pfns: int64[>= n] source pfns, in copy order.
        dst_pfns: int64[>= n] destination pfns, paired with ``src_pfns``.
        n: number of pairs to use.
        chunk_pages: largest descriptor, in pages (values < 1 act as 1).
        desc_src: int64[>= n] output, first source pfn of each descriptor.
        desc_dst: int64[>= n] output, first destination pfn of each descriptor.
        desc_len: int64[>= n] output, page count of each descriptor.

    Preconditions:
        The three output arrays hold at least ``n`` entries (n pairs never
        give more than n descriptors). Not checked here.

    Postconditions:
        Returns ``ndesc``. Entries ``[0, ndesc)`` of the outputs describe the
        pairs in order: descriptor k covers pages ``desc_src[k] + j ->
        desc_dst[k] + j`` for ``0 <= j < desc_len[k]``. A new descriptor
        starts whenever either side stops being contiguous
        (``src[i] != src[i-1] + 1`` or ``dst[i] != dst[i-1] + 1``) or the
        current one reaches ``chunk_pages``. ``sum(desc_len) == n``. Returns 0
        when ``n <= 0``.
    """
    if n <= 0:
        return 0
    limit = max(chunk_pages, 1)
    ndesc = 0
    s0 = src_pfns[0]
    d0 = dst_pfns[0]
    run = 1
    for i in range(1, n):
        s = src_pfns[ix(i)]
        d = dst_pfns[ix(i)]
        if extends_run(s0, d0, run, s, d, limit):
            run += 1
            continue
        emit_descriptor(desc_src, desc_dst, desc_len, ndesc, s0, d0, run)
        ndesc += 1
        s0 = s
        d0 = d
        run = 1
    emit_descriptor(desc_src, desc_dst, desc_len, ndesc, s0, d0, run)
    return ndesc + 1


@njit(cache=True, nogil=True, inline="always")
def extends_run(s0, d0, run, s, d, limit):
    """Whether the pair (``s``, ``d``) continues the descriptor of ``run`` pages
    from (``s0``, ``d0``) without passing ``limit`` pages."""
    return run < limit and s == s0 + run and d == d0 + run


@njit(cache=True, nogil=True, inline="always")
def emit_descriptor(desc_src, desc_dst, desc_len, k, src_pfn, dst_pfn, npages):
    """Write descriptor ``k``: ``npages`` pages from ``src_pfn`` to ``dst_pfn``."""
    desc_src[ix(k)] = src_pfn
    desc_dst[ix(k)] = dst_pfn
    desc_len[ix(k)] = npages


@njit(cache=True, nogil=True)
def stitch_descriptors(desc_src, desc_dst, desc_len, seg_first, seg_count, chunk_pages):
    """stitch_descriptors() - join per-segment descriptor lists into one, in place.

    Arguments:
        desc_src, desc_dst, desc_len: int64 descriptor arrays holding the
            segments.
        seg_first: int64[nseg], where each segment's list starts; ``seg_first[0]``
            is 0 and each starts at or after the end of the one before.
        seg_count: int64[nseg], each segment's descriptor count (>= 1).
        chunk_pages: largest descriptor, in pages (values < 1 act as 1).

    Preconditions:
        Segment ``t`` is :func:`build_descriptors` of the ``t``-th slice of a
        batch's pairs (the parallel setup sweep builds one a thread), and no
        segment's list is longer than its slice.

    Postconditions:
        Returns ``ndesc``; ``desc_*[0:ndesc]`` is what build_descriptors gives
        over the whole batch. Only where a contiguous run crosses a segment edge
        does that differ from the segments laid end to end: the run continues
        the descriptor before the edge and is re-chunked from there, until a
        break starts a new descriptor in both. Each segment's descriptors are
        read before anything is written over them: a descriptor of the joined
        list never lies after the one it was read from.
    """
    limit = max(chunk_pages, 1)
    nd = seg_count[0] - 1  # the last descriptor is held: the next segment may extend it
    s0 = desc_src[ix(nd)]
    d0 = desc_dst[ix(nd)]
    run = desc_len[ix(nd)]
    for t in range(1, seg_first.shape[0]):
        for k in range(seg_first[t], seg_first[t] + seg_count[t]):
            s = desc_src[ix(k)]
            d = desc_dst[ix(k)]
            n = desc_len[ix(k)]
            if extends_run(s0, d0, run, s, d, limit):
                take = min(n, limit - run)
                run += take
                s += take
                d += take
                n -= take
            if n > 0:  # at most chunk_pages left, so it makes exactly one descriptor
                emit_descriptor(desc_src, desc_dst, desc_len, nd, s0, d0, run)
                nd += 1
                s0 = s
                d0 = d
                run = n
    emit_descriptor(desc_src, desc_dst, desc_len, nd, s0, d0, run)
    return nd + 1


@njit(cache=True, nogil=True)
def _current_threads():
    """numba's current thread count, compiled apart from any parallel function: a
    parfor declares the threading layer's get_num_threads with another return type."""
    return _get_thread_count()


@njit(cache=True, nogil=True)
def _copy_descriptor(data, page_size, src_pfn, dst_pfn, npages, stream):
    """_copy_descriptor() - one descriptor: streamed whole, or memcpy'd in pieces of
    at most COPY_PIECE_BYTES."""
    src = src_pfn * page_size
    dst = dst_pfn * page_size
    nbytes = npages * page_size
    if stream:
        stream_bytes(data, dst, data, src, nbytes)
        return
    done = 0
    while done < nbytes:
        size = min(COPY_PIECE_BYTES, nbytes - done)
        memcpy_bytes(data, dst + done, data, src + done, size)
        done += size


@njit(cache=True, nogil=True)
def _copy_range(data, page_size, desc_src, desc_dst, desc_len, lo, hi, stream):
    """_copy_range() - descriptors ``[lo, hi)`` on this thread, fenced when streamed."""
    for k in range(lo, hi):
        _copy_descriptor(data, page_size, desc_src[k], desc_dst[k], desc_len[k], stream)
    if stream:
        store_fence()


@njit(cache=True, nogil=True)
def copy_descriptors_serial(data, page_size, desc_src, desc_dst, desc_len, ndesc, stream):
    """copy_descriptors_serial() - copy the frames named by descriptors, one thread.

    Arguments:
        data: uint8 flat frame store; frame p is ``data[p*page_size:(p+1)*page_size]``.
        page_size: bytes per frame.
        desc_src, desc_dst, desc_len: int64 descriptors from ``build_descriptors``.
        ndesc: number of descriptors to copy.
        stream: bool; True writes with streaming stores (:func:`stream_bytes`)
            and fences them before returning, False uses ``llvm.memcpy``.

    Preconditions:
        Every frame named lies inside ``data``; no destination frame is also
        a source frame of the same batch (memcpy of overlapping ranges is
        undefined). Not checked: ``engine_copy`` checks bounds.

    Postconditions:
        For each descriptor k and page j, frame ``desc_dst[k]+j`` holds the
        former contents of frame ``desc_src[k]+j``, visible to every thread.
        No parallel region is entered, so this is safe to call from inside a
        caller's ``prange``.
    """
    _copy_range(data, page_size, desc_src, desc_dst, desc_len, 0, ndesc, stream)


@njit(cache=True, nogil=True, parallel=True)
def copy_descriptors_parallel(data, page_size, desc_src, desc_dst, desc_len, ndesc, stream):
    """copy_descriptors_parallel() - copy the frames named by descriptors, all threads.

    Arguments:
        Same as ``copy_descriptors_serial``.

    Preconditions:
        Same as ``copy_descriptors_serial``; additionally no two descriptors
        share a destination frame (they run concurrently). Not called from
        inside another parallel region (it would nest or, on workqueue, abort).

    Postconditions:
        Same as ``copy_descriptors_serial``. Uses numba's current thread
        count: the descriptors are split into one contiguous block per
        thread, each fenced once at its end. Blocks are balanced by
        descriptor count, not bytes: fine for the batches that reach this
        path (>= ENG_PAR_MIN_BYTES, hence many descriptors whose sizes
        average out), but a batch whose long runs all sit in one half leaves
        one thread with more bytes.
    """
    blocks = max(min(_current_threads(), ndesc), 1)
    for b in prange(blocks):
        lo = np.int64(b) * ndesc // blocks
        hi = (np.int64(b) + 1) * ndesc // blocks
        _copy_range(data, page_size, desc_src, desc_dst, desc_len, lo, hi, stream)


@njit(cache=True, nogil=True)
def _descriptor_ns(nbytes, setup_ns, gbps, model_kind, curve_b):
    """_descriptor_ns() - modelled time of one descriptor of ``nbytes`` bytes."""
    s = np.float64(nbytes)
    if model_kind == MODEL_UVM_CURVE:
        # UVM-Smart gmmu_t::calculate_transfer_time: speed = (2a/pi) atan(b * KiB).
        # Its extra halving of the speed at >= 2 MiB is deliberately left out.
        speed = _TWO_OVER_PI * gbps * np.arctan(curve_b * (s / _BYTES_PER_KIB))
        return setup_ns + s / speed
    return setup_ns + s / gbps


@njit(cache=True, nogil=True)
def model_time_ns(desc_len, ndesc, page_size, channels, setup_ns, gbps, model_kind, curve_b):
    """model_time_ns() - modelled engine time of a batch of descriptors.

    Arguments:
        desc_len: int64 page counts of the descriptors, in submission order.
        ndesc: number of descriptors.
        page_size: bytes per page.
        channels: number of engine channels (values < 1 act as 1).
        setup_ns: fixed cost per descriptor, ns.
        gbps: channel rate in GB/s (= bytes/ns); for MODEL_UVM_CURVE the
            asymptote ``a`` of the curve.
        model_kind: MODEL_LINEAR (0): ``t(s) = setup_ns + s / gbps``;
            MODEL_UVM_CURVE (1): ``t(s) = setup_ns + s / speed(s)`` with
            ``speed(s) = (2 * gbps / pi) * atan(curve_b * s / 1024)`` GB/s.
        curve_b: steepness of the UVM curve, per KiB (ignored for model 0).

    Preconditions:
        ``gbps > 0``; ``curve_b > 0`` for MODEL_UVM_CURVE.

    Postconditions:
        Returns float64 ns: each descriptor, in order, is charged to the
        channel with the least accumulated time (lowest index on ties) and
        the busiest channel's total is returned. 0.0 when ``ndesc <= 0``.
    """
    load = np.zeros(max(channels, 1), dtype=np.float64)
    return model_time_into(load, desc_len, ndesc, page_size, setup_ns, gbps, model_kind, curve_b)


@njit(cache=True, nogil=True)
def model_time_into(load, desc_len, ndesc, page_size, setup_ns, gbps, model_kind, curve_b):
    """model_time_into() - ``model_time_ns`` with the channels' loads in ``load``.

    ``load.shape[0]`` is the number of channels; it is overwritten. Nothing is
    allocated, so compiled code without reference counting can call it.
    """
    if ndesc <= 0:
        return 0.0
    nch = load.shape[0]
    # A descriptor's time depends only on its length, and neighbours mostly share
    # one (every descriptor at chunk 1, the full chunks of long runs), so the last
    # length's time is reused: the same float, without its division (about 0.5 ns
    # a descriptor at chunk 1, where every descriptor is one page).
    last_len = np.int64(-1)
    cost = 0.0
    if nch == 1:
        total = 0.0
        for k in range(ndesc):
            if desc_len[k] != last_len:
                last_len = desc_len[k]
                cost = _descriptor_ns(last_len * page_size, setup_ns, gbps, model_kind, curve_b)
            total += cost
        return total
    load[:] = 0.0
    for k in range(ndesc):
        if desc_len[k] != last_len:
            last_len = desc_len[k]
            cost = _descriptor_ns(last_len * page_size, setup_ns, gbps, model_kind, curve_b)
        best = 0
        for c in range(1, nch):
            if load[c] < load[best]:
                best = c
        load[best] += cost
    busiest = 0.0
    for c in range(nch):
        busiest = max(busiest, load[c])
    return busiest


@njit(cache=True, nogil=True)
def _check_frames(data, page_size, desc_src, desc_dst, desc_len, ndesc):
    """_check_frames() - raise IndexError unless every descriptor lies inside ``data``."""
    nframes = data.shape[0] // page_size
    for k in range(ndesc):
        lo = min(desc_src[k], desc_dst[k])
        hi = max(desc_src[k], desc_dst[k]) + desc_len[k]
        if lo < 0 or hi > nframes:
            raise IndexError("engine_copy: pfn outside the frame store")


@njit(cache=True, nogil=True)
def _copy_threaded(data, page_size, desc_src, desc_dst, desc_len, ndesc, threads, stream):
    """_copy_threaded() - copy on at most ``threads`` threads (0: no cap).

    The cap is taken against numba's *current* thread count, not
    NUMBA_NUM_THREADS: a config value would be frozen into the cached code,
    and exceeding the launched pool after a cache load is unsafe. It also
    honours a caller's own ``set_num_threads``. The count is thread-local and
    restored afterwards. With one usable thread there is no parallel region.
    """
    prev = _get_thread_count()
    use = prev if threads == 0 else min(threads, prev)
    if use <= 1:
        copy_descriptors_serial(data, page_size, desc_src, desc_dst, desc_len, ndesc, stream)
        return
    if use != prev:
        _set_thread_count(use)
    copy_descriptors_parallel(data, page_size, desc_src, desc_dst, desc_len, ndesc, stream)
    if use != prev:
        _set_thread_count(prev)


@njit(cache=True, nogil=True)
def _engine_copy_ns(data, page_size, engine, desc_src, desc_dst, desc_len, ndesc, nbytes):
    """_engine_copy_ns() - bounds-check, copy on the path ``engine`` picks, return wall ns."""
    _check_frames(data, page_size, desc_src, desc_dst, desc_len, ndesc)
    threads = np.int64(engine[ENG_THREADS])
    stream_min = engine[ENG_STREAM_MIN_BYTES]
    stream = stream_min >= 0 and nbytes >= stream_min
    t0 = now_ns()
    if threads == 1 or nbytes < engine[ENG_PAR_MIN_BYTES] or ndesc < 2:
        copy_descriptors_serial(data, page_size, desc_src, desc_dst, desc_len, ndesc, stream)
    else:
        _copy_threaded(data, page_size, desc_src, desc_dst, desc_len, ndesc, threads, stream)
    return now_ns() - t0


@njit(cache=True, nogil=True)
def _engine_model_ns(engine, desc_len, ndesc, page_size, load):
    """_engine_model_ns() - the modelled time with the parameters of ``engine``;
    ``load`` is scratch of at least ``engine[ENG_CHANNELS]`` entries."""
    channels = max(np.int64(engine[ENG_CHANNELS]), 1)
    kind = np.int64(engine[ENG_MODEL])
    setup_ns = engine[ENG_SETUP_NS]
    return model_time_into(
        load[:channels],
        desc_len,
        ndesc,
        page_size,
        setup_ns,
        engine[ENG_GBPS],
        kind,
        engine[ENG_CURVE_B],
    )


@njit(cache=True, nogil=True)
def engine_copy_into(
    data,
    page_size,
    store_data,
    src_pfns,
    dst_pfns,
    n,
    engine,
    stats,
    desc_src,
    desc_dst,
    desc_len,
    load,
):
    """engine_copy_into() - copy a batch of pages through the modelled copy engine.

    Arguments:
        data: uint8 flat frame store (see module docstring).
        page_size: int64 bytes per frame.
        store_data: bool; False when the machine keeps no page contents.
        src_pfns, dst_pfns: int64 paired source/destination pfns, copy order.
        n: number of pairs to copy.
        engine: float64[ENGINE_FIELDS] parameters (``ENG_*`` layout; build
            it with ``CopyEngine.to_array()``).
        stats: float64[STATS_FIELDS] accumulator (``STAT_*`` layout).
        desc_src, desc_dst, desc_len: int64 scratch, at least ``n`` entries.
        load: float64 scratch, at least ``engine[ENG_CHANNELS]`` entries.

    Preconditions:
        Source and destination frames are disjoint and destinations are
        distinct. ``engine`` holds valid values (``CopyEngine`` validates).
        If ``threads`` asks for a parallel copy, the caller is not itself
        inside a parallel region.

    Postconditions:
        The descriptors of the batch are in ``desc_*[0:ndesc]``. If
        ``store_data``, every destination frame holds its source frame's
        bytes; the copy is serial when ``threads == 1`` or the batch is
        below ``ENG_PAR_MIN_BYTES``, else parallel (``threads == 0``: all of
        numba's current threads; ``k > 1``: at most k), and written with
        streaming stores when the batch reaches ``ENG_STREAM_MIN_BYTES``
        (a negative value: never). ``stats`` gains
        ``ndesc`` descriptors, ``n * page_size`` bytes, the copy's wall
        seconds (0 without ``store_data``), the modelled seconds and one
        call. Returns ``ndesc``. Raises ValueError if the scratch is too
        short or ``n`` exceeds the pfn arrays, and IndexError if a frame lies
        outside ``data``; all before anything is copied. Allocates nothing.
    """
    if n > src_pfns.shape[0] or n > dst_pfns.shape[0]:
        raise ValueError("engine_copy: n exceeds the pfn arrays")
    if n > desc_src.shape[0] or n > desc_dst.shape[0] or n > desc_len.shape[0]:
        raise ValueError("engine_copy: descriptor scratch shorter than n")
    chunk_pages = np.int64(engine[ENG_CHUNK_PAGES])
    ndesc = build_descriptors(src_pfns, dst_pfns, n, chunk_pages, desc_src, desc_dst, desc_len)
    return _run_descriptors(
        data, page_size, store_data, n, ndesc, engine, stats, desc_src, desc_dst, desc_len, load
    )


@njit(cache=True, nogil=True)
def engine_copy_built_into(
    data, page_size, store_data, n, ndesc, engine, stats, desc_src, desc_dst, desc_len, load
):
    """engine_copy_built_into() - :func:`engine_copy_into` of ``n`` pages whose
    ``ndesc`` descriptors are already in ``desc_*[0:ndesc]``.

    For a batch whose descriptors were built as its pairs were named (the
    parallel setup of the device's reserved path, :func:`stitch_descriptors`).
    Same postconditions as :func:`engine_copy_into`; raises ValueError if
    ``ndesc`` exceeds the descriptor arrays or ``n``.
    """
    if ndesc > desc_src.shape[0] or ndesc > desc_dst.shape[0] or ndesc > desc_len.shape[0]:
        raise ValueError("engine_copy: ndesc exceeds the descriptor arrays")
    if ndesc > n:
        raise ValueError("engine_copy: more descriptors than pages")
    return _run_descriptors(
        data, page_size, store_data, n, ndesc, engine, stats, desc_src, desc_dst, desc_len, load
    )


@njit(cache=True, nogil=True, inline="always")
def _run_descriptors(
    data, page_size, store_data, n, ndesc, engine, stats, desc_src, desc_dst, desc_len, load
):
    """Copy (with ``store_data``) and model a batch's ``ndesc`` descriptors and
    add them to ``stats``; returns ``ndesc``."""
    nbytes = max(n, 0) * page_size
    wall_ns = 0
    if store_data and ndesc > 0:
        wall_ns = _engine_copy_ns(
            data, page_size, engine, desc_src, desc_dst, desc_len, ndesc, nbytes
        )
    model_ns = _engine_model_ns(engine, desc_len, ndesc, page_size, load)
    stats[STAT_DESCRIPTORS] += ndesc
    stats[STAT_BYTES] += nbytes
    stats[STAT_WALL_S] += wall_ns * _S_PER_NS
    stats[STAT_MODEL_S] += model_ns * _S_PER_NS
    stats[STAT_CALLS] += 1.0
    return ndesc


@njit(cache=True, nogil=True)
def engine_copy(
    data, page_size, store_data, src_pfns, dst_pfns, n, engine, stats, desc_src, desc_dst, desc_len
):
    """engine_copy() - :func:`engine_copy_into` with its channel scratch allocated here."""
    load = np.zeros(max(np.int64(engine[ENG_CHANNELS]), 1), np.float64)
    return engine_copy_into(
        data,
        page_size,
        store_data,
        src_pfns,
        dst_pfns,
        n,
        engine,
        stats,
        desc_src,
        desc_dst,
        desc_len,
        load,
    )
