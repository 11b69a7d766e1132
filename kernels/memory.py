"""The CPU side of the machine (mm/memory.c): faults, loads and stores.

A CPU access walks the PMD and PTE of its address and faults what it needs:
anonymous read faults map the zero page (the huge zero page in a THP VMA),
write faults allocate, break COW or reuse; a device-private entry calls the
device's fault handler, which migrates the page back with migrate_vma().
fork (kernels.fork) and swap-out (kernels.swap) live next door. Every function
here runs compiled; the Python layer only validates.
"""

import numpy as np

from . import layout as L
from . import mm
from ._jit import internal, kernel
from ._llvm import memcpy_bytes
from .args import in_vma, range_in_vma, valid_vma
from .device.fault import device_fault
from .filemap import find_or_read_page
from .huge_memory import split_huge_page, split_huge_pmd_zero
from .rmap import restore_exclusive_pte
from .swapfile import swap_free

_FAULT_RETRIES = 4


# --------------------------------------------------------------------- new pages
@internal
def _new_anon_page(st, v, addr):
    """A zeroed anonymous page for ``addr``, in the user CPU's LRU-add batch."""
    pfn = mm.alloc_frame(st, L.RAM_POOL)
    if pfn < 0:
        return -1
    mm.zero_frame(st, pfn)
    st.page["mapping"][pfn] = L.MAPPING_ANON
    st.page["index"][pfn] = addr // st.sys[L.SYS_PAGE_SIZE]
    if (st.vma["flags"][v] & L.VM_LOCKED) != 0:
        mm.set_flag(st, pfn, L.PG_MLOCKED)
    mm.lru_cache_add(st, L.CPU_USER, pfn)
    # The allocation reference becomes the mapping's: map_new_page() takes one more.
    st.page["refcount"][pfn] -= 1
    return pfn


@internal(inline=True)
def _copy_frame(st, dst_pfn, src_pfn, npages):
    ps = st.sys[L.SYS_PAGE_SIZE]
    if st.sys[L.SYS_STORE_DATA] != 0:
        memcpy_bytes(st.data, dst_pfn * ps, st.data, src_pfn * ps, npages * ps)


# _fault_pmd() / _fault_pte(): a device-private entry; handle_mm_fault() calls the device
_DEVICE_ENTRY = 99


# --------------------------------------------------------------------- PMD level
@internal
def _thp_extent(st, v, addr):
    """First address of addr's 2 MiB extent if it lies wholly inside a THP VMA."""
    if (st.vma["flags"][v] & L.VM_HUGEPAGE) == 0 or st.vma["kind"][v] != L.VMA_ANON:
        return -1
    ext = mm.pmd_extent(st)
    first = addr - addr % ext
    if first < st.vma["start"][v] or first + ext > st.vma["end"][v]:
        return -1
    return first


@internal
def _alloc_filled_thp(st, first, src_head):
    """A new anonymous THP for the extent at ``first``: zeroed, or a copy of src_head."""
    head = mm.alloc_thp(st)
    if head < 0:
        return -1
    if src_head >= 0:
        _copy_frame(st, head, src_head, L.HPAGE_PMD_NR)
    elif st.sys[L.SYS_STORE_DATA] != 0:
        ps = st.sys[L.SYS_PAGE_SIZE]
        st.data[head * ps : (head + L.HPAGE_PMD_NR) * ps] = 0
    st.page["mapping"][head] = L.MAPPING_ANON
    st.page["index"][head] = first // st.sys[L.SYS_PAGE_SIZE]
    mm.set_flag(st, head, L.PG_LRU | L.PG_DIRTY)
    return head


@internal
def _pmd_map_thp(st, v, first, pmd_i, head):
    """page_add_new_anon_rmap(page, compound) + set_pmd_at(): map ``head`` writable."""
    st.page["mapcount"][head] = 1
    mm.rmap_add(st, head, mm.pte_slot(st, v, first))
    st.pmd[pmd_i] = mm.make_pmd(L.PMD_THP, head, True)


