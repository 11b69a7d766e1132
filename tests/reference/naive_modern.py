"""The reference model's ``modern`` profile: Linux 6.x mm/migrate_device.c.

Written from torvalds/linux ``mm/migrate_device.c`` (stored copy 022a12deda53:
after the v6.1 device-private refcount series, with 41cddf83d8b0's finalize),
with the 2025 device-THP series' collect of huge PMDs (linux-mm 08ea4eaefa56,
see :func:`_huge_pmd`), ``mm/rmap.c`` try_to_migrate_one(),
``mm/migrate.c`` folio_migrate_mapping(), ``mm/swap.c`` and ``lib/test_hmm.c``;
not from ``kernels/*.py``. Each branch names the function and the commit where
it parts from 4.14 (``naive.py``'s hmm-v25 passes, reused where unchanged).

The split API: :func:`setup` (collect + :func:`unmap`), :func:`pages`,
:func:`finalize`; :func:`migrate_vma` is me.migrate_vma() on top of it
(MIGRATE_VMA_SELECT_SYSTEM, no pgmap_owner, no fault page).

Not modelled: device-coherent memory (SELECT_DEVICE_COHERENT), device THP
(SELECT_COMPOUND, MIGRATE_PFN_COMPOUND: tests/scenarios/test_device_thp.py
holds the engine to the selftests there), PTE-mapped large folios
(migrate_vma_split_folio(): NotImplementedError), the swap cache (the simulator
drops a page's swap slot on swap-in, so folio_mapping() of an anon page is NULL
and folio_free_swap() never decides anything), the separate mlock batch of
folio_add_lru_vma() in a VM_LOCKED VMA (the page goes to the LRU-add batch with
PG_mlocked, as in 4.14), and split_huge_page()'s remapping of zero-filled
subpages to the shared zero page (v6.12 RMP_USE_SHARED_ZEROPAGE).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from migengine.kernels import layout as L
from tests.reference import naive as N
from tests.reference.naive import (
    CPU_DRIVER,
    EINVAL,
    MAPPING_ANON,
    MAPPING_FILE,
    MAPPING_NONE,
    PG_DIRTY,
    PG_LRU,
    PTE_DEVICE,
    PTE_DIRTY,
    PTE_MIGRATION,
    PTE_NONE,
    PTE_PRESENT,
    PTE_SHIFT,
    PTE_WRITE,
    Migrate,
    Model,
    Ops,
)

# include/linux/migrate.h, enum migrate_vma_direction (v5.9 5143192cd410; COHERENT v6.0).
SELECT_SYSTEM = 1 << 0
SELECT_DEVICE_PRIVATE = 1 << 1
SELECT_DEVICE_COHERENT = 1 << 2
SELECT_COMPOUND = 1 << 3


@dataclass
class MigrateVma(Migrate):
    """struct migrate_vma (v5.4+): Migrate plus the selection. ``owner`` is the
    pgmap_owner as a device owner id (None: matches no device); ``fault_page``
    the locked device-private page of a CPU fault, or -1."""

    flags: int = SELECT_SYSTEM
    owner: int | None = None
    fault_page: int = -1


def _owner_is_device(md: Model, mig: MigrateVma) -> bool:
    """lib/test_hmm.c dmirror_interval_invalidate(): an MMU_NOTIFY_MIGRATE range
    whose owner is the device itself is ignored (v5.9 "mm/notifier: add migration
    invalidation type"); any other invalidation erases [start, end) from the mirror."""
    return mig.owner is not None and mig.owner == md.dev_owner


def _invalidate(md: Model, mig: MigrateVma, start: int, end: int) -> None:
    """mmu_notifier_range_init_owner(MMU_NOTIFY_MIGRATE, pgmap_owner) + range_start."""
    if _owner_is_device(md, mig) or start >= end:
        return
    first = md.pte_slot(mig.vma, start)
    for slot in range(first, first + (end - start) // md.page_size):
        md.mirror[slot] = -1


def _put_unless_fault(md: Model, mig: MigrateVma, page: int) -> None:
    """folio_unlock() unless it is the fault folio (v6.1 16ce101db85d), then folio_put()."""
    if page != mig.fault_page:
        md.unlock(page)
    md.put_page(page)


# ============================================================================ rmap
def try_to_migrate(md: Model, page: int) -> None:
    """mm/rmap.c try_to_migrate(folio, 0) -> try_to_migrate_one() per mapping.

    A present PTE is cleared with ptep_clear_flush() (flags 0: no TTU_BATCH_FLUSH,
    one TLB flush each), its dirty bit goes to the folio, the entry is writable iff
    pte_write(). A device-private entry is pte_clear()ed (nothing to flush) and the
    migration entry is writable iff is_writable_device_private_entry() -- 4.14's
    try_to_unmap_one() made it read-only (make_migration_entry(page, 0)). The rmap
    walk's MMU_NOTIFY_CLEAR range is no migration event: the mirror forgets the slot.
    The anon-exclusive/GUP-pin abort cannot happen here in the simulator: a page
    still mapped after collect was mapped more than once, hence not exclusive.
    """
    N.try_to_unmap(md, page, device_write=True)


# ============================================================================ collect
def _hole(md: Model, mig: MigrateVma, n: int) -> None:
    """migrate_vma_collect_hole(): M and cpages++ per page, only in an anonymous VMA
    (0744f2807a4f, v5.9: "Only allow populating anonymous memory"); otherwise
    migrate_vma_collect_skip(). No flag decides it: holes are M whatever the flags."""
    if md.vmas[mig.vma].kind != L.VMA_ANON:
        N._collect_skip(md, mig, n)
        return
    for _ in range(n):
        mig.emit(md.layout["MIGRATE"], dst_zero=True)
        mig.cpages += 1


def _collect_one(md: Model, mig: MigrateVma, slot: int) -> tuple[int, bool]:
    """One PTE of migrate_vma_collect_pmd()'s loop: (src word, old PTE was present)."""
    lay = md.layout
    word = md.pte[slot]
    kind = word & 7
    pfn = word >> PTE_SHIFT
    if kind == PTE_NONE:
        if md.vmas[mig.vma].kind == L.VMA_ANON:  # 0744f2807a4f (v5.9)
            mig.cpages += 1
            return lay["MIGRATE"], False
        return 0, False
    writable = lay["WRITE"] if word & PTE_WRITE else 0
    if kind != PTE_PRESENT:
        # Only a device-private entry, only with SELECT_DEVICE_PRIVATE and the
        # pgmap's owner (v5.7 src_owner, v5.9 pgmap_owner + flags 5143192cd410);
        # 4.14 took every device-private entry. W from the entry
        # (is_writable_device_private_entry(), v5.14).
        if kind != PTE_DEVICE or not mig.flags & SELECT_DEVICE_PRIVATE:
            return 0, False
        if not _owner_is_device(md, mig):  # pgmap->owner != migrate->pgmap_owner
            return 0, False
        page = pfn
        mpfn = md.mpfn(page) | lay["MIGRATE"] | writable
    else:
        if pfn == md.zero_pfn:
            # is_zero_pfn() && SELECT_SYSTEM: a hole the driver may fill; without
            # SELECT_SYSTEM vm_normal_page() is NULL and the slot is 0.
            if mig.flags & SELECT_SYSTEM:
                mig.cpages += 1
                return lay["MIGRATE"], False
            return 0, False
        page = pfn
        if not md.device_private(page) and not mig.flags & SELECT_SYSTEM:
            return 0, False  # v5.9: system pages need SELECT_SYSTEM
        if md.compound(page):
            # folio_test_large(): migrate_vma_split_folio() locks, splits and
            # re-walks the PMD (pre-6.x: PageTransCompound -> src 0).
            raise NotImplementedError("PTE-mapped large folio: migrate_vma_split_folio()")
        mpfn = md.mpfn(page) | lay["MIGRATE"] | writable
    p = md.pages[page]
    if p.mapping == MAPPING_NONE:  # !page->mapping
        return 0, False
    mig.notes.add(f"collect: {md.kind_of(page)} page")
    md.get_page(page)  # folio_get(): "freezes" the PTE
    if page != mig.fault_page and not md.trylock(page):
        # ab09243aa95a (v5.16, LOCKED removed): an unlockable page is dropped here,
        # not retried in a prepare pass; it is not counted in cpages.
        mig.notes.add("collect: trylock failed")
        md.put_page(page)
        return 0, False
    present = kind == PTE_PRESENT
    # PageAnonExclusive (6c287605fd56, v5.19) as the simulator has it: anon and
    # mapped once. ptep_clear_flush() flushes a present PTE at once.
    exclusive = p.mapping == MAPPING_ANON and p.map == 1
    if exclusive and present:
        md.counters["tlb_flush"] += 1
    if exclusive and not md.device_private(page) and p.pins > 0:
        # folio_try_share_anon_rmap_pte() fails on folio_maybe_dma_pinned()
        # (device-private folios always succeed): set_pte_at() the old PTE back,
        # unlock (unless the fault folio), put, src 0, not counted.
        mig.notes.add("collect: anon-exclusive page maybe pinned")
        _put_unless_fault(md, mig, page)
        return 0, False
    mig.cpages += 1
    if word & PTE_DIRTY:  # fd35ca3d12cc (v6.0): the PTE's dirty bit goes to the folio
        md.set(page, PG_DIRTY)
    # make_{writable,readable[_exclusive]}_migration_entry(): writable iff
    # MIGRATE_PFN_WRITE (v4.17 fix of 4.14's pte_write() on a device entry).
    md.pte[slot] = md.pte_word(PTE_MIGRATION, page, bool(mpfn & lay["WRITE"]))
    p.map -= 1  # folio_remove_rmap_pte(); the slot stays on the chain
    md.put_page(page)  # the mapping's reference
    return mpfn, present


def _collect_ptes(md: Model, mig: MigrateVma, addr: int, stop: int) -> None:
    unmapped = 0
    for a in range(addr, stop, md.page_size):
        mpfn, was_present = _collect_one(md, mig, md.pte_slot(mig.vma, a))
        unmapped += was_present
        mig.emit(mpfn, dst_zero=True)  # every slot: dst = 0
    if unmapped:
        # One flush_tlb_range() per PMD walk, under the PTL (60bae7370896, v6.0).
        md.counters["tlb_flush"] += 1


def collect(md: Model, mig: MigrateVma) -> None:
    """migrate_vma_collect(): the walk runs inside an MMU_NOTIFY_MIGRATE range over
    [start, end) carrying pgmap_owner (v5.9); the mirror forgets the whole range
    unless the owner is the device itself. Then PMD by PMD, as 4.14 but for the
    hole rule and the per-PTE changes above."""
    _invalidate(md, mig, mig.start, mig.end)
    N.walk_pmds(md, mig, _hole, _collect_ptes, _huge_pmd)


def _huge_pmd(md: Model, mig: MigrateVma, kind: int, pmd: int, n: int) -> bool:
    """migrate_vma_collect_huge_pmd() (the device-THP series, linux-mm
    mm/migrate_device.c 08ea4eaefa56) without SELECT_COMPOUND, which this model's
    calls never set; True when the PTE loop runs. A none PMD is
    migrate_vma_collect_hole(). A huge PMD needs SELECT_SYSTEM, else the extent
    is skipped; the huge zero page is then a hole itself, not split here
    (migrate_vma_insert_page() splits it); a THP is referenced, trylocked and
    split_folio()ed, the extent skipped when either fails."""
    if kind == N.PMD_NONE:
        _hole(md, mig, n)
        return False
    if not mig.flags & SELECT_SYSTEM:
        mig.notes.add("collect: huge PMD not selected")
        N._collect_skip(md, mig, n)
        return False
    if kind == N.PMD_HUGE_ZERO:
        mig.notes.add("collect: huge zero PMD as a hole")
        _hole(md, mig, n)
        return False
    head = pmd >> PTE_SHIFT
    mig.notes.add("collect: PMD-mapped THP")
    md.get_page(head)
    walk = md.trylock(head)
    if walk:
        walk = N.split_huge_page(md, head)  # split_folio()
        md.unlock(head)
    md.put_page(head)
    if not walk:
        mig.notes.add("collect: THP skipped")
        N._collect_skip(md, mig, n)
    return walk


# ============================================================================ unmap
def check_page(md: Model, page: int, fault_page: int) -> bool:
    """migrate_vma_check_page(page, fault_page): extra = 1 (+1 for the fault page)
    (+1 for any ZONE_DEVICE folio: 4.14 let device-private pages pass outright)
    (+1 + folio_has_private() for a folio with a mapping: file/shmem here)."""
    if md.compound(page):  # folio_test_large()
        return False
    extra = 1 + (page == fault_page)
    if md.device_private(page):
        extra += 1
    if md.pages[page].mapping == MAPPING_FILE:
        extra += 1
    p = md.pages[page]
    return p.ref - extra <= p.map


def unmap(md: Model, mig: MigrateVma) -> None:
    """migrate_device_unmap() (241f68859656, v6.1; prepare folded in by ab09243aa95a,
    v5.16): local drain, then per page slot isolate (non-ZONE_DEVICE), drop the
    collect reference, try_to_migrate() what is still mapped, check for pins; then
    the restore loop. cpages = the slots still M, holes included."""
    lay = md.layout
    if md.pagevec[CPU_DRIVER]:
        mig.notes.add("unmap: local drain of the driver CPU's batch")
    md.lru_add_drain(CPU_DRIVER)
    restore = unmapped = 0
    allow_drain = True
    for i in range(mig.npages):
        page = md.page_of(mig.src[i])
        if page < 0:
            if mig.src[i] & lay["MIGRATE"]:
                unmapped += 1
            continue
        device = md.device_private(page)
        if not device:  # ZONE_DEVICE folios are not on the LRU
            if not md.has(page, PG_LRU) and allow_drain:
                mig.notes.add("unmap: lru_add_drain_all()")
                md.lru_add_drain_all()
                allow_drain = False
            if not md.isolate_lru_page(page):  # folio_isolate_lru()
                mig.notes.add("unmap: isolate failed")
                mig.src[i] &= ~lay["MIGRATE"]
                restore += 1
                continue
            md.put_page(page)  # the reference collect took
        if md.mapped(page):
            try_to_migrate(md, page)
        if md.mapped(page) or not check_page(md, page, mig.fault_page):
            mig.notes.add("unmap: restored")
            if not device:
                md.get_page(page)  # folio_get() + folio_putback_lru()
                md.putback_lru_page(page)
            mig.src[i] &= ~lay["MIGRATE"]
            restore += 1
            continue
        unmapped += 1
    for i in range(mig.npages):
        if not restore:
            break
        page = md.page_of(mig.src[i])
        if page < 0 or mig.src[i] & lay["MIGRATE"]:
            continue
        N.remove_migration_ptes(md, page, page)
        mig.src[i] = 0
        _put_unless_fault(md, mig, page)
        restore -= 1
    mig.cpages = unmapped


# ============================================================================ setup
def check_args(md: Model, mig_v: int | None, start: int, end: int) -> int:
    """migrate_vma_setup()'s -EINVAL checks, or the number of pages walked.
    nr_pages comes from the *unrounded* end - start (4.14 rounded both first), so
    a range shorter than a page is refused even when it straddles a boundary.
    (DAX VMAs do not exist in the simulator.)"""
    ps = md.page_size
    nr_pages = (end - start) // ps
    start -= start % ps
    end -= end % ps
    if mig_v is None or not 0 <= mig_v < len(md.vmas) or not md.vmas[mig_v].live:
        return EINVAL
    vma = md.vmas[mig_v]
    if vma.flags & (L.VM_HUGETLB | L.VM_SPECIAL):
        return EINVAL
    if nr_pages <= 0:
        return EINVAL
    if not vma.start <= start < vma.end or not vma.start < end <= vma.end:
        return EINVAL
    return (end - start) // ps


def setup(md: Model, mig: MigrateVma) -> int:
    """migrate_vma_setup(): 0 or -EINVAL; collect, then unmap only if cpages."""
    npages = check_args(md, mig.vma, mig.start, mig.end)
    if npages < 0:
        return EINVAL
    if mig.fault_page >= 0 and not (
        md.device_private(mig.fault_page) and md.has(mig.fault_page, N.PG_LOCKED)
    ):
        return EINVAL  # fault_page not device-private (v6.1) or not locked (2025)
    nr_pages = (mig.end - mig.start) // md.page_size
    ps = md.page_size
    mig.start -= mig.start % ps
    mig.end -= mig.end % ps
    for i in range(nr_pages):  # memset(src, 0, nr_pages): the unrounded count
        mig.src[i] = 0
    mig.npages = mig.cpages = 0
    md.counters["migrate_vma_calls"] += 1
    collect(md, mig)
    md.counters["migrate_vma_collected"] += mig.cpages
    mig.stage = "collect"
    if mig.cpages:
        unmap(md, mig)
        mig.stage = "unmap"
    return 0


# ============================================================================ pages
def migrate_mapping(md: Model, newpage: int, page: int, extra: int) -> bool:
    """folio_migrate_mapping(mapping, newfolio, folio, extra_count) + folio_migrate_flags().

    expected = folio_expected_ref_count() + extra + 1: one per page-cache slot
    (file/shmem), the mapcount (0: unmapped by now), the caller's; -EAGAIN
    otherwise, or when the page-cache slot moved. 4.14's migrate_page_move_mapping()
    added one for a ZONE_DEVICE page (a free device page held one); since the v6.1
    zero-refcount series none. Then as naive.migrate_page(): the page-cache slot and
    its reference move, mapping and index move, dirty and mlocked are carried."""
    in_cache = md.pages[page].mapping == MAPPING_FILE
    return N.move_mapping(md, newpage, page, 1 + extra + in_cache)


def pages(md: Model, mig: MigrateVma) -> None:
    """__migrate_device_pages(src, dst, npages, migrate)."""
    lay = md.layout
    notified = False
    for i in range(mig.npages):
        newpage = md.page_of(mig.dst[i])
        page = md.page_of(mig.src[i])
        if newpage < 0:
            mig.src[i] &= ~lay["MIGRATE"]
            continue
        if page < 0:
            if not mig.src[i] & lay["MIGRATE"]:
                continue
            addr = mig.start + i * md.page_size
            if not notified:
                # MMU_NOTIFY_MIGRATE over [addr, end) with pgmap_owner (as 4.14's
                # range_start, but now with an owner dmirror can recognise).
                notified = True
                _invalidate(md, mig, addr, mig.end)
            if md.pmd[md.pmd_index(mig.vma, addr)] & 7 == N.PMD_HUGE_ZERO:
                # the device-THP series: a huge zero PMD is split_huge_pmd()ed here
                # (collect left it whole), then its zero-page PTE is replaced
                if md.vmas[mig.vma].kind == L.VMA_ANON:
                    N.split_huge_pmd_zero(md, mig.vma, addr)
            N.insert_page(md, mig, i, addr, newpage)  # migrate_vma_insert_page()
            continue
        # folio_mapping(): file/shmem; an anon folio only through the swap cache,
        # which the simulator does not keep, so folio_free_swap() never runs and
        # "anonymous only" to device-private memory is 4.14's rule.
        if md.device_private(newpage) and md.pages[page].mapping == MAPPING_FILE:
            mig.notes.add("pages: page cache refused by device memory")
            mig.src[i] &= ~lay["MIGRATE"]
            continue
        # No MIGRATE test here (the kernel has none): setup leaves M on every page slot.
        extra = 1 if page == mig.fault_page else 0
        if not migrate_mapping(md, newpage, page, extra):
            mig.notes.add("pages: -EAGAIN")
            mig.src[i] &= ~lay["MIGRATE"]
        else:
            kinds = ("system", "device")
            mig.notes.add(f"pages: {kinds[page >= md.nr_ram]} -> {kinds[newpage >= md.nr_ram]}")


# ============================================================================ finalize
def finalize(md: Model, mig: MigrateVma) -> None:
    """__migrate_device_finalize(src, dst, npages, fault_page).

    41cddf83d8b0 (2025): only the target goes to the LRU (folio_add_lru(dst) before
    remove_migration_ptes()); the source is just folio_put() -- a migrated source
    is freed at once instead of waiting in the LRU-add batch, a failed slot's source
    is its own target (add + put = 4.14's putback_lru_page()). ZONE_DEVICE folios
    are only put. The fault folio is never unlocked (16ce101db85d, v6.1)."""
    lay = md.layout
    for i in range(mig.npages):
        newpage = md.page_of(mig.dst[i])
        page = md.page_of(mig.src[i])
        if page < 0:
            if newpage >= 0:
                md.unlock(newpage)
                md.put_page(newpage)
            continue
        target = newpage
        if not mig.src[i] & lay["MIGRATE"] or newpage < 0:
            if newpage >= 0:
                md.unlock(newpage)
                md.put_page(newpage)
                md.counters["pgmigrate_fail"] += 1  # the simulator's vmstat convention
            target = page
        if not md.device_private(target):
            md.lru_cache_add(CPU_DRIVER, md.head(target))  # folio_add_lru()
        N.remove_migration_ptes(md, page, target)
        _put_unless_fault(md, mig, page)
        if target != page:
            md.unlock(target)
            md.put_page(target)
            md.counters["pgmigrate_success"] += 1


# ============================================================================ driver
def run(md: Model, ops: Ops, mig: MigrateVma, private: Any = None) -> int:
    """A driver over the split API: setup, and only if it collected something
    ops.alloc_and_copy, pages, ops.finalize_and_map, finalize. 0 or -EINVAL."""
    if setup(md, mig) < 0:
        return EINVAL
    if not mig.cpages:
        return 0
    v, s, e = mig.vma, mig.start, mig.end
    ops.alloc_and_copy(md, v, mig.src, mig.dst, s, e, private)
    pages(md, mig)
    ops.finalize_and_map(md, v, mig.src, mig.dst, s, e, private)
    finalize(md, mig)
    mig.stage = "done"
    return 0


def migrate_vma(
    md: Model,
    ops: Ops | None,
    v: int | None,
    start: int,
    end: int,
    src: list[int] | None,
    dst: list[int] | None,
    private: Any = None,
) -> tuple[int, MigrateVma | None]:
    """me.migrate_vma() in modern: :func:`run` with MIGRATE_VMA_SELECT_SYSTEM and
    no pgmap_owner (matches no device)."""
    if ops is None or src is None or dst is None:
        return EINVAL, None
    mig = MigrateVma(vma=v, start=start, end=end, src=src, dst=dst)  # type: ignore[arg-type]
    if run(md, ops, mig, private) < 0:
        return EINVAL, None
    return 0, mig
