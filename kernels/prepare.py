"""migrate_vma_prepare(): lock the collected pages and isolate them from the LRU.

Profiles: ``seed`` is 14/19 as posted, with the one correction the public contract makes
(the collect reference is dropped after isolation). ``hmm-v25`` is 4.14: pages
already locked and unmapped by collect are restored ("remapped") on failure,
and ZONE_DEVICE pages skip the LRU steps.
"""

from . import layout as L
from . import mm
from ._jit import internal, kernel
from .pin_check import migrate_vma_check_page
from .rmap import remove_migration_pte


@internal(hot=True)
def _prepare_seed_slot(st, src, k, pfn, mig):
    """The seed's loop body for one collected page."""
    lay = st.layout
    if not mm.trylock_page(st, pfn):
        src[k] = L.MPFN_NONE  # best effort: back off rather than risk an ABBA deadlock
        mig[L.MIG_CPAGES] -= 1
        mm.put_page(st, pfn)
        return
    src[k] |= lay[L.L_LOCKED]
    mm.drain_all_once(st, pfn, mig)
    if mm.isolate_lru_page(st, pfn) != 0:
        src[k] = L.MPFN_NONE
        mm.unlock_page(st, pfn)
        mig[L.MIG_CPAGES] -= 1
        mm.put_page(st, pfn)
        return
    # Correction to the patch as posted (the public contract, seed profile): its comments say
    # "the ref taken by migrate_vma_collect() is dropped", but the code never
    # drops it, so no LRU page could pass the pinned check. Drop it here, as the
    # comments describe and as 4.14 does.
    mm.put_page(st, pfn)
    if not migrate_vma_check_page(st, pfn, -1):
        src[k] = L.MPFN_NONE
        mm.unlock_page(st, pfn)
        mig[L.MIG_CPAGES] -= 1
        mm.putback_lru_page(st, pfn)


@internal
def _drop(st, src, k, pfn, mig, remap):
    """A prepare failure: restore later if collect unmapped it, else let go now."""
    lay = st.layout
    mig[L.MIG_CPAGES] -= 1
    if remap:
        src[k] &= ~lay[L.L_MIGRATE]
        return 1
    src[k] = L.MPFN_NONE
    mm.unlock_page(st, pfn)
    return 0


@internal(hot=True)
def _prepare_hmm_slot(st, src, k, pfn, mig):
    """4.14's loop body for one collected page; 1 when it must be remapped."""
    lay = st.layout
    remap = True
    if (src[k] & lay[L.L_LOCKED]) == 0:
        if not mm.trylock_page(st, pfn):
            src[k] = L.MPFN_NONE
            mig[L.MIG_CPAGES] -= 1
            mm.put_page(st, pfn)
            return 0
        remap = False
        src[k] |= lay[L.L_LOCKED]
    device = mm.is_zone_device(st, pfn)
    if not device:
        mm.drain_all_once(st, pfn, mig)
        if mm.isolate_lru_page(st, pfn) != 0:
            restore = _drop(st, src, k, pfn, mig, remap)
            if not remap:
                mm.put_page(st, pfn)
            return restore
        mm.put_page(st, pfn)  # drop the reference taken in collect
    if migrate_vma_check_page(st, pfn, -1):
        return 0
    restore = _drop(st, src, k, pfn, mig, remap)
    if remap and not device:
        mm.get_page(st, pfn)
        mm.putback_lru_page(st, pfn)
    elif not remap:
        if device:
            mm.put_page(st, pfn)
        else:
            mm.putback_lru_page(st, pfn)
    return restore


@internal(inline=True)
def prepare_slot(st, src, k, mig):
    """migrate_vma_prepare() for slot ``k`` alone; 1 when it must be remapped.

    A slot without a page is left alone. seed: trylock, isolate, drop the
    collect reference, check pins. hmm-v25: pages collect already locked skip
    the trylock; ZONE_DEVICE pages skip the LRU steps; a failure on a page
    collect unmapped clears MIGRATE and returns 1 (see restore_remapped_slot).
    modern has no prepare (B_LOCK_IN_COLLECT): its steps are in
    :func:`kernels.unmap.device_unmap_slot`.
    """
    pfn = mm.mpfn_to_pfn(st.layout, src[k])
    if pfn < 0:
        return 0
    if mm.behaves(st, L.B_COLLECT_UNMAPS):
        return _prepare_hmm_slot(st, src, k, pfn, mig)
    _prepare_seed_slot(st, src, k, pfn, mig)
    return 0


@internal(hot=True)
def restore_remapped_slot(st, slot, src, k):
    """The trailing loop of 4.14 prepare for one slot: re-map at the original
    address, unlock, drop the collect reference, and clear the slot."""
    pfn = mm.mpfn_to_pfn(st.layout, src[k])
    remove_migration_pte(st, slot, pfn, pfn)
    src[k] = L.MPFN_NONE
    mm.unlock_page(st, pfn)
    mm.put_page(st, pfn)


@internal
def _restore_remapped(st, v, src, mig, restore):
    """The trailing loop of 4.14 prepare: re-map at the original address."""
    lay = st.layout
    npages = mig[L.MIG_NPAGES]
    slot0 = mm.pte_slot(st, v, mig[L.MIG_START])
    i = 0
    while i < npages and restore > 0:
        if mm.mpfn_to_pfn(lay, src[i]) >= 0 and (src[i] & lay[L.L_MIGRATE]) == 0:
            restore_remapped_slot(st, slot0 + i, src, i)
            restore -= 1
        i += 1


@kernel
def migrate_vma_prepare(st, v, src, mig):
    """migrate_vma_prepare() - lock pages and isolate them from the LRU.

    Args:
        st: machine state. v: VMA index. src: the collected slots.
        mig: ``struct migrate_vma`` scalars after collect.
    Pre: every page in ``src`` holds the collect reference.
    Post: every page still MIGRATE is locked (LOCKED set), isolated from the LRU
    (unless ZONE_DEVICE) and not pinned, holding exactly one extra reference;
    every other collected page is unlocked, back on the LRU and mapped as before
    with ``src = 0``; ``mig[MIG_CPAGES]`` is decremented for each. Trylock only,
    never wait; ``lru_add_drain_all()`` at most once per call, after one local
    ``lru_add_drain()`` on this CPU (the driver's, or the faulting one in a fault).
    """
    mm.lru_add_drain(st, mm.this_cpu(st))
    mig[L.MIG_DRAINED_ALL] = 0
    npages = mig[L.MIG_NPAGES]
    restore = 0
    i = 0
    while i < npages and mig[L.MIG_CPAGES] > 0:
        restore += prepare_slot(st, src, i, mig)
        i += 1
    _restore_remapped(st, v, src, mig, restore)
