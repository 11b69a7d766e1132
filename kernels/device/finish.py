"""The device pipeline's finish: pages + finalize_and_map + finalize, slot by slot.

The serial sweep (finish_slots) calls the generic per-slot steps. A large
to-device batch runs its *plain* slots over threads instead, by their net
effect (the schedule is kernels.parallel.schedule's):

    kernel step (per slot)               plain finish (finish_plain_slot)
    migrate_page_move_mapping()          index, mapping, dirty and mlocked move
                                         to the new page (refcount 1 as expected)
    dmirror finalize_and_map()           mirror entry for the new page
    remove_migration_ptes()              migration entry -> device entry; new
                                         page mapcount 1, refcount 3, on the
                                         slot's rmap chain
    unlock_page() x2, put_page(newpage)  both unlocked; new page refcount 2
    putback_lru_page(page)               by its net effect on this CPU's LRU-add
                                         batch, in slot order (sources_left_waiting():
                                         putback_sources(), or free_source_at() in
                                         the reserved threads)
    counters                             pgmigrate_success +1

    + device_alloc_page() of the frame   finish_reserved_slot: the device frame
      setup named (reserved batch)       leaves its stack here, each of its
                                         fields written once

The way back finishes on this thread, its plain slots by their net effect
(finish_slots(), kernels.device.finish_back). tests/properties/test_parallel.py
holds the fast finishes to the serial sweep, which takes the generic steps.
"""

import numpy as np
from numba import prange

from .. import _indices as I
from .. import layout as L
from .. import mm
from .._indices import PREFETCH_AHEAD
from .._jit import internal
from ..finalize import finalize_slot
from ..pages import pages_slot
from ..parallel.schedule import (
    clear_thread_counts,
    merge_thread_counts,
    plain_sweeps,
    plan_chunks,
    sweep_threads,
    with_counters,
)
from .finish_back import finish_back_plain_slot, plain_back_slot
from .mirror import mirror_entry, mirror_slot, moved_count, unmirror_slot


@internal
def prefetch_slot(state, src, dst, i, shift):
    """Start loading what finishing slot ``i`` will touch: both struct pages
    (the source's is freed, its stack position written there). ``shift``: the
    layout's. VALID is not tested: an mpfn without a page gives frame 0 or a
    frame past the end, and a prefetch ignores the latter and cannot fault."""
    page = src[mm.ix(i)] >> shift
    mm.prefetch_page(state, page)
    mm.prefetch_page(state, dst[mm.ix(i)] >> shift)


@internal(hot=True)
def finish_slot(state, to_device, vma_index, slot, addr, src, dst, i, fault_pfn):
    """pages, finalize_and_map and finalize for slot ``i``; 1 if dmirror counts it moved."""
    pages_slot(state, vma_index, addr, src, dst, i, fault_pfn)
    moved = moved_count(state.layout, src, dst, i)
    if to_device:
        mirror_slot(state, slot, src, dst, i)
    else:
        unmirror_slot(state, slot, src, dst, i)
    finalize_slot(state, src, dst, i, fault_pfn)
    return moved


@internal(hot=True)
def finish_slots(state, to_device, vma_index, start, src, dst, lo, hi):
    """The serial finish sweep over slots ``[lo, hi)``; returns the moved count.
    On the way back, from the engine's ``plain_min_pages`` (plain_sweeps()),
    a plain back slot takes its net effect (kernels.device.finish_back); in
    slot order, so either path sees what the other left.

    Inlined: a call that passes the state hands over ~1.9 KB of array fields,
    and as a call on every migration it made a one-page migration 3x slower."""
    fault_pfn = state.mig[L.MIG_FAULT_PFN]
    ps = state.sys[L.SYS_PAGE_SIZE]
    slot0 = mm.pte_slot(state, vma_index, start)
    shift = state.layout[L.L_SHIFT]
    compound = state.layout[L.L_COMPOUND]
    plain_back = not to_device and plain_sweeps(state, hi - lo)
    moved = 0
    i = lo
    while i < hi:
        if i + PREFETCH_AHEAD < hi:
            prefetch_slot(state, src, dst, i + PREFETCH_AHEAD, shift)
        slot = slot0 + i
        if plain_back and plain_back_slot(state, slot, src, dst, i, fault_pfn):
            moved += finish_back_plain_slot(state, slot, src, dst, i)
            i += 1
            continue
        addr = start + i * ps
        moved += finish_slot(state, to_device, vma_index, slot, addr, src, dst, i, fault_pfn)
        # a folio that kept COMPOUND through pages (moved or restored whole) is
        # followed by 511 empty slots: nothing to finish there (modern)
        i += L.HPAGE_PMD_NR if (src[i] & compound) != 0 else 1
    return moved


