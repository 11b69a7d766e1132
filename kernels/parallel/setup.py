"""migrate_vma_setup()'s plain sweep: the plain slots by their net effect, over threads.

A *plain* slot is a present anonymous 4 KiB page on the LRU, mapped once, with
no other reference (so not pinned, not in an LRU-add batch, not locked), or a
device-private entry of an anonymous device page mapped once, with no other
reference and not locked, that the call selects: its collect + prepare +
unmap touch nothing but its own page and PTE, so it commutes with every other
slot (kernels.parallel.schedule). Each thread takes
its slots until the first one that is not plain; the rest run through the
serial fused sweep afterwards, in slot order. Below the engine's
``parallel_min_pages`` the one thread is this one (no parallel region).

The plain test decides every branch of a plain slot's three steps, so the
threads write the steps' net effect (_setup_plain_slot) instead of calling the
generic per-slot steps, which re-test each branch:

    kernel step (per page)            net effect on a plain page
    get_page()                        refcount 1 -> 2
    trylock_page()                    PG_locked set
    migration entry (collect, 15/19)  PTE -> migration entry; mapcount 1 -> 0;
                                      put_page(): refcount 2 -> 1
    isolate_lru_page() (prepare)      PG_lru cleared; refcount 1 -> 2
    the collect reference dropped     refcount 2 -> 1
    migrate_vma_check_page() x2       passes (refcount - 1 == 0 == mapcount)
    counters                          none move; cpages and collected +1
    modern: ptep_clear_flush()        tlb_flush +1 (an anon-exclusive present PTE,
                                      B_ANON_EXCLUSIVE)
    modern: the PTE's dirty bit       PG_dirty set when the PTE was dirty
                                      (B_DIRTY_TO_FOLIO)

A plain device-private slot (the way back) takes the same steps but the LRU's:

    kernel step (per page)            net effect on a plain device page
    get_page(), trylock_page()        PG_locked set
    migration entry (collect)         entry -> migration entry, read-only in
                                      4.14 (its swap PTE has no write bit),
                                      writable as the entry was from
                                      B_WRITABLE_DEVICE_ENTRY; mapcount 1 -> 0;
                                      put_page(): the refcount is back
    prepare (4.14)                    ZONE_DEVICE: no LRU step, the collect
                                      reference kept
    migrate_vma_check_page() x2       passes (4.14: device-private always;
                                      modern: refcount - 2 <= 0)
    counters                          none move (no present PTE was cleared:
                                      no flush); cpages and collected +1
    modern: the entry's dirty bit     as for a present page (B_DIRTY_TO_FOLIO)

tests/properties/test_parallel.py holds this path to the serial sweep, which
takes the generic steps. When every slot was a plain RAM page,
``mig[MIG_ALL_PLAIN]`` is set: a driver may then take the batch as a whole
(kernels.device.reserve).
"""

from collections import namedtuple

import numpy as np
from numba import prange

from .. import _indices as I
from .. import layout as L
from .. import mm
from .._indices import PREFETCH_AHEAD
from .._jit import internal
from ..fused_setup import setup_sweep
from .schedule import clear_thread_counts, merge_thread_counts, plan_chunks


# --------------------------------------------------------------------- setup
@internal
def _plain_pfn(st, slot):
    """The frame of a slot whose collect + prepare + unmap touch nothing but its
    own page and PTE, or -1: a present anonymous 4 KiB page on the LRU, mapped
    once, with no other reference (so not pinned, not in an LRU-add batch, not
    locked)."""
    pte = st.pte[mm.ix(slot)]
    if mm.pte_kind(pte) != L.PTE_PRESENT:
        return np.int64(-1)
    pfn = mm.pte_pfn(pte)
    if mm.is_zero_pfn(st, pfn):
        return np.int64(-1)
    at = mm.ix(pfn)
    flags = st.page["flags"][at]
    if (flags & L.PG_LRU) == 0 or (flags & I.PLAIN_SETUP_EXCLUDED) != 0:
        return np.int64(-1)
    plain = (
        st.page["mapping"][at] == L.MAPPING_ANON
        and st.page["refcount"][at] == 1
        and st.page["mapcount"][at] == 1
    )
    return pfn if plain else np.int64(-1)


