"""mremap()'s page-table side (mm/mremap.c move_page_tables(), move_ptes()).

The Python layer lays out the new VMA (fresh PTE slots at the new address)
and unmaps what was there; this pass moves every entry of the old range into
it: present PTEs, device-private and swap entries, and PMD-mapped THPs whose
old and new extents line up (move_huge_pmd()); a THP that does not line up is
split first, as move_page_tables() splits the PMD. Reverse-map chains follow
the moved slots, so mapcounts and references are unchanged. Every device's
mirror forgets the old range (the mmu-notifier invalidation of
move_page_tables()); anonymous pages keep ``index``, as the kernel keeps
page->index and moves the VMA's vm_pgoff instead.
"""

import numpy as np

from . import layout as L
from . import mm
from ._jit import internal, kernel
from .args import valid_vma
from .huge_memory import split_huge_pmd_zero
from .zap import split_extent


@internal(inline=True)
def _relink(st, pfn, old_slot, new_slot):
    """The page's reverse-map chain names ``new_slot`` where it named ``old_slot``."""
    mm.rmap_del(st, pfn, old_slot)
    mm.rmap_add(st, pfn, new_slot)


@internal
def _move_pte(st, old_slot, new_slot):
    """move_ptes() for one entry."""
    pte = st.pte[old_slot]
    st.pte[old_slot] = L.PTE_NONE
    st.pte[new_slot] = pte
    kind = mm.pte_kind(pte)
    if (
        kind == L.PTE_PRESENT
        or kind == L.PTE_DEVICE
        or kind == L.PTE_MIGRATION
        or (kind == L.PTE_EXCLUSIVE)
    ):
        pfn = mm.pte_pfn(pte)
        if not mm.is_zero_pfn(st, pfn):
            _relink(st, pfn, old_slot, new_slot)


@kernel
def move_page_tables(state, old_v, new_v):
    """move_page_tables() - move every entry of VMA ``old_v`` into VMA ``new_v``.

    Args:
        state: the machine. old_v: the live VMA whose range moves. new_v: a live
        VMA of the same size, kind and process, freshly laid out and empty.
    Pre: no migration is in progress.
    Pre: no migration is in progress; a THP that cannot move whole (its new
    extent does not line up) was split by the caller (kernels.zap.split_huge_at).
    Post: ``new_v`` maps what ``old_v`` mapped, entry for entry, and ``old_v``
    maps nothing; chains, mapcounts and references are as before; every
    device's mirror forgot the old range. Returns 0, or -EINVAL (bad VMAs, or
    of different sizes) with nothing changed.
    """
    if not valid_vma(state, old_v) or not valid_vma(state, new_v):
        return np.int64(-L.EINVAL)
    size = state.vma["end"][old_v] - state.vma["start"][old_v]
    if state.vma["end"][new_v] - state.vma["start"][new_v] != size:
        return np.int64(-L.EINVAL)
    ps = state.sys[L.SYS_PAGE_SIZE]
    ext = mm.pmd_extent(state)
    old_start = state.vma["start"][old_v]
    new_start = state.vma["start"][new_v]
    base = state.vma["pte_base"][old_v]
    mm.invalidate_mirrors(state, base, size // ps)
    addr = old_start
    while addr < old_start + size:
        first = addr - addr % ext
        stop = min(first + ext, old_start + size)
        pmd_i = mm.pmd_slot(state, old_v, addr)
        kind = mm.pmd_kind(state.pmd[pmd_i])
        new_addr = addr + (new_start - old_start)
        lined_up = addr == first and stop == first + ext and new_addr % ext == 0
        if mm.pmd_maps_folio(kind) or kind == L.PMD_HUGE_ZERO:
            if lined_up:  # move_huge_pmd(), a device-private PMD entry too (modern)
                npmd = mm.pmd_slot(state, new_v, new_addr)
                state.pmd[npmd] = state.pmd[pmd_i]
                state.pmd[pmd_i] = L.PMD_NONE
                if kind != L.PMD_HUGE_ZERO:
                    old_slot = mm.pte_slot(state, old_v, addr)
                    _relink(
                        state,
                        mm.pte_pfn(state.pmd[npmd]),
                        old_slot,
                        mm.pte_slot(state, new_v, new_addr),
                    )
                addr = stop
                continue
            if kind == L.PMD_HUGE_ZERO:
                split_huge_pmd_zero(state, pmd_i, mm.pte_slot(state, old_v, first))
            else:
                split_extent(state, old_v, addr)
        if mm.pmd_kind(state.pmd[pmd_i]) == L.PMD_TABLE:
            slot = mm.pte_slot(state, old_v, addr)
            nslot = mm.pte_slot(state, new_v, new_addr)
            for k in range((stop - addr) // ps):
                _move_pte(state, slot + k, nslot + k)
                a = new_addr + k * ps
                state.pmd[mm.pmd_slot(state, new_v, a)] = L.PMD_TABLE
        addr = stop
    return np.int64(0)
