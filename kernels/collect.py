"""migrate_vma_collect(): walk the page table of the range and fill ``src``.

Profiles: ``seed`` is HMM v25 14/19 as posted; ``hmm-v25`` adds 15/19 (lock and
unmap while collecting), 16/19 (device-private entries as sources, ``dst = 0`` in
every slot) and 17/19 (holes and zero-page entries collected as MIGRATE).
``modern`` (mm/migrate_device.c) adds the selection flags and the owner
(B_SELECT), holes only in anonymous VMAs (B_HOLES_ANON_ONLY), an unlockable page
dropped here (B_LOCK_IN_COLLECT), a maybe-pinned anon-exclusive page left mapped
(B_ANON_EXCLUSIVE), the dirty bit moved to the folio (B_DIRTY_TO_FOLIO), the
device entry's write bit kept (B_WRITABLE_DEVICE_ENTRY) and the fault page taken
without a trylock (B_FAULT_PAGE). Each branch tests its bit (``layout.B_*``).
"""

from . import layout as L
from . import mm
from ._indices import PREFETCH_AHEAD
from ._jit import internal, kernel
from .huge_memory import split_huge_page, split_huge_pmd_zero


@internal(inline=True)
def _count(mig, n):
    """cpages += n; MIG_COLLECTED keeps what collect counted, whatever prepare
    and unmap take off cpages later in a fused setup sweep."""
    mig[L.MIG_CPAGES] += n
    mig[L.MIG_COLLECTED] += n


@internal(inline=True)
def holes_collected(st, v):
    """A hole in VMA ``v`` is collected as MIGRATE: hmm-v25 (17/19) in any VMA,
    modern only in an anonymous one ("Only allow populating anonymous memory")."""
    if not mm.behaves(st, L.B_HOLES):
        return False
    return not mm.behaves(st, L.B_HOLES_ANON_ONLY) or st.vma["kind"][v] == L.VMA_ANON


@internal
def migrate_vma_collect_hole(st, v, src, dst, mig, npages_in_hole):
    """migrate_vma_collect_hole(): a range with no page behind it.

    seed: ``src = dst = 0``. hmm-v25 (17/19): ``src = MIGRATE`` with no pfn and
    ``cpages++`` per page, so the driver may allocate for it (insert-page).
    modern: the same in an anonymous VMA, ``src = 0`` in any other.
    The Oct 2017 off-by-one (dst of the next slot cleared) is not reproduced.
    """
    hole_mpfn = L.MPFN_NONE
    if holes_collected(st, v):
        hole_mpfn = st.layout[L.L_MIGRATE]
    n = mig[L.MIG_NPAGES]
    for k in range(npages_in_hole):
        dst[n + k] = 0
        src[n + k] = hole_mpfn
    mig[L.MIG_NPAGES] = n + npages_in_hole
    if hole_mpfn != 0:
        _count(mig, npages_in_hole)


@internal
def migrate_vma_collect_skip(st, src, dst, mig, npages_in_range):
    """migrate_vma_collect_skip() (hmm-v25): ``src = dst = 0`` for a range that
    cannot be collected (THP trylock or split failure)."""
    n = mig[L.MIG_NPAGES]
    for k in range(npages_in_range):
        dst[n + k] = 0
        src[n + k] = L.MPFN_NONE
    mig[L.MIG_NPAGES] = n + npages_in_range


@internal
def _collect_huge(st, v, addr, pmd_i, first_slot):
    """The PMD-level part of migrate_vma_collect_pmd(): split what is huge.

    Returns True when the PTE loop may run, False when the extent must be
    skipped (seed: treated as a hole, which is ``src = 0`` there too).
    """
    kind = mm.pmd_kind(st.pmd[pmd_i])
    if kind == L.PMD_HUGE_ZERO:
        split_huge_pmd_zero(st, pmd_i, first_slot)
        return True
    head = mm.pte_pfn(st.pmd[pmd_i])
    mm.get_page(st, head)
    if not mm.trylock_page(st, head):
        # Every profile keeps the later kernels' put here: 4.14 returns without
        # it, leaking the reference, and that THP could never be split again
        # (docs/fidelity.md, "4.14 behaviours that later kernels changed").
        mm.put_page(st, head)
        return False
    ret = split_huge_page(st, head, 1)
    mm.unlock_page(st, head)
    mm.put_page(st, head)
    return ret == 0


