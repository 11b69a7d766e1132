"""Moving the bytes of a batch of descriptors, on one thread or several.

A batch of at least ``ENG_STREAM_MIN_BYTES`` is written with streaming stores
(no read-for-ownership, no cache pollution, as a DMA engine writes), a smaller
one with ``llvm.memcpy`` (one call per descriptor, or per COPY_PIECE_BYTES of a
larger one), so the simulator copies at memory speed whatever the chunk size.
Memory model: ``data`` is one flat uint8 array holding every frame; frame
``pfn`` occupies bytes ``[pfn * page_size, (pfn + 1) * page_size)``.
"""

import numpy as np
from numba import njit, prange

from .._llvm import (
    get_thread_count,
    memcpy_bytes,
    now_ns,
    set_thread_count,
    store_fence,
    stream_bytes,
)
from .params import COPY_PIECE_BYTES, ENG_PAR_MIN_BYTES, ENG_STREAM_MIN_BYTES, ENG_THREADS


@njit(cache=True, nogil=True)
def _current_threads():
    """numba's current thread count, compiled apart from any parallel function: a
    parfor declares the threading layer's get_num_threads with another return type."""
    return get_thread_count()


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
    prev = get_thread_count()
    use = prev if threads == 0 else min(threads, prev)
    if use <= 1:
        copy_descriptors_serial(data, page_size, desc_src, desc_dst, desc_len, ndesc, stream)
        return
    if use != prev:
        set_thread_count(use)
    copy_descriptors_parallel(data, page_size, desc_src, desc_dst, desc_len, ndesc, stream)
    if use != prev:
        set_thread_count(prev)


@njit(cache=True, nogil=True)
def engine_copy_ns(data, page_size, engine, desc_src, desc_dst, desc_len, ndesc, nbytes):
    """engine_copy_ns() - bounds-check, copy on the path ``engine`` picks, return wall ns."""
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
