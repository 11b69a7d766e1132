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

import numpy as np

from . import layout as L
from . import mm
from ._jit import internal, kernel
from .dst_check import check_dst
from .huge_memory import split_folio, split_huge_pmd_zero


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
    if pk == L.PMD_HUGE_ZERO and mm.behaves(st, L.B_DEVICE_THP) and st.vma["kind"][v] == L.VMA_ANON:
        # modern: split_huge_pmd() of the huge zero page, then the zero-page PTE is replaced
        ext = mm.pmd_extent(st)
        split_huge_pmd_zero(st, pmd_i, mm.pte_slot(st, v, addr - addr % ext))
        pk = L.PMD_TABLE
    pte = st.pte[slot]
    kind = mm.pte_kind(pte)
    abort = st.vma["kind"][v] != L.VMA_ANON or (pk != L.PMD_NONE and pk != L.PMD_TABLE)
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


@internal
def migrate_vma_insert_huge_pmd_page(st, v, addr, newpage, src, i):
    """migrate_vma_insert_huge_pmd_page() (modern, B_DEVICE_THP) - map a folio on
    a COMPOUND hole: a device-private PMD entry for device-private memory, else
    a THP PMD (replacing a huge zero PMD, with a flush); writable iff VM_WRITE.
    The folio gets the mapping's reference and mapcount, anonymous rmap at the
    extent's first slot and (RAM) the LRU-add batch. Backs off (clears MIGRATE)
    for a non-anonymous VMA, an extent not wholly inside it, a PMD that is
    neither none nor the huge zero page, or a userfaultfd missing handler."""
    lay = st.layout
    vflags = st.vma["flags"][v]
    ext = mm.pmd_extent(st)
    pmd_i = mm.pmd_slot(st, v, addr)
    pk = mm.pmd_kind(st.pmd[pmd_i])
    suitable = addr % ext == 0 and addr + ext <= st.vma["end"][v]
    if (
        st.vma["kind"][v] != L.VMA_ANON
        or not suitable
        or (pk != L.PMD_NONE and pk != L.PMD_HUGE_ZERO)
        or (vflags & L.VM_UFFD_MISSING) != 0
    ):
        src[i] &= ~lay[L.L_MIGRATE]
        return
    first_slot = mm.pte_slot(st, v, addr)
    device = mm.is_zone_device(st, newpage)
    st.page["mapping"][newpage] = L.MAPPING_ANON
    st.page["index"][newpage] = mm.pages_in(st, addr)
    if not device:
        mm.lru_cache_add(st, mm.this_cpu(st), newpage)
    kind = L.PMD_DEVICE if mm.is_device_private(st, newpage) else L.PMD_THP
    st.pmd[pmd_i] = mm.make_pmd(kind, newpage, (vflags & L.VM_WRITE) != 0)
    st.page["mapcount"][newpage] += 1
    mm.get_page(st, newpage)
    mm.rmap_add(st, newpage, first_slot)
    if pk == L.PMD_HUGE_ZERO:
        mm.invalidate_mirrors(st, first_slot, L.HPAGE_PMD_NR)  # pmdp_invalidate()
        st.counters[L.C_TLB_FLUSH] += 1
    st.counters[L.C_INSERT_PAGE] += 1


@internal
def migrate_vma_split_unmapped_folio(st, src, i, page):
    """migrate_vma_split_unmapped_folio() (modern): a folio source whose driver
    gave a base destination is split after unmap: its PMD migration entries
    become 512 PTE migration entries (split_huge_pmd_address(freeze)), the folio
    512 locked order-0 pages each holding one reference (folio_split_unmapped();
    the head keeps its own, a fault page's too), and ``src[i + j] = (pfn + j) |
    flags``. -EAGAIN with nothing changed when the folio is pinned."""
    lay = st.layout
    refs = st.page["refcount"][page]
    extra = 1 + mm.device_base_ref(st, page)
    if refs < extra or st.page["mapcount"][page] != 0 or st.page["pins"][page] != 0:
        return -L.EAGAIN
    split_folio(st, page, 1, True)
    st.page["refcount"][page] = refs
    flags = (src[i] & ~lay[L.L_COMPOUND]) & ((np.uint64(1) << lay[L.L_SHIFT]) - np.uint64(1))
    src[i] = mm.make_mpfn(lay, page) | flags
    for j in range(1, L.HPAGE_PMD_NR):
        src[i + j] = mm.make_mpfn(lay, page + j) | flags
    return 0


@internal
def pages_compound(st, v, addr, src, dst, i, page):
    """__migrate_device_pages()' COMPOUND rules (modern, B_DEVICE_THP) for a
    MIGRATE slot where ``src`` or ``dst`` carries COMPOUND. Returns True when
    the slot goes on as a base slot (after an expansion, or a folio-to-folio
    move of the heads), False when it is done.

    * a COMPOUND hole with a base dst: the hole becomes 512 base holes
      (``src[i + j] = MIGRATE``), each filled from its own dst;
    * a COMPOUND hole with a COMPOUND dst: one huge PMD is inserted;
    * a folio with a base dst: the unmapped folio is split first (device-range
      calls, with no VMA, fail the slot instead);
    * a COMPOUND dst for a base slot: the slot fails (MIGRATE cleared). The
      kernel does this for a page; for a base hole it would try a huge insert
      at a slot that is no PMD extent, and the engine fails it the same way.
    """
    lay = st.layout
    c = lay[L.L_COMPOUND]
    src_c = (src[i] & c) != 0
    dst_c = (dst[i] & c) != 0
    if src_c and i + L.HPAGE_PMD_NR > src.shape[0]:
        src[i] &= ~(lay[L.L_MIGRATE] | c)  # no room for the extent's slots: not collect's
        return False
    if dst_c and not src_c:
        src[i] &= ~lay[L.L_MIGRATE]
        return False
    if not dst_c:
        if page < 0:
            src[i] &= ~c
            for j in range(1, L.HPAGE_PMD_NR):
                src[i + j] = lay[L.L_MIGRATE]
            return True
        if v < 0 or migrate_vma_split_unmapped_folio(st, src, i, page) != 0:
            src[i] &= ~(lay[L.L_MIGRATE] | c)
            return False
        return True
    if page < 0:
        migrate_vma_insert_huge_pmd_page(st, v, addr, mm.mpfn_to_pfn(lay, dst[i]), src, i)
        return False
    return True


@internal(hot=True)
def _pages_slot_hmm(st, v, addr, src, dst, i, fault_pfn):
    lay = st.layout
    newpage = mm.mpfn_to_pfn(lay, dst[i])
    page = mm.mpfn_to_pfn(lay, src[i])
    if newpage < 0:
        src[i] &= ~lay[L.L_MIGRATE]
        return
    if (
        ((src[i] | dst[i]) & lay[L.L_COMPOUND]) != 0
        and (src[i] & lay[L.L_MIGRATE]) != 0
        and not pages_compound(st, v, addr, src, dst, i, page)
    ):
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