@internal(hot=True)
def _install_migration_entry(st, slot, pfn, write):
    """15/19: replace the PTE by a migration entry, drop rmap count and the
    mapping's reference (the collect reference keeps the page alive)."""
    was_present = 1 if mm.pte_kind(st.pte[slot]) == L.PTE_PRESENT else 0
    st.pte[slot] = mm.make_pte(L.PTE_MIGRATION, pfn, write)
    st.page["mapcount"][pfn] -= 1
    mm.put_page(st, pfn)
    return was_present


@internal(inline=True)
def selected(st, pfn, mig, flag):
    """modern: the selection flag ``flag`` is set and the device page ``pfn``'s
    pgmap owner is the call's pgmap_owner (v5.7 ``src_owner``, v5.9 flags)."""
    if (mig[L.MIG_FLAGS] & flag) == 0:
        return False
    return st.dev[mm.device_of(st, pfn), L.DEV_OWNER] == mig[L.MIG_OWNER]


@internal(hot=True)
def collect_pte(st, v, slot, mig):
    """Classify one PTE: (mpfn before refcounting, pfn or -1, counts as a hole)."""
    lay = st.layout
    pte = st.pte[slot]
    kind = mm.pte_kind(pte)
    wbit = lay[L.L_WRITE] if mm.pte_write(pte) else L.MPFN_NONE
    select = mm.behaves(st, L.B_SELECT)
    if kind == L.PTE_NONE:
        if holes_collected(st, v):
            return lay[L.L_MIGRATE], -1, True
        return L.MPFN_NONE, -1, False
    pfn = mm.pte_pfn(pte)
    if kind == L.PTE_DEVICE and mm.behaves(st, L.B_DEVICE_PRIVATE):
        if select and not selected(st, pfn, mig, L.MIGRATE_VMA_SELECT_DEVICE_PRIVATE):
            return L.MPFN_NONE, -1, False  # another owner's page, or not selected
        return mm.make_mpfn(lay, pfn) | lay[L.L_MIGRATE] | lay[L.L_DEVICE] | wbit, pfn, False
    if kind != L.PTE_PRESENT:
        return L.MPFN_NONE, -1, False  # swap, migration and error entries stay put
    system = (mig[L.MIG_FLAGS] & L.MIGRATE_VMA_SELECT_SYSTEM) != 0
    if mm.is_zero_pfn(st, pfn):
        if select:
            # modern: the zero page is a hole only with SELECT_SYSTEM; without it
            # vm_normal_page() gives no page and the slot is 0.
            return (lay[L.L_MIGRATE], -1, True) if system else (L.MPFN_NONE, -1, False)
        if mm.behaves(st, L.B_HOLES):
            return lay[L.L_MIGRATE], -1, True
        return L.MPFN_NONE, -1, False
    if select:
        if not mm.is_zone_device(st, pfn):
            if not system:
                return L.MPFN_NONE, -1, False
        elif not selected(st, pfn, mig, L.MIGRATE_VMA_SELECT_DEVICE_COHERENT):
            return L.MPFN_NONE, -1, False  # a device-coherent page of another owner
    return mm.make_mpfn(lay, pfn) | lay[L.L_MIGRATE] | wbit, pfn, False


@internal(inline=True)
def _anon_exclusive(st, pfn):
    """PageAnonExclusive() as the model has it: an anonymous page mapped once."""
    return st.page["mapping"][pfn] == L.MAPPING_ANON and st.page["mapcount"][pfn] == 1


