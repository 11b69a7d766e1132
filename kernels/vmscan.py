"""Reclaim of MADV_FREE pages (4.14 mm/vmscan.c shrink_page_list(), lazyfree branch).

Only the lazily freeable pages are reclaimed here (swap-out of one page is
kernels.swap). A clean one is unmapped everywhere (try_to_unmap_one() discards
an anonymous page without PG_swapbacked rather than writing it to swap) and
freed; the process faults a zero page there next time. A dirty one, stored to
since madvise(), gets PG_swapbacked back (PG_LAZYFREE cleared) and stays.
"""

import numpy as np

from . import layout as L
from . import mm
from ._jit import internal, kernel


@internal
def _discard(st, pfn):
    """Unmap every mapping of a clean lazyfree page; its last reference frees it."""
    huge = mm.has_flag(st, pfn, L.PG_HEAD)
    slot = st.page["rmap"][pfn]
    while slot != -1:
        nxt = st.pte_next[slot]
        if huge:
            pmd_i = mm.pmd_of_first_slot(st, slot)
            if pmd_i >= 0:
                st.pmd[pmd_i] = L.PMD_NONE
            st.page["mapcount"][pfn] -= 1
            mm.rmap_del(st, pfn, slot)
            mm.invalidate_mirrors(st, slot, L.HPAGE_PMD_NR)  # the extent's pages
            mm.put_page(st, pfn)
        else:
            mm.zap_pte(st, slot)
        slot = nxt


@kernel
def shrink_lazyfree(state):
    """shrink_page_list() over every lazily freeable page on the LRU.

    Args: state. Pre: no migration is in progress.
    Post: each PG_LAZYFREE page that nobody else holds (no pin, lock or
    isolation; references are its mappings' only) is clean and freed, or
    dirty and no longer PG_LAZYFREE. Returns the number of pages freed
    (``pglazyfreed`` counts them; a THP counts HPAGE_PMD_NR).
    """
    freed = 0
    busy = L.PG_LOCKED | L.PG_EXT_LOCKED | L.PG_EXT_ISOLATED
    for pfn in range(state.sys[L.SYS_RAM_FRESH]):  # the frames after it were never used
        flags = state.page["flags"][pfn]
        if (flags & L.PG_LAZYFREE) == 0 or (flags & L.PG_LRU) == 0 or (flags & busy) != 0:
            continue
        if (flags & L.PG_DIRTY) != 0:
            mm.clear_flag(state, pfn, L.PG_LAZYFREE)  # SetPageSwapBacked(): keep it
            continue
        if state.page["refcount"][pfn] != state.page["mapcount"][pfn]:
            continue  # page_ref_freeze() would fail: someone holds it
        n = L.HPAGE_PMD_NR if (flags & L.PG_HEAD) != 0 else 1
        _discard(state, pfn)
        freed += n
    state.counters[L.C_PGLAZYFREED] += freed
    return np.int64(freed)