@internal
def _map_new_thp(st, v, first, pmd_i):
    """do_huge_pmd_anonymous_page(): a zeroed THP, PMD-mapped writable; head or -1."""
    head = _alloc_filled_thp(st, first, -1)
    if head >= 0:
        _pmd_map_thp(st, v, first, pmd_i, head)
    return head


@internal
def _unmirror_extent(st, v, first):
    """The mmu-notifier invalidation of a PMD mapping replaced in this VMA: every
    device's mirror forgets the extent's pages (a device may have read them)."""
    mm.invalidate_mirrors(st, mm.pte_slot(st, v, first), L.HPAGE_PMD_NR)


@internal
def _unmap_shared_thp(st, v, first, head):
    """page_remove_rmap(page, true) + put_page(page) for this VMA's PMD mapping.

    Called before the slot is linked into another chain: a slot has one chain
    link (pte_next), so linking it first would cut the THP's chain after it and
    lose the other processes' mappings."""
    st.page["mapcount"][head] -= 1
    mm.rmap_del(st, head, mm.pte_slot(st, v, first))
    _unmirror_extent(st, v, first)
    mm.put_page(st, head)


@internal
def _wp_huge_pmd_fallback(st, v, first, pmd_i, head):
    """do_huge_pmd_wp_page_fallback() (4.14): no THP was free, so copy the THP into
    HPAGE_PMD_NR order-0 pages and map them by writable PTEs in this VMA; the other
    processes keep the THP. False, with nothing changed, when the pages cannot all
    be had (the kernel allocates them all first and frees them on failure)."""
    if mm.pool_free_pages(st, L.RAM_POOL) < L.HPAGE_PMD_NR:
        return False
    ps = st.sys[L.SYS_PAGE_SIZE]
    slot0 = mm.pte_slot(st, v, first)
    _unmap_shared_thp(st, v, first, head)  # the head keeps its other references
    st.pmd[pmd_i] = L.PMD_TABLE  # pmd_populate() of the deposited page table
    for j in range(L.HPAGE_PMD_NR):
        pfn = _new_anon_page(st, v, first + j * ps)
        _copy_frame(st, pfn, head + j, 1)
        mm.map_new_page(st, slot0 + j, pfn, True, False)
    return True


@internal
def _wp_huge_pmd(st, v, first, pmd_i):
    """do_huge_pmd_wp_page() (mm/huge_memory.c, 4.14): a write to a read-only THP.

    Mapped once: reuse it (make the PMD writable). Shared (fork): copy the whole
    THP into a new THP and PMD-map that; with no THP free,
    do_huge_pmd_wp_page_fallback() copies it into 512 order-0 pages mapped by
    PTEs. When those cannot be had either, 4.14 splits the PMD (split_huge_pmd())
    and retries, and do_wp_page() copies the one 4 KiB page. This model maps
    compound pages by PMD only, so it splits the page instead (split_huge_page():
    every mapping of it becomes PTEs); FAULT_RETRY then sends the fault on to
    the now read-only PTEs. A THP that cannot split (pinned) is FAULT_OOM.
    """
    head = mm.pte_pfn(st.pmd[pmd_i])
    if st.page["mapcount"][head] == 1:
        st.pmd[pmd_i] |= L.PMD_WRITE
        return L.FAULT_OK
    new = _alloc_filled_thp(st, first, head)
    if new >= 0:
        # pmdp_huge_clear_flush_notify(), then the new page's rmap and PMD, then the
        # old page's rmap and reference (the slot leaves its chain first).
        _unmap_shared_thp(st, v, first, head)
        _pmd_map_thp(st, v, first, pmd_i, new)
        st.counters[L.C_COW_BREAK] += 1
        return L.FAULT_OK
    if _wp_huge_pmd_fallback(st, v, first, pmd_i, head):
        st.counters[L.C_COW_BREAK] += 1
        return L.FAULT_OK
    if split_huge_page(st, head, 0) != 0:
        return L.FAULT_OOM
    return L.FAULT_RETRY