@internal(hot=True)
def collect_slot(st, v, slot, mig):
    """One PTE of migrate_vma_collect_pmd(): (its mpfn, 1 if collect unmapped it)."""
    lay = st.layout
    mpfn, pfn, hole = collect_pte(st, v, slot, mig)
    if hole:
        _count(mig, 1)
        return mpfn, 0
    if pfn < 0:
        return mpfn, 0
    if st.page["mapping"][pfn] == L.MAPPING_NONE or mm.has_flag(st, pfn, L.PG_HEAD | L.PG_TAIL):
        return L.MPFN_NONE, 0  # no page->mapping, or PageTransCompound()
    mm.get_page(st, pfn)
    lock_in_collect = mm.behaves(st, L.B_LOCK_IN_COLLECT)
    if not lock_in_collect:
        _count(mig, 1)  # 4.14 counts before the trylock
    if not mm.behaves(st, L.B_COLLECT_UNMAPS):
        return mpfn, 0
    fault_page = mm.behaves(st, L.B_FAULT_PAGE) and pfn == mig[L.MIG_FAULT_PFN]
    if not fault_page and not mm.trylock_page(st, pfn):
        if lock_in_collect:
            mm.put_page(st, pfn)  # v5.16: best effort, the slot is dropped now
            return L.MPFN_NONE, 0
        return mpfn, 0  # 4.14: prepare tries the lock again
    pte = st.pte[slot]
    if mm.behaves(st, L.B_ANON_EXCLUSIVE) and _anon_exclusive(st, pfn):
        # modern (6c287605fd56, v5.19): an anon-exclusive page's PTE goes with
        # ptep_clear_flush(), a flush of its own when it was present; then
        # folio_try_share_anon_rmap_pte() fails for a page that may be
        # DMA-pinned (a pin of the model counts; never a device-private one):
        # the PTE is put back and the slot dropped.
        if mm.pte_kind(pte) == L.PTE_PRESENT:
            st.counters[L.C_TLB_FLUSH] += 1
        if st.page["pins"][pfn] > 0 and not mm.is_device_private(st, pfn):
            if not fault_page:
                mm.unlock_page(st, pfn)
            mm.put_page(st, pfn)
            return L.MPFN_NONE, 0
    if lock_in_collect:
        _count(mig, 1)
    mpfn |= lay[L.L_LOCKED]
    if mm.behaves(st, L.B_DIRTY_TO_FOLIO) and (pte & L.PTE_DIRTY) != 0:
        mm.set_flag(st, pfn, L.PG_DIRTY)
    # make_migration_entry(page, pte_write(pte)): for a device-private entry
    # 4.14 reads the write bit of a swap PTE, clear on x86-64, so its
    # migration entry is read-only and a page faulted back comes back
    # read-only (src keeps WRITE: is_write_device_private_entry()). Later
    # kernels test is_writable_device_private_entry() there
    # (B_WRITABLE_DEVICE_ENTRY).
    device = mm.pte_kind(pte) == L.PTE_DEVICE
    write = (mpfn & lay[L.L_WRITE]) != 0
    if device and not mm.behaves(st, L.B_WRITABLE_DEVICE_ENTRY):
        write = False
    return mpfn, _install_migration_entry(st, slot, pfn, write)


@internal(inline=True)
def collect_pte_slot(st, v, slot, src, dst, n, mig):
    """The PTE loop's body for slot ``n`` of the range: collect_slot() and the
    ``src``/``dst`` writes. Returns 1 when collect unmapped the page."""
    mpfn, was_unmapped = collect_slot(st, v, slot, mig)
    if mm.behaves(st, L.B_DEVICE_PRIVATE):
        dst[n] = 0  # 16/19 writes dst for every slot; the seed only for holes
    src[n] = mpfn
    return was_unmapped


@internal(inline=True)
def prefetch_ahead(st, slot, k, count):
    """Prefetch the struct page PREFETCH_AHEAD slots on, if any."""
    if k + PREFETCH_AHEAD < count:
        ahead = st.pte[slot + k + PREFETCH_AHEAD]
        if mm.pte_kind(ahead) != L.PTE_NONE:
            mm.prefetch_page(st, mm.pte_pfn(ahead))


@internal
def _collect_ptes(st, v, addr, end, src, dst, mig):
    """The PTE loop of migrate_vma_collect_pmd() for ``[addr, end)``."""
    slot = mm.pte_slot(st, v, addr)
    n = mig[L.MIG_NPAGES]
    count = mm.pages_in(st, end - addr)
    unmapped = 0
    for k in range(count):
        prefetch_ahead(st, slot, k, count)
        unmapped += collect_pte_slot(st, v, slot + k, src, dst, n + k, mig)
    mig[L.MIG_NPAGES] = n + count
    if unmapped:
        st.counters[L.C_TLB_FLUSH] += 1  # one flush_tlb_range() per PMD


