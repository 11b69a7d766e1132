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
from numba import njit

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
    engine_copy_into,
    memcpy_bytes,
)
from .finalize import finalize_slot
from .migrate import migrate_vma_finalize, migrate_vma_pages, migrate_vma_setup, setup_range
from .pages import pages_slot
from .prefetch import PREFETCH_AHEAD, prefetch_for_write

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


@njit(cache=True, nogil=True, _nrt=False)
def _copy_pairs(state, n, private):
    """One engine batch over the first ``n`` pairs of ``state.copy_scratch``."""
    stats = state.copy_stats
    if (private & DEV_KEEP_STATS) == 0:
        stats[:] = 0.0
    if n == 0:
        return
    scr = state.copy_scratch
    engine_copy_into(
        state.data,
        state.sys[L.SYS_PAGE_SIZE],
        state.sys[L.SYS_STORE_DATA] != 0,
        scr[L.COPY_SRC],
        scr[L.COPY_DST],
        n,
        state.engine,
        stats,
        scr[L.COPY_DESC_SRC],
        scr[L.COPY_DESC_DST],
        scr[L.COPY_DESC_LEN],
        state.engine_load,
    )


@njit(cache=True, nogil=True, _nrt=False)
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
    _alloc_and_copy(state, True, src, dst, start, end, private)


@njit(cache=True, nogil=True, _nrt=False, inline="always")
def _alloc_and_copy(state, to_device, src, dst, start, end, private):
    """Allocate destinations for one direction, then copy them in one engine batch."""
    npages = mm.pages_in(state, end - start)
    _copy_pairs(state, _alloc_pairs(state, to_device, src, dst, npages, private), private)


@njit(cache=True, nogil=True, _nrt=False, inline="always")
def _alloc_pairs(state, to_device, src, dst, npages, private):
    """Allocate the destinations of one direction; returns how many copy pairs
    it left in ``state.copy_scratch``."""
    sp = state.copy_scratch[L.COPY_SRC]
    dp = state.copy_scratch[L.COPY_DST]
    if to_device:
        return _alloc_device_pages(state, src, dst, npages, private, sp, dp)
    return _alloc_system_pages(state, src, dst, npages, private, sp, dp)


@njit(cache=True, nogil=True, _nrt=False)
def _alloc_device_pages(state, src, dst, npages, private, sp, dp):
    """The per-page part of device_alloc_and_copy(); returns the copy pairs."""
    lay = state.layout
    n = 0
    for i in range(npages):
        mpfn = src[i]
        dst[i] = L.MPFN_NONE  # the seed's collect leaves dst alone, so a driver writes every slot
        if (mpfn & lay[L.L_MIGRATE]) == 0:
            continue
        spfn = mm.mpfn_to_pfn(lay, mpfn)
        if spfn >= 0 and mm.is_device_pfn(state, spfn):
            continue  # device to device would need a device-side copy
        dpfn = device_alloc_page(state, private)
        if dpfn < 0:
            continue
        if spfn >= 0:
            sp[n] = spfn
            dp[n] = dpfn
            n += 1
        else:
            mm.zero_frame(state, dpfn)
        dst[i] = mm.make_mpfn(lay, dpfn) | lay[L.L_LOCKED] | (mpfn & lay[L.L_WRITE])
    return n


@njit(cache=True, nogil=True, _nrt=False, inline="always")
def _mirror_slot(state, slot, src, dst, i):
    """dmirror_migrate_finalize_and_map() for slot ``i``: map a page that moved
    to the device in the mirror page table."""
    lay = state.layout
    dpfn = mm.mpfn_to_pfn(lay, dst[i])
    if (src[i] & lay[L.L_MIGRATE]) == 0 or dpfn < 0 or not mm.is_device_pfn(state, dpfn):
        return
    state.mirror[slot] = (dpfn << 1) | (1 if (dst[i] & lay[L.L_WRITE]) != 0 else 0)


@njit(cache=True, nogil=True, _nrt=False, inline="always")
def _unmirror_slot(state, slot, src, dst, i):
    """The device-to-system finalize_and_map for slot ``i``: forget a page that
    left the device."""
    lay = state.layout
    spfn = mm.mpfn_to_pfn(lay, src[i])
    moved = (src[i] & lay[L.L_MIGRATE]) != 0 and mm.mpfn_to_pfn(lay, dst[i]) >= 0
    if moved and spfn >= 0 and mm.is_device_pfn(state, spfn):
        state.mirror[slot] = -1


