"""The way back's finish (device to system): a plain slot by its net effect.

A migration back to RAM finishes on this thread, in slot order
(kernels.device.finish.finish_slots), so a slot may take either path without
changing what any other slot sees. A *plain back slot* is a device-private
4 KiB page whose only mapping is this slot's migration entry, holding just the
references the move expects, with a RAM page as its destination: the generic
steps then take one branch each, and write this (hmm-v25 and modern):

    kernel step (per slot)               net effect on a plain back slot
    migrate_page_move_mapping()          index, mapping, dirty and mlocked move to
                                         the new page (the refcount is the expected
                                         1 + the device's base reference)
    dmirror finalize_and_map (to sys)    the device's mirror entry for the slot goes
    remove_migration_ptes()              migration entry -> present PTE, writable as
                                         the entry was; another device mirroring the
                                         page there forgets it; the new page mapped
                                         once, one more reference, on the slot's rmap
                                         chain, which the device page leaves
    unlock_page() x2                     both unlocked
    put_page() of the device page        as the generic step: its last use, so it
                                         goes back to its device's free stack
                                         (4.14's release() and modern's put alike)
    putback_lru_page(newpage)            as the generic step: this CPU's LRU-add batch
    counters                             pgmigrate_success +1

The order-dependent steps (the free stack, the LRU-add batch) are the generic
calls themselves. tests/properties/test_parallel.py holds the path to the
per-slot steps.
"""

import numpy as np

from .. import layout as L
from .. import mm
from .._jit import internal

# A folio's pages (its head and tails), source or destination, are no plain back slot.
_NOT_BASE = L.PG_HEAD | L.PG_TAIL


@internal(hot=True)
def plain_back_slot(state, slot, src, dst, i, fault_pfn):
    """Whether slot ``i`` (PTE slot ``slot``) finishes by finish_back_plain_slot():
    MIGRATE, not COMPOUND, a device-private anonymous source other than the
    fault page, with the refcount migrate_page_move_mapping() expects and only
    this slot's migration entry on its rmap chain; a RAM base page as the
    destination."""
    lay = state.layout
    mpfn = src[i]
    if (mpfn & lay[L.L_MIGRATE]) == 0 or (mpfn & lay[L.L_COMPOUND]) != 0:
        return False
    page = mm.mpfn_to_pfn(lay, mpfn)
    newpage = mm.mpfn_to_pfn(lay, dst[i])
    if page < 0 or newpage < 0 or page == fault_pfn:
        return False
    if not mm.is_device_private(state, page) or mm.is_zone_device(state, newpage):
        return False
    pg = state.page
    if ((pg["flags"][page] | pg["flags"][newpage]) & _NOT_BASE) != 0:
        return False
    pte = state.pte[slot]
    return (
        pg["mapping"][page] == L.MAPPING_ANON
        and pg["refcount"][page] == 1 + mm.device_base_ref(state, page)
        and pg["rmap"][page] == slot
        and state.pte_next[slot] == -1
        and mm.pte_kind(pte) == L.PTE_MIGRATION
        and mm.pte_pfn(pte) == page
    )


@internal(hot=True)
def finish_back_plain_slot(state, slot, src, dst, i):
    """pages, finalize_and_map and finalize of a plain back slot (plain_back_slot()),
    as their net effect (tabled in the module doc). The slot moved one page."""
    lay = state.layout
    page = mm.mpfn_to_pfn(lay, src[i])
    newpage = mm.mpfn_to_pfn(lay, dst[i])
    pg = state.page
    moved = pg["flags"][page] & (L.PG_DIRTY | L.PG_MLOCKED)
    pg["index"][newpage] = pg["index"][page]
    pg["mapping"][newpage] = pg["mapping"][page]
    pg["flags"][page] &= ~(L.PG_DIRTY | L.PG_MLOCKED | L.PG_LOCKED)
    pg["flags"][newpage] = (pg["flags"][newpage] | moved) & ~L.PG_LOCKED
    own = mm.device_of(state, page)
    for d in range(state.mirror.shape[0]):
        m = state.mirror[d, slot]
        if d == own or (m >= 0 and mm.mirror_pfn(m) == page):
            state.mirror[d, slot] = -1
    state.pte[slot] = mm.make_pte(L.PTE_PRESENT, newpage, mm.pte_write(state.pte[slot]))
    pg["mapcount"][newpage] += 1
    pg["refcount"][newpage] += 1
    pg["rmap"][page] = -1
    mm.rmap_add(state, newpage, slot)
    mm.put_page(state, page)
    mm.putback_lru_page(state, newpage)
    state.counters[L.C_PGMIGRATE_SUCCESS] += 1
    return np.int64(1)
