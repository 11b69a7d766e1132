"""Transparent huge pages: splitting PMD mappings and compound pages (mm/huge_memory.c).

A PMD-mapped THP is an aligned run of HPAGE_PMD_NR frames: the head carries the
refcount and the PMD mapcount, the tails carry PG_TAIL. Its reverse-map chain
links the first PTE slot of every 2 MiB extent that maps it. modern's device
folios (B_DEVICE_THP) are the same, mapped by device-private PMD entries, and a
migration leaves PMD migration entries on the chain while it holds a folio.
The model maps compound pages by PMD only, so splitting a PMD mapping splits
the folio at once (what the kernel's deferred split would do later).
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


@internal(inline=True)
def _pte_of_pmd(pmd_word, pfn):
    """The PTE one page of a split PMD mapping gets: a present PTE (dirty when
    writable) for a THP, a device-private entry for a device-private PMD, a
    migration entry for a PMD migration entry; each with the PMD's write bit."""
    write = (pmd_word & L.PMD_WRITE) != 0
    kind = mm.pmd_kind(pmd_word)
    if kind == L.PMD_DEVICE:
        return mm.make_pte(L.PTE_DEVICE, pfn, write)
    if kind == L.PMD_MIGRATION:
        return mm.make_pte(L.PTE_MIGRATION, pfn, write)
    word = mm.make_pte(L.PTE_PRESENT, pfn, write)
    if write:
        word |= L.PTE_DIRTY
    return word


@internal
def _split_mappings(st, head, node):
    """Turn every PMD mapping on the chain from ``node`` into 512 PTEs (__split_huge_pmd())."""
    while node != -1:
        nxt = st.pte_next[node]
        pmd_i = mm.pmd_of_first_slot(st, node)
        word = st.pmd[pmd_i]
        for j in range(L.HPAGE_PMD_NR):
            st.pte[node + j] = _pte_of_pmd(word, head + j)
            mm.rmap_add(st, head + j, node + j)
        st.pmd[pmd_i] = L.PMD_TABLE
        node = nxt


@internal
def split_folio(st, head, refs_each, keep_lock):
    """__split_huge_page() of a folio whose mappings are all PMD-level (PMD
    mappings, device-private PMD entries, PMD migration entries): 512 order-0
    pages, each mapped where the folio was, by the PTE kind of its PMD.

    Each page keeps the head's flags but the compound bits (a device frame its
    ZONE_DEVICE kind), gets mapcount = the folio's and refcount = mapcount +
    ``refs_each``; the lock stays on the head, or on every page with
    ``keep_lock`` (an unmapped folio split during migration). A device
    folio's split is the pgmap's folio_split() callback too (dmirror splits
    its backing chunk in step), counted in thp_split_page as every split.
    """
    nmaps = st.page["mapcount"][head]
    flags = st.page["flags"][head]
    node = st.page["rmap"][head]
    st.page["rmap"][head] = -1
    kept = L.PG_LRU | L.PG_DIRTY | L.PG_MLOCKED | L.PG_LAZYFREE | L.PG_DEVICE_KIND
    if keep_lock:
        kept |= L.PG_LOCKED
    for j in range(L.HPAGE_PMD_NR):
        pfn = head + j
        st.page["flags"][pfn] = flags & kept
        st.page["mapping"][pfn] = st.page["mapping"][head]
        st.page["index"][pfn] = st.page["index"][head] + j
        st.page["mapcount"][pfn] = nmaps
        st.page["refcount"][pfn] = nmaps + refs_each
        st.page["rmap"][pfn] = -1
    mm.set_flag(st, head, flags & (L.PG_LOCKED | L.PG_EXT_LOCKED))
    _split_mappings(st, head, node)
    st.counters[L.C_THP_SPLIT_PAGE] += 1


@internal
def split_huge_page(st, head, caller_refs):
    """split_huge_page(): turn every PMD mapping of a THP into 512 PTEs.

    Args:
        st: machine state. head: head pfn of a PMD-mapped THP (or, modern, of
        a device folio mapped by device-private PMD entries).
        caller_refs: references the caller holds on the head (collect: 1).
    Pre: the caller holds the page lock and ``caller_refs`` references.
    Post: 0 and 512 order-0 pages, each mapped wherever the THP was mapped,
    each holding one reference per mapping (plus the caller's refs on the head
    pfn), or -EBUSY with nothing changed when the page is pinned.
    """
    if not can_split_huge_page(st, head, caller_refs):
        return -L.EBUSY
    split_folio(st, head, 0, False)
    st.page["refcount"][head] += caller_refs
    return 0
