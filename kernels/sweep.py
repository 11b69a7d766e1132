"""The parallel schedule of a large migration's metadata sweeps (hmm-v25).

A sweep (migrate_vma_setup()'s collect + prepare + unmap, the device's page
allocation, and its pages + finalize_and_map + finalize) does the same steps
for every slot, and each slot's steps touch only that slot's own pages and
page-table entry (tests/test_fused.py holds the fused sweeps to the separate
passes). What slots share is:

* counters and the ``struct migrate_vma`` counts: each thread keeps its own
  (``State.sweep_counters`` / ``sweep_mig``) and they are summed afterwards;
* the free stacks, whose order decides which frame the next allocation gets:
  pops are ranked in slot order before the parallel region, and the frees
  of the finish sweep are pushed afterwards, in slot order;
* the LRU-add batches and their drains, THP splits, pins, foreign locks and
  pages mapped twice: a thread handles only *plain* slots (an anonymous 4 KiB
  page on the LRU, mapped once, nobody else holding it) and stops at the first
  other slot. After the region, each thread's remaining slots run through
  the serial sweep, in slot order.

So the parallel sweep ends in exactly the state of the serial one: the plain
slots commute with everything (they share nothing with any other slot), and
everything else still happens in slot order.

The plain test also decides every branch of a plain slot's steps, so the
threads write those steps' net effect (_setup_plain_slot,
device._finish_plain_slot) instead of calling the generic per-slot steps,
which re-test each branch. The serial sweep keeps the generic steps, and
tests/test_parallel.py holds the two to the same state.

The device's own pipeline (device._run_driver) goes one step further. When
every slot is plain, every slot wants a device page and slot ``i`` gets the
``i``-th frame below the device free stack's top, so the setup threads name
that frame in ``dst`` as they go, without taking it, and build the copy
descriptors of their own slots (no pair list is written). If a thread stops
early the names are wrong and dropped (``dst`` back to 0); if none does
(``mig[MIG_RESERVED]``), the threads' descriptor lists are joined into the
batch's (copy.stitch_descriptors(), ``mig[MIG_NDESC]``), the copy runs on
them, and the finish threads take each frame with the rest of its slot's
steps (device._finish_reserved): a device page's struct page is touched once,
and the allocation's own pass disappears. Nothing but the copy runs in between.

Threads own whole PMD extents, so the one-flush-per-PMD accounting and a
PMD-level pte_alloc() stay within a thread. The per-thread bodies are separate
functions called from the prange loop, not inlined into it: inlined, numba 0.68
lowered a thread's while-loop counter as if it never moved (every thread
"stopped" at its first slot). They take the thread index as ``np.int64(t)``:
numba types a prange index as uint64 in one pass and int64 in another, and an
uncast index compiled each body twice. Only ``hmm-v25`` takes this path;
``seed`` unmaps through try_to_unmap(), which counts TLB flushes as it goes,
and stays serial.
"""

from collections import namedtuple

import numpy as np
from numba import njit, prange

from . import layout as L
from . import mm
from .collect import collect_range
from .copy import (
    ENG_CHUNK_PAGES,
    ENG_PAR_MIN_PAGES,
    ENG_THREADS,
    _get_thread_count,
    emit_descriptor,
    extends_run,
    stitch_descriptors,
)
from .prefetch import PREFETCH_AHEAD
from .state import State


@njit(cache=True, nogil=True, _nrt=False, inline="always")
def with_counters(st, counters):
    """The same state with another counters array (a thread's own)."""
    return State(
        st.page,
        st.data,
        st.free_stack,
        st.free_pos,
        st.vma,
        st.pte,
        st.pte_next,
        st.pmd,
        st.mirror,
        st.pcache,
        st.swap_map,
        st.swap_stack,
        st.swap_data,
        st.pagevec,
        st.pagevec_n,
        st.sys,
        counters,
        st.layout,
        st.engine,
        st.copy_stats,
        st.mig,
        st.fault_mpfn,
        st.copy_scratch,
        st.engine_load,
        st.range_src,
        st.range_dst,
        st.sweep_info,
        st.sweep_mig,
        st.sweep_counters,
    )