@internal
def plain_to_finish(state, slot, src, dst, i):
    """A to-device slot whose finish touches only its own two pages and PTE slot,
    and frees only its source (at the release step): an anonymous 4 KiB source
    holding just the isolation reference, mapped by this slot's migration entry
    alone, and a freshly allocated device page."""
    lay = state.layout
    if (src[i] & lay[L.L_MIGRATE]) == 0:
        return False
    page = mm.mpfn_to_pfn(lay, src[i])
    newpage = mm.mpfn_to_pfn(lay, dst[i])
    if page < 0 or newpage < 0:
        return False
    if (state.page["flags"][page] & I.PLAIN_SETUP_EXCLUDED & ~L.PG_LOCKED) != 0:
        return False  # (ZONE_DEVICE among them: the source is RAM)
    if not mm.is_device_private(state, newpage):
        return False  # RAM, or device-coherent memory (a present PTE)
    pte = state.pte[slot]
    return (
        state.page["mapping"][page] == L.MAPPING_ANON
        and state.page["refcount"][page] == 1
        and state.page["rmap"][page] == slot
        and state.pte_next[slot] == -1
        and mm.pte_kind(pte) == L.PTE_MIGRATION
        and mm.pte_pfn(pte) == page
        and state.page["refcount"][newpage] == 1 + mm.device_base_ref(state, newpage)
        and state.page["mapping"][newpage] == L.MAPPING_NONE
    )


@internal
def remap_to_device(state, d, slot, page, newpage, dst_mpfn):
    """The end both plain finishes share: device ``d``'s mirror entry, the slot's
    migration entry replaced by a device entry for ``newpage``, and the RAM
    source as finalize leaves it for its release: unlocked, off the slot's
    reverse map, dirty and mlocked moved over (the caller copied them),
    holding the isolation reference. Its putback_lru_page() is the caller's,
    by its net effect in slot order: putback_sources() after the parallel
    sweep, free_source_at() and a trailing putback in finish_reserved()."""
    at_slot = mm.ix(slot)
    state.mirror[d, at_slot] = mirror_entry(state.layout, np.int64(newpage), dst_mpfn)
    write = mm.pte_write(state.pte[at_slot])
    state.pte[at_slot] = mm.make_pte(L.PTE_DEVICE, newpage, write)
    at = mm.ix(page)
    state.page["flags"][at] &= ~(L.PG_LOCKED | L.PG_DIRTY | L.PG_MLOCKED)
    state.page["rmap"][at] = -1


@internal(inline=True)
def sources_left_waiting(state, n):
    """How many of ``n`` plain sources put back in a row (putback_lru_page():
    lru_cache_add() on this CPU, then put_page()) are still in its LRU-add
    batch afterwards; the others are freed, in order.

    A plain source holds only the isolation's reference, so the batch's is its
    last. Every add that fills the batch drains it, freeing the sources in it
    (the pages it held before come first and are only put). With ``b`` pages
    in the batch and a batch of size ``s`` (SYS_LRU_BATCH), the first add to
    fill it is the ``s - b``-th, and after the last one ``(b + n) % s`` sources
    wait in it.
    """
    b = state.pagevec_n[mm.this_cpu(state)]
    size = state.sys[L.SYS_LRU_BATCH]
    if b + n < size:
        return n
    return (b + n) % size


