"""mprotect()'s page-table side (mm/mprotect.c change_protection()).

The VMA's new ``vm_flags`` are set by the caller (the Python layer splits and
merges VMA records); this pass brings the page tables in line. Taking write
away write-protects every present PTE, PMD-mapped THP and device-private entry
(4.14 change_pte_range() turns a writable device-private entry into a read-only
one). Granting write changes no entry: a private mapping's PTEs stay
copy-on-write protected and the next store takes a write fault, which reuses a
page mapped once (do_wp_page()). Every device's mirror forgets the range, as
change_protection_range()'s mmu-notifier invalidation makes each mirror do.
"""

import numpy as np

from . import layout as L
from . import mm
from ._jit import kernel
from .zap import begin_range_pass, split_extent


@kernel
def change_protection(state, vma_index, start, end):
    """change_protection() - apply VMA ``vma_index``'s ``vm_flags`` to ``[start, end)``.

    Args:
        state: the machine. vma_index: a live VMA whose flags already hold the
        new protection. start, end: page-aligned bounds inside it.
    Pre: no migration is in progress.
    Post: without VM_WRITE, no PTE, PMD or device-private entry of the range is
    writable; a PMD mapping the range covers in part was split first; every
    device's mirror forgot the range. Returns 0, or -EINVAL (bad VMA or range)
    or -EBUSY (a THP to split is pinned or locked), both with nothing changed.
    """
    ret = begin_range_pass(state, vma_index, start, end)
    if ret != 0:
        return ret
    ps = state.sys[L.SYS_PAGE_SIZE]
    mm.invalidate_mirrors(state, mm.pte_slot(state, vma_index, start), (end - start) // ps)
    if (state.vma["flags"][vma_index] & L.VM_WRITE) != 0:
        return np.int64(0)
    ext = mm.pmd_extent(state)
    addr = start
    while addr < end:
        first = addr - addr % ext
        stop = min(first + ext, end)
        pmd_i = mm.pmd_slot(state, vma_index, addr)
        huge = mm.pmd_maps_folio(mm.pmd_kind(state.pmd[pmd_i]))
        if huge and (addr != first or stop != first + ext):
            split_extent(state, vma_index, addr)
        kind = mm.pmd_kind(state.pmd[pmd_i])
        if mm.pmd_maps_folio(kind):
            # change_huge_pmd(); a device-private PMD entry becomes readable
            # (change_non_present_huge_pmd(), modern)
            state.pmd[pmd_i] &= ~L.PMD_WRITE
        elif kind == L.PMD_TABLE:
            slot = mm.pte_slot(state, vma_index, addr)
            for k in range((stop - addr) // ps):
                pk = mm.pte_kind(state.pte[slot + k])
                if pk == L.PTE_PRESENT or pk == L.PTE_DEVICE or pk == L.PTE_EXCLUSIVE:
                    state.pte[slot + k] &= ~L.PTE_WRITE  # (a readable device-exclusive entry)
        addr = stop
    return np.int64(0)
