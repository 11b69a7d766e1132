"""Reverse-map walks: try_to_unmap() and remove_migration_ptes(); restore_exclusive_pte().

The chain of a page (``page["rmap"]`` then ``pte_next``) lists every PTE slot that
refers to it in any process: present PTEs, device-private entries and migration
entries. Walking it reaches fork-shared mappings in other processes, as the
kernel's anon_vma walk does.
"""

from . import layout as L
from . import mm
from ._jit import internal


@internal
def try_to_migrate_pmds(st, head):
    """try_to_migrate_one()'s PMD branch (set_pmd_migration_entry(), modern
    B_DEVICE_THP): every PMD mapping of the folio ``head`` (a THP or a
    device-private PMD entry), in every process, becomes a PMD migration entry
    with its write bit; each drops its mapcount and reference, and every
    device's mirror forgets the extent."""
    node = st.page["rmap"][head]
    while node != -1:
        pmd_i = mm.pmd_of_first_slot(st, node)
        word = st.pmd[pmd_i]
        kind = mm.pmd_kind(word)
        if mm.pmd_maps_folio(kind) and mm.pte_pfn(word) == head:
            st.pmd[pmd_i] = mm.make_pmd(L.PMD_MIGRATION, head, (word & L.PMD_WRITE) != 0)
            if kind == L.PMD_THP:
                mm.set_flag(st, head, L.PG_DIRTY)  # a writable THP PMD is dirty
                st.counters[L.C_TLB_FLUSH] += 1
            mm.invalidate_mirrors(st, node, L.HPAGE_PMD_NR)
            st.page["mapcount"][head] -= 1
            mm.put_page(st, head)
        node = st.pte_next[node]


@internal
def _forget_moved(st, node, page):
    """A folio left the device: that dmirror's notifier drops its entries."""
    # Unsigned indices and a select instead of a branch, so that the loop
    # vectorizes: it ran on every folio migration, a seventh of a round trip.
    for d in range(st.mirror.shape[0]):
        for j in range(L.HPAGE_PMD_NR):
            at = mm.ix(node + j)
            m = st.mirror[mm.ix(d), at]
            st.mirror[mm.ix(d), at] = -1 if m >= 0 and mm.mirror_pfn(m) == page + j else m


@internal
def remove_migration_pmds(st, page, newpage):
    """remove_migration_pmd() over the folio's chain: each PMD migration entry
    of ``page`` maps ``newpage`` (a device-private PMD entry for device-private
    memory, else a THP PMD), write bit kept, and its node moves to
    ``newpage``'s chain. Both are folios (pages refuses a mismatched pair)."""
    node = st.page["rmap"][page]
    prev = -1
    while node != -1:
        nxt = st.pte_next[node]
        pmd_i = mm.pmd_of_first_slot(st, node)
        word = st.pmd[pmd_i]
        if mm.pmd_kind(word) == L.PMD_MIGRATION and mm.pte_pfn(word) == page:
            kind = L.PMD_DEVICE if mm.is_device_private(st, newpage) else L.PMD_THP
            st.pmd[pmd_i] = mm.make_pmd(kind, newpage, (word & L.PMD_WRITE) != 0)
            st.page["mapcount"][newpage] += 1
            mm.get_page(st, newpage)
            if newpage != page:
                _forget_moved(st, node, page)
                if prev == -1:
                    st.page["rmap"][page] = nxt
                else:
                    st.pte_next[prev] = nxt
                mm.rmap_add(st, newpage, node)
                node = nxt
                continue
        prev = node
        node = nxt


