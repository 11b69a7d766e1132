"""The device's CPU-fault handler (hmm_devmem_ops.fault / migrate_to_ram).

A CPU access to a device-private entry migrates the one page back to system
memory through migrate_vma(), with a one-page copy through the engine's model.
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
from .alloc import alloc_system_pages, copy_engine_batch, system_alloc_page
from .common import dev_private
from .mirror import system_finalize_and_map


@internal
def copy_one_page(st, dst_pfn, src_pfn):
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
    model = descriptor_ns(
        ps, eng[ENG_SETUP_NS], eng[ENG_GBPS], np.int64(eng[ENG_MODEL]), eng[ENG_CURVE_B]
    )
    stats[STAT_MODEL_S] = model * 1e-9


@internal
def fault_alloc_and_copy(state, src, dst, private):
    """The fault path's copy routine for its single slot (dmirror_devmem_fault_alloc_and_copy)."""
    lay = state.layout
    mpfn = src[0]
    dst[0] = L.MPFN_NONE
    spfn = mm.mpfn_to_pfn(lay, mpfn)
    if (mpfn & lay[L.L_MIGRATE]) == 0 or spfn < 0 or not mm.is_device_pfn(state, spfn):
        return
    rpfn = system_alloc_page(state, private)
    if rpfn < 0:
        if (mpfn & lay[L.L_DEVICE]) != 0:
            dst[0] = lay[L.L_ERROR]  # 4.14: the core leaves it, the fault SIGBUSes
        return
    copy_one_page(state, rpfn, spfn)
    dst[0] = mm.make_mpfn(lay, rpfn) | lay[L.L_LOCKED] | (mpfn & lay[L.L_WRITE])


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
    fails (dmirror's VM_FAULT_OOM; a SIGBUS here, as in 4.14).
    """
    if not in_vma(state, vma_index, addr):
        return L.FAULT_SEGV
    counters = state.counters
    ps = state.sys[L.SYS_PAGE_SIZE]
    addr = mm.page_down(state, addr)
    # The handler of the device whose page the entry maps (its pgmap's ops).
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
    src = state.fault_mpfn[0:1]
    dst = state.fault_mpfn[1:2]
    dst[0] = L.MPFN_NONE
    # The handler runs on the faulting CPU: prepare's local lru_add_drain() and
    # finalize's putbacks use that CPU's LRU-add batch, not the driver's.
    cpu = state.sys[L.SYS_CPU]
    state.sys[L.SYS_CPU] = L.CPU_USER
    flags = np.int64(L.MIGRATE_VMA_SELECT_DEVICE_PRIVATE)
    fault_pfn = page if holds_page else np.int64(-1)
    owner = state.dev[d, L.DEV_OWNER]
    collected = setup_range_flags(
        state, vma_index, addr, addr + ps, src, dst, flags, owner, fault_pfn
    )
    lay = state.layout
    failed = False
    if collected > 0:
        fault_alloc_and_copy(state, src, dst, dev_private(d, 0))
        # The allocation failed: 4.14's driver wrote MIGRATE_PFN_ERROR, modern's
        # left dst 0; either way the core restores the device entry.
        failed = (src[0] & lay[L.L_MIGRATE]) != 0 and mm.mpfn_to_pfn(lay, dst[0]) < 0
        migrate_vma_pages(state, vma_index, addr, addr + ps, src, dst)
        system_finalize_and_map(state, vma_index, src, dst, addr, addr + ps, 0)
        migrate_vma_finalize(state, vma_index, addr, addr + ps, src, dst)
    state.sys[L.SYS_CPU] = cpu
    if holds_page:
        mm.unlock_page(state, page)
        mm.put_page(state, page)
    if failed:
        counters[L.C_DEVICE_SIGBUS] += 1
        state.dev[d, L.DEV_SIGBUS] += 1
        return L.FAULT_SIGBUS
    return L.FAULT_OK


@internal
def device_fault_huge(state, vma_index, addr):
    """do_huge_pmd_device_private() + dmirror_devmem_fault() for a folio (modern).

    A CPU access to a device-private PMD entry: the folio is trylocked (else
    the access retries) and referenced, and the handler migrates the whole
    2 MiB folio back with SELECT_DEVICE_PRIVATE|SELECT_COMPOUND, its own owner
    and the head as ``fault_page``, into a system THP, or 512 base pages when
    no THP can be had (dmirror's fallback; the core splits the device folio).
    Returns FAULT_OK (the access retries), or FAULT_SIGBUS when not even base
    pages could be had (dmirror's VM_FAULT_OOM), the device entry restored.
    """
    ext = mm.pmd_extent(state)
    first = addr - addr % ext
    head = mm.pte_pfn(state.pmd[mm.pmd_slot(state, vma_index, addr)])
    d = max(mm.device_of(state, head), 0)
    if not mm.trylock_page(state, head):
        return L.FAULT_OK
    mm.get_page(state, head)
    state.counters[L.C_DEVICE_FAULTS] += 1
    state.dev[d, L.DEV_FAULTS] += 1
    half = L.HPAGE_PMD_NR
    src = state.fault_mpfn[0:half]
    dst = state.fault_mpfn[half : 2 * half]
    dst[:] = L.MPFN_NONE
    cpu = state.sys[L.SYS_CPU]
    state.sys[L.SYS_CPU] = L.CPU_USER
    flags = np.int64(L.MIGRATE_VMA_SELECT_DEVICE_PRIVATE | L.MIGRATE_VMA_SELECT_COMPOUND)
    owner = state.dev[d, L.DEV_OWNER]
    end = first + ext
    collected = setup_range_flags(state, vma_index, first, end, src, dst, flags, owner, head)
    lay = state.layout
    failed = False
    if collected > 0:
        private = dev_private(d, 0)
        sp = state.copy_scratch[I.COPY_SRC]
        dp = state.copy_scratch[I.COPY_DST]
        pairs = alloc_system_pages(state, src, dst, half, private, sp, dp)
        copy_engine_batch(state, pairs, private)
        for i in range(half):
            if (src[i] & lay[L.L_MIGRATE]) != 0 and mm.mpfn_to_pfn(lay, dst[i]) < 0:
                failed = True
        migrate_vma_pages(state, vma_index, first, end, src, dst)
        system_finalize_and_map(state, vma_index, src, dst, first, end, 0)
        migrate_vma_finalize(state, vma_index, first, end, src, dst)
    state.sys[L.SYS_CPU] = cpu
    mm.unlock_page(state, head)
    mm.put_page(state, head)
    if failed:
        state.counters[L.C_DEVICE_SIGBUS] += 1
        state.dev[d, L.DEV_SIGBUS] += 1
        return L.FAULT_SIGBUS
    return L.FAULT_OK
