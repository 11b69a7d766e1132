"""The device driver model, after the kernel's test driver (lib/test_hmm.c, dmirror).

The device owns the frames ``[nr_ram, nr_ram + nr_device)``: a free list
(``free_stack``), a mirror page table (``state.mirror``, per PTE slot), a copy
engine (``state.engine``) and the CPU-fault handler for its pages.

Profiles: in ``hmm-v25`` its frames are device-private ZONE_DEVICE memory (a
free page holds one reference; a CPU access to a device entry faults the page
back through :func:`device_fault`). In ``seed`` they are CPU-addressable device
memory, as in the patch's CAPI example: migrated pages are mapped by ordinary
present PTEs and no fault path exists.

The callbacks take ``private`` as an int64 of ``DEV_*`` bits.
"""

import numpy as np
from numba import njit, prange

from . import layout as L
from . import mm
from .clock import now_ns
from .copy import (
    ENG_CURVE_B,
    ENG_GBPS,
    ENG_MODEL,
    ENG_SETUP_NS,
    STAT_BYTES,
    STAT_CALLS,
    STAT_DESCRIPTORS,
    STAT_MODEL_S,
    STAT_WALL_S,
    _descriptor_ns,
    engine_copy_built_into,
    engine_copy_into,
    memcpy_bytes,
)
from .finalize import finalize_slot
from .migrate import migrate_vma_finalize, migrate_vma_pages, migrate_vma_setup, setup_range
from .pages import pages_slot
from .prefetch import PREFETCH_AHEAD, prefetch_for_write
from .sweep import (
    clear_thread_counts,
    merge_thread_counts,
    plan_chunks,
    sweep_threads,
    with_counters,
)

DEV_KEEP_STATS = 1  # add to copy_stats instead of starting a new record
DEV_NOFAIL = 2  # ignore fail_alloc (eviction uses __GFP_NOFAIL)


@njit(cache=True, nogil=True, _nrt=False, inline="always")
def _allocation_fails(st, private):
    """One-shot failure injection (m.device.fail_alloc / HMM_DMIRROR_FLAG_FAIL_ALLOC)."""
    if (private & DEV_NOFAIL) == 0 and st.sys[L.SYS_FAIL_ALLOC] > 0:
        st.sys[L.SYS_FAIL_ALLOC] -= 1
        return True
    return False


@njit(cache=True, nogil=True, _nrt=False, inline="always")
def device_alloc_page(st, private):
    """dmirror_devmem_alloc_page(): pop a device frame, take a reference, lock it."""
    if _allocation_fails(st, private):
        return -1
    pfn = mm.alloc_frame(st, True)
    if pfn >= 0:
        mm.trylock_page(st, pfn)
        st.counters[L.C_DEVICE_CALLOC] += 1
    return pfn


@njit(cache=True, nogil=True, _nrt=False, inline="always")
def _system_alloc_page(st, private):
    if _allocation_fails(st, private):
        return -1
    pfn = mm.alloc_frame(st, False)
    if pfn >= 0:
        mm.trylock_page(st, pfn)
    return pfn


@njit(cache=True, nogil=True, _nrt=False, inline="always")
def _start_batch(stats, n, private):
    """Clear the last copy's stats unless DEV_KEEP_STATS; False: nothing to copy."""
    if (private & DEV_KEEP_STATS) == 0:
        stats[:] = 0.0
    return n > 0


@njit(cache=True, nogil=True, _nrt=False)
def _copy_pairs(data, sysv, engine, stats, scratch, load, n, private):
    """One engine batch over the first ``n`` pairs of the copy scratch.

    It takes the six arrays it uses, not the state: a call that passes the state
    hands over ~1.9 KB of array fields, which a one-page migration notices."""
    if not _start_batch(stats, n, private):
        return
    engine_copy_into(
        data,
        sysv[L.SYS_PAGE_SIZE],
        sysv[L.SYS_STORE_DATA] != 0,
        scratch[L.COPY_SRC],
        scratch[L.COPY_DST],
        n,
        engine,
        stats,
        scratch[L.COPY_DESC_SRC],
        scratch[L.COPY_DESC_DST],
        scratch[L.COPY_DESC_LEN],
        load,
    )


# The public entry points below are inlined wrappers that pass their scalars on as
# np.int64: a constant argument (``0``, ``DEV_KEEP_STATS``) is a literal type to
# numba, and each literal value would compile the whole body once more. Through the
# wrapper every caller, Python or compiled, shares one compiled body.


@njit(cache=True, nogil=True, _nrt=False, inline="always")
def device_alloc_and_copy(state, vma_index, src, dst, start, end, private):
    """dmirror_migrate_alloc_and_copy() - system to device.

    Args: the migrate_vma() callback arguments; ``private``: DEV_* bits.
    Pre: MIGRATE slots are locked and unmapped (or holes / zero pages).
    Post: for each MIGRATE slot that is not already device memory and for
    which a device page could be had: the page is allocated and locked, the
    data copied through the copy engine (zero-filled for a hole or zero page),
    and ``dst = pfn | VALID | LOCKED`` plus WRITE when the source had it.
    A failed allocation leaves ``dst = 0``: that page stays where it is.
    """
    _alloc_and_copy_to(state, True, src, dst, np.int64(start), np.int64(end), np.int64(private))


