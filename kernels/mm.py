"""Core memory-management primitives over :class:`kernels.state.State`.

These model the kernel helpers the migration passes call: the page allocator,
``get_page``/``put_page``, the page lock, the per-CPU LRU-add batch and
``lru_add_drain_all``, LRU isolation, the reverse map, and the PTE/PMD encoding.
The page-table encodings live in :mod:`kernels.pgtable` and the allocator in
:mod:`kernels.page_alloc`; both are re-exported here, so the passes name every
primitive as ``mm.X``. Every function is a small ``@njit(cache=True, nogil=True,
_nrt=False)`` kernel, which LLVM inlines into its callers. ``_nrt=False``
because with numba's reference counting on, each call taking the state increfs
and decrefs every array (measured at ~600 ns per call); nothing on the per-page
path allocates, so it needs none.
Refcount conventions (every profile unless stated):

* a free RAM frame has refcount 0; a free device frame has 1 in ``hmm-v25``
  (4.14: the device holds a reference, and a put back to 1 frees it), 0 in
  ``seed`` (CPU-addressable device memory behaves like a second RAM node) and
  in ``modern`` (v6.1: allocation sets 1, a put to 0 runs page_free);
* each PTE or device-private entry mapping a page holds one reference;
* the per-CPU LRU-add batch, LRU isolation, the page cache and each pin hold one.
"""

from . import layout as L
from ._jit import internal, kernel
from .page_alloc import (  # noqa: F401  (re-exported: mm is the primitives' one namespace)
    add_pool_free,
    alloc_frame,
    alloc_thp,
    alloc_thp_pool,
    frame_flags,
    free_folio,
    free_frame,
    free_top,
    fresh_flags,
    init_allocated,
    is_fresh,
    mark_free,
    materialize,
    on_free_stack,
    place_free,
    pool_folios,
    pool_free,
    pool_free_pages,
    pool_fresh,
    pool_span,
    ready_pops,
    unplace_free,
)
from .pgtable import (  # noqa: F401  (re-exported)
    behaves,
    clear_flag,
    compound_head,
    device_base_ref,
    device_of,
    has_flag,
    is_device_pfn,
    is_device_private,
    is_zero_pfn,
    is_zone_device,
    ix,
    make_mpfn,
    make_pmd,
    make_pte,
    mirror_pfn,
    mpfn_to_pfn,
    page_down,
    page_size,
    pages_in,
    pmd_extent,
    pmd_kind,
    pmd_maps_folio,
    pmd_slot,
    prefetch_page,
    pte_kind,
    pte_pfn,
    pte_slot,
    pte_write,
    set_flag,
)


# --------------------------------------------------------------------- refcounts
@internal(inline=True)
def get_page(st, pfn):
    st.page["refcount"][compound_head(st, pfn)] += 1


@internal(hot=True)
def _free_compound(st, head):
    if behaves(st, L.B_DEVICE_THP):
        free_folio(st, head)  # modern: kept whole (kernels.page_alloc)
        return
    for j in range(L.HPAGE_PMD_NR):
        st.page["refcount"][head + j] = 0
        free_frame(st, head + j)


@internal(hot=True)
def put_page(st, pfn):
    """Drop a reference; free the page when it reaches its free value.

    A ZONE_DEVICE page is handed back to the device's free list when the count
    returns to its base (device_base_ref: 1 in 4.14, 0 since v6.1).
    """
    head = compound_head(st, pfn)
    refcount = st.page["refcount"]
    if is_zero_pfn(st, head):
        return  # the zero page is never freed or counted
    refcount[head] -= 1
    ref = refcount[head]
    if is_zone_device(st, head):
        if ref == device_base_ref(st, head):
            if has_flag(st, head, L.PG_HEAD):
                _free_compound(st, head)  # a device folio's folio_free() (modern)
            else:
                free_frame(st, head)
        return
    if ref == 0:
        if has_flag(st, head, L.PG_HEAD):
            _free_compound(st, head)
        else:
            free_frame(st, head)


@internal
def pmd_of_first_slot(st, first_slot):
    """The PMD slot that a THP rmap node (a first PTE slot) stands for."""
    nv = st.sys[L.SYS_NR_VMAS]
    ps = st.sys[L.SYS_PAGE_SIZE]
    for v in range(nv):
        if st.vma["live"][v] == 0:
            continue  # munmap()ed: its slots map nothing
        base = st.vma["pte_base"][v]
        npg = (st.vma["end"][v] - st.vma["start"][v]) // ps
        if base <= first_slot < base + npg:
            addr = st.vma["start"][v] + (first_slot - base) * ps
            return pmd_slot(st, v, addr)
    return -1