@internal
def _plain_device_pfn(st, slot, sel):
    """The frame of a slot whose setup touches nothing but its own page and PTE
    on the way back, or -1: a device-private entry of an anonymous 4 KiB device
    page mapped once, with no other reference (its mapping's and the device's
    base one, mm.device_base_ref()), not pinned, not locked and not the fault
    page, of a device the call selects (``sel``: _selection())."""
    pte = st.pte[mm.ix(slot)]
    if mm.pte_kind(pte) != L.PTE_DEVICE:
        return np.int64(-1)
    pfn = mm.pte_pfn(pte)
    if pfn == sel.fault_pfn or not mm.is_device_private(st, pfn):
        return np.int64(-1)
    at = mm.ix(pfn)
    if (st.page["flags"][at] & I.PLAIN_DEVICE_EXCLUDED) != 0:
        return np.int64(-1)
    if sel.by_owner and st.dev[mm.device_of(st, pfn), L.DEV_OWNER] != sel.owner:
        return np.int64(-1)
    plain = (
        st.page["mapping"][at] == L.MAPPING_ANON
        and st.page["refcount"][at] == 1 + mm.device_base_ref(st, pfn)
        and st.page["mapcount"][at] == 1
        and st.page["pins"][at] == 0
    )
    return pfn if plain else np.int64(-1)


# What a call (``st.mig``) collects, read once a sweep: system pages
# (``system``), device-private pages (``devices``), of the device owner
# ``owner`` only when ``by_owner``; the fault page (-1 for none).
Selection = namedtuple("Selection", ["system", "devices", "by_owner", "owner", "fault_pfn"])


@internal
def _selection(st):
    """The call's Selection. 4.14 collects every present page and every
    device-private entry; with selection flags (B_SELECT) SELECT_SYSTEM takes
    the first and SELECT_DEVICE_PRIVATE the second, of the call's pgmap owner."""
    mig = st.mig
    select = mm.behaves(st, L.B_SELECT)
    system = not select or (mig[L.MIG_FLAGS] & L.MIGRATE_VMA_SELECT_SYSTEM) != 0
    devices = mm.behaves(st, L.B_DEVICE_PRIVATE) and (
        not select or (mig[L.MIG_FLAGS] & L.MIGRATE_VMA_SELECT_DEVICE_PRIVATE) != 0
    )
    return Selection(system, devices, select, mig[L.MIG_OWNER], mig[L.MIG_FAULT_PFN])


# The layout's bits of a plain slot's mpfns: ``src`` and ``dst`` are ORed into
# ``pfn << shift``, ``write`` when the PTE was writable, ``device`` for a
# device-private page.
PlainBits = namedtuple("PlainBits", ["shift", "src", "dst", "write", "device"])


@internal(inline=True)
def _plain_bits(lay):
    """PlainBits of layout ``lay``, read once a sweep: in the loop, every store
    to another array makes the compiled code load them from ``lay`` again."""
    valid_locked = lay[L.L_VALID] | lay[L.L_LOCKED]
    src = valid_locked | lay[L.L_MIGRATE]
    return PlainBits(lay[L.L_SHIFT], src, valid_locked, lay[L.L_WRITE], lay[L.L_DEVICE])