@njit(cache=True, nogil=True, _nrt=False, inline="always")
def sweep_threads(st, npages):
    """How many threads a sweep of ``npages`` slots uses (1: stay serial).

    Parallel only in hmm-v25, from ``parallel_min_pages`` up, within the
    engine's ``threads`` cap and numba's current thread count, and with at
    least one PMD extent per thread.
    """
    if st.sys[L.SYS_PROFILE] != L.PROFILE_HMM_V25:
        return 1
    if npages < st.engine[ENG_PAR_MIN_PAGES]:
        return 1
    cap = np.int64(st.engine[ENG_THREADS])
    threads = _get_thread_count()
    if cap > 0:
        threads = min(threads, cap)
    threads = min(threads, L.MAX_SWEEP_THREADS, npages // L.HPAGE_PMD_NR)
    return max(threads, 1)


@njit(cache=True, nogil=True, _nrt=False)
def plan_chunks(st, start, npages, threads):
    """Split slots ``[0, npages)`` into ``threads`` runs of whole PMD extents.

    Writes SW_FIRST / SW_END of each thread's row in ``st.sweep_info`` and
    sets SW_STOP to SW_FIRST; returns the number of threads that got slots.
    """
    info = st.sweep_info
    ext_pages = L.HPAGE_PMD_NR
    first_ext = mm.pages_in(st, (start | (mm.pmd_extent(st) - 1)) + 1 - start)  # slots to 1st edge
    if first_ext == ext_pages:
        first_ext = 0  # start is on an extent edge
    extents = (npages - first_ext + ext_pages - 1) // ext_pages
    per = (extents + threads - 1) // threads
    used = 0
    lo = 0
    for t in range(threads):
        hi = min(npages, first_ext + (t + 1) * per * ext_pages)
        if t == threads - 1:
            hi = npages
        if hi <= lo:
            continue
        info[used, L.SW_FIRST] = lo
        info[used, L.SW_END] = hi
        info[used, L.SW_STOP] = lo
        info[used, L.SW_PARTIAL] = 0
        used += 1
        lo = hi
    return used


@njit(cache=True, nogil=True, _nrt=False)
def clear_thread_counts(st, threads):
    for t in range(threads):
        st.sweep_mig[t, :] = 0
        st.sweep_counters[t, :] = 0


@njit(cache=True, nogil=True, _nrt=False)
def merge_thread_counts(st, threads, mig):
    """Add each thread's counters and cpages / collected counts to the machine's."""
    for t in range(threads):
        for c in range(st.counters.shape[0]):
            st.counters[c] += st.sweep_counters[t, c]
        mig[L.MIG_CPAGES] += st.sweep_mig[t, L.MIG_CPAGES]
        mig[L.MIG_COLLECTED] += st.sweep_mig[t, L.MIG_COLLECTED]


# --------------------------------------------------------------------- setup
@njit(cache=True, nogil=True, _nrt=False, inline="always")
def _plain_pfn(st, slot):
    """The frame of a slot whose collect + prepare + unmap touch nothing but its
    own page and PTE, or -1: a present anonymous 4 KiB page on the LRU, mapped
    once, with no other reference (so not pinned, not in an LRU-add batch, not
    locked)."""
    pte = st.pte[mm.ix(slot)]
    if mm.pte_kind(pte) != L.PTE_PRESENT:
        return np.int64(-1)
    pfn = mm.pte_pfn(pte)
    if mm.is_zero_pfn(st, pfn):
        return np.int64(-1)
    at = mm.ix(pfn)
    flags = st.page["flags"][at]
    if (flags & L.PG_LRU) == 0 or (flags & L.PLAIN_SETUP_EXCLUDED) != 0:
        return np.int64(-1)
    plain = (
        st.page["mapping"][at] == L.MAPPING_ANON
        and st.page["refcount"][at] == 1
        and st.page["mapcount"][at] == 1
    )
    return pfn if plain else np.int64(-1)


# The layout's bits of a plain slot's mpfns: ``src`` and ``dst`` are ORed into
# ``pfn << shift``, and ``write`` when the PTE was writable.
PlainBits = namedtuple("PlainBits", ["shift", "src", "dst", "write"])


@njit(cache=True, nogil=True, _nrt=False, inline="always")
def _plain_bits(lay):
    """PlainBits of layout ``lay``, read once a sweep: in the loop, every store
    to another array makes the compiled code load them from ``lay`` again."""
    valid_locked = lay[L.L_VALID] | lay[L.L_LOCKED]
    return PlainBits(lay[L.L_SHIFT], valid_locked | lay[L.L_MIGRATE], valid_locked, lay[L.L_WRITE])


@njit(cache=True, nogil=True, _nrt=False, inline="always")
def _setup_plain_slot(st, slot, pfn, bits):
    """collect_slot() + prepare_slot() + unmap_slot() of a plain slot mapping
    ``pfn``, written as their net effect; returns the slot's mpfn.

    For a page _plain_pfn() admits, the three steps are: get_page()
    (refcount 2), trylock_page(), the migration entry (mapcount 0, put_page():
    1), isolate_lru_page() (LRU off, 2), the collect reference dropped (1),
    and the pin checks of prepare and unmap, which pass (refcount - 1 == 0 ==
    mapcount). No counter moves. What is left is written here, because the
    generic calls re-test every branch the plain test already decided.
    tests/test_parallel.py holds this path to the serial sweep, which takes
    the generic one.
    """
    at = mm.ix(pfn)
    write = mm.pte_write(st.pte[mm.ix(slot)])
    st.pte[mm.ix(slot)] = mm.make_pte(L.PTE_MIGRATION, pfn, write)
    st.page["mapcount"][at] = 0  # it was 1
    st.page["flags"][at] = (st.page["flags"][at] ^ L.PG_LRU) | L.PG_LOCKED  # LRU was set
    mpfn = (np.uint64(pfn) << bits.shift) | bits.src
    return (mpfn | bits.write) if write else mpfn


@njit(cache=True, nogil=True, _nrt=False, inline="always")
def _device_mpfn(dpfn, mpfn, bits):
    """The ``dst`` of a slot whose source ``mpfn`` gets device frame ``dpfn``,
    as _hand_over() writes it."""
    return (np.uint64(dpfn) << bits.shift) | bits.dst | (mpfn & bits.write)


# One thread's copy descriptor being built: it covers ``run`` pages from
# ``src``/``dst`` on (run 0: none yet); ``count`` descriptors are written before it.
OpenDescriptor = namedtuple("OpenDescriptor", ["src", "dst", "run", "count"])


@njit(cache=True, nogil=True, _nrt=False, inline="always")
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


@njit(cache=True, nogil=True, _nrt=False, inline="always")
def _write_descriptor(st, k, desc):
    scratch = st.copy_scratch
    emit_descriptor(
        scratch[L.COPY_DESC_SRC],
        scratch[L.COPY_DESC_DST],
        scratch[L.COPY_DESC_LEN],
        k,
        desc.src,
        desc.dst,
        desc.run,
    )


@njit(cache=True, nogil=True, _nrt=False)
def _setup_plain_run(st, v, start, src, dst, t, top):
    """One thread: collect + prepare + unmap its slots until the first one that
    is not plain (or whose PMD is not a page table); records where it stopped.

    ``top`` >= 0: also name each slot's device page, the frame ``i`` below the
    device free stack's ``top`` (it stays on the stack), and build the copy
    descriptors of the thread's slots (build_descriptors() of its pairs, at
    the thread's first slot in the descriptor scratch; SW_NDESC of them).
    """
    info = st.sweep_info
    mig = st.sweep_mig[t]
    counters = st.sweep_counters[t]
    ps = st.sys[L.SYS_PAGE_SIZE]
    slot0 = mm.pte_slot(st, v, start)
    ext_mask = mm.pmd_extent(st) - 1
    bits = _plain_bits(st.layout)
    limit = max(np.int64(st.engine[ENG_CHUNK_PAGES]), 1)
    first = info[t, L.SW_FIRST]
    desc = OpenDescriptor(np.int64(-1), np.int64(-1), np.int64(0), np.int64(0))
    i = first
    end = info[t, L.SW_END]
    unmapped = 0
    while i < end:
        addr = start + i * ps
        if i == first or (addr & ext_mask) == 0:
            if unmapped:
                counters[L.C_TLB_FLUSH] += 1  # the extent before was all plain
            unmapped = 0
            if mm.pmd_kind(st.pmd[mm.pmd_slot(st, v, addr)]) != L.PMD_TABLE:
                break
        if i + PREFETCH_AHEAD < end:
            ahead = st.pte[mm.ix(slot0 + i + PREFETCH_AHEAD)]
            if mm.pte_kind(ahead) == L.PTE_PRESENT:
                mm.prefetch_page(st, mm.pte_pfn(ahead))
        pfn = _plain_pfn(st, slot0 + i)
        if pfn < 0:
            break
        mpfn = _setup_plain_slot(st, slot0 + i, pfn, bits)
        src[mm.ix(i)] = mpfn
        if top >= 0:
            dpfn = st.free_stack[mm.ix(top - i)]
            dst[mm.ix(i)] = _device_mpfn(dpfn, mpfn, bits)
            desc = _add_pair(desc, st, first, pfn, dpfn, limit)
        else:
            dst[mm.ix(i)] = L.MPFN_NONE
        unmapped += 1
        i += 1
    ndesc = desc.count
    if desc.run > 0:
        _write_descriptor(st, first + ndesc, desc)
        ndesc += 1
    info[t, L.SW_NDESC] = ndesc
    collected = i - first
    mig[L.MIG_CPAGES] += collected
    mig[L.MIG_COLLECTED] += collected
    if i == end and unmapped:
        counters[L.C_TLB_FLUSH] += 1
        unmapped = 0
    info[t, L.SW_STOP] = i
    info[t, L.SW_PARTIAL] = unmapped  # the stopped extent's flush is still owed


@njit(cache=True, nogil=True, _nrt=False, parallel=True)
def _setup_plain_runs(st, v, start, src, dst, threads, top):
    for t in prange(threads):
        _setup_plain_run(st, v, start, src, dst, np.int64(t), top)


@njit(cache=True, nogil=True, _nrt=False, inline="always")
def _reservation_top(st, npages, reserve):
    """Where the setup threads may name device pages from (-1: they may not):
    only for the device's own pipeline, with no allocation failure injected
    and enough free device frames for every slot."""
    if not reserve or st.sys[L.SYS_FAIL_ALLOC] != 0 or st.sys[L.SYS_DEV_FREE] < npages:
        return np.int64(-1)
    return mm.free_top(st, True)


@njit(cache=True, nogil=True, _nrt=False)
def setup_parallel(st, v, start, npages, src, dst, mig, threads, reserve):
    """migrate_vma_setup()'s sweep over ``threads`` threads (see the module doc).

    Pre: hmm-v25; ``mig`` zeroed but for START/END/VMA; the driver CPU's LRU-add
    batch is empty, so prepare's local lru_add_drain() would only be counted.
    ``reserve``: the caller is device._run_driver migrating to the device.
    Post: the state, ``src``, ``dst`` and ``mig`` the serial sweep leaves,
    except that with ``mig[MIG_RESERVED]`` set ``dst`` holds the device pages
    the allocation would hand out (still on the free stack), and the copy
    scratch the batch's ``mig[MIG_NDESC]`` descriptors.
    """
    used = plan_chunks(st, start, npages, threads)
    top = _reservation_top(st, npages, reserve)
    clear_thread_counts(st, used)
    _setup_plain_runs(st, v, start, src, dst, used, top)
    merge_thread_counts(st, used, mig)
    all_plain = True
    for t in range(used):
        all_plain = all_plain and st.sweep_info[t, L.SW_STOP] == st.sweep_info[t, L.SW_END]
    if all_plain:
        mig[L.MIG_RESERVED] = 1 if top >= 0 else 0
        if top >= 0:
            mig[L.MIG_NDESC] = _join_descriptors(st, used)
    else:
        _finish_setup_serially(st, v, start, src, dst, mig, used, top >= 0)
    mig[L.MIG_NPAGES] = npages
    mig[L.MIG_END] = start + npages * st.sys[L.SYS_PAGE_SIZE]


@njit(cache=True, nogil=True, _nrt=False)
def _join_descriptors(st, used):
    """The batch's descriptors from the ``used`` threads' lists (stitch_descriptors())."""
    info = st.sweep_info
    scratch = st.copy_scratch
    return stitch_descriptors(
        scratch[L.COPY_DESC_SRC],
        scratch[L.COPY_DESC_DST],
        scratch[L.COPY_DESC_LEN],
        info[:used, L.SW_FIRST],
        info[:used, L.SW_NDESC],
        max(np.int64(st.engine[ENG_CHUNK_PAGES]), 1),
    )


@njit(cache=True, nogil=True, _nrt=False)
def _finish_setup_serially(st, v, start, src, dst, mig, used, reserved):
    """After a thread stopped early: drop the device pages named (an earlier
    slot may not want one), then sweep each thread's remaining slots serially."""
    ps = st.sys[L.SYS_PAGE_SIZE]
    info = st.sweep_info
    for t in range(used):
        if reserved:
            dst[info[t, L.SW_FIRST] : info[t, L.SW_STOP]] = L.MPFN_NONE
        stop = info[t, L.SW_STOP]
        end = info[t, L.SW_END]
        if stop < end:
            mig[L.MIG_NPAGES] = stop
            partial = info[t, L.SW_PARTIAL]
            collect_range(
                st, v, start + stop * ps, start + end * ps, src, dst, mig, np.bool_(True), partial
            )