@internal
def _fault_pmd(st, v, addr, write):
    """The PMD half of handle_mm_fault(). FAULT_RETRY means: go on to the PTE."""
    pmd_i = mm.pmd_slot(st, v, addr)
    kind = mm.pmd_kind(st.pmd[pmd_i])
    first = _thp_extent(st, v, addr)
    if kind == L.PMD_NONE:
        if first >= 0:
            if not write:
                st.pmd[pmd_i] = L.PMD_HUGE_ZERO
                return L.FAULT_OK
            if _map_new_thp(st, v, first, pmd_i) >= 0:
                return L.FAULT_OK
        st.pmd[pmd_i] = L.PMD_TABLE
        return L.FAULT_RETRY
    if kind == L.PMD_HUGE_ZERO:
        if not write:
            return L.FAULT_OK
        if _map_new_thp(st, v, first, pmd_i) >= 0:
            _unmirror_extent(st, v, first)
            return L.FAULT_OK
        split_huge_pmd_zero(st, pmd_i, mm.pte_slot(st, v, first))
        return L.FAULT_RETRY
    if kind == L.PMD_THP:
        if not write or (st.pmd[pmd_i] & L.PMD_WRITE) != 0:
            return L.FAULT_OK
        return _wp_huge_pmd(st, v, first, pmd_i)
    if kind == L.PMD_DEVICE:
        return _DEVICE_ENTRY  # modern: do_huge_pmd_device_private()
    if kind == L.PMD_MIGRATION:
        return L.FAULT_OK  # pmd_migration_entry_wait(): the access retries
    return L.FAULT_RETRY


# --------------------------------------------------------------------- PTE level
@internal
def _fault_file(st, v, addr, slot, write):
    """do_read_fault() / do_shared_fault() map the page-cache page (writable in a
    shared writable mapping); do_cow_fault(), a store to a private file mapping,
    maps a private anonymous copy of it instead."""
    pfn = find_or_read_page(st, v, addr)
    if pfn < 0:
        return L.FAULT_OOM
    private = st.vma["kind"][v] == L.VMA_FILE_PRIVATE
    if private and write:
        new = _new_anon_page(st, v, addr)
        if new < 0:
            return L.FAULT_OOM
        _copy_frame(st, new, pfn, 1)
        mm.map_new_page(st, slot, new, True, False)
        return L.FAULT_OK
    writable = not private and (st.vma["flags"][v] & L.VM_WRITE) != 0
    mm.map_new_page(st, slot, pfn, writable, False)
    return L.FAULT_OK


@internal
def _fault_none(st, v, addr, slot, write):
    """do_anonymous_page() / do_fault() on an empty PTE."""
    if st.vma["kind"][v] != L.VMA_ANON:
        return _fault_file(st, v, addr, slot, write)
    if not write:
        st.pte[slot] = mm.make_pte(L.PTE_PRESENT, st.sys[L.SYS_ZERO_PFN], False)
        return L.FAULT_OK
    pfn = _new_anon_page(st, v, addr)
    if pfn < 0:
        return L.FAULT_OOM
    mm.map_new_page(st, slot, pfn, True, False)
    return L.FAULT_OK


@internal
def _fault_wp(st, v, addr, slot):
    """do_wp_page(): a write to a read-only present PTE. A shared mapping, or an
    anonymous page mapped once, is reused; anything else (a fork-shared page, the
    zero page, a page-cache page in a private file mapping) is copied."""
    pfn = mm.pte_pfn(st.pte[slot])
    shared = (st.vma["flags"][v] & L.VM_SHARED) != 0
    anon_once = st.page["mapping"][pfn] == L.MAPPING_ANON and st.page["mapcount"][pfn] == 1
    if not mm.is_zero_pfn(st, pfn) and (shared or anon_once):
        st.pte[slot] |= L.PTE_WRITE | L.PTE_DIRTY  # reuse: nobody else maps it
        mm.set_flag(st, pfn, L.PG_DIRTY)
        return L.FAULT_OK
    new = _new_anon_page(st, v, addr)
    if new < 0:
        return L.FAULT_OOM
    if not mm.is_zero_pfn(st, pfn):
        _copy_frame(st, new, pfn, 1)
        st.counters[L.C_COW_BREAK] += 1
    mm.zap_pte(st, slot)
    mm.map_new_page(st, slot, new, True, False)
    return L.FAULT_OK