# --------------------------------------------------------------------- page lock
@internal(inline=True)
def trylock_page(st, pfn):
    if has_flag(st, pfn, L.PG_LOCKED):
        return False
    set_flag(st, pfn, L.PG_LOCKED)
    return True


@internal(inline=True)
def unmirror_all(st, slot):
    """Every device's mirror forgets PTE slot ``slot`` (an mmu-notifier invalidation)."""
    for d in range(st.mirror.shape[0]):
        st.mirror[d, slot] = -1


@internal(inline=True)
def invalidate_mirrors(st, first_slot, nslots):
    """mmu_notifier_invalidate_range_start() over ``nslots`` PTE slots from
    ``first_slot``: every device's mirror forgets them."""
    for d in range(st.mirror.shape[0]):
        st.mirror[d, first_slot : first_slot + nslots] = -1


@internal(inline=True)
def alloc_locked_page(st, pool):
    """A fresh frame of ``pool`` (RAM_POOL or a device index), locked, as a driver's
    allocator hands it to migrate_vma(); -1 when none is free. A device page
    counts in calloc, as mark_free() counts its return in cfree."""
    pfn = alloc_frame(st, pool)
    if pfn >= 0:
        trylock_page(st, pfn)
        if pool >= 0:
            st.counters[L.C_DEVICE_CALLOC] += 1
            st.dev[pool, L.DEV_CALLOC] += 1
    return pfn


@internal
def alloc_locked_folio(st, pool):
    """A fresh 2 MiB folio of ``pool``, locked (zone_device_folio_init() for a
    device: refcount 1, locked; calloc counts its 512 pages); -1 when no
    aligned run is free."""
    head = alloc_thp_pool(st, pool)
    if head >= 0:
        trylock_page(st, head)
        if pool >= 0:
            st.counters[L.C_DEVICE_CALLOC] += L.HPAGE_PMD_NR
            st.dev[pool, L.DEV_CALLOC] += L.HPAGE_PMD_NR
    return head


@internal(inline=True)
def unlock_page(st, pfn):
    clear_flag(st, pfn, L.PG_LOCKED)


# --------------------------------------------------------------------- LRU
@internal(hot=True)
def drain_cpu(st, cpu):
    """__pagevec_lru_add(): move one CPU's batch to the LRU and drop its references."""
    n = st.pagevec_n[cpu]
    for k in range(n):
        pfn = st.pagevec[cpu, k]
        st.pagevec[cpu, k] = -1
        clear_flag(st, pfn, L.PG_PAGEVEC)
        set_flag(st, pfn, L.PG_LRU)
        put_page(st, pfn)
    st.pagevec_n[cpu] = 0


@internal(inline=True)
def drain_all_once(st, pfn, mig):
    """lru_add_drain_all() for the first page a migration finds off the LRU, once
    per call (``mig[MIG_DRAINED_ALL]``): it may sit in another CPU's batch.
    4.14's prepare and modern's migrate_device_unmap() both do it."""
    if not has_flag(st, pfn, L.PG_LRU) and mig[L.MIG_DRAINED_ALL] == 0:
        lru_add_drain_all(st)
        mig[L.MIG_DRAINED_ALL] = 1


@internal(hot=True)
def lru_cache_add(st, cpu, pfn):
    """lru_cache_add(): queue a page in ``cpu``'s LRU-add batch (takes a reference).

    4.14's __lru_cache_add(): the batch drains when this add fills it
    (``pagevec_add()`` left no space: PAGEVEC_SIZE pages), so at most
    PAGEVEC_SIZE - 1 pages wait in it; a compound page drains it at once, the
    pages before it included. Modern folio_batch_add_and_move() has the same
    rule with the folio batch's size (``SYS_LRU_BATCH``).
    """
    get_page(st, pfn)
    set_flag(st, pfn, L.PG_PAGEVEC)
    n = st.pagevec_n[cpu]
    st.pagevec[cpu, n] = pfn
    st.pagevec_n[cpu] = n + 1
    if n + 1 >= st.sys[L.SYS_LRU_BATCH] or has_flag(st, pfn, L.PG_HEAD):
        drain_cpu(st, cpu)