@njit(cache=True, nogil=True, _nrt=False)
def _alloc_and_copy_to(state, to_device, src, dst, start, end, private):
    """The compiled body of both directions' alloc_and_copy callbacks
    (_run_driver inlines _alloc_and_copy itself, for the one-page path)."""
    _alloc_and_copy(state, to_device, src, dst, start, end, private)


@njit(cache=True, nogil=True, _nrt=False, inline="always")
def _alloc_and_copy(state, to_device, src, dst, start, end, private):
    """Allocate destinations for one direction, then copy them in one engine batch."""
    npages = mm.pages_in(state, end - start)
    n = _alloc_pairs(state, to_device, src, dst, npages, private)
    _copy_engine_batch(state, n, private)


@njit(cache=True, nogil=True, _nrt=False, inline="always")
def _copy_engine_batch(state, n, private):
    """Copy the first ``n`` pairs of the copy scratch in one engine batch."""
    _copy_pairs(
        state.data,
        state.sys,
        state.engine,
        state.copy_stats,
        state.copy_scratch,
        state.engine_load,
        n,
        private,
    )


@njit(cache=True, nogil=True, _nrt=False, inline="always")
def _alloc_pairs(state, to_device, src, dst, npages, private):
    """Allocate the destinations of one direction; returns how many copy pairs
    it left in ``state.copy_scratch``."""
    sp = state.copy_scratch[L.COPY_SRC]
    dp = state.copy_scratch[L.COPY_DST]
    if to_device:
        return _alloc_device_pages(state, src, dst, npages, private, sp, dp)
    return _alloc_system_pages(state, src, dst, npages, private, sp, dp)


@njit(cache=True, nogil=True, _nrt=False, inline="always")
def _wants_device_page(state, mpfn):
    """A MIGRATE slot that is not device memory already (device to device
    would need a device-side copy)."""
    lay = state.layout
    if (mpfn & lay[L.L_MIGRATE]) == 0:
        return False
    spfn = mm.mpfn_to_pfn(lay, mpfn)
    return spfn < 0 or not mm.is_device_pfn(state, spfn)


@njit(cache=True, nogil=True, _nrt=False)
def _count_wants(state, src, t):
    info = state.sweep_info
    need = 0
    pairs = 0
    for i in range(info[t, L.SW_FIRST], info[t, L.SW_END]):
        if _wants_device_page(state, src[i]):
            need += 1
            if mm.mpfn_to_pfn(state.layout, src[i]) >= 0:
                pairs += 1
    info[t, L.SW_NEED] = need
    info[t, L.SW_PAIRS] = pairs


@njit(cache=True, nogil=True, _nrt=False, parallel=True)
def _count_wants_all(state, src, threads):
    for t in prange(threads):
        _count_wants(state, src, np.int64(t))


@njit(cache=True, nogil=True, _nrt=False, inline="always")
def _hand_over(state, dst, i, mpfn, dpfn, sp, dp, n):
    """Give slot ``i`` its new device page: queue the copy (or zero-fill a
    hole) and write ``dst``. Returns the new number of copy pairs."""
    lay = state.layout
    spfn = mm.mpfn_to_pfn(lay, mpfn)
    if spfn >= 0:
        sp[n] = spfn
        dp[n] = dpfn
        n += 1
    else:
        mm.zero_frame(state, dpfn)
    dst[i] = mm.make_mpfn(lay, dpfn) | lay[L.L_LOCKED] | (mpfn & lay[L.L_WRITE])
    return n


@njit(cache=True, nogil=True, _nrt=False, inline="always")
def _take_device_frame(state, pos):
    """device_alloc_page() of the frame at free-stack position ``pos``, which
    the caller ranked: the stack's depth is settled afterwards, for all pops."""
    dpfn = state.free_stack[pos]
    mm.unplace_free(state, dpfn, pos)
    mm.init_allocated(state, dpfn)
    mm.trylock_page(state, dpfn)
    return dpfn


@njit(cache=True, nogil=True, _nrt=False)
def _take_device_pages(state, src, dst, t, sp, dp):
    """One thread: pop the device frames its slots rank to (slot order), as
    device_alloc_page() would have popped them one by one."""
    info = state.sweep_info
    top = mm.free_top(state, True)
    rank = info[t, L.SW_NEED0]
    n = info[t, L.SW_PAIRS0]
    for i in range(info[t, L.SW_FIRST], info[t, L.SW_END]):
        mpfn = src[i]
        dst[i] = L.MPFN_NONE
        if not _wants_device_page(state, mpfn):
            continue
        dpfn = _take_device_frame(state, top - rank)
        rank += 1
        n = _hand_over(state, dst, i, mpfn, dpfn, sp, dp, n)


@njit(cache=True, nogil=True, _nrt=False, parallel=True)
def _take_device_pages_all(state, src, dst, threads, sp, dp):
    for t in prange(threads):
        _take_device_pages(state, src, dst, np.int64(t), sp, dp)


