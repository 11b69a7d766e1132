"""The copy engine's entry points: build, copy and model one batch.

``engine_copy_into`` is what the device's alloc_and_copy calls;
``engine_copy_built_into`` takes a batch whose descriptors were built as its
pairs were named (the device's reserved path); ``engine_copy`` allocates its
channel scratch, for callers outside the no-allocation kernels.
"""

import numpy as np
from numba import njit

from .descriptors import build_descriptors
from .execute import engine_copy_ns
from .model import engine_model_ns
from .params import (
    ENG_CHANNELS,
    ENG_CHUNK_PAGES,
    S_PER_NS,
    STAT_BYTES,
    STAT_CALLS,
    STAT_DESCRIPTORS,
    STAT_MODEL_S,
    STAT_WALL_S,
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


@njit(cache=True, nogil=True)
def _run_descriptors(
    data, page_size, store_data, n, ndesc, engine, stats, desc_src, desc_dst, desc_len, load
):
    """Copy (with ``store_data``) and model a batch's ``ndesc`` descriptors and
    add them to ``stats``; returns ``ndesc``."""
    nbytes = max(n, 0) * page_size
    wall_ns = 0
    if store_data and ndesc > 0:
        wall_ns = engine_copy_ns(
            data, page_size, engine, desc_src, desc_dst, desc_len, ndesc, nbytes
        )
    model_ns = engine_model_ns(engine, desc_len, ndesc, page_size, load)
    stats[STAT_DESCRIPTORS] += ndesc
    stats[STAT_BYTES] += nbytes
    stats[STAT_WALL_S] += wall_ns * S_PER_NS
    stats[STAT_MODEL_S] += model_ns * S_PER_NS
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
