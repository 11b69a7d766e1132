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
    engine_copy,
    memcpy_bytes,
)
from .migrate import migrate_vma_finalize, migrate_vma_pages, migrate_vma_setup

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


@njit(cache=True, nogil=True)
def _copy_pairs(data, page_size, store_data, engine, stats, sp, dp, n, private):
    """One engine batch over the (source, destination) pairs.

    It takes arrays, not the state: a reference-counted function that takes the
    22-array state pays an incref and a decref per array on every call.
    """
    if (private & DEV_KEEP_STATS) == 0:
        stats[:] = 0.0
    if n == 0:
        return
    ds = np.empty(n, np.int64)
    dd = np.empty(n, np.int64)
    dl = np.empty(n, np.int64)
    engine_copy(data, page_size, store_data, sp, dp, n, engine, stats, ds, dd, dl)


@njit(cache=True, nogil=True)
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


@njit(cache=True, nogil=True)
def _alloc_and_copy(state, to_device, src, dst, start, end, private):
    """Allocate destinations for one direction, then copy them in one engine batch."""
    npages = (end - start) // state.sys[L.SYS_PAGE_SIZE]
    sp = np.empty(npages, np.int64)
    dp = np.empty(npages, np.int64)
    n = _alloc_pairs(state, to_device, src, dst, npages, private, sp, dp)
    _copy_pairs(
        state.data,
        state.sys[L.SYS_PAGE_SIZE],
        state.sys[L.SYS_STORE_DATA] != 0,
        state.engine,
        state.copy_stats,
        sp,
        dp,
        n,
        private,
    )


@njit(cache=True, nogil=True, _nrt=False)
def _alloc_pairs(state, to_device, src, dst, npages, private, sp, dp):
    """Allocate the destinations of one direction; returns the copy pairs."""
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


@njit(cache=True, nogil=True, _nrt=False)
def device_finalize_and_map(state, vma_index, src, dst, start, end, private):
    """dmirror_migrate_finalize_and_map() - record migrated pages in the mirror.

    Post: every slot that kept MIGRATE with a device destination is mapped in
    the device's mirror page table, writable when ``dst`` has WRITE.
    """
    lay = state.layout
    npages = (end - start) // state.sys[L.SYS_PAGE_SIZE]
    slot0 = mm.pte_slot(state, vma_index, start)
    for i in range(npages):
        dpfn = mm.mpfn_to_pfn(lay, dst[i])
        if (src[i] & lay[L.L_MIGRATE]) == 0 or dpfn < 0 or not mm.is_device_pfn(state, dpfn):
            continue
        state.mirror[slot0 + i] = (dpfn << 1) | (1 if (dst[i] & lay[L.L_WRITE]) != 0 else 0)


@njit(cache=True, nogil=True)
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
    lay = state.layout
    npages = (end - start) // state.sys[L.SYS_PAGE_SIZE]
    slot0 = mm.pte_slot(state, vma_index, start)
    for i in range(npages):
        spfn = mm.mpfn_to_pfn(lay, src[i])
        moved = (src[i] & lay[L.L_MIGRATE]) != 0 and mm.mpfn_to_pfn(lay, dst[i]) >= 0
        if moved and spfn >= 0 and mm.is_device_pfn(state, spfn):
            state.mirror[slot0 + i] = -1


@njit(cache=True, nogil=True, _nrt=False)
def _count_moved(lay, src, dst, npages):
    """dmirror's cpages for MIGRATE_TO_SYS: slots with VALID and MIGRATE after pages."""
    moved = 0
    for i in range(npages):
        if mm.mpfn_to_pfn(lay, src[i]) >= 0 and (src[i] & lay[L.L_MIGRATE]) != 0:
            if mm.mpfn_to_pfn(lay, dst[i]) >= 0:
                moved += 1
    return moved