@njit(cache=True, nogil=True, _nrt=False)
def _alloc_device_parallel(state, src, dst, npages, sp, dp, threads):
    """device_alloc_and_copy()'s allocation over threads (kernels.sweep): count
    each thread's wants, rank them in slot order, then pop by rank. Returns the
    copy pairs, or -1 (nothing done) when the pool cannot serve every slot:
    then the serial loop decides which slots go without."""
    used = plan_chunks(state, 0, npages, threads)
    info = state.sweep_info
    _count_wants_all(state, src, used)
    need = 0
    pairs = 0
    for t in range(used):
        info[t, L.SW_NEED0] = need
        info[t, L.SW_PAIRS0] = pairs
        need += info[t, L.SW_NEED]
        pairs += info[t, L.SW_PAIRS]
    if need > state.sys[L.SYS_DEV_FREE]:
        return -1
    _take_device_pages_all(state, src, dst, used, sp, dp)
    state.sys[L.SYS_DEV_FREE] -= need
    state.counters[L.C_DEVICE_CALLOC] += need
    return pairs


@njit(cache=True, nogil=True, _nrt=False, inline="always")
def _alloc_device_pages(state, src, dst, npages, private, sp, dp):
    """The per-page part of device_alloc_and_copy(); returns the copy pairs."""
    threads = sweep_threads(state, npages)
    if threads > 1 and state.sys[L.SYS_FAIL_ALLOC] == 0:
        n = _alloc_device_parallel(state, src, dst, npages, sp, dp, threads)
        if n >= 0:
            return n
    n = 0
    for i in range(npages):
        mpfn = src[i]
        dst[i] = L.MPFN_NONE  # the seed's collect leaves dst alone, so a driver writes every slot
        if not _wants_device_page(state, mpfn):
            continue
        dpfn = device_alloc_page(state, private)
        if dpfn >= 0:
            n = _hand_over(state, dst, i, mpfn, dpfn, sp, dp, n)
    return n


@njit(cache=True, nogil=True, _nrt=False, inline="always")
def _mirror_entry(lay, dpfn, dst_mpfn):
    """dmirror's mirror page-table entry for device frame ``dpfn``: the frame and,
    in bit 0, whether the destination was handed over writable."""
    return (dpfn << 1) | (1 if (dst_mpfn & lay[L.L_WRITE]) != 0 else 0)


@njit(cache=True, nogil=True, _nrt=False, inline="always")
def _mirror_slot(state, slot, src, dst, i):
    """dmirror_migrate_finalize_and_map() for slot ``i``: map a page that moved
    to the device in the mirror page table."""
    lay = state.layout
    dpfn = mm.mpfn_to_pfn(lay, dst[i])
    if (src[i] & lay[L.L_MIGRATE]) == 0 or dpfn < 0 or not mm.is_device_pfn(state, dpfn):
        return
    state.mirror[slot] = _mirror_entry(lay, dpfn, dst[i])


@njit(cache=True, nogil=True, _nrt=False, inline="always")
def _unmirror_slot(state, slot, src, dst, i):
    """The device-to-system finalize_and_map for slot ``i``: forget a page that
    left the device."""
    lay = state.layout
    spfn = mm.mpfn_to_pfn(lay, src[i])
    moved = (src[i] & lay[L.L_MIGRATE]) != 0 and mm.mpfn_to_pfn(lay, dst[i]) >= 0
    if moved and spfn >= 0 and mm.is_device_pfn(state, spfn):
        state.mirror[slot] = -1


@njit(cache=True, nogil=True, _nrt=False, inline="always")
def device_finalize_and_map(state, vma_index, src, dst, start, end, private):
    """dmirror_migrate_finalize_and_map() - record migrated pages in the mirror.

    Post: every slot that kept MIGRATE with a device destination is mapped in
    the device's mirror page table, writable when ``dst`` has WRITE.
    """
    _finalize_and_map(state, True, np.int64(vma_index), src, dst, np.int64(start), np.int64(end))


@njit(cache=True, nogil=True, _nrt=False)
def _finalize_and_map(state, to_device, vma_index, src, dst, start, end):
    """Both directions' finalize_and_map: map (or forget) each moved page in the mirror."""
    npages = mm.pages_in(state, end - start)
    slot0 = mm.pte_slot(state, vma_index, start)
    for i in range(npages):
        if to_device:
            _mirror_slot(state, slot0 + i, src, dst, i)
        else:
            _unmirror_slot(state, slot0 + i, src, dst, i)


@njit(cache=True, nogil=True, _nrt=False, inline="always")
def system_alloc_and_copy(state, vma_index, src, dst, start, end, private):
    """The device-to-system copy routine (fault path, migrate_to_system, evict).

    Post: each MIGRATE slot holding a device page gets a locked system page with
    the data copied and ``dst = pfn | VALID | LOCKED`` (+ WRITE). If the
    allocation fails and the slot carries MIGRATE_PFN_DEVICE (hmm-v25), the
    driver writes ``dst = MIGRATE_PFN_ERROR``, as migrate.h requires of it.
    """
    _alloc_and_copy_to(state, False, src, dst, np.int64(start), np.int64(end), np.int64(private))


