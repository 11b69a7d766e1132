"""Tearing down the pages of a range (mm/memory.c unmap_page_range(), zap_pte_range()).

munmap() and madvise(MADV_DONTNEED) both end here. Each mapping drops what it
held: a present page its mapcount, reverse-map link and reference (a page is
freed with its last reference; a device-private page goes back to its device's
free list when its count returns to one, 4.14's ``page_free`` convention); a
swap entry its use of the slot. Every device's mirror forgets the range first,
as the mmu notifier that unmap_page_range() calls invalidates each registered
mirror's range (4.14 ``mmu_notifier_invalidate_range_start()``).

A PMD mapping the range covers whole is zapped whole (zap_huge_pmd()). One it
covers in part is split first: 4.14 splits the PMD only (split_huge_pmd()) and
leaves the compound page PTE-mapped until the deferred-split shrinker runs;
this model maps compound pages by PMD only, so it splits the page at once
(split_huge_page()), as that shrinker would later. A pinned THP cannot be split
so: the caller gets -EBUSY with nothing changed (a model limit, not 4.14's).
"""

import numpy as np

from . import layout as L
from . import mm
from ._jit import internal, kernel
from .args import in_vma, range_in_vma
from .huge_memory import split_huge_page, split_huge_pmd_zero
from .memory import _unmap_shared_thp
from .swapfile import swap_free


@internal
def split_extent(st, v, addr):
    """Split the PMD mapping of ``addr``'s 2 MiB extent in VMA ``v``, if huge.

    Args: st, v (a live VMA), addr (inside it).
    Pre: no migration is in progress. Post: the extent is PTE-mapped (the huge
    zero page as 512 zero-page PTEs, a THP as 512 order-0 pages wherever it was
    mapped). Returns 0, or -EBUSY with nothing changed for a THP that is
    locked or pinned.
    """
    pmd_i = mm.pmd_slot(st, v, addr)
    kind = mm.pmd_kind(st.pmd[pmd_i])
    if kind == L.PMD_HUGE_ZERO:
        ext = mm.pmd_extent(st)
        split_huge_pmd_zero(st, pmd_i, mm.pte_slot(st, v, addr - addr % ext))
        return np.int64(0)
    if not mm.pmd_maps_folio(kind):
        return np.int64(0)
    head = mm.pte_pfn(st.pmd[pmd_i])
    if mm.has_flag(st, head, L.PG_LOCKED):
        return np.int64(-L.EBUSY)
    mm.set_flag(st, head, L.PG_LOCKED)
    mm.get_page(st, head)
    ret = split_huge_page(st, head, 1)
    mm.unlock_page(st, head)
    mm.put_page(st, head)
    return np.int64(ret)


@internal(inline=True)
def _zap_slot(st, slot):
    """zap_pte_range() for one PTE slot (its mirror entries already dropped)."""
    pte = st.pte[slot]
    kind = mm.pte_kind(pte)
    if kind == L.PTE_PRESENT or kind == L.PTE_DEVICE or kind == L.PTE_EXCLUSIVE:
        mm.zap_pte(st, slot)
    elif kind == L.PTE_SWAP:
        swap_free(st, mm.pte_pfn(pte))
        st.pte[slot] = L.PTE_NONE
    elif kind == L.PTE_ERROR:
        st.pte[slot] = L.PTE_NONE


@internal
def zap_extents_ok(st, v, start, end):
    """Whether every PMD mapping ``[start, end)`` covers in part can be split
    (none is a locked THP, and split_huge_page() would find no pin)."""
    ext = mm.pmd_extent(st)
    for edge in (start, end - 1):
        first = edge - edge % ext
        if first >= start and first + ext <= end:
            continue
        pmd_i = mm.pmd_slot(st, v, edge)
        if not mm.pmd_maps_folio(mm.pmd_kind(st.pmd[pmd_i])):
            continue
        head = mm.pte_pfn(st.pmd[pmd_i])
        if mm.has_flag(st, head, L.PG_LOCKED):
            return False
        if st.page["refcount"][head] != st.page["mapcount"][head]:
            return False
    return True


@internal
def begin_range_pass(state, v, start, end):
    """The entry of a page-table pass over ``[start, end)`` of VMA ``v``
    (zap, change_protection, madvise_free): 0 once the range checks hold,
    else -EINVAL (a bad VMA or range, not page aligned) or -EBUSY (a THP it
    covers in part cannot be split), nothing changed."""
    ps = state.sys[L.SYS_PAGE_SIZE]
    if not range_in_vma(state, v, start, end) or (start | end) % ps != 0:
        return np.int64(-L.EINVAL)
    if not zap_extents_ok(state, v, start, end):
        return np.int64(-L.EBUSY)
    return np.int64(0)


@kernel
def zap_page_range(state, vma_index, start, end):
    """zap_page_range() - unmap every page of ``[start, end)`` in a VMA.

    Args:
        state: the machine. vma_index: a live VMA. start, end: page-aligned
        bounds inside it.
    Pre: no migration is in progress (no migration entry in the range).
    Post: every PTE of the range is none, every PMD the range covers whole is
    none; each page lost this range's mappings and their references (freed
    with its last); swap slots lost their users; every device's mirror forgot
    the range. Returns 0, or -EINVAL (bad VMA or range) or -EBUSY (a THP the
    range covers in part cannot be split), both with nothing changed.
    """
    ret = begin_range_pass(state, vma_index, start, end)
    if ret != 0:
        return ret
    ps = state.sys[L.SYS_PAGE_SIZE]
    mm.invalidate_mirrors(state, mm.pte_slot(state, vma_index, start), (end - start) // ps)
    ext = mm.pmd_extent(state)
    addr = start
    while addr < end:
        first = addr - addr % ext
        stop = min(first + ext, end)
        pmd_i = mm.pmd_slot(state, vma_index, addr)
        kind = mm.pmd_kind(state.pmd[pmd_i])
        whole = addr == first and stop == first + ext
        if mm.pmd_maps_folio(kind) or kind == L.PMD_HUGE_ZERO:
            if whole:  # zap_huge_pmd(); a device folio goes with its last put (folio_free)
                if kind != L.PMD_HUGE_ZERO:
                    _unmap_shared_thp(state, vma_index, first, mm.pte_pfn(state.pmd[pmd_i]))
                state.pmd[pmd_i] = L.PMD_NONE
                addr = stop
                continue
            split_extent(state, vma_index, addr)
        if mm.pmd_kind(state.pmd[pmd_i]) == L.PMD_TABLE:
            slot = mm.pte_slot(state, vma_index, addr)
            for k in range((stop - addr) // ps):
                _zap_slot(state, slot + k)
        addr = stop
    return np.int64(0)


@kernel
def split_huge_at(state, vma_index, addr):
    """split_huge_pmd_address() - split the huge mapping of ``addr``'s extent, if any.

    Args: state, vma_index (a live VMA), addr (inside it).
    Pre: no migration is in progress. Post: as split_extent(). Returns 0,
    -EINVAL for an address outside the VMA, or -EBUSY (a locked or pinned
    THP) with nothing changed.
    """
    if not in_vma(state, vma_index, addr):
        return np.int64(-L.EINVAL)
    if not zap_extents_ok(state, vma_index, addr, addr + mm.page_size(state)):
        return np.int64(-L.EBUSY)
    return split_extent(state, vma_index, addr)