@internal
def _setup_plain_slot(st, slot, pfn, bits, dirty_to_folio):
    """collect_slot() + prepare_slot() + unmap_slot() of a plain slot mapping
    ``pfn``, written as their net effect; returns the slot's mpfn.

    The steps it replaces and their net effect are tabled in the module doc.
    """
    at = mm.ix(pfn)
    pte = st.pte[mm.ix(slot)]
    write = mm.pte_write(pte)
    st.pte[mm.ix(slot)] = mm.make_pte(L.PTE_MIGRATION, pfn, write)
    st.page["mapcount"][at] = 0  # it was 1
    st.page["flags"][at] = (st.page["flags"][at] ^ L.PG_LRU) | L.PG_LOCKED  # LRU was set
    if dirty_to_folio and (pte & L.PTE_DIRTY) != 0:
        st.page["flags"][at] |= L.PG_DIRTY
    mpfn = (np.uint64(pfn) << bits.shift) | bits.src
    return (mpfn | bits.write) if write else mpfn


@internal
def _setup_plain_device_slot(st, slot, pfn, bits, dirty_to_folio, writable_entry):
    """collect_slot() + prepare_slot() + unmap_slot() of a plain device-private
    slot mapping ``pfn``, written as their net effect; returns the slot's mpfn
    (tabled in the module doc). ``writable_entry``: B_WRITABLE_DEVICE_ENTRY."""
    at = mm.ix(pfn)
    pte = st.pte[mm.ix(slot)]
    write = mm.pte_write(pte)
    st.pte[mm.ix(slot)] = mm.make_pte(L.PTE_MIGRATION, pfn, write and writable_entry)
    st.page["mapcount"][at] = 0  # it was 1
    st.page["flags"][at] |= L.PG_LOCKED
    if dirty_to_folio and (pte & L.PTE_DIRTY) != 0:
        st.page["flags"][at] |= L.PG_DIRTY
    mpfn = (np.uint64(pfn) << bits.shift) | bits.src | bits.device
    return (mpfn | bits.write) if write else mpfn


@internal
def _setup_plain_run(st, v, start, src, dst, t):
    """One thread: collect + prepare + unmap its slots until the first one that
    is not plain (or whose PMD is not a page table); records where it stopped
    and how many device pages it took."""
    info = st.sweep_info
    mig = st.sweep_mig[t]
    counters = st.sweep_counters[t]
    ps = st.sys[L.SYS_PAGE_SIZE]
    slot0 = mm.pte_slot(st, v, start)
    ext_mask = mm.pmd_extent(st) - 1
    bits = _plain_bits(st.layout)
    sel = _selection(st)
    dirty_to_folio = mm.behaves(st, L.B_DIRTY_TO_FOLIO)
    writable_entry = mm.behaves(st, L.B_WRITABLE_DEVICE_ENTRY)
    flush_each = mm.behaves(st, L.B_ANON_EXCLUSIVE)  # a plain RAM page is anon-exclusive
    first = info[t, I.SW_FIRST]
    i = first
    end = info[t, I.SW_END]
    unmapped = 0  # present PTEs cleared in this PMD extent
    present = 0
    while i < end:
        addr = start + i * ps
        if i == first or (addr & ext_mask) == 0:
            if unmapped:
                counters[L.C_TLB_FLUSH] += 1  # the extent before cleared present PTEs
            unmapped = 0
            if mm.pmd_kind(st.pmd[mm.pmd_slot(st, v, addr)]) != L.PMD_TABLE:
                break
        if i + PREFETCH_AHEAD < end:
            ahead = st.pte[mm.ix(slot0 + i + PREFETCH_AHEAD)]
            if mm.pte_kind(ahead) != L.PTE_NONE:
                mm.prefetch_page(st, mm.pte_pfn(ahead))
        pfn = _plain_pfn(st, slot0 + i) if sel.system else np.int64(-1)
        if pfn >= 0:
            src[mm.ix(i)] = _setup_plain_slot(st, slot0 + i, pfn, bits, dirty_to_folio)
            unmapped += 1
            present += 1
        else:
            pfn = _plain_device_pfn(st, slot0 + i, sel) if sel.devices else np.int64(-1)
            if pfn < 0:
                break
            src[mm.ix(i)] = _setup_plain_device_slot(
                st, slot0 + i, pfn, bits, dirty_to_folio, writable_entry
            )
        dst[mm.ix(i)] = L.MPFN_NONE
        i += 1
    collected = i - first
    if flush_each:
        counters[L.C_TLB_FLUSH] += present
    mig[L.MIG_CPAGES] += collected
    mig[L.MIG_COLLECTED] += collected
    if i == end and unmapped:
        counters[L.C_TLB_FLUSH] += 1
        unmapped = 0
    info[t, I.SW_STOP] = i
    info[t, I.SW_PARTIAL] = unmapped  # the stopped extent's flush is still owed
    info[t, I.SW_DEVICE] = collected - present


