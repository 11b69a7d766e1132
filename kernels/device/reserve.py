"""The device's reserved path: a batch the setup found all plain, taken as a whole.

When migrate_vma_setup()'s plain sweep took every slot as plain
(``mig[MIG_ALL_PLAIN]``), every slot wants a device page, and
device_alloc_page() called slot by slot would pop frame ``i`` below the device
free stack's top for slot ``i``. So, when no allocation failure is injected
and the pool has a frame for every slot, the device's threads name each
slot's frame in ``dst`` (without taking it) and coalesce the copy descriptors
of their own slots as they go (one thread, without a parallel region, below
the engine's ``parallel_min_pages``); the lists are joined (stitch_descriptors()),
the engine copies them, and the finish threads take each frame with the rest
of its slot's steps (finish.finish_reserved): a device page's struct page is
touched once and the allocation's own pass disappears.
tests/properties/test_parallel.py holds the outcome to the serial steps.
"""

from collections import namedtuple

import numpy as np
from numba import prange

from .. import _indices as I
from .. import layout as L
from .. import mm
from .._jit import internal
from ..copy import (
    ENG_CHUNK_PAGES,
    emit_descriptor,
    engine_copy_built_into,
    extends_run,
    stitch_descriptors,
)
from ..parallel.schedule import plan_chunks, sweep_threads
from .alloc import start_batch
from .common import dev_index, moves_bytes
from .finish import finish_reserved

# One thread's copy descriptor being built: it covers ``run`` pages from
# ``src``/``dst`` on (run 0: none yet); ``count`` descriptors are written before it.
OpenDescriptor = namedtuple("OpenDescriptor", ["src", "dst", "run", "count"])


@internal(inline=True)
def _write_descriptor(st, k, desc):
    scratch = st.copy_scratch
    emit_descriptor(
        scratch[I.COPY_DESC_SRC],
        scratch[I.COPY_DESC_DST],
        scratch[I.COPY_DESC_LEN],
        k,
        desc.src,
        desc.dst,
        desc.run,
    )


@internal
def _add_pair(desc, st, at, pfn, dpfn, limit):
    """build_descriptors()'s step for the pair (``pfn``, ``dpfn``): extend the open
    descriptor, or write it at ``at + count`` and open one at this pair."""
    if extends_run(desc.src, desc.dst, desc.run, pfn, dpfn, limit):
        return OpenDescriptor(desc.src, desc.dst, desc.run + 1, desc.count)
    count = desc.count
    if desc.run > 0:
        _write_descriptor(st, at + count, desc)
        count += 1
    return OpenDescriptor(pfn, dpfn, np.int64(1), count)


@internal
def _name_run(st, src, dst, t, top):
    """One thread: name its slots' device frames in ``dst`` (as hand_over()
    writes them) and build their copy descriptors at its first slot in the
    descriptor scratch (SW_NDESC of them)."""
    info = st.sweep_info
    lay = st.layout
    shift = lay[L.L_SHIFT]
    dst_bits = lay[L.L_VALID] | lay[L.L_LOCKED]
    write = lay[L.L_WRITE]
    limit = max(np.int64(st.engine[ENG_CHUNK_PAGES]), 1)
    first = info[t, I.SW_FIRST]
    desc = OpenDescriptor(np.int64(-1), np.int64(-1), np.int64(0), np.int64(0))
    for i in range(first, info[t, I.SW_END]):
        mpfn = src[mm.ix(i)]
        dpfn = np.int64(st.free_stack[mm.ix(top - i)])
        dst[mm.ix(i)] = (np.uint64(dpfn) << shift) | dst_bits | (mpfn & write)
        desc = _add_pair(desc, st, first, np.int64(mpfn >> shift), dpfn, limit)
    ndesc = desc.count
    if desc.run > 0:
        _write_descriptor(st, first + ndesc, desc)
        ndesc += 1
    info[t, I.SW_NDESC] = ndesc


@internal(parallel=True)
def _name_runs(st, src, dst, threads, top):
    for t in prange(threads):
        _name_run(st, src, dst, np.int64(t), top)


@internal
def name_device_pages(st, start, npages, src, dst, top):
    """Name slot ``i``'s device frame, the ``i``-th below position ``top`` of the
    device free stack, in ``dst``; returns the batch's descriptor count, built
    in the copy scratch. Pre: every slot is plain (setup's MIG_ALL_PLAIN)."""
    used = plan_chunks(st, start, npages, sweep_threads(st, npages))
    if used == 1:
        _name_run(st, src, dst, np.int64(0), top)
    else:
        _name_runs(st, src, dst, used, top)
    info = st.sweep_info
    scratch = st.copy_scratch
    return stitch_descriptors(
        scratch[I.COPY_DESC_SRC],
        scratch[I.COPY_DESC_DST],
        scratch[I.COPY_DESC_LEN],
        info[:used, I.SW_FIRST],
        info[:used, I.SW_NDESC],
        max(np.int64(st.engine[ENG_CHUNK_PAGES]), 1),
    )


@internal
def copy_reserved(state, n, ndesc, private):
    """The engine batch of a reserved migration, on the ``ndesc`` descriptors
    name_device_pages() built."""
    if not start_batch(state.copy_stats, n, private):
        return
    scratch = state.copy_scratch
    engine_copy_built_into(
        state.data,
        state.sys[L.SYS_PAGE_SIZE],
        moves_bytes(state.sys, private),
        n,
        ndesc,
        state.engine,
        state.copy_stats,
        scratch[I.COPY_DESC_SRC],
        scratch[I.COPY_DESC_DST],
        scratch[I.COPY_DESC_LEN],
        state.engine_load,
    )


@internal
def try_reserved(state, vma_index, start, end, src, dst, private):
    """alloc_and_copy + finish of a to-device batch taken as a whole, or -1
    (nothing done) when it cannot be: not every slot plain, an allocation
    failure injected, or fewer free device frames than slots. Returns the
    moved count (every slot)."""
    npages = mm.pages_in(state, end - start)
    d = dev_index(private)
    if state.mig[I.MIG_ALL_PLAIN] == 0 or state.dev[d, L.DEV_FAIL_ALLOC] != 0:
        return np.int64(-1)
    if state.dev[d, L.DEV_FREE] < npages or npages > state.copy_scratch.shape[1]:
        return np.int64(-1)  # its descriptors sit at their slots in the copy scratch
    mm.ready_pops(state, d, npages)
    ndesc = name_device_pages(state, start, npages, src, dst, mm.free_top(state, d))
    state.mig[I.MIG_RESERVED] = 1
    copy_reserved(state, npages, ndesc, private)
    return finish_reserved(state, d, vma_index, start, npages, src, dst)
