"""MADV_FREE's page-table side (4.14 mm/madvise.c madvise_free_pte_range()).

MADV_DONTNEED is zap_page_range() (kernels.zap). MADV_FREE keeps the pages
mapped but lets reclaim (kernels.vmscan) discard the clean ones: each
anonymous page mapped only here loses its dirty state and is marked lazily
freeable (``PG_LAZYFREE``, the kernel's cleared PG_swapbacked). A store after
that dirties it again, and reclaim then keeps it.
"""

import numpy as np

from . import layout as L
from . import mm
from ._jit import internal, kernel
from .swapfile import swap_free
from .zap import begin_range_pass, split_extent


@internal(inline=True)
def mark_page_lazyfree(st, pfn):
    """mark_page_lazyfree() (mm/swap.c): only a page already on the LRU, anonymous
    and evictable, moves; one still in the LRU-add batch is left as it is, as
    4.14's test of PageLRU() leaves it. The move is made at once, where 4.14
    queues it in a per-CPU lazyfree batch (not modelled)."""
    flags = st.page["flags"][pfn]
    if (flags & L.PG_LRU) == 0 or (flags & L.PG_MLOCKED) != 0:
        return
    if st.page["mapping"][pfn] != L.MAPPING_ANON:
        return
    st.page["flags"][pfn] = flags | L.PG_LAZYFREE


@internal(inline=True)
def _free_one(st, pfn):
    """The page part of madvise_free_pte_range() for a page mapped only here."""
    if st.page["mapcount"][pfn] != 1 or mm.is_device_pfn(st, pfn):
        return
    mm.clear_flag(st, pfn, L.PG_DIRTY)  # ClearPageDirty() under the page lock
    mark_page_lazyfree(st, pfn)


@kernel
def madvise_free(state, vma_index, start, end):
    """madvise_free_single_vma() - MADV_FREE over ``[start, end)`` of an anonymous VMA.

    Args:
        state: the machine. vma_index: a live private anonymous VMA. start,
        end: page-aligned bounds inside it.
    Pre: no migration is in progress.
    Post: swap entries of the range are dropped (their slots freed with their
    last user); every anonymous page mapped only by this range is clean (PTE and
    page) and, if on the LRU, PG_LAZYFREE; a THP the range covers whole is
    marked as one page, one it covers in part was split first; device-private
    and zero-page entries are untouched. Returns 0, or -EINVAL (bad VMA or
    range) or -EBUSY (a THP to split is pinned or locked), both with nothing
    changed.
    """
    ret = begin_range_pass(state, vma_index, start, end)
    if ret != 0:
        return ret
    ps = state.sys[L.SYS_PAGE_SIZE]
    ext = mm.pmd_extent(state)
    addr = start
    while addr < end:
        first = addr - addr % ext
        stop = min(first + ext, end)
        pmd_i = mm.pmd_slot(state, vma_index, addr)
        kind = mm.pmd_kind(state.pmd[pmd_i])
        if mm.pmd_maps_folio(kind):
            if addr == first and stop == first + ext:
                if kind == L.PMD_THP:  # madvise_free_huge_pmd() skips a device-private PMD
                    _free_one(state, mm.pte_pfn(state.pmd[pmd_i]))
                addr = stop
                continue
            split_extent(state, vma_index, addr)
        if mm.pmd_kind(state.pmd[pmd_i]) == L.PMD_TABLE:
            slot = mm.pte_slot(state, vma_index, addr)
            for k in range((stop - addr) // ps):
                pte = state.pte[slot + k]
                kind = mm.pte_kind(pte)
                if kind == L.PTE_SWAP:
                    swap_free(state, mm.pte_pfn(pte))
                    state.pte[slot + k] = L.PTE_NONE
                elif kind == L.PTE_PRESENT and not mm.is_zero_pfn(state, mm.pte_pfn(pte)):
                    state.pte[slot + k] = pte & ~L.PTE_DIRTY
                    _free_one(state, mm.pte_pfn(pte))
        addr = stop
    return np.int64(0)
