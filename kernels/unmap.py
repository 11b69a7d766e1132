"""migrate_vma_unmap(): replace every remaining mapping by a migration entry.

Profiles: ``seed`` unmaps every page here (its collect maps nothing away);
``hmm-v25`` only calls try_to_unmap() for pages still mapped elsewhere (other
processes after fork, other VMAs), since collect already unmapped the walked PTE.
"""

from . import layout as L
from . import mm
from ._jit import internal, kernel
from .pin_check import migrate_vma_check_page
from .rmap import remove_migration_ptes, try_to_unmap


@internal(inline=True)
def _unmap_one(st, pfn, hmm):
    """True when the page is fully unmapped and not pinned."""
    if not hmm or mm.page_mapped(st, pfn):
        try_to_unmap(st, pfn)
        if mm.page_mapped(st, pfn):
            return False
    return migrate_vma_check_page(st, pfn)


@internal(hot=True)
def unmap_slot(st, src, i, mig, hmm):
    """migrate_vma_unmap() for slot ``i`` alone; 1 when the page must be restored.

    A page that stays mapped or pinned loses MIGRATE and cpages drops by one;
    restore_slot() then puts it back.
    """
    lay = st.layout
    pfn = mm.mpfn_to_pfn(lay, src[i])
    if pfn < 0 or (src[i] & lay[L.L_MIGRATE]) == 0:
        return 0
    if _unmap_one(st, pfn, hmm):
        return 0
    src[i] &= ~lay[L.L_MIGRATE]
    mig[L.MIG_CPAGES] -= 1
    return 1


@internal(hot=True)
def restore_slot(st, src, i):
    """The restore loop of migrate_vma_unmap() for one slot: map the page back
    everywhere, unlock it, put it back (LRU) or put it (ZONE_DEVICE)."""
    pfn = mm.mpfn_to_pfn(st.layout, src[i])
    remove_migration_ptes(st, pfn, pfn)
    src[i] = L.MPFN_NONE
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
    extra reference.
    Post: every page still MIGRATE is mapped nowhere: each of its mappings, in
    every process, is a migration entry. A page that is still mapped or pinned
    is restored everywhere (remove_migration_ptes(page, page)), unlocked, put
    back (LRU) or put (ZONE_DEVICE), and its slot set to 0; cpages drops by one.
    """
    lay = st.layout
    hmm = st.sys[L.SYS_PROFILE] == L.PROFILE_HMM_V25
    npages = mig[L.MIG_NPAGES]
    restore = 0
    for i in range(npages):
        restore += unmap_slot(st, src, i, mig, hmm)
    i = 0
    while i < npages and restore > 0:
        if mm.mpfn_to_pfn(lay, src[i]) >= 0 and (src[i] & lay[L.L_MIGRATE]) == 0:
            restore_slot(st, src, i)
            restore -= 1
        i += 1
