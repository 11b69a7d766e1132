"""Reclaiming one anonymous page to swap (mm/vmscan.c shrink_page_list() with
try_to_unmap()); the fault path (kernels.memory) swaps it back in.
"""

from . import layout as L
from . import mm
from ._jit import kernel
from ._llvm import memcpy_bytes
from .huge_memory import split_huge_page
from .swapfile import get_swap_slot


@kernel
def swap_out(state, vma_index, addr):
    """Reclaim one anonymous page to swap (shrink_page_list + try_to_unmap).

    Returns 0, or a negative code: -EINVAL for an entry that is not a present
    anonymous page (-EFAULT for a device-private entry, which cannot be swapped),
    -EBUSY for a pinned page, -ENOMEM when swap is full.
    """
    ps = state.sys[L.SYS_PAGE_SIZE]
    pmd_i = mm.pmd_slot(state, vma_index, addr)
    if mm.pmd_kind(state.pmd[pmd_i]) == L.PMD_DEVICE:
        return -L.EFAULT
    if mm.pmd_kind(state.pmd[pmd_i]) == L.PMD_THP:
        head = mm.pte_pfn(state.pmd[pmd_i])
        # Reclaim trylocks a page before splitting it, and skips one it cannot lock.
        if mm.has_flag(state, head, L.PG_LOCKED) or split_huge_page(state, head, 0) != 0:
            return -L.EBUSY
    slot = mm.pte_slot(state, vma_index, addr)
    pte = state.pte[slot]
    if mm.pte_kind(pte) == L.PTE_DEVICE:
        return -L.EFAULT
    if mm.pmd_kind(state.pmd[pmd_i]) != L.PMD_TABLE or mm.pte_kind(pte) != L.PTE_PRESENT:
        return -L.EINVAL
    pfn = mm.pte_pfn(pte)
    if mm.is_zero_pfn(state, pfn) or state.page["mapping"][pfn] != L.MAPPING_ANON:
        return -L.EINVAL
    if mm.is_zone_device(state, pfn):
        return -L.EFAULT  # device-coherent memory is never on an LRU, so never reclaimed
    if mm.has_flag(state, pfn, L.PG_PAGEVEC):
        mm.lru_add_drain_all(state)
    if state.page["refcount"][pfn] != state.page["mapcount"][pfn] or mm.has_flag(
        state, pfn, L.PG_LOCKED
    ):
        return -L.EBUSY
    entry = get_swap_slot(state)
    if entry < 0:
        return -L.ENOMEM
    if state.sys[L.SYS_STORE_DATA] != 0:
        memcpy_bytes(state.swap_data, entry * ps, state.data, pfn * ps, ps)
    word = mm.make_pte(L.PTE_SWAP, entry, False)
    s = state.page["rmap"][pfn]
    while s != -1:
        nxt = state.pte_next[s]
        state.swap_map[entry] += 1
        mm.zap_pte(state, s)
        state.pte[s] = word
        s = nxt
    state.counters[L.C_PSWPOUT] += 1
    return 0
