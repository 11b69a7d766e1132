"""fork() for one VMA (kernel/fork.c copy_page_range(), mm/memory.c copy_one_pte()).

Anonymous pages and device-private entries are shared copy-on-write: both sides
lose the write bit, so the next write fault (kernels.memory) breaks the sharing.
"""

from . import layout as L
from . import mm
from ._jit import internal, kernel


@internal
def _fork_pte(st, pslot, cslot):
    """copy_one_pte(): share anonymous pages copy-on-write, device entries too."""
    pte = st.pte[pslot]
    kind = mm.pte_kind(pte)
    if kind == L.PTE_NONE:
        return
    if kind == L.PTE_EXCLUSIVE:
        # copy_nonpresent_pte(): a device-exclusive entry is restored to an
        # ordinary PTE first (the parent's mirrors already forgot the range),
        # then copied as a present one.
        pte = mm.make_pte(L.PTE_PRESENT, mm.pte_pfn(pte), mm.pte_write(pte))
        kind = L.PTE_PRESENT
    if kind == L.PTE_SWAP:
        st.swap_map[mm.pte_pfn(pte)] += 1
    elif kind == L.PTE_PRESENT or kind == L.PTE_DEVICE:
        pfn = mm.pte_pfn(pte)
        pte &= ~L.PTE_WRITE  # both sides read-only: the next write breaks COW
        st.pte[pslot] = pte
        if not mm.is_zero_pfn(st, pfn):
            st.page["mapcount"][pfn] += 1
            mm.get_page(st, pfn)
            mm.rmap_add(st, pfn, cslot)
    st.pte[cslot] = pte


@kernel
def fork_vma(state, parent, child):
    """copy_page_range() for one VMA into the child's (already laid out) VMA.

    Private anonymous memory is shared write-protected, with one more mapcount
    and reference per page (PMD THPs on the head); device-private entries are
    shared read-only the same way; swap entries gain a user. Shared (shmem and
    file) VMAs copy nothing: the child faults from the shared page cache. A
    private file mapping is copied as anonymous memory is (its page-cache pages
    stay read-only in both). The parent's range is invalidated in every device's
    mirror (mmu notifier).
    """
    ps = state.sys[L.SYS_PAGE_SIZE]
    npages = (state.vma["end"][parent] - state.vma["start"][parent]) // ps
    pbase = state.vma["pte_base"][parent]
    if (state.vma["flags"][parent] & L.VM_SHARED) != 0:
        return
    mm.invalidate_mirrors(state, pbase, npages)
    ext = mm.pmd_extent(state)
    start = state.vma["start"][parent]
    nlevel = (state.vma["end"][parent] - 1) // ext - start // ext + 1
    cbase = state.vma["pte_base"][child]
    for j in range(nlevel):
        pi = state.vma["pmd_base"][parent] + j
        ci = state.vma["pmd_base"][child] + j
        word = state.pmd[pi]
        if mm.pmd_maps_folio(mm.pmd_kind(word)):
            # copy_huge_pmd(); a writable device-private PMD entry becomes
            # readable in both (copy_huge_non_present_pmd(), modern)
            word &= ~L.PMD_WRITE
            state.pmd[pi] = word
            head = mm.pte_pfn(word)
            state.page["mapcount"][head] += 1
            mm.get_page(state, head)
            first = max(start, (start // ext + j) * ext)
            mm.rmap_add(state, head, cbase + (first - start) // ps)
        state.pmd[ci] = word
    for k in range(npages):
        _fork_pte(state, pbase + k, cbase + k)