@njit(cache=True, nogil=True, _nrt=False, inline="always")
def _alloc_system_pages(state, src, dst, npages, private, sp, dp):
    """The per-page part of system_alloc_and_copy(); returns the copy pairs."""
    lay = state.layout
    n = 0
    for i in range(npages):
        mpfn = src[i]
        dst[i] = L.MPFN_NONE
        spfn = mm.mpfn_to_pfn(lay, mpfn)
        if (mpfn & lay[L.L_MIGRATE]) == 0 or spfn < 0 or not mm.is_device_pfn(state, spfn):
            continue
        rpfn = _system_alloc_page(state, private)
        if rpfn < 0:
            if lay[L.L_DEVICE] != 0 and (mpfn & lay[L.L_DEVICE]) != 0:
                dst[i] = lay[L.L_ERROR]
            continue
        sp[n] = spfn
        dp[n] = rpfn
        n += 1
        dst[i] = mm.make_mpfn(lay, rpfn) | lay[L.L_LOCKED] | (mpfn & lay[L.L_WRITE])
    return n


@njit(cache=True, nogil=True, _nrt=False, inline="always")
def system_finalize_and_map(state, vma_index, src, dst, start, end, private):
    """Erase the mirror entries of pages that left the device."""
    _finalize_and_map(state, False, np.int64(vma_index), src, dst, np.int64(start), np.int64(end))


@njit(cache=True, nogil=True, _nrt=False, inline="always")
def _moved(lay, src, dst, i):
    """dmirror's cpages for MIGRATE_TO_SYS counts slots with VALID and MIGRATE
    and a destination after the pages pass."""
    if mm.mpfn_to_pfn(lay, src[i]) < 0 or (src[i] & lay[L.L_MIGRATE]) == 0:
        return 0
    return 1 if mm.mpfn_to_pfn(lay, dst[i]) >= 0 else 0


@njit(cache=True, nogil=True, _nrt=False, inline="always")
def _run_driver(state, to_device, vma_index, start, end, src, dst, private):
    """migrate_vma() with the device's own callbacks for one direction.

    Called directly rather than through callback arguments, so it stays cached.
    Returns -EINVAL, or the slots that kept VALID and MIGRATE with a destination
    after the pages pass (dmirror's cpages for MIGRATE_TO_SYS). Its scratch is
    in the state, so it runs without reference counting. When a parallel setup
    found every slot plain and named each one's device page (kernels.sweep),
    the allocation happens in the finish sweep instead (_finish_reserved).
    """
    cpages = setup_range(state, vma_index, start, end, src, dst, to_device)
    if cpages <= 0:
        return min(cpages, 0)
    start = mm.page_down(state, start)
    end = mm.page_down(state, end)
    if state.mig[L.MIG_RESERVED] != 0:
        return _copy_and_finish_reserved(state, vma_index, start, end, src, dst, private)
    _alloc_and_copy(state, to_device, src, dst, start, end, private)
    return _finish_driver(state, to_device, vma_index, start, end, src, dst)


@njit(cache=True, nogil=True, _nrt=False, inline="always")
def _prefetch_slot(state, src, dst, i, shift):
    """Start loading what finishing slot ``i`` will touch: both struct pages and
    the source's free-stack position (it is freed there). ``shift``: the
    layout's. VALID is not tested: an mpfn without a page gives frame 0 or a
    frame past the end, and a prefetch ignores the latter and cannot fault."""
    page = src[mm.ix(i)] >> shift
    mm.prefetch_page(state, page)
    prefetch_for_write(state.free_pos, page)
    mm.prefetch_page(state, dst[mm.ix(i)] >> shift)


@njit(cache=True, nogil=True, _nrt=False, inline="always")
def _finish_slot(state, to_device, vma_index, slot, addr, src, dst, i, hmm):
    """pages, finalize_and_map and finalize for slot ``i``; 1 if dmirror counts it moved."""
    pages_slot(state, vma_index, addr, src, dst, i, hmm)
    moved = _moved(state.layout, src, dst, i)
    if to_device:
        _mirror_slot(state, slot, src, dst, i)
    else:
        _unmirror_slot(state, slot, src, dst, i)
    finalize_slot(state, src, dst, i, hmm)
    return moved


@njit(cache=True, nogil=True, _nrt=False, inline="always")
def _finish_slots(state, to_device, vma_index, start, src, dst, lo, hi):
    """The serial finish sweep over slots ``[lo, hi)``; returns the moved count.

    Inlined: a call that passes the state hands over ~1.9 KB of array fields,
    and as a call on every migration it made a one-page migration 3x slower."""
    hmm = state.sys[L.SYS_PROFILE] == L.PROFILE_HMM_V25
    ps = state.sys[L.SYS_PAGE_SIZE]
    slot0 = mm.pte_slot(state, vma_index, start)
    shift = state.layout[L.L_SHIFT]
    moved = 0
    for i in range(lo, hi):
        if i + PREFETCH_AHEAD < hi:
            _prefetch_slot(state, src, dst, i + PREFETCH_AHEAD, shift)
        addr = start + i * ps
        moved += _finish_slot(state, to_device, vma_index, slot0 + i, addr, src, dst, i, hmm)
    return moved