@internal
def _swap_in(st, v, addr, slot):
    """do_swap_page() for a swap entry: a private copy of the slot's bytes."""
    entry = mm.pte_pfn(st.pte[slot])
    pfn = _new_anon_page(st, v, addr)
    if pfn < 0:
        return L.FAULT_OOM
    ps = st.sys[L.SYS_PAGE_SIZE]
    if st.sys[L.SYS_STORE_DATA] != 0:
        memcpy_bytes(st.data, pfn * ps, st.swap_data, entry * ps, ps)
    swap_free(st, entry)
    st.pte[slot] = L.PTE_NONE
    mm.map_new_page(st, slot, pfn, (st.vma["flags"][v] & L.VM_WRITE) != 0, False)
    st.counters[L.C_PSWPIN] += 1
    return L.FAULT_OK


@internal(inline=True)
def _fault_pte(st, v, addr, write):
    slot = mm.pte_slot(st, v, addr)
    pte = st.pte[slot]
    kind = mm.pte_kind(pte)
    if kind == L.PTE_NONE:
        return _fault_none(st, v, addr, slot, write)
    if kind == L.PTE_PRESENT:
        if write and not mm.pte_write(pte):
            return _fault_wp(st, v, addr, slot)
        return L.FAULT_OK
    if kind == L.PTE_SWAP:
        return _swap_in(st, v, addr, slot)
    if kind == L.PTE_DEVICE:
        return _DEVICE_ENTRY
    if kind == L.PTE_ERROR:
        return L.FAULT_SIGBUS
    if kind == L.PTE_EXCLUSIVE:
        return restore_exclusive_pte(st, v, slot)
    return L.FAULT_RETRY  # a migration entry: the access would wait for the page lock


@kernel(inline=True)
def handle_mm_fault(st, v, addr, write):
    """handle_mm_fault() - make ``addr`` accessible for a load or a store.

    Args: st, v (the VMA holding addr), addr, write (bool).
    Returns FAULT_OK when the access can proceed, FAULT_SEGV for an access the
    VMA's protection forbids, FAULT_SIGBUS for an error entry or a device page
    the device could not migrate back, FAULT_OOM when no frame was free, and
    FAULT_RETRY when the page stayed behind a migration entry or a locked device
    page after a few attempts. FAULT_SEGV, nothing done, when ``v`` is no live
    VMA or ``addr`` lies outside it.
    """
    if not in_vma(st, v, addr):
        return L.FAULT_SEGV
    vflags = st.vma["flags"][v]
    if (vflags & L.VM_READ) == 0 or (write and (vflags & L.VM_WRITE) == 0):
        return L.FAULT_SEGV
    ret = L.FAULT_RETRY
    for _ in range(_FAULT_RETRIES):
        ret = _fault_pmd(st, v, addr, write)
        if ret == L.FAULT_RETRY:
            st.counters[L.C_PGFAULT] += 1
            ret = _fault_pte(st, v, addr, write)
        if ret == _DEVICE_ENTRY:
            # the pgmap's migrate_to_ram(), for a PTE or a PMD entry: one call
            # site, so the migration it runs is compiled into the fault path once
            ret = device_fault(st, v, addr)
            if ret == L.FAULT_OK:
                ret = L.FAULT_RETRY  # the access retries on what came back
                continue
        if ret != L.FAULT_RETRY:
            return ret
    return ret