@internal
def try_to_unmap(st, pfn):
    """try_to_unmap(page, TTU_MIGRATION | TTU_IGNORE_MLOCK | TTU_IGNORE_ACCESS).

    Replaces every present PTE and device-private entry of the page by a
    migration entry with the same write permission, dropping each mapping's
    mapcount and reference; a dirty PTE's bit moves to the page. Mlock is
    ignored, so it never leaves a mapping.

    Every profile drops the mapcount of ``pfn`` itself, as after "mm/hmm: fix
    bad subpage pointer in try_to_unmap_one" (July 2019, Fixes a5430dda8a3a):
    4.14 took the subpage of a device-private entry from its swap entry's
    bogus pfn and dropped the wrong page's mapcount. A device-private entry
    becomes a read-only migration entry, as 4.14's make_migration_entry(page,
    0) makes it; modern's try_to_migrate_one() keeps its write bit
    (B_WRITABLE_DEVICE_ENTRY). Each mapping's slot leaves
    every device's mirror (try_to_unmap_one()'s mmu_notifier_invalidate_range()).
    docs/fidelity.md lists both.
    """
    if mm.has_flag(st, pfn, L.PG_HEAD):
        try_to_migrate_pmds(st, pfn)
        return
    counters = st.counters
    slot = st.page["rmap"][pfn]
    while slot != -1:
        pte = st.pte[slot]
        kind = mm.pte_kind(pte)
        if kind == L.PTE_PRESENT or kind == L.PTE_DEVICE:
            write = mm.pte_write(pte)
            if kind == L.PTE_DEVICE and not mm.behaves(st, L.B_WRITABLE_DEVICE_ENTRY):
                write = False
            if (pte & L.PTE_DIRTY) != 0:
                mm.set_flag(st, pfn, L.PG_DIRTY)  # "Move the dirty bit to the page"
            st.pte[slot] = mm.make_pte(L.PTE_MIGRATION, pfn, write)
            mm.unmirror_all(st, slot)
            st.page["mapcount"][pfn] -= 1
            mm.put_page(st, pfn)
            if kind == L.PTE_PRESENT:
                counters[L.C_TLB_FLUSH] += 1  # ptep_clear_flush() in try_to_unmap_one()
        slot = st.pte_next[slot]


@internal(hot=True)
def remove_migration_pte(st, slot, page, newpage):
    """remove_migration_pte() for one slot: map ``newpage`` where the migration
    entry for ``page`` stands. A device-private target gets a device entry, any
    other (device-coherent too) a present PTE; the write bit comes from the
    migration entry."""
    pte = st.pte[slot]
    if mm.pte_kind(pte) != L.PTE_MIGRATION or mm.pte_pfn(pte) != page:
        return False
    write = mm.pte_write(pte)
    device_entry = mm.is_device_private(st, newpage)
    word = mm.make_pte(L.PTE_DEVICE if device_entry else L.PTE_PRESENT, newpage, write)
    st.pte[slot] = word
    if newpage != page:
        for d in range(st.mirror.shape[0]):
            if st.mirror[d, slot] >= 0 and mm.mirror_pfn(st.mirror[d, slot]) == page:
                # The page left the device: that dmirror's mmu notifier drops the entry.
                st.mirror[d, slot] = -1
    st.page["mapcount"][newpage] += 1
    mm.get_page(st, newpage)
    return True


@internal(hot=True)
def remove_migration_ptes(st, page, newpage):
    """remove_migration_ptes(page, newpage): redirect every migration entry of
    ``page``, in every process, to ``newpage`` (or restore it when equal), and
    move those slots onto ``newpage``'s reverse-map chain. A folio's are PMD
    migration entries (remove_migration_pmds())."""
    if mm.has_flag(st, page, L.PG_HEAD):
        remove_migration_pmds(st, page, newpage)
        return
    slot = st.page["rmap"][page]
    prev = -1
    while slot != -1:
        nxt = st.pte_next[slot]
        if remove_migration_pte(st, slot, page, newpage) and newpage != page:
            if prev == -1:
                st.page["rmap"][page] = nxt
            else:
                st.pte_next[prev] = nxt
            mm.rmap_add(st, newpage, slot)
        else:
            prev = slot
        slot = nxt


@internal
def restore_exclusive_pte(st, v, slot):
    """do_swap_page()'s remove_device_exclusive_entry() (modern): the page locked
    (else RETRY), every mirror forgets the slot (MMU_NOTIFY_EXCLUSIVE, no owner:
    the ATOMIC tag goes), and the ordinary PTE comes back, writable where the
    entry and the VMA are (rmap and mapcount never left); the access retries."""
    pte = st.pte[slot]
    pfn = mm.pte_pfn(pte)
    if not mm.trylock_page(st, pfn):
        return L.FAULT_RETRY
    mm.unmirror_all(st, slot)
    write = mm.pte_write(pte) and (st.vma["flags"][v] & L.VM_WRITE) != 0
    st.pte[slot] = mm.make_pte(L.PTE_PRESENT, pfn, write)
    mm.unlock_page(st, pfn)
    return L.FAULT_RETRY
