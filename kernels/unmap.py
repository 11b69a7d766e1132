"""migrate_vma_unmap(): replace every remaining mapping by a migration entry.

Profiles: ``seed`` unmaps every page here (its collect maps nothing away);
``hmm-v25`` only calls try_to_unmap() for pages still mapped elsewhere (other
processes after fork, other VMAs), since collect already unmapped the walked PTE.
``modern`` is migrate_device_unmap() (mm/migrate_device.c): prepare's LRU
isolation folded in (ab09243aa95a, v5.16), the fault page never unlocked
(v6.1), cpages the slots still MIGRATE (241f68859656).
"""

from . import layout as L
from . import mm
from ._jit import internal, kernel
from .pin_check import migrate_vma_check_page
from .rmap import remove_migration_ptes, try_to_unmap


@internal(inline=True)
def _unmap_one(st, pfn, fault_pfn):
    """True when the page is fully unmapped and not pinned."""
    if not mm.behaves(st, L.B_COLLECT_UNMAPS) or mm.page_mapped(st, pfn):
        try_to_unmap(st, pfn)
        if mm.page_mapped(st, pfn):
            return False
    return migrate_vma_check_page(st, pfn, fault_pfn)


@internal(hot=True)
def _drop_slot(st, src, i, mig):
    """A slot that stays behind: MIGRATE cleared, cpages one less; 1 to restore."""
    src[i] &= ~st.layout[L.L_MIGRATE]
    mig[L.MIG_CPAGES] -= 1
    return 1


@internal(hot=True)
def device_unmap_slot(st, src, i, mig):
    """migrate_device_unmap()'s loop body (modern) for slot ``i``; 1 to restore.

    A page not on a device: lru_add_drain_all() once per call if it is off the
    LRU, isolate it (failure: restore, the collect reference still held) and
    drop the collect reference; then, as 4.14's unmap, try_to_migrate() what
    is still mapped; a page still mapped or pinned is put back on the LRU
    with a reference for the restore loop (folio_get() + folio_putback_lru()).
    """
    pfn = mm.mpfn_to_pfn(st.layout, src[i])
    if pfn < 0 or (src[i] & st.layout[L.L_MIGRATE]) == 0:
        return 0
    device = mm.is_zone_device(st, pfn)
    if not device:
        mm.drain_all_once(st, pfn, mig)
        if mm.isolate_lru_page(st, pfn) != 0:
            return _drop_slot(st, src, i, mig)
        mm.put_page(st, pfn)
    if _unmap_one(st, pfn, mig[L.MIG_FAULT_PFN]):
        return 0
    if not device:
        mm.get_page(st, pfn)
        mm.putback_lru_page(st, pfn)
    return _drop_slot(st, src, i, mig)


@internal(hot=True)
def unmap_slot(st, src, i, mig):
    """migrate_vma_unmap() for slot ``i`` alone; 1 when the page must be restored.

    A page that stays mapped or pinned loses MIGRATE and cpages drops by one;
    restore_slot() then puts it back. modern: device_unmap_slot().
    """
    if mm.behaves(st, L.B_LOCK_IN_COLLECT):
        return device_unmap_slot(st, src, i, mig)
    lay = st.layout
    pfn = mm.mpfn_to_pfn(lay, src[i])
    if pfn < 0 or (src[i] & lay[L.L_MIGRATE]) == 0:
        return 0
    if _unmap_one(st, pfn, -1):
        return 0
    return _drop_slot(st, src, i, mig)


@internal(hot=True)
def restore_slot(st, src, i, fault_pfn):
    """The restore loop of migrate_vma_unmap() for one slot: map the page back
    everywhere, unlock it (modern: not the fault page), and put it back.

    4.14: putback_lru_page(), or put_page() for ZONE_DEVICE. modern: put_page()
    alone, as device_unmap_slot() already put an LRU page back.
    """
    pfn = mm.mpfn_to_pfn(st.layout, src[i])
    remove_migration_ptes(st, pfn, pfn)
    src[i] = L.MPFN_NONE
    if mm.behaves(st, L.B_LOCK_IN_COLLECT):
        if pfn != fault_pfn:
            mm.unlock_page(st, pfn)
        mm.put_page(st, pfn)
        return
    mm.unlock_page(st, pfn)
    if mm.is_zone_device(st, pfn):
        mm.put_page(st, pfn)
    else:
        mm.putback_lru_page(st, pfn)


@kernel
def migrate_vma_unmap(st, src, mig):
    """migrate_vma_unmap() - unmap the pages and check again that none is pinned.

    Args:
        st: machine state. src: slots after prepare. mig: migrate_vma scalars.
    Pre: every MIGRATE page is locked and isolated (or ZONE_DEVICE) and holds one
    extra reference. modern: locked by collect, holding the collect reference.
    Post: every page still MIGRATE is mapped nowhere: each of its mappings, in
    every process, is a migration entry. A page that is still mapped or pinned
    is restored everywhere (remove_migration_ptes(page, page)), unlocked, put
    back (LRU) or put (ZONE_DEVICE), and its slot set to 0; cpages drops by one.
    modern: first this CPU's lru_add_drain(), and the isolation here
    (device_unmap_slot()).
    """
    lay = st.layout
    if mm.behaves(st, L.B_LOCK_IN_COLLECT):
        mm.lru_add_drain(st, mm.this_cpu(st))
        mig[L.MIG_DRAINED_ALL] = 0
    npages = mig[L.MIG_NPAGES]
    restore = 0
    for i in range(npages):
        restore += unmap_slot(st, src, i, mig)
    i = 0
    while i < npages and restore > 0:
        if mm.mpfn_to_pfn(lay, src[i]) >= 0 and (src[i] & lay[L.L_MIGRATE]) == 0:
            restore_slot(st, src, i, mig[L.MIG_FAULT_PFN])
            restore -= 1
        i += 1