@internal(parallel=True)
def _setup_plain_runs(st, v, start, src, dst, threads):
    for t in prange(threads):
        _setup_plain_run(st, v, start, src, dst, np.int64(t))


@internal
def starts_plain(st, v, start):
    """Whether the slot at ``start`` (page-aligned, in VMA ``v``) is plain: a
    batch that does not start plain (a hole, a page in an LRU-add batch) goes
    straight to the fused sweep, without the plain sweep's fixed cost."""
    if mm.pmd_kind(st.pmd[mm.pmd_slot(st, v, start)]) != L.PMD_TABLE:
        return False
    slot = mm.pte_slot(st, v, start)
    sel = _selection(st)
    if sel.system and _plain_pfn(st, slot) >= 0:
        return True
    return sel.devices and _plain_device_pfn(st, slot, sel) >= 0


@internal
def setup_parallel(st, v, start, npages, src, dst, mig, threads):
    """migrate_vma_setup()'s plain sweep over ``threads`` threads (see the module
    doc); one thread runs it here, without a parallel region.

    Pre: hmm-v25 or modern (kernels.parallel.schedule.plain_sweeps());
    ``mig`` zeroed but for START/END/VMA. This CPU's LRU-add
    batch may hold pages: prepare's local lru_add_drain() then runs at the
    first slot the serial remainder collects, or after the sweep
    (setup_range()). A plain page is on the LRU, so in no batch, and the drain
    touches no plain slot; nor does any slot's setup allocate a frame: so
    draining there leaves the state draining at the first collected slot does.
    Post: the state, ``src``, ``dst`` and ``mig`` the serial sweep leaves, and
    ``mig[MIG_ALL_PLAIN]`` set when every slot was a plain RAM page.
    """
    used = plan_chunks(st, start, npages, threads)
    clear_thread_counts(st, used)
    if used == 1:
        _setup_plain_run(st, v, start, src, dst, np.int64(0))
    else:
        _setup_plain_runs(st, v, start, src, dst, used)
    merge_thread_counts(st, used, mig)
    finished = True
    devices = 0
    for t in range(used):
        finished = finished and st.sweep_info[t, I.SW_STOP] == st.sweep_info[t, I.SW_END]
        devices += st.sweep_info[t, I.SW_DEVICE]
    if not finished:
        _finish_setup_serially(st, v, start, src, dst, mig, used)
    elif devices == 0:
        mig[I.MIG_ALL_PLAIN] = 1  # every slot a plain RAM page: the reserved path may run
    mig[L.MIG_NPAGES] = npages
    mig[L.MIG_END] = start + npages * st.sys[L.SYS_PAGE_SIZE]


@internal(inline=True)
def _finish_setup_serially(st, v, start, src, dst, mig, used):
    """After a thread stopped early: each thread's remaining slots, in slot order."""
    ps = st.sys[L.SYS_PAGE_SIZE]
    info = st.sweep_info
    for t in range(used):
        stop = info[t, I.SW_STOP]
        end = info[t, I.SW_END]
        if stop < end:
            mig[L.MIG_NPAGES] = stop
            partial = info[t, I.SW_PARTIAL]
            setup_sweep(st, v, start + stop * ps, start + end * ps, src, dst, mig, partial)
