"""migrate_vma_pages(): move struct-page metadata from each source to its destination.

Profiles: ``seed`` skips slots without a destination (they keep MIGRATE) and has
no hole insertion; ``hmm-v25`` clears MIGRATE on slots without a destination
(17/19), fills collected holes with migrate_vma_insert_page() (17/19), and
refuses page-cache pages for a device-private destination (16/19). ``modern``
(__migrate_device_pages()) allows a device destination for an anonymous source
whose swap cache can be freed (the model keeps no swap cache, so every
anonymous page), expects no device reference on a ZONE_DEVICE source (v6.1)
and one more on the fault page.
Both first run the dst check (:mod:`kernels.dst_check`) over the driver's ``dst``.
"""

from . import layout as L
from . import mm
from ._jit import internal, kernel
from .dst_check import check_dst


@internal(hot=True)
def migrate_page_move_mapping(st, newpage, page, fault_pfn):
    """migrate_page(mapping, newpage, page, MIGRATE_SYNC_NO_COPY).

    Args: st, newpage, page (pfns). Pre: page locked, isolated, unmapped;
    newpage locked and already filled by the driver.
    Post: 0 on success, with mapping, index and page-cache slot moved to newpage
    and PG_dirty / PG_mlocked transferred (no data is copied: NO_COPY);
    -EAGAIN, with nothing changed, when the refcount is not the expected
    ``1 (isolation or collect) + 1 (ZONE_DEVICE source, 4.14) [+ 1 page cache]
    [+ 1 fault page, modern: folio_migrate_mapping()'s extra_count]``, e.g.
    after a late get_user_pages().
    """
    expected = 1 + mm.device_base_ref(st, page)
    if mm.behaves(st, L.B_FAULT_PAGE) and page == fault_pfn:
        expected += 1
    file_backed = st.page["mapping"][page] == L.MAPPING_FILE
    if file_backed:
        expected += 1
    if st.page["refcount"][page] != expected:
        return -L.EAGAIN
    index = st.page["index"][page]
    if file_backed:
        if st.pcache[index] != page:
            return -L.EAGAIN
        mm.get_page(st, newpage)  # the page cache's reference moves over
        st.pcache[index] = newpage
        st.page["refcount"][page] -= 1
    st.page["index"][newpage] = index
    st.page["mapping"][newpage] = st.page["mapping"][page]
    moved = st.page["flags"][page] & (L.PG_DIRTY | L.PG_MLOCKED)
    mm.clear_flag(st, page, L.PG_DIRTY | L.PG_MLOCKED)
    mm.set_flag(st, newpage, moved)
    return 0


@internal
def migrate_vma_insert_page(st, v, addr, newpage, src, i):
    """migrate_vma_insert_page() (hmm-v25, 17/19) - map a new page on a hole.

    Args: st, v (VMA index), addr, newpage (locked, filled), src, i (slot).
    Post: on success the PTE maps newpage (a device-private entry for a device
    page, writable iff VM_WRITE), newpage holds a mapping reference and sits in
    the LRU-add batch (non-device), and ``src[i] = MIGRATE`` exactly. Backs off
    (clears MIGRATE) for a non-anonymous VMA, a huge PMD, an entry populated
    meanwhile (present and not the zero page, or any non-none swap-type entry),
    or a VMA with a userfaultfd missing-page handler registered.
    """
    lay = st.layout
    vflags = st.vma["flags"][v]
    pmd_i = mm.pmd_slot(st, v, addr)
    pk = mm.pmd_kind(st.pmd[pmd_i])
    slot = mm.pte_slot(st, v, addr)
    pte = st.pte[slot]
    kind = mm.pte_kind(pte)
    abort = st.vma["kind"][v] != L.VMA_ANON or pk == L.PMD_THP or pk == L.PMD_HUGE_ZERO
    flush = False
    if kind == L.PTE_PRESENT:
        if mm.is_zero_pfn(st, mm.pte_pfn(pte)):
            flush = True
        else:
            abort = True
    elif kind != L.PTE_NONE:
        abort = True
    if abort or (vflags & L.VM_UFFD_MISSING) != 0:
        src[i] &= ~lay[L.L_MIGRATE]
        return
    if pk == L.PMD_NONE:
        st.pmd[pmd_i] = L.PMD_TABLE  # pte_alloc()
    device = mm.is_zone_device(st, newpage)  # never on an LRU
    st.page["mapping"][newpage] = L.MAPPING_ANON
    st.page["index"][newpage] = mm.pages_in(st, addr)
    if (vflags & L.VM_LOCKED) != 0 and not device:
        mm.set_flag(st, newpage, L.PG_MLOCKED)
    if not device:
        mm.lru_cache_add(st, mm.this_cpu(st), newpage)
    if flush:
        mm.unmirror_all(st, slot)  # the zero page a device may have mirrored goes
    mm.map_new_page(
        st, slot, newpage, (vflags & L.VM_WRITE) != 0, mm.is_device_private(st, newpage)
    )
    if flush:
        st.counters[L.C_TLB_FLUSH] += 1
    st.counters[L.C_INSERT_PAGE] += 1
    src[i] = lay[L.L_MIGRATE]