@internal(inline=True)
def this_cpu(st):
    """smp_processor_id(): the CPU the running path is on (``SYS_CPU``): the
    driver's for a migration it starts, the faulting one in a CPU fault."""
    return st.sys[L.SYS_CPU]


@internal(inline=True)
def lru_add_drain(st, cpu):
    """lru_add_drain(): drain the calling CPU's batch only."""
    st.counters[L.C_LRU_ADD_DRAIN] += 1
    if st.pagevec_n[cpu] != 0:
        drain_cpu(st, cpu)


@internal
def lru_add_drain_all(st):
    """lru_add_drain_all(): drain every CPU's batch."""
    st.counters[L.C_LRU_ADD_DRAIN_ALL] += 1
    for cpu in range(L.NR_CPUS):
        drain_cpu(st, cpu)


@internal(inline=True)
def isolate_lru_page(st, pfn):
    """isolate_lru_page(): 0 and a new reference on success, -EBUSY if not on the LRU."""
    if not has_flag(st, pfn, L.PG_LRU):
        return -L.EBUSY
    clear_flag(st, pfn, L.PG_LRU)
    get_page(st, pfn)
    return 0


@internal(inline=True)
def putback_lru_page(st, pfn):
    """putback_lru_page() (4.14 mm/vmscan.c): lru_cache_add() on this CPU, then
    put_page() of the isolation reference.

    The batch's reference keeps the page allocated until the batch drains: a
    migrated source, whose last reference the isolation's was, is freed then.
    """
    head = compound_head(st, pfn)
    lru_cache_add(st, this_cpu(st), head)
    put_page(st, head)


# --------------------------------------------------------------------- reverse map
@internal(inline=True)
def rmap_add(st, pfn, slot):
    st.pte_next[slot] = st.page["rmap"][pfn]
    st.page["rmap"][pfn] = slot


@internal(hot=True)
def rmap_del(st, pfn, slot):
    prev = -1
    cur = st.page["rmap"][pfn]
    while cur != -1 and cur != slot:
        prev = cur
        cur = st.pte_next[cur]
    if cur == -1:
        return
    if prev == -1:
        st.page["rmap"][pfn] = st.pte_next[slot]
    else:
        st.pte_next[prev] = st.pte_next[slot]
    st.pte_next[slot] = -1


@internal(inline=True)
def page_mapped(st, pfn):
    return st.page["mapcount"][compound_head(st, pfn)] > 0


# --------------------------------------------------------------------- mapping
@internal
def map_new_page(st, slot, pfn, write, device_entry):
    """Install a PTE (or device-private entry) for a page, as the fault and insert
    paths do: rmap + mapcount + the mapping's reference."""
    kind = L.PTE_DEVICE if device_entry else L.PTE_PRESENT
    word = make_pte(kind, pfn, write)
    if write and not device_entry:
        word |= L.PTE_DIRTY
        set_flag(st, pfn, L.PG_DIRTY)
    st.pte[slot] = word
    st.page["mapcount"][pfn] += 1
    get_page(st, pfn)
    rmap_add(st, pfn, slot)


@internal
def zap_pte(st, slot):
    """zap_pte_range() for one slot: tear down a present PTE or device entry (rmap,
    mapcount, mirror and reference)."""
    pfn = pte_pfn(st.pte[slot])
    st.pte[slot] = L.PTE_NONE
    unmirror_all(st, slot)  # a device may mirror the zero page too (dev.read)
    if is_zero_pfn(st, pfn):
        return
    st.page["mapcount"][pfn] -= 1
    rmap_del(st, pfn, slot)
    put_page(st, pfn)


@internal(inline=True)
def zero_frame(st, pfn):
    if st.sys[L.SYS_STORE_DATA] == 0:
        return
    ps = st.sys[L.SYS_PAGE_SIZE]
    st.data[pfn * ps : (pfn + 1) * ps] = 0


# --------------------------------------------------------------------- VMAs
@kernel
def find_vma(st, mm_id, addr):
    """find_vma(): the live VMA of process ``mm_id`` containing ``addr``, or -1."""
    for v in range(st.sys[L.SYS_NR_VMAS]):
        if st.vma["live"][v] != 0 and st.vma["mm"][v] == mm_id:
            if st.vma["start"][v] <= addr < st.vma["end"][v]:
                return v
    return -1
