"""migrate_vma_finalize(): point every migration entry at the new or the old page.

Profiles: ``seed`` puts every page back on the LRU; ``hmm-v25`` puts ZONE_DEVICE
pages (which never sit on an LRU) and unlocks and puts the destination of a
filled hole.
"""

from . import layout as L
from . import mm
from ._jit import internal, kernel
from .rmap import remove_migration_ptes


@internal(inline=True)
def release(st, pfn, hmm):
    """put_page() for ZONE_DEVICE pages, putback_lru_page() for the others."""
    if hmm and mm.is_zone_device(st, pfn):
        mm.put_page(st, pfn)
    else:
        mm.putback_lru_page(st, pfn)


@internal(hot=True)
def finalize_slot(st, src, dst, i, hmm):
    """Finish one slot; returns 1 when it was a collected page (cpages--)."""
    lay = st.layout
    newpage = mm.mpfn_to_pfn(lay, dst[i])
    page = mm.mpfn_to_pfn(lay, src[i])
    if page < 0:
        if hmm and newpage >= 0:
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
    mm.unlock_page(st, page)
    release(st, page, hmm)
    if newpage != page:
        mm.unlock_page(st, newpage)
        release(st, newpage, hmm)
        st.counters[L.C_PGMIGRATE_SUCCESS] += 1
    return 1


@kernel
def migrate_vma_finalize(st, npages, src, dst):
    """migrate_vma_finalize() - restore CPU page table entries.

    Args: st, npages, src, dst (after finalize_and_map()).
    Pre: every collected page is locked, unmapped (migration entries) and holds
    one extra reference; every destination is locked.
    Post: each migration entry maps the new page when the slot kept MIGRATE and
    has a destination, otherwise the old page; no page involved is locked; the
    migrated source has dropped its last reference and is free; an unused
    destination has been put (freed). Returns the number of collected pages.
    Counts pgmigrate_success per page moved, and pgmigrate_fail per page whose
    driver-supplied destination went unused (-EAGAIN, refused, pinned).
    """
    hmm = st.sys[L.SYS_PROFILE] == L.PROFILE_HMM_V25
    done = 0
    for i in range(npages):
        done += finalize_slot(st, src, dst, i, hmm)
    return done