@njit(cache=True, nogil=True, _nrt=False, inline="always")
def _plain_to_finish(state, slot, src, dst, i):
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
    if (state.page["flags"][page] & L.PLAIN_SETUP_EXCLUDED & ~L.PG_LOCKED) != 0:
        return False  # (ZONE_DEVICE among them: the source is RAM)
    if (state.page["flags"][newpage] & L.PG_ZONE_DEVICE) == 0:
        return False
    pte = state.pte[slot]
    return (
        state.page["mapping"][page] == L.MAPPING_ANON
        and state.page["refcount"][page] == 1
        and state.page["rmap"][page] == slot
        and state.pte_next[slot] == -1
        and mm.pte_kind(pte) == L.PTE_MIGRATION
        and mm.pte_pfn(pte) == page
        and state.page["refcount"][newpage] == 2
        and state.page["mapping"][newpage] == L.MAPPING_NONE
    )


@njit(cache=True, nogil=True, _nrt=False, inline="always")
def _remap_to_device_and_free(state, slot, page, newpage, dst_mpfn):
    """The end both plain finishes share: dmirror's mirror entry, the slot's
    migration entry replaced by a device entry for ``newpage``, and the RAM
    source's last reference dropped: free_frame() but for the free-stack place.
    A RAM source moves no counter in mark_free(), so threads may share ``state``."""
    at_slot = mm.ix(slot)
    state.mirror[at_slot] = _mirror_entry(state.layout, np.int64(newpage), dst_mpfn)
    write = mm.pte_write(state.pte[at_slot])
    state.pte[at_slot] = mm.make_pte(L.PTE_DEVICE, newpage, write)
    state.page["refcount"][mm.ix(page)] = 0
    mm.mark_free(state, page)