@internal(inline=True)
def compound_ok(st, addr, stop, mig):
    """modern (B_DEVICE_THP): SELECT_COMPOUND and a walked extent PMD-aligned at
    both ends: the extent may be one COMPOUND slot."""
    if not mm.behaves(st, L.B_DEVICE_THP):
        return False
    if (mig[L.MIG_FLAGS] & L.MIGRATE_VMA_SELECT_COMPOUND) == 0:
        return False
    ext = mm.pmd_extent(st)
    return addr % ext == 0 and stop - addr == ext


@internal
def _collect_compound_slot(st, src, dst, mig, mpfn):
    """One COMPOUND slot then 511 zero ones (migrate_vma_collect_skip()), counted once."""
    n = mig[L.MIG_NPAGES]
    src[n] = mpfn
    # Slices, not an indexed loop: numba wraps every signed index, and the
    # per-element check kept these two loops from vectorizing (a sixth of a
    # folio's round trip, by perf).
    dst[n : n + L.HPAGE_PMD_NR] = 0
    src[n + 1 : n + L.HPAGE_PMD_NR] = L.MPFN_NONE
    mig[L.MIG_NPAGES] = n + L.HPAGE_PMD_NR
    _count(mig, 1)


@internal
def _collect_huge_pmd(st, v, addr, stop, pmd_i, src, dst, mig):
    """migrate_vma_collect_huge_pmd() (modern, B_DEVICE_THP) for a PMD that maps
    a folio, a huge zero PMD or none. Returns 1 when it collected the extent
    (one COMPOUND slot, or a hole), 0 when it skipped it (``src = 0``), -1 to
    fall back to splitting and the PTE loop.

    A hole or the huge zero page (which needs SELECT_SYSTEM) goes to
    migrate_vma_collect_hole(); a THP needs SELECT_SYSTEM, a device-private
    PMD entry SELECT_DEVICE_PRIVATE and the call's owner. The folio is
    referenced and trylocked (not the fault page's; failure: skip); with
    compound_ok() its PMD becomes a PMD migration entry (the mapping's
    reference and mapcount go, the dirty bit moves to the folio) and
    ``src = head|MIGRATE|COMPOUND`` (+WRITE), else it falls back.
    """
    word = st.pmd[pmd_i]
    kind = mm.pmd_kind(word)
    count = mm.pages_in(st, stop - addr)
    system = (mig[L.MIG_FLAGS] & L.MIGRATE_VMA_SELECT_SYSTEM) != 0
    if kind == L.PMD_NONE or (kind == L.PMD_HUGE_ZERO and system):
        if st.vma["kind"][v] != L.VMA_ANON:
            migrate_vma_collect_skip(st, src, dst, mig, count)
        elif compound_ok(st, addr, stop, mig):
            _collect_compound_slot(
                st, src, dst, mig, st.layout[L.L_MIGRATE] | st.layout[L.L_COMPOUND]
            )
        else:
            migrate_vma_collect_hole(st, v, src, dst, mig, count)
        return 1
    head = mm.pte_pfn(word)
    if kind == L.PMD_THP:
        if not system:
            return 0
    elif kind != L.PMD_DEVICE or not selected(st, head, mig, L.MIGRATE_VMA_SELECT_DEVICE_PRIVATE):
        return 0  # the huge zero page unselected, another owner's folio, or a migration entry
    mm.get_page(st, head)
    fault = (
        head == mm.compound_head(st, mig[L.MIG_FAULT_PFN]) if mig[L.MIG_FAULT_PFN] >= 0 else False
    )
    if not fault and not mm.trylock_page(st, head):
        mm.put_page(st, head)
        return 0
    if not compound_ok(st, addr, stop, mig):
        ret = split_huge_page(st, head, 1)
        if not fault:
            mm.unlock_page(st, head)
        mm.put_page(st, head)
        return -1 if ret == 0 else 0
    write = (word & L.PMD_WRITE) != 0
    lay = st.layout
    mpfn = mm.make_mpfn(lay, head) | lay[L.L_MIGRATE] | lay[L.L_COMPOUND]
    if write:
        mpfn |= lay[L.L_WRITE]
    if kind == L.PMD_THP:
        if write:
            mm.set_flag(st, head, L.PG_DIRTY)  # pmd_dirty() moves to the folio
        st.counters[L.C_TLB_FLUSH] += 1  # pmdp_invalidate()
    st.pmd[pmd_i] = mm.make_pmd(L.PMD_MIGRATION, head, write)
    st.page["mapcount"][head] -= 1
    mm.put_page(st, head)
    _collect_compound_slot(st, src, dst, mig, mpfn)
    return 1