@internal(inline=True)
def free_source_at(state, page, pos):
    """A plain source's last reference dropped by a batch drain: free_frame()
    at free-stack position ``pos`` (RAM moves no counter: threads may share
    ``state``)."""
    state.page["refcount"][mm.ix(page)] = 0
    mm.mark_free(state, page)
    mm.place_free(state, np.int64(page), pos)


@internal
def putback_sources(state, src, lo, hi):
    """finalize's release of the sources of plain slots ``[lo, hi)`` in slot
    order (putback_lru_page() each), by its net effect: when the adds fill this
    CPU's batch, it drains (the pages it held first), the sources up to the
    last fill are freed in order, and the rest wait in it (sources_left_waiting()).
    modern (B_TARGET_LRU): each source's put frees it, in slot order."""
    lay = state.layout
    if mm.behaves(state, L.B_TARGET_LRU):
        for i in range(lo, hi):
            page = mm.mpfn_to_pfn(lay, src[i])
            state.page["refcount"][mm.ix(page)] = 0
            mm.free_frame(state, page)
        return
    keep = sources_left_waiting(state, hi - lo)
    if keep < hi - lo:
        mm.drain_cpu(state, mm.this_cpu(state))
        for i in range(lo, hi - keep):
            page = mm.mpfn_to_pfn(lay, src[i])
            state.page["refcount"][mm.ix(page)] = 0
            mm.free_frame(state, page)
    for i in range(hi - keep, hi):
        mm.putback_lru_page(state, mm.mpfn_to_pfn(lay, src[i]))


@internal
def finish_plain_slot(state, slot, src, dst, i):
    """pages_slot() + mirror_slot() + finalize_slot() of a plain slot, written
    as their net effect, all but the source's place on the free stack.

    For a slot plain_to_finish() admits, the steps are:
    migrate_page_move_mapping() (refcount 1 as expected: index, mapping,
    dirty and mlocked move over), dmirror's mirror entry,
    remove_migration_ptes() (the one entry becomes a device entry for the new
    page: mapcount 1, refcount 3, the slot moves to its rmap chain), both
    pages unlocked, the device page's driver reference put (2), and the
    source ready for its putback_lru_page() (putback_sources()). One
    pgmigrate_success. The generic calls re-test every branch the plain test
    already decided; tests/properties/test_parallel.py holds this path to the serial
    sweep, which takes them.
    """
    lay = state.layout
    page = mm.mpfn_to_pfn(lay, src[i])
    newpage = mm.mpfn_to_pfn(lay, dst[i])
    pages = state.page
    pages["index"][newpage] = pages["index"][page]
    pages["mapping"][newpage] = L.MAPPING_ANON
    moved_flags = pages["flags"][page] & (L.PG_DIRTY | L.PG_MLOCKED)
    mm.set_flag(state, newpage, moved_flags)
    mm.unlock_page(state, newpage)
    pages["mapcount"][newpage] += 1
    mm.rmap_add(state, newpage, slot)
    remap_to_device(state, mm.device_of(state, newpage), slot, page, newpage, dst[i])
    state.counters[L.C_PGMIGRATE_SUCCESS] += 1


