"""migrate_vma_check_page(): is a page pinned beyond what migration expects?

Shared by prepare and unmap, as in mm/migrate.c.
"""

from . import layout as L
from . import mm
from ._jit import internal


@internal(hot=True)
def migrate_vma_check_page(st, pfn):
    """migrate_vma_check_page() - False when the page is pinned.

    Args: st, pfn. Pre: the caller holds one reference beyond the mappings
    (isolation for an LRU page, collect for a device page).
    seed: compound pages fail; pinned iff ``page_count - 1 > page_mapcount``.
    hmm-v25 adds: device-private pages always pass (a waiter on a migration
    entry holds a transient reference); a page-cache page has one more expected
    reference.
    """
    if mm.has_flag(st, pfn, L.PG_HEAD | L.PG_TAIL):
        return False
    extra = 1
    if st.sys[L.SYS_PROFILE] == L.PROFILE_HMM_V25:
        if mm.is_zone_device(st, pfn):
            return True
        if st.page["mapping"][pfn] == L.MAPPING_FILE:
            extra += 1
    return st.page["refcount"][pfn] - extra <= st.page["mapcount"][pfn]