@internal(hot=True)
def _pages_slot_hmm(st, v, addr, src, dst, i, fault_pfn):
    lay = st.layout
    newpage = mm.mpfn_to_pfn(lay, dst[i])
    page = mm.mpfn_to_pfn(lay, src[i])
    if newpage < 0:
        src[i] &= ~lay[L.L_MIGRATE]
        return
    if page < 0:
        if (src[i] & lay[L.L_MIGRATE]) != 0:
            migrate_vma_insert_page(st, v, addr, newpage, src, i)
        return
    if (src[i] & lay[L.L_MIGRATE]) == 0:
        return
    if mm.is_zone_device(st, newpage) and st.page["mapping"][page] == L.MAPPING_FILE:
        src[i] &= ~lay[L.L_MIGRATE]  # only private anonymous memory goes to device-private
        return
    if migrate_page_move_mapping(st, newpage, page, fault_pfn) != 0:
        src[i] &= ~lay[L.L_MIGRATE]


@internal(hot=True)
def _pages_slot_seed(st, src, dst, i):
    lay = st.layout
    newpage = mm.mpfn_to_pfn(lay, dst[i])
    page = mm.mpfn_to_pfn(lay, src[i])
    if page < 0 or newpage < 0 or (src[i] & lay[L.L_MIGRATE]) == 0:
        return  # 14/19: a slot without a destination keeps MIGRATE
    if migrate_page_move_mapping(st, newpage, page, -1) != 0:
        src[i] &= ~lay[L.L_MIGRATE]


@internal(inline=True)
def pages_slot(st, v, addr, src, dst, i, fault_pfn):
    """migrate_vma_pages() for slot ``i`` (at ``addr``) alone; ``fault_pfn``:
    modern's fault_page, -1 for none."""
    if mm.behaves(st, L.B_HOLES):
        _pages_slot_hmm(st, v, addr, src, dst, i, fault_pfn)
    else:
        _pages_slot_seed(st, src, dst, i)


@kernel
def migrate_vma_pages(st, v, start, npages, src, dst):
    """migrate_vma_pages() - migrate meta-data from src page to dst page.

    Args:
        st: machine state. v: VMA index. start: first address.
        npages: slots. src, dst: the migration arrays after alloc_and_copy().
    Pre: MIGRATE pages are locked, unmapped and hold one extra reference;
    destination pages are locked and hold the driver's reference.
    Post: every slot whose struct-page move succeeded keeps MIGRATE; every
    failure (-EAGAIN, refused destination, and in hmm-v25 a missing one) has
    MIGRATE cleared. hmm-v25 holes with a destination are inserted. An unsound
    ``dst`` entry (kernels.dst_check) was set to 0 first, so its slot failed as
    one without a destination, its page untouched.
    """
    check_dst(st, dst, npages)
    ps = st.sys[L.SYS_PAGE_SIZE]
    fault_pfn = st.mig[L.MIG_FAULT_PFN]
    for i in range(npages):
        pages_slot(st, v, start + i * ps, src, dst, i, fault_pfn)