# --------------------------------------------------------------------- accesses
@internal(inline=True)
def _access_error(st, v, write):
    """access_error(): the VMA's vm_flags forbid this load or store."""
    vflags = st.vma["flags"][v]
    return (vflags & L.VM_READ) == 0 or (write and (vflags & L.VM_WRITE) == 0)


@internal(inline=True)
def _resolve(st, v, addr, write):
    """Fault as needed; returns (status, pfn or -1 for the zero page).

    access_error() (arch/x86/mm/fault.c) first: the PTEs of a VMA inherit its
    protection (vm_page_prot), so the MMU lets no access through that the VMA
    forbids and the fault handler refuses it from vm_flags before it looks at a
    page table. A PROT_NONE VMA is SEGV whatever its PTEs hold (a page
    migrate_vma() inserted, a device-private entry), a read-only one for stores.
    """
    if _access_error(st, v, write):
        return L.FAULT_SEGV, -1
    pmd_i = mm.pmd_slot(st, v, addr)
    slot = mm.pte_slot(st, v, addr)
    for _ in range(_FAULT_RETRIES):
        pk = mm.pmd_kind(st.pmd[pmd_i])
        ext = mm.pmd_extent(st)
        if pk == L.PMD_HUGE_ZERO and not write:
            return L.FAULT_OK, st.sys[L.SYS_ZERO_PFN]
        if pk == L.PMD_THP and (not write or (st.pmd[pmd_i] & L.PMD_WRITE) != 0):
            return L.FAULT_OK, mm.pte_pfn(st.pmd[pmd_i]) + (addr % ext) // mm.page_size(st)
        if pk == L.PMD_TABLE:
            pte = st.pte[slot]
            if mm.pte_kind(pte) == L.PTE_PRESENT and (not write or mm.pte_write(pte)):
                return L.FAULT_OK, mm.pte_pfn(pte)
        ret = handle_mm_fault(st, np.int64(v), np.int64(addr), np.bool_(write))
        if ret != L.FAULT_OK:
            return ret, -1
    return L.FAULT_RETRY, -1


@kernel
def access_vm(state, mm_id, addr, buf, nbytes, write):
    """A CPU load (write=False) into ``buf`` or store from ``buf`` of ``nbytes``.

    Args: state, mm_id (process id), addr, buf (uint8 array), nbytes, write.
    Returns (status, bytes done): FAULT_OK and nbytes, or the first fault that
    stopped it (SEGV outside every VMA or against protection, SIGBUS, OOM,
    RETRY) and the bytes completed before it.
    """
    ps = state.sys[L.SYS_PAGE_SIZE]
    done = 0
    while done < nbytes:
        a = addr + done
        v = mm.find_vma(state, mm_id, a)
        if v < 0:
            return L.FAULT_SEGV, done
        status, pfn = _resolve(state, v, a, write)
        if status != L.FAULT_OK:
            return status, done
        off = a % ps
        n = min(ps - off, nbytes - done)
        if write:
            memcpy_bytes(state.data, pfn * ps + off, buf, done, n)
            mm.set_flag(state, mm.compound_head(state, pfn), L.PG_DIRTY)  # folio_mark_dirty()
        else:
            memcpy_bytes(buf, done, state.data, pfn * ps + off, n)
        done += n
    return L.FAULT_OK, nbytes


@kernel
def populate(state, vma_index, start, end, write):
    """populate_vma_page_range(): fault in every page of ``[start, end)``.

    Returns (status, address reached): FAULT_OK and end, or the failing fault;
    (FAULT_SEGV, start), nothing done, when ``vma_index`` is no live VMA or the
    range is reversed or not inside it.
    """
    if not valid_vma(state, vma_index):
        return L.FAULT_SEGV, start
    if start != end and not range_in_vma(state, vma_index, start, end):
        return L.FAULT_SEGV, start
    ps = state.sys[L.SYS_PAGE_SIZE]
    addr = start
    while addr < end:
        status, _ = _resolve(state, vma_index, addr, write)
        if status != L.FAULT_OK:
            return status, addr
        addr += ps
    return L.FAULT_OK, end