@njit(cache=True, nogil=True, _nrt=False)
def device_finalize_and_map(state, vma_index, src, dst, start, end, private):
    """dmirror_migrate_finalize_and_map() - record migrated pages in the mirror.

    Post: every slot that kept MIGRATE with a device destination is mapped in
    the device's mirror page table, writable when ``dst`` has WRITE.
    """
    npages = mm.pages_in(state, end - start)
    slot0 = mm.pte_slot(state, vma_index, start)
    for i in range(npages):
        _mirror_slot(state, slot0 + i, src, dst, i)


@njit(cache=True, nogil=True, _nrt=False)
def system_alloc_and_copy(state, vma_index, src, dst, start, end, private):
    """The device-to-system copy routine (fault path, migrate_to_system, evict).

    Post: each MIGRATE slot holding a device page gets a locked system page with
    the data copied and ``dst = pfn | VALID | LOCKED`` (+ WRITE). If the
    allocation fails and the slot carries MIGRATE_PFN_DEVICE (hmm-v25), the
    driver writes ``dst = MIGRATE_PFN_ERROR``, as migrate.h requires of it.
    """
    _alloc_and_copy(state, False, src, dst, start, end, private)


@njit(cache=True, nogil=True, _nrt=False)
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


@njit(cache=True, nogil=True, _nrt=False)
def system_finalize_and_map(state, vma_index, src, dst, start, end, private):
    """Erase the mirror entries of pages that left the device."""
    npages = mm.pages_in(state, end - start)
    slot0 = mm.pte_slot(state, vma_index, start)
    for i in range(npages):
        _unmirror_slot(state, slot0 + i, src, dst, i)


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
    in the state, so it runs without reference counting.
    """
    cpages = setup_range(state, vma_index, start, end, src, dst)
    if cpages <= 0:
        return min(cpages, 0)
    start = mm.page_down(state, start)
    end = mm.page_down(state, end)
    _alloc_and_copy(state, to_device, src, dst, start, end, private)
    return _finish_driver(state, to_device, vma_index, start, end, src, dst)


@njit(cache=True, nogil=True, _nrt=False, inline="always")
def _prefetch_slot(state, src, dst, i):
    """Start loading what finishing slot ``i`` will touch: both struct pages and
    the source's free-stack position (it is freed there)."""
    lay = state.layout
    page = mm.mpfn_to_pfn(lay, src[i])
    if page >= 0:
        mm.prefetch_page(state, page)
        prefetch_for_write(state.free_pos, page)
    newpage = mm.mpfn_to_pfn(lay, dst[i])
    if newpage >= 0:
        mm.prefetch_page(state, newpage)


@njit(cache=True, nogil=True, _nrt=False, inline="always")
def _finish_driver(state, to_device, vma_index, start, end, src, dst):
    """pages, finalize_and_map and finalize of the device's own pipeline, in one sweep.

    Slot by slot rather than pass by pass: each slot's steps touch only its own
    pages and mappings, so the outcome is the one the three separate loops give
    (tests/test_fused.py compares them). Returns dmirror's moved count.
    """
    lay = state.layout
    hmm = state.sys[L.SYS_PROFILE] == L.PROFILE_HMM_V25
    ps = state.sys[L.SYS_PAGE_SIZE]
    slot0 = mm.pte_slot(state, vma_index, start)
    moved = 0
    npages = mm.pages_in(state, end - start)
    for i in range(npages):
        if i + PREFETCH_AHEAD < npages:
            _prefetch_slot(state, src, dst, i + PREFETCH_AHEAD)
        pages_slot(state, vma_index, start + i * ps, src, dst, i, hmm)
        moved += _moved(lay, src, dst, i)
        if to_device:
            _mirror_slot(state, slot0 + i, src, dst, i)
        else:
            _unmirror_slot(state, slot0 + i, src, dst, i)
        finalize_slot(state, src, dst, i, hmm)
    return moved


@njit(cache=True, nogil=True, _nrt=False)
def migrate_vma_to_device(state, vma_index, start, end, src, dst, private):
    """migrate_vma() with the device's ops, all compiled and cached: 0 or -EINVAL."""
    return min(_run_driver(state, True, vma_index, start, end, src, dst, private), 0)


@njit(cache=True, nogil=True, _nrt=False)
def migrate_vma_to_system(state, vma_index, start, end, src, dst, private):
    """migrate_vma() with the device-to-system routine; returns pages moved or -EINVAL."""
    return _run_driver(state, False, vma_index, start, end, src, dst, private)


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
        migrate_vma_to_device(state, v, addr, stop, src, dst, DEV_KEEP_STATS)
        mapped += _mirrored_pages(state, v, addr, stop)
        addr = stop
    return mapped


@njit(cache=True, nogil=True, _nrt=False)
def migrate_to_system(state, mm_id, start, end, private):
    """dmirror_migrate_to_system(): move the range's device pages back to RAM.

    Returns the number of pages moved, or -EINVAL for a range not covered."""
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