@internal
def finish_reserved_slot(state, d, slot, src, dst, i, dev_pos, ram_pos, shift):
    """take_device_frame() of device ``d`` at ``dev_pos`` + finish_plain_slot() +,
    when ``ram_pos`` >= 0, the free of its source at that free-stack position (a
    batch drain freed it: finish_reserved()), for a slot setup named a device
    page for, written as their net effect (pgmigrate_success and the putbacks
    of the sources left waiting in the batch are the caller's).

    The device frame leaves its stack and ends allocated (one reference more
    than free), unlocked (trylock, then unlock), holding the source's index,
    dirty and mlocked bits, and mapped by the slot alone. Setup admitted the
    source only with mapcount 1, and a page's chain holds its mapcount
    mappings (check()), so the slot ends its chain: ``pte_next[slot]`` is
    already the -1 rmap_add() would write, and is left untouched. The writes
    take_device_frame() and finish_plain_slot() make twice are made once,
    and ``src``/``dst`` are VALID, so their pfns need no test: this is the
    hot loop of a large migration (``shift``: the layout's, read once per loop).
    """
    page = src[mm.ix(i)] >> shift
    newpage = dst[mm.ix(i)] >> shift
    mm.unplace_free(state, newpage, dev_pos)
    pages = state.page
    moved_flags = pages["flags"][page] & (L.PG_DIRTY | L.PG_MLOCKED)
    pages["flags"][newpage] = (pages["flags"][newpage] & L.PG_DEVICE_KIND) | moved_flags
    pages["refcount"][newpage] += 1
    pages["mapcount"][newpage] = 1
    pages["pins"][newpage] = 0
    pages["mapping"][newpage] = L.MAPPING_ANON
    pages["index"][newpage] = pages["index"][page]
    pages["rmap"][newpage] = slot
    remap_to_device(state, d, slot, page, newpage, dst[mm.ix(i)])
    if ram_pos >= 0:
        free_source_at(state, page, ram_pos)


@internal
def _finish_plain_run(state, vma_index, start, src, dst, t):
    """One thread: finish its slots until the first one that is not plain.

    A plain slot's release (putback_lru_page() of its source) is left for
    finish_parallel(), which makes it in slot order."""
    info = state.sweep_info
    mine = with_counters(state, state.sweep_counters[t])
    slot0 = mm.pte_slot(state, vma_index, start)
    i = info[t, I.SW_FIRST]
    end = info[t, I.SW_END]
    shift = state.layout[L.L_SHIFT]
    while i < end:
        if i + PREFETCH_AHEAD < end:
            prefetch_slot(state, src, dst, i + PREFETCH_AHEAD, shift)
        if not plain_to_finish(state, slot0 + i, src, dst, i):
            break
        finish_plain_slot(mine, slot0 + i, src, dst, i)
        i += 1
    info[t, I.SW_STOP] = i
    info[t, I.SW_MOVED] = i - info[t, I.SW_FIRST]


@internal(parallel=True)
def _finish_plain_runs(state, vma_index, start, src, dst, threads):
    for t in prange(threads):
        _finish_plain_run(state, vma_index, start, src, dst, np.int64(t))


@internal
def finish_parallel(state, vma_index, start, npages, src, dst, threads):
    """The to-device finish sweep over ``threads`` threads (kernels.parallel.schedule).

    Plain slots run in parallel; then, in slot order, each thread's plain
    sources are put back (putback_sources()) and its remaining slots run
    serially, so every putback_lru_page() goes through this CPU's LRU-add
    batch in the order the serial sweep makes them."""
    used = plan_chunks(state, start, npages, threads)
    clear_thread_counts(state, used)
    _finish_plain_runs(state, vma_index, start, src, dst, used)
    merge_thread_counts(state, used, state.mig)
    moved = 0
    for t in range(used):
        info = state.sweep_info[t]
        putback_sources(state, src, info[I.SW_FIRST], info[I.SW_STOP])
        moved += info[I.SW_MOVED]
        moved += finish_slots(
            state, True, vma_index, start, src, dst, info[I.SW_STOP], info[I.SW_END]
        )
    return moved


@internal
def _finish_reserved_run(state, d, vma_index, start, src, dst, t, top, ram_free, freed):
    """One thread of finish_reserved: for each of its slots, the device page's
    allocation (device_alloc_page() of the frame setup named), the plain
    finish and, for the first ``freed`` slots, the source's free
    (finish_reserved_slot). In slot order both stacks move by one a slot, so
    slot ``i`` pops ``top - i`` and pushes at ``ram_free + i``, where the
    serial sweep pops and pushes them."""
    info = state.sweep_info
    slot0 = mm.pte_slot(state, vma_index, start)
    end = info[t, I.SW_END]
    shift = state.layout[L.L_SHIFT]
    for i in range(info[t, I.SW_FIRST], end):
        if i + PREFETCH_AHEAD < end:
            prefetch_slot(state, src, dst, i + PREFETCH_AHEAD, shift)
        ram_pos = ram_free + i if i < freed else np.int64(-1)
        finish_reserved_slot(state, d, slot0 + i, src, dst, i, top - i, ram_pos, shift)
    info[t, I.SW_STOP] = end