@internal(hot=True)
def collect_extent(st, v, addr, stop, src, dst, mig):
    """migrate_vma_collect_pmd()'s PMD-level branches for the extent ``[addr, stop)``.

    Returns True when they handled it (a hole, or a huge entry that could not be
    split), False when it is a page table (split here if it was huge) whose
    PTEs the caller's loop walks."""
    ext = mm.pmd_extent(st)
    count = mm.pages_in(st, stop - addr)
    pmd_i = mm.pmd_slot(st, v, addr)
    kind = mm.pmd_kind(st.pmd[pmd_i])
    if kind != L.PMD_TABLE and mm.behaves(st, L.B_DEVICE_THP):
        ret = _collect_huge_pmd(st, v, addr, stop, pmd_i, src, dst, mig)
        if ret == 0:
            migrate_vma_collect_skip(st, src, dst, mig, count)
        return ret >= 0
    if kind == L.PMD_NONE:
        migrate_vma_collect_hole(st, v, src, dst, mig, count)
        return True
    if kind != L.PMD_TABLE and not _collect_huge(
        st, v, addr, pmd_i, mm.pte_slot(st, v, addr & -ext)
    ):
        if mm.behaves(st, L.B_HOLES):
            migrate_vma_collect_skip(st, src, dst, mig, count)
        else:
            migrate_vma_collect_hole(st, v, src, dst, mig, count)
        return True
    return False


@internal
def collect_range(st, v, start, end, src, dst, mig):
    """migrate_vma_collect()'s walk over ``[start, end)``, one PMD extent at a time."""
    ext = mm.pmd_extent(st)
    addr = start
    while addr < end:
        stop = min((addr | (ext - 1)) + 1, end)  # the end of addr's PMD extent
        if not collect_extent(st, v, addr, stop, src, dst, mig):
            _collect_ptes(st, v, addr, stop, src, dst, mig)
        addr = stop
    mig[L.MIG_END] = start + mig[L.MIG_NPAGES] * st.sys[L.SYS_PAGE_SIZE]


@kernel(inline=True)
def migrate_vma_collect(st, v, start, end, src, dst, mig):
    """migrate_vma_collect() - collect pages over a range of virtual addresses.

    Args:
        st: machine state. v: VMA index. start, end: page-aligned range in v.
        src, dst: uint64 arrays of at least (end - start) / page_size slots.
        mig: int64 ``struct migrate_vma`` scalars (MIG_* indices), zeroed.
    Pre: arguments checked by migrate_vma(); ``src`` zeroed.
    Post: ``src[i]`` describes the page at ``start + i * page_size``; every
    collected page holds one extra reference; ``mig[MIG_CPAGES]`` counts them
    (plus holes in hmm-v25); ``mig[MIG_END] = start + npages * page_size``.

    Branches: seed - holes, non-present entries, the zero page, pages without
    a mapping and PTE-mapped compound pages give 0; PMD THP is split (v5:
    "split THP instead of skipping them"), the huge zero PMD is split.
    hmm-v25 - holes and zero pages give MIGRATE; device-private entries give
    VALID|MIGRATE|DEVICE; pages that trylock are locked and unmapped here.
    modern - ``mig[MIG_FLAGS]`` and ``mig[MIG_OWNER]`` select what is taken;
    holes only in anonymous VMAs; a page that does not trylock gives 0 and is
    not counted; the fault page (``mig[MIG_FAULT_PFN]``) is taken unlocked-for.
    """
    collect_range(st, v, start, end, src, dst, mig)
