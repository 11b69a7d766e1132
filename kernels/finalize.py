"""migrate_vma_finalize(): point every migration entry at the new or the old page.

Profiles: ``seed`` puts every page back on the LRU; ``hmm-v25`` puts ZONE_DEVICE
pages (which never sit on an LRU) and unlocks and puts the destination of a
filled hole (16/19, 17/19). ``modern`` (migrate_device_finalize()) puts only the
target on the LRU, so a migrated source is freed at once (41cddf83d8b0, 2025),
and never unlocks the fault page (v6.1).
"""

from . import layout as L
from . import mm
from ._jit import internal, kernel
from .rmap import remove_migration_ptes


@internal(inline=True)
def release(st, pfn):
    """put_page() for ZONE_DEVICE pages (none in seed), putback_lru_page() for
    the others."""
    if mm.is_zone_device(st, pfn):
        mm.put_page(st, pfn)
    else:
        mm.putback_lru_page(st, pfn)


@internal(inline=True)
def _release_source(st, page, newpage, fault_pfn):
    """Unlock (modern: not the fault page) and release the source. modern: a
    source that migrated away is put, not put back (41cddf83d8b0)."""
    modern = mm.behaves(st, L.B_TARGET_LRU)
    if not (mm.behaves(st, L.B_FAULT_PAGE) and page == fault_pfn):
        mm.unlock_page(st, page)
    if modern and newpage != page:
        mm.put_page(st, page)
    else:
        release(st, page)


@internal(hot=True)
def finalize_slot(st, src, dst, i, fault_pfn):
    """Finish one slot; returns 1 when it was a collected page (cpages--)."""
    lay = st.layout
    newpage = mm.mpfn_to_pfn(lay, dst[i])
    page = mm.mpfn_to_pfn(lay, src[i])
    if page < 0:
        if mm.behaves(st, L.B_HOLES) and newpage >= 0:
            mm.unlock_page(st, newpage)
            mm.put_page(st, newpage)
        return 0
    if (src[i] & lay[L.L_MIGRATE]) == 0 or newpage < 0:
        if newpage >= 0:
            mm.unlock_page(st, newpage)
            mm.put_page(st, newpage)
            st.counters[L.C_PGMIGRATE_FAIL] += 1  # a destination was offered, in vain
        newpage = page
    remove_migration_ptes(st, page, newpage)
    _release_source(st, page, newpage, fault_pfn)
    if newpage != page:
        mm.unlock_page(st, newpage)
        release(st, newpage)
        st.counters[L.C_PGMIGRATE_SUCCESS] += 1
    return 1


@kernel
def migrate_vma_finalize(st, npages, src, dst):
    """migrate_vma_finalize() - restore CPU page table entries.

    Args: st, npages, src, dst (after finalize_and_map()).
    Pre: every collected page is locked, unmapped (migration entries) and holds
    one extra reference; every destination is locked.
    Post: each migration entry maps the new page when the slot kept MIGRATE and
    has a destination, otherwise the old page; no page involved is locked
    (modern: but the fault page, ``mig[MIG_FAULT_PFN]``); the migrated source
    has dropped its last reference and is free; an unused destination has been
    put (freed). Returns the number of collected pages.
    Counts pgmigrate_success per page moved, and pgmigrate_fail per page whose
    driver-supplied destination went unused (-EAGAIN, refused, pinned).
    """
    fault_pfn = st.mig[L.MIG_FAULT_PFN]
    done = 0
    for i in range(npages):
        done += finalize_slot(st, src, dst, i, fault_pfn)
    return done