@internal(parallel=True)
def _finish_reserved_runs(state, d, vma_index, start, src, dst, threads, top, ram_free, freed):
    for t in prange(threads):
        _finish_reserved_run(
            state, d, vma_index, start, src, dst, np.int64(t), top, ram_free, freed
        )


@internal
def finish_reserved(state, d, vma_index, start, npages, src, dst):
    """The allocation and the finish sweep of a batch taken as a whole (kernels.device.reserve),
    over threads from the engine's ``parallel_min_pages``, on this thread below it.

    Pre: setup left every slot plain, ``dst[i]`` names the frame ``i`` below
    the top of device ``d``'s free stack (reserve.name_device_pages()), and
    only the copy ran since.
    Post: the state device_alloc_and_copy()'s allocation and the finish sweep
    leave (tests/properties/test_parallel.py holds it to the serial steps).
    The sources' putbacks fill this CPU's LRU-add batch in slot order: when
    they fill it at all, the pages it held drain first (here, before the
    sweep), the sources up to the last fill are freed in slot order (by the
    threads, at their places on the RAM stack), and the rest are put back
    into the batch afterwards (sources_left_waiting()). No other step of a
    slot touches a RAM frame or a batch.
    Returns the moved count, ``npages``.
    """
    threads = sweep_threads(state, npages)
    used = plan_chunks(state, start, npages, threads)
    top = mm.free_top(state, d)
    # modern (B_TARGET_LRU): no source goes through the batch, each is freed.
    keep = 0 if mm.behaves(state, L.B_TARGET_LRU) else sources_left_waiting(state, npages)
    if keep < npages and not mm.behaves(state, L.B_TARGET_LRU):
        mm.drain_cpu(state, mm.this_cpu(state))
    ram_free = state.sys[L.SYS_RAM_FREE]  # RAM's stack starts at 0
    freed = npages - keep
    # No slot moves a counter or a migrate_vma count: all are settled here.
    if used == 1:
        t0 = np.int64(0)
        _finish_reserved_run(state, d, vma_index, start, src, dst, t0, top, ram_free, freed)
    else:
        _finish_reserved_runs(state, d, vma_index, start, src, dst, used, top, ram_free, freed)
    state.dev[d, L.DEV_FREE] -= npages
    state.dev[d, L.DEV_CALLOC] += npages
    state.counters[L.C_DEVICE_CALLOC] += npages
    state.counters[L.C_PGMIGRATE_SUCCESS] += npages
    state.sys[L.SYS_RAM_FREE] += freed
    lay = state.layout
    for i in range(freed, npages):
        mm.putback_lru_page(state, mm.mpfn_to_pfn(lay, src[i]))
    return npages


@internal(hot=True)
def finish_driver(state, to_device, vma_index, start, end, src, dst):
    """pages, finalize_and_map and finalize of the device's own pipeline, in one sweep.

    Slot by slot rather than pass by pass: each slot's steps touch only its own
    pages and mappings, so the outcome is the one the three separate loops give
    (tests/properties/test_fused.py compares them). Large to-device batches are
    split over threads (kernels.parallel.schedule); the way back takes its
    plain slots by their net effect (finish_slots()). Returns dmirror's moved
    count.
    """
    npages = mm.pages_in(state, end - start)
    threads = sweep_threads(state, npages) if to_device else 1
    if threads > 1:
        return finish_parallel(state, vma_index, start, npages, src, dst, threads)
    return finish_slots(state, to_device, vma_index, start, src, dst, 0, npages)