@njit(cache=True, nogil=True, _nrt=False, inline="always")
def _finish_plain_slot(state, slot, src, dst, i):
    """pages_slot() + _mirror_slot() + finalize_slot() of a plain slot, written
    as their net effect, all but the source's place on the free stack.

    For a slot _plain_to_finish() admits, the steps are:
    migrate_page_move_mapping() (refcount 1 as expected: index, mapping,
    dirty and mlocked move over), dmirror's mirror entry,
    remove_migration_ptes() (the one entry becomes a device entry for the new
    page: mapcount 1, refcount 3, the slot moves to its rmap chain), both
    pages unlocked, the device page's driver reference put (2), and the
    source's last reference dropped (putback_lru_page(): freed). One
    pgmigrate_success. The generic calls re-test every branch the plain test
    already decided; tests/test_parallel.py holds this path to the serial
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
    _remap_to_device_and_free(state, slot, page, newpage, dst[i])
    state.counters[L.C_PGMIGRATE_SUCCESS] += 1


@njit(cache=True, nogil=True, _nrt=False, inline="always")
def _finish_reserved_slot(state, slot, src, dst, i, dev_pos, ram_pos, shift):
    """_take_device_frame() at ``dev_pos`` + _finish_plain_slot() + the
    source's free at ``ram_pos``, for a slot setup named a device page for,
    written as their net effect (pgmigrate_success is counted by the caller).

    The device frame leaves its stack and ends allocated (one reference more
    than free), unlocked (trylock, then unlock), holding the source's index,
    dirty and mlocked bits, and mapped by the slot alone. Setup admitted the
    source only with mapcount 1, and a page's chain holds its mapcount
    mappings (check()), so the slot ends its chain: ``pte_next[slot]`` is
    already the -1 rmap_add() would write, and is left untouched. The writes
    _take_device_frame() and _finish_plain_slot() make twice are made once,
    and ``src``/``dst`` are VALID, so their pfns need no test: this is the
    hot loop of a large migration (``shift``: the layout's, read once per loop).
    """
    page = src[mm.ix(i)] >> shift
    newpage = dst[mm.ix(i)] >> shift
    mm.unplace_free(state, newpage, dev_pos)
    pages = state.page
    moved_flags = pages["flags"][page] & (L.PG_DIRTY | L.PG_MLOCKED)
    pages["flags"][newpage] = (pages["flags"][newpage] & L.PG_ZONE_DEVICE) | moved_flags
    pages["refcount"][newpage] += 1
    pages["mapcount"][newpage] = 1
    pages["pins"][newpage] = 0
    pages["mapping"][newpage] = L.MAPPING_ANON
    pages["index"][newpage] = pages["index"][page]
    pages["rmap"][newpage] = slot
    _remap_to_device_and_free(state, slot, page, newpage, dst[mm.ix(i)])
    mm.place_free(state, np.int64(page), ram_pos)


@njit(cache=True, nogil=True, _nrt=False)
def _finish_plain_run(state, vma_index, start, src, dst, t):
    """One thread: finish its slots until the first one that is not plain.

    A plain slot's release drops its source's last reference (putback_lru_page()
    of a page with refcount 1), which frees it; everything of that free but the
    place on the free stack is done here, the place is assigned in slot order
    afterwards (_place_plain_frees)."""
    info = state.sweep_info
    mine = with_counters(state, state.sweep_counters[t])
    slot0 = mm.pte_slot(state, vma_index, start)
    i = info[t, L.SW_FIRST]
    end = info[t, L.SW_END]
    shift = state.layout[L.L_SHIFT]
    while i < end:
        if i + PREFETCH_AHEAD < end:
            _prefetch_slot(state, src, dst, i + PREFETCH_AHEAD, shift)
        if not _plain_to_finish(state, slot0 + i, src, dst, i):
            break
        _finish_plain_slot(mine, slot0 + i, src, dst, i)
        i += 1
    info[t, L.SW_STOP] = i
    info[t, L.SW_MOVED] = i - info[t, L.SW_FIRST]


@njit(cache=True, nogil=True, _nrt=False, parallel=True)
def _finish_plain_runs(state, vma_index, start, src, dst, threads):
    for t in prange(threads):
        _finish_plain_run(state, vma_index, start, src, dst, np.int64(t))


@njit(cache=True, nogil=True, _nrt=False)
def _place_plain_run(state, src, t):
    """One thread's plain frees onto the RAM free stack, from the position
    reserved for them (SW_NEED0), in slot order."""
    info = state.sweep_info
    pos = info[t, L.SW_NEED0]
    for i in range(info[t, L.SW_FIRST], info[t, L.SW_STOP]):
        mm.place_free(state, mm.mpfn_to_pfn(state.layout, src[i]), pos)
        pos += 1


@njit(cache=True, nogil=True, _nrt=False, parallel=True)
def _place_plain_frees(state, src, threads):
    for t in prange(threads):
        _place_plain_run(state, src, np.int64(t))


@njit(cache=True, nogil=True, _nrt=False)
def _finish_parallel(state, vma_index, start, npages, src, dst, threads):
    """The to-device finish sweep over ``threads`` threads (kernels.sweep).

    Plain slots run in parallel; then, in slot order, each thread's plain
    frees get their places on the RAM free stack reserved and its remaining
    slots run serially (freeing onto the stack after them); then the plain
    frees are written into their places. Frees end up in slot order, as the
    serial sweep pushes them; nothing allocates in between."""
    used = plan_chunks(state, start, npages, threads)
    clear_thread_counts(state, used)
    _finish_plain_runs(state, vma_index, start, src, dst, used)
    merge_thread_counts(state, used, state.mig)
    moved = 0
    for t in range(used):
        info = state.sweep_info[t]
        info[L.SW_NEED0] = state.sys[L.SYS_RAM_FREE]  # RAM's stack starts at 0
        state.sys[L.SYS_RAM_FREE] += info[L.SW_STOP] - info[L.SW_FIRST]
        moved += info[L.SW_MOVED]
        moved += _finish_slots(
            state, True, vma_index, start, src, dst, info[L.SW_STOP], info[L.SW_END]
        )
    _place_plain_frees(state, src, used)
    return moved


@njit(cache=True, nogil=True, _nrt=False)
def _finish_reserved_run(state, vma_index, start, src, dst, t, top, ram_free):
    """One thread of _finish_reserved: for each of its slots, the device page's
    allocation (device_alloc_page() of the frame setup named), the plain
    finish and the source's place on the RAM free stack (_finish_reserved_slot).
    In slot order both stacks move by one a slot, so slot ``i`` pops
    ``top - i`` and pushes at ``ram_free + i``, where the serial sweep pops and
    pushes them."""
    info = state.sweep_info
    slot0 = mm.pte_slot(state, vma_index, start)
    end = info[t, L.SW_END]
    shift = state.layout[L.L_SHIFT]
    for i in range(info[t, L.SW_FIRST], end):
        if i + PREFETCH_AHEAD < end:
            _prefetch_slot(state, src, dst, i + PREFETCH_AHEAD, shift)
        _finish_reserved_slot(state, slot0 + i, src, dst, i, top - i, ram_free + i, shift)
    info[t, L.SW_STOP] = end


@njit(cache=True, nogil=True, _nrt=False, parallel=True)
def _finish_reserved_runs(state, vma_index, start, src, dst, threads, top, ram_free):
    for t in prange(threads):
        _finish_reserved_run(state, vma_index, start, src, dst, np.int64(t), top, ram_free)


@njit(cache=True, nogil=True, _nrt=False)
def _finish_reserved(state, vma_index, start, npages, src, dst):
    """The allocation and the finish sweep of a batch the setup threads took as
    all plain, naming each slot's device page (mig[MIG_RESERVED], kernels.sweep).

    Pre: setup left every slot plain, ``dst[i]`` naming the frame ``i`` below
    the device free stack's top, and only the copy ran since.
    Post: the state device_alloc_and_copy()'s allocation and the finish sweep
    leave (tests/test_parallel.py holds it to the serial steps). Returns the
    moved count, ``npages``.
    """
    threads = sweep_threads(state, npages)
    used = plan_chunks(state, start, npages, threads)
    top = mm.free_top(state, True)
    ram_free = state.sys[L.SYS_RAM_FREE]  # RAM's stack starts at 0
    # No slot moves a counter or a migrate_vma count: all are settled here.
    _finish_reserved_runs(state, vma_index, start, src, dst, used, top, ram_free)
    state.sys[L.SYS_DEV_FREE] -= npages
    state.counters[L.C_DEVICE_CALLOC] += npages
    state.counters[L.C_PGMIGRATE_SUCCESS] += npages
    state.sys[L.SYS_RAM_FREE] += npages
    return npages


@njit(cache=True, nogil=True, _nrt=False)
def _copy_reserved(state, n, private):
    """The engine batch of a reserved migration, on the descriptors the setup
    threads built (``mig[MIG_NDESC]``, kernels.sweep)."""
    if not _start_batch(state.copy_stats, n, private):
        return
    scratch = state.copy_scratch
    engine_copy_built_into(
        state.data,
        state.sys[L.SYS_PAGE_SIZE],
        state.sys[L.SYS_STORE_DATA] != 0,
        n,
        state.mig[L.MIG_NDESC],
        state.engine,
        state.copy_stats,
        scratch[L.COPY_DESC_SRC],
        scratch[L.COPY_DESC_DST],
        scratch[L.COPY_DESC_LEN],
        state.engine_load,
    )


@njit(cache=True, nogil=True, _nrt=False)
def _copy_and_finish_reserved(state, vma_index, start, end, src, dst, private):
    """_run_driver's rest after a reserving setup: copy the named pairs in one
    engine batch, on the descriptors the setup threads built, then allocate and
    finish (_finish_reserved)."""
    npages = mm.pages_in(state, end - start)
    _copy_reserved(state, npages, private)
    return _finish_reserved(state, vma_index, start, npages, src, dst)


@njit(cache=True, nogil=True, _nrt=False, inline="always")
def _finish_driver(state, to_device, vma_index, start, end, src, dst):
    """pages, finalize_and_map and finalize of the device's own pipeline, in one sweep.

    Slot by slot rather than pass by pass: each slot's steps touch only its own
    pages and mappings, so the outcome is the one the three separate loops give
    (tests/test_fused.py compares them). Large to-device batches are split over
    threads (kernels.sweep). Returns dmirror's moved count.
    """
    npages = mm.pages_in(state, end - start)
    threads = sweep_threads(state, npages) if to_device else 1
    if threads > 1:
        return _finish_parallel(state, vma_index, start, npages, src, dst, threads)
    return _finish_slots(state, to_device, vma_index, start, src, dst, 0, npages)


@njit(cache=True, nogil=True, _nrt=False, inline="always")
def migrate_vma_to_device(state, vma_index, start, end, src, dst, private):
    """migrate_vma() with the device's ops, all compiled and cached: 0 or -EINVAL."""
    v, s, e = np.int64(vma_index), np.int64(start), np.int64(end)
    return min(_migrate_vma_driver(state, True, v, s, e, src, dst, np.int64(private)), 0)


@njit(cache=True, nogil=True, _nrt=False, inline="always")
def migrate_vma_to_system(state, vma_index, start, end, src, dst, private):
    """migrate_vma() with the device-to-system routine; returns pages moved or -EINVAL."""
    v, s, e = np.int64(vma_index), np.int64(start), np.int64(end)
    return _migrate_vma_driver(state, False, v, s, e, src, dst, np.int64(private))


@njit(cache=True, nogil=True, _nrt=False)
def _migrate_vma_driver(state, to_device, vma_index, start, end, src, dst, private):
    """The one compiled body of both directions' migrate_vma_to_*()."""
    return _run_driver(state, to_device, vma_index, start, end, src, dst, private)


@njit(cache=True, nogil=True, _nrt=False)
def find_vma(st, mm_id, addr):
    """find_vma(): the live VMA of process ``mm_id`` containing ``addr``, or -1."""
    for v in range(st.sys[L.SYS_NR_VMAS]):
        if st.vma["live"][v] != 0 and st.vma["mm"][v] == mm_id:
            if st.vma["start"][v] <= addr < st.vma["end"][v]:
                return v
    return -1


@njit(cache=True, nogil=True, _nrt=False)
def _mirrored_pages(st, v, start, end):
    slot0 = mm.pte_slot(st, v, start)
    count = 0
    for k in range(mm.pages_in(st, end - start)):
        if st.mirror[slot0 + k] >= 0:
            count += 1
    return count


@njit(cache=True, nogil=True, _nrt=False)
def migrate_to_device(state, mm_id, start, end):
    """dmirror_migrate_to_device(): migrate every VMA piece of ``[start, end)``.

    Returns the number of pages of the range the device now maps, or -EINVAL
    when a piece is not covered by a readable VMA (the driver's own check).
    """
    state.copy_stats[:] = 0.0
    addr = start
    mapped = 0
    while addr < end:
        v = find_vma(state, mm_id, addr)
        if v < 0 or (state.vma["flags"][v] & L.VM_READ) == 0:
            return -L.EINVAL
        stop = min(end, state.vma["end"][v])
        n = mm.pages_in(state, stop - addr)
        src = state.range_src[:n]
        dst = state.range_dst[:n]
        state.mig[L.MIG_RESERVED] = 0  # setup leaves mig alone on -EINVAL
        migrate_vma_to_device(state, v, addr, stop, src, dst, DEV_KEEP_STATS)
        if state.mig[L.MIG_RESERVED] != 0:
            mapped += n  # _finish_reserved mirrored every slot; no need to count them
        else:
            mapped += _mirrored_pages(state, v, addr, stop)
        addr = stop
    return mapped


@njit(cache=True, nogil=True, _nrt=False, inline="always")
def migrate_to_system(state, mm_id, start, end, private):
    """dmirror_migrate_to_system(): move the range's device pages back to RAM.

    Returns the number of pages moved, or -EINVAL for a range not covered."""
    s, e = np.int64(start), np.int64(end)
    return _migrate_to_system(state, np.int64(mm_id), s, e, np.int64(private))


@njit(cache=True, nogil=True, _nrt=False)
def _migrate_to_system(state, mm_id, start, end, private):
    if (private & DEV_KEEP_STATS) == 0:
        state.copy_stats[:] = 0.0
    addr = start
    moved = 0
    while addr < end:
        v = find_vma(state, mm_id, addr)
        if v < 0:
            return -L.EINVAL
        stop = min(end, state.vma["end"][v])
        n = mm.pages_in(state, stop - addr)
        src = state.range_src[:n]
        dst = state.range_dst[:n]
        moved += max(migrate_vma_to_system(state, v, addr, stop, src, dst, private | 1), 0)
        addr = stop
    return moved


@njit(cache=True, nogil=True, _nrt=False)
def evict(state):
    """Move every device page of every process back to RAM (driver removal).

    Allocations cannot fail here (__GFP_NOFAIL). Returns the pages moved.
    """
    state.copy_stats[:] = 0.0
    moved = 0
    for v in range(state.sys[L.SYS_NR_VMAS]):
        if state.vma["live"][v] == 0:
            continue
        if (state.vma["flags"][v] & (L.VM_HUGETLB | L.VM_SPECIAL)) != 0:
            continue
        moved += migrate_to_system(
            state,
            state.vma["mm"][v],
            state.vma["start"][v],
            state.vma["end"][v],
            DEV_NOFAIL | DEV_KEEP_STATS,
        )
    return moved


@njit(cache=True, nogil=True, _nrt=False)
def _copy_one_page(st, dst_pfn, src_pfn):
    """A one-descriptor copy through the engine's cost model, without scratch arrays."""
    ps = st.sys[L.SYS_PAGE_SIZE]
    stats = st.copy_stats
    eng = st.engine
    stats[:] = 0.0
    t0 = now_ns()
    if st.sys[L.SYS_STORE_DATA] != 0:
        memcpy_bytes(st.data, dst_pfn * ps, st.data, src_pfn * ps, ps)
        stats[STAT_WALL_S] = (now_ns() - t0) * 1e-9
    stats[STAT_DESCRIPTORS] = 1.0
    stats[STAT_BYTES] = ps
    stats[STAT_CALLS] = 1.0
    model = _descriptor_ns(
        ps, eng[ENG_SETUP_NS], eng[ENG_GBPS], np.int64(eng[ENG_MODEL]), eng[ENG_CURVE_B]
    )
    stats[STAT_MODEL_S] = model * 1e-9


@njit(cache=True, nogil=True, _nrt=False)
def _fault_alloc_and_copy(state, src, dst):
    """The fault path's copy routine for its single slot (dmirror_devmem_fault_alloc_and_copy)."""
    lay = state.layout
    mpfn = src[0]
    dst[0] = L.MPFN_NONE
    spfn = mm.mpfn_to_pfn(lay, mpfn)
    if (mpfn & lay[L.L_MIGRATE]) == 0 or spfn < 0 or not mm.is_device_pfn(state, spfn):
        return
    rpfn = _system_alloc_page(state, 0)
    if rpfn < 0:
        if (mpfn & lay[L.L_DEVICE]) != 0:
            dst[0] = lay[L.L_ERROR]
        return
    _copy_one_page(state, rpfn, spfn)
    dst[0] = mm.make_mpfn(lay, rpfn) | lay[L.L_LOCKED] | (mpfn & lay[L.L_WRITE])


@njit(cache=True, nogil=True, _nrt=False)
def device_fault(state, vma_index, addr):
    """The device's CPU-fault handler (hmm_devmem_ops.fault / migrate_to_ram).

    Migrates the faulting page back to system memory with migrate_vma(). Returns
    FAULT_OK (the access retries) or FAULT_SIGBUS when the allocation failed and
    the driver wrote ``dst = MIGRATE_PFN_ERROR``; the core then restored the
    device entry, so a later retry can succeed.
    """
    counters = state.counters
    counters[L.C_DEVICE_FAULTS] += 1
    ps = state.sys[L.SYS_PAGE_SIZE]
    addr = mm.page_down(state, addr)
    src = state.fault_mpfn[0:1]
    dst = state.fault_mpfn[1:2]
    dst[0] = L.MPFN_NONE
    if migrate_vma_setup(state, vma_index, addr, addr + ps, src, dst) > 0:
        _fault_alloc_and_copy(state, src, dst)
        migrate_vma_pages(state, vma_index, addr, addr + ps, src, dst)
        system_finalize_and_map(state, vma_index, src, dst, addr, addr + ps, 0)
        migrate_vma_finalize(state, vma_index, addr, addr + ps, src, dst)
    if dst[0] == state.layout[L.L_ERROR]:
        counters[L.C_DEVICE_SIGBUS] += 1
        return L.FAULT_SIGBUS
    return L.FAULT_OK