@njit(cache=True, nogil=True)
def _run_driver(state, to_device, vma_index, start, end, src, dst, private):
    """migrate_vma() with the device's own callbacks for one direction.

    Called directly rather than through callback arguments, so it stays cached.
    Returns -EINVAL, or the slots that kept VALID and MIGRATE with a destination
    after the pages pass (dmirror's cpages for MIGRATE_TO_SYS).

    It spells out _alloc_and_copy() rather than calling it: every
    reference-counted function that receives the state pays an incref and a
    decref per state array, and this keeps that to one per migration
    (a 16-page migration went from 2.4 to 1.7 us).
    """
    cpages = migrate_vma_setup(state, vma_index, start, end, src, dst)
    if cpages <= 0:
        return min(cpages, 0)
    ps = state.sys[L.SYS_PAGE_SIZE]
    start -= start % ps
    end -= end % ps
    npages = (end - start) // ps
    sp = np.empty(npages, np.int64)
    dp = np.empty(npages, np.int64)
    n = _alloc_pairs(state, to_device, src, dst, npages, private, sp, dp)
    _copy_pairs(
        state.data,
        ps,
        state.sys[L.SYS_STORE_DATA] != 0,
        state.engine,
        state.copy_stats,
        sp,
        dp,
        n,
        private,
    )
    return _finish_driver(state, to_device, vma_index, start, end, src, dst, private)


@njit(cache=True, nogil=True, _nrt=False)
def _finish_driver(state, to_device, vma_index, start, end, src, dst, private):
    """pages, finalize_and_map and finalize of the device's own pipeline."""
    migrate_vma_pages(state, vma_index, start, end, src, dst)
    moved = _count_moved(state.layout, src, dst, (end - start) // state.sys[L.SYS_PAGE_SIZE])
    if to_device:
        device_finalize_and_map(state, vma_index, src, dst, start, end, private)
    else:
        system_finalize_and_map(state, vma_index, src, dst, start, end, private)
    migrate_vma_finalize(state, vma_index, start, end, src, dst)
    return moved


@njit(cache=True, nogil=True)
def migrate_vma_to_device(state, vma_index, start, end, src, dst, private):
    """migrate_vma() with the device's ops, all compiled and cached: 0 or -EINVAL."""
    return min(_run_driver(state, True, vma_index, start, end, src, dst, private), 0)


@njit(cache=True, nogil=True)
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
    for k in range((end - start) // st.sys[L.SYS_PAGE_SIZE]):
        if st.mirror[slot0 + k] >= 0:
            count += 1
    return count


@njit(cache=True, nogil=True)
def migrate_to_device(state, mm_id, start, end):
    """dmirror_migrate_to_device(): migrate every VMA piece of ``[start, end)``.

    Returns the number of pages of the range the device now maps, or -EINVAL
    when a piece is not covered by a readable VMA (the driver's own check).
    """
    state.copy_stats[:] = 0.0
    ps = state.sys[L.SYS_PAGE_SIZE]
    addr = start
    mapped = 0
    while addr < end:
        v = find_vma(state, mm_id, addr)
        if v < 0 or (state.vma["flags"][v] & L.VM_READ) == 0:
            return -L.EINVAL
        stop = min(end, state.vma["end"][v])
        n = (stop - addr) // ps
        src = np.zeros(n, np.uint64)
        dst = np.zeros(n, np.uint64)
        migrate_vma_to_device(state, v, addr, stop, src, dst, DEV_KEEP_STATS)
        mapped += _mirrored_pages(state, v, addr, stop)
        addr = stop
    return mapped


@njit(cache=True, nogil=True)
def migrate_to_system(state, mm_id, start, end, private):
    """dmirror_migrate_to_system(): move the range's device pages back to RAM.

    Returns the number of pages moved, or -EINVAL for a range not covered."""
    if (private & DEV_KEEP_STATS) == 0:
        state.copy_stats[:] = 0.0
    ps = state.sys[L.SYS_PAGE_SIZE]
    addr = start
    moved = 0
    while addr < end:
        v = find_vma(state, mm_id, addr)
        if v < 0:
            return -L.EINVAL
        stop = min(end, state.vma["end"][v])
        n = (stop - addr) // ps
        src = np.zeros(n, np.uint64)
        dst = np.zeros(n, np.uint64)
        moved += max(migrate_vma_to_system(state, v, addr, stop, src, dst, private | 1), 0)
        addr = stop
    return moved


@njit(cache=True, nogil=True)
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
    addr -= addr % ps
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
