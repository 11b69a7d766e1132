"""migrate_vma_check_page(): is a page pinned beyond what migration expects?

Shared by prepare and unmap, as in mm/migrate.c.
"""

from . import layout as L
from . import mm
from ._jit import internal


@internal(hot=True)
def migrate_vma_check_page(st, pfn, fault_pfn):
    """migrate_vma_check_page() - False when the page is pinned.

    Args: st, pfn, fault_pfn (modern's ``fault_page``, -1 for none). Pre: the
    caller holds one reference beyond the mappings (isolation for an LRU page,
    collect for a device page).
    seed: compound pages fail; pinned iff ``page_count - 1 > page_mapcount``.
    hmm-v25 (16/19) adds: device-private pages always pass (a waiter on a
    migration entry holds a transient reference); a page-cache page has one
    more expected reference. modern (v6.1) counts instead: +1 for the fault
    page (do_swap_page()'s reference), +1 for any ZONE_DEVICE page.
    """
    if mm.has_flag(st, pfn, L.PG_HEAD | L.PG_TAIL) and not mm.behaves(st, L.B_DEVICE_THP):
        return False  # the device-THP series dropped this "FIXME support THP" check
    extra = 1
    if mm.behaves(st, L.B_DEVICE_PRIVATE):
        if mm.is_zone_device(st, pfn):
            if not mm.behaves(st, L.B_DEVICE_REF0):
                return True
            extra += 1
        if st.page["mapping"][pfn] == L.MAPPING_FILE:
            extra += 1
    if mm.behaves(st, L.B_FAULT_PAGE) and pfn == fault_pfn:
        extra += 1
    return st.page["refcount"][pfn] - extra <= st.page["mapcount"][pfn]
