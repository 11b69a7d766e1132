"""Transparent huge pages: splitting PMD mappings and compound pages (mm/huge_memory.c).

A PMD-mapped THP is an aligned run of HPAGE_PMD_NR frames: the head carries the
refcount and the PMD mapcount, the tails carry PG_TAIL. Its reverse-map chain
links the first PTE slot of every 2 MiB extent that maps it.
"""

from . import layout as L
from . import mm
from ._jit import internal


@internal
def split_huge_pmd_zero(st, pmd_i, first_slot):
    """split_huge_pmd() of the huge zero page: 512 read-only zero-page PTEs."""
    zero = st.sys[L.SYS_ZERO_PFN]
    word = mm.make_pte(L.PTE_PRESENT, zero, False)
    for j in range(L.HPAGE_PMD_NR):
        st.pte[first_slot + j] = word
    st.pmd[pmd_i] = L.PMD_TABLE
    st.counters[L.C_THP_SPLIT_PMD] += 1


@internal(inline=True)
def can_split_huge_page(st, head, caller_refs):
    """can_split_huge_page(): no reference beyond the PMD mappings and the caller's."""
    return st.page["refcount"][head] - caller_refs == st.page["mapcount"][head]


@internal
def pmd_of_first_slot(st, first_slot):
    """The PMD slot that a THP rmap node (a first PTE slot) stands for."""
    nv = st.sys[L.SYS_NR_VMAS]
    ps = st.sys[L.SYS_PAGE_SIZE]
    for v in range(nv):
        if st.vma["live"][v] == 0:
            continue  # munmap()ed: its slots map nothing
        base = st.vma["pte_base"][v]
        npg = (st.vma["end"][v] - st.vma["start"][v]) // ps
        if base <= first_slot < base + npg:
            addr = st.vma["start"][v] + (first_slot - base) * ps
            return mm.pmd_slot(st, v, addr)
    return -1


@internal
def split_huge_page(st, head, caller_refs):
    """split_huge_page(): turn every PMD mapping of a THP into 512 PTEs.

    Args:
        st: machine state. head: head pfn of a PMD-mapped THP.
        caller_refs: references the caller holds on the head (collect: 1).
    Pre: the caller holds the page lock and ``caller_refs`` references.
    Post: 0 and 512 order-0 pages, each mapped wherever the THP was mapped,
    each holding one reference per mapping (plus the caller's refs on the head
    pfn), or -EBUSY with nothing changed when the page is pinned.
    """
    if not can_split_huge_page(st, head, caller_refs):
        return -L.EBUSY
    nmaps = st.page["mapcount"][head]
    flags = st.page["flags"][head]
    node = st.page["rmap"][head]
    st.page["rmap"][head] = -1
    for j in range(L.HPAGE_PMD_NR):
        pfn = head + j
        st.page["flags"][pfn] = flags & (L.PG_LRU | L.PG_DIRTY | L.PG_MLOCKED | L.PG_LAZYFREE)
        st.page["mapping"][pfn] = st.page["mapping"][head]
        st.page["index"][pfn] = st.page["index"][head] + j
        st.page["mapcount"][pfn] = nmaps
        st.page["refcount"][pfn] = nmaps
        st.page["rmap"][pfn] = -1
    mm.set_flag(st, head, flags & (L.PG_LOCKED | L.PG_EXT_LOCKED))
    st.page["refcount"][head] += caller_refs
    while node != -1:
        nxt = st.pte_next[node]
        pmd_i = pmd_of_first_slot(st, node)
        write = (st.pmd[pmd_i] & L.PMD_WRITE) != 0
        for j in range(L.HPAGE_PMD_NR):
            word = mm.make_pte(L.PTE_PRESENT, head + j, write)
            if write:
                word |= L.PTE_DIRTY
            st.pte[node + j] = word
            mm.rmap_add(st, head + j, node + j)
        st.pmd[pmd_i] = L.PMD_TABLE
        node = nxt
    st.counters[L.C_THP_SPLIT_PAGE] += 1
    return 0
