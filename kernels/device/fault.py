"""The device's CPU-fault handler (hmm_devmem_ops.fault / migrate_to_ram).

A CPU access to a device-private entry migrates the page back to system memory
through migrate_vma(), a device-private PMD entry (modern) its whole folio; the
copy goes through the engine's cost model one run at a time.
"""

import numpy as np

from .. import _indices as I
from .. import layout as L
from .. import mm
from .._jit import internal, kernel
from .._llvm import memcpy_bytes, now_ns
from ..args import in_vma
from ..copy import (
    ENG_CURVE_B,
    ENG_GBPS,
    ENG_MODEL,
    ENG_SETUP_NS,
    STAT_BYTES,
    STAT_CALLS,
    STAT_DESCRIPTORS,
    STAT_MODEL_S,
    STAT_WALL_S,
    descriptor_ns,
)
from ..migrate import migrate_vma_finalize, migrate_vma_pages, setup_range_flags
from .alloc import alloc_system_pages
from .common import dev_private
from .mirror import system_finalize_and_map


@internal
def _copy_run(st, dst_pfn, src_pfn, npages):
    """One descriptor of ``npages`` contiguous pages, added to the copy stats.

    The fault path copies without the engine's batch machinery (its descriptor
    scratch and parallel copy): every CPU access links the fault path, and
    the batch copy there would compile into each of them."""
    ps = st.sys[L.SYS_PAGE_SIZE]
    stats = st.copy_stats
    eng = st.engine
    t0 = now_ns()
    if st.sys[L.SYS_STORE_DATA] != 0:
        memcpy_bytes(st.data, dst_pfn * ps, st.data, src_pfn * ps, npages * ps)
        stats[STAT_WALL_S] += (now_ns() - t0) * 1e-9
    stats[STAT_DESCRIPTORS] += 1.0
    stats[STAT_BYTES] += npages * ps
    stats[STAT_CALLS] = 1.0
    model = descriptor_ns(
        npages * ps, eng[ENG_SETUP_NS], eng[ENG_GBPS], np.int64(eng[ENG_MODEL]), eng[ENG_CURVE_B]
    )
    stats[STAT_MODEL_S] += model * 1e-9


@internal
def copy_runs(st, sp, dp, n):
    """Copy ``n`` (source, destination) pairs, one descriptor per contiguous run
    (a folio's 512 pages are one)."""
    st.copy_stats[:] = 0.0
    k = 0
    while k < n:
        run = 1
        while k + run < n and sp[k + run] == sp[k] + run and dp[k + run] == dp[k] + run:
            run += 1
        _copy_run(st, dp[k], sp[k], run)
        k += run


@kernel(inline=True)
def device_fault(state, vma_index, addr):
    """The device's CPU-fault handler (hmm_devmem_ops.fault / migrate_to_ram).

    Migrates the faulting page back to system memory with migrate_vma(). Returns
    FAULT_OK (the access retries) or FAULT_SIGBUS when the allocation failed and
    the driver wrote ``dst = MIGRATE_PFN_ERROR``; the core then restored the
    device entry, so a later retry can succeed. FAULT_SEGV, nothing done, when
    ``vma_index`` is no live VMA or ``addr`` lies outside it.

    modern: do_swap_page() takes a reference on the device page (v6.1,
    16ce101db85d) and its lock (v6.15, 1afaeb8293c9; a page locked elsewhere
    makes the access wait and retry: FAULT_OK here), and dmirror_devmem_fault()
    runs the split API with SELECT_DEVICE_PRIVATE, its own owner and the page
    as ``fault_page``; a failed allocation leaves ``dst`` 0 and the fault
    fails (dmirror's VM_FAULT_OOM; a SIGBUS here, as in 4.14). A device-private
    PMD entry (B_DEVICE_THP) is do_huge_pmd_device_private(): the folio's head
    is the fault page, and dmirror migrates the whole 2 MiB folio back with
    SELECT_COMPOUND into a system THP, or 512 base pages when no THP can be
    had (the core then splits the device folio).
    """
    if not in_vma(state, vma_index, addr):
        return L.FAULT_SEGV
    counters = state.counters
    ps = state.sys[L.SYS_PAGE_SIZE]
    addr = mm.page_down(state, addr)
    # The handler of the device whose page the entry maps (its pgmap's ops).
    pmd = state.pmd[mm.pmd_slot(state, vma_index, addr)]
    huge = mm.pmd_kind(pmd) == L.PMD_DEVICE
    flags = np.int64(L.MIGRATE_VMA_SELECT_DEVICE_PRIVATE)
    npages = np.int64(1)
    if huge:
        flags |= L.MIGRATE_VMA_SELECT_COMPOUND
        npages = np.int64(L.HPAGE_PMD_NR)
        addr -= addr % mm.pmd_extent(state)
        page = mm.pte_pfn(pmd)
    else:
        page = mm.pte_pfn(state.pte[mm.pte_slot(state, vma_index, addr)])
    d = max(mm.device_of(state, page), 0)
    holds_page = mm.behaves(state, L.B_FAULT_PAGE)
    if holds_page:
        mm.get_page(state, page)
        if not mm.trylock_page(state, page):
            mm.put_page(state, page)
            return L.FAULT_OK
    counters[L.C_DEVICE_FAULTS] += 1
    state.dev[d, L.DEV_FAULTS] += 1
    src = state.fault_mpfn[0:npages]
    dst = state.fault_mpfn[L.HPAGE_PMD_NR : L.HPAGE_PMD_NR + npages]
    dst[:] = L.MPFN_NONE
    # The handler runs on the faulting CPU: prepare's local lru_add_drain() and
    # finalize's putbacks use that CPU's LRU-add batch, not the driver's.
    cpu = state.sys[L.SYS_CPU]
    state.sys[L.SYS_CPU] = L.CPU_USER
    fault_pfn = page if holds_page else np.int64(-1)
    owner = state.dev[d, L.DEV_OWNER]
    end = addr + npages * ps
    collected = setup_range_flags(state, vma_index, addr, end, src, dst, flags, owner, fault_pfn)
    lay = state.layout
    failed = False
    if collected > 0:
        # dmirror_devmem_fault_alloc_and_copy(): system pages (a THP for a
        # folio), copied without the engine's batch (see _copy_run())
        sp = state.copy_scratch[I.COPY_SRC]
        dp = state.copy_scratch[I.COPY_DST]
        pairs = alloc_system_pages(state, src, dst, npages, dev_private(d, 0), sp, dp)
        copy_runs(state, sp, dp, pairs)
        # The allocation failed: 4.14's driver wrote MIGRATE_PFN_ERROR, modern's
        # left dst 0; either way the core restores the device entry.
        for i in range(npages):
            if (src[i] & lay[L.L_MIGRATE]) != 0 and mm.mpfn_to_pfn(lay, dst[i]) < 0:
                failed = True
        migrate_vma_pages(state, vma_index, addr, end, src, dst)
        system_finalize_and_map(state, vma_index, src, dst, addr, end, 0)
        migrate_vma_finalize(state, vma_index, addr, end, src, dst)
    state.sys[L.SYS_CPU] = cpu
    if holds_page:
        mm.unlock_page(state, page)
        mm.put_page(state, page)
    if failed:
        counters[L.C_DEVICE_SIGBUS] += 1
        state.dev[d, L.DEV_SIGBUS] += 1
        return L.FAULT_SIGBUS
    return L.FAULT_OK
