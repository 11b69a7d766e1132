"""migrate_vma_collect(): walk the page table of the range and fill ``src``.

Profiles: ``seed`` is HMM v25 14/19 as posted; ``hmm-v25`` adds 15/19 (lock and
unmap while collecting), 16/19 (device-private entries as sources, ``dst = 0`` in
every slot) and 17/19 (holes and zero-page entries collected as MIGRATE).
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


@internal
def migrate_vma_collect_hole(st, src, dst, mig, npages_in_hole):
    """migrate_vma_collect_hole(): a range with no page behind it.

    seed: ``src = dst = 0``. hmm-v25 (17/19): ``src = MIGRATE`` with no pfn and
    ``cpages++`` per page, so the driver may allocate for it (insert-page).
    The Oct 2017 off-by-one (dst of the next slot cleared) is not reproduced.
    """
    hole_mpfn = L.MPFN_NONE
    if st.sys[L.SYS_PROFILE] == L.PROFILE_HMM_V25:
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
        # Both profiles keep the later kernels' put here: 4.14 returns without
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


@internal(hot=True)
def collect_pte(st, slot, hmm):
    """Classify one PTE: (mpfn before refcounting, pfn or -1, counts as a hole)."""
    lay = st.layout
    pte = st.pte[slot]
    kind = mm.pte_kind(pte)
    hole_mpfn = lay[L.L_MIGRATE] if hmm else L.MPFN_NONE
    wbit = lay[L.L_WRITE] if mm.pte_write(pte) else L.MPFN_NONE
    if kind == L.PTE_NONE:
        return hole_mpfn, -1, hmm
    pfn = mm.pte_pfn(pte)
    if kind == L.PTE_DEVICE and hmm:
        return mm.make_mpfn(lay, pfn) | lay[L.L_MIGRATE] | lay[L.L_DEVICE] | wbit, pfn, False
    if kind != L.PTE_PRESENT:
        return L.MPFN_NONE, -1, False  # swap, migration and error entries stay put
    if mm.is_zero_pfn(st, pfn):
        return hole_mpfn, -1, hmm
    return mm.make_mpfn(lay, pfn) | lay[L.L_MIGRATE] | wbit, pfn, False


@internal(hot=True)
def collect_slot(st, slot, hmm, mig):
    """One PTE of migrate_vma_collect_pmd(): (its mpfn, 1 if collect unmapped it)."""
    lay = st.layout
    mpfn, pfn, hole = collect_pte(st, slot, hmm)
    if hole:
        _count(mig, 1)
        return mpfn, 0
    if pfn < 0:
        return mpfn, 0
    if st.page["mapping"][pfn] == L.MAPPING_NONE or mm.has_flag(st, pfn, L.PG_HEAD | L.PG_TAIL):
        return L.MPFN_NONE, 0  # no page->mapping, or PageTransCompound()
    mm.get_page(st, pfn)
    _count(mig, 1)
    if hmm and mm.trylock_page(st, pfn):
        mpfn |= lay[L.L_LOCKED]
        # make_migration_entry(page, pte_write(pte)): for a device-private entry
        # 4.14 reads the write bit of a swap PTE, clear on x86-64, so its
        # migration entry is read-only and a page faulted back comes back
        # read-only (src keeps WRITE: is_write_device_private_entry()). Later
        # kernels test is_writable_device_private_entry() there.
        device = lay[L.L_DEVICE] != 0 and (mpfn & lay[L.L_DEVICE]) != 0
        write = (mpfn & lay[L.L_WRITE]) != 0 and not device
        return mpfn, _install_migration_entry(st, slot, pfn, write)
    return mpfn, 0


@internal(inline=True)
def collect_pte_slot(st, slot, src, dst, n, mig, hmm):
    """The PTE loop's body for slot ``n`` of the range: collect_slot() and the
    ``src``/``dst`` writes. Returns 1 when collect unmapped the page."""
    mpfn, was_unmapped = collect_slot(st, slot, hmm, mig)
    if hmm:
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
def _collect_ptes(st, v, addr, end, src, dst, mig, hmm):
    """The PTE loop of migrate_vma_collect_pmd() for ``[addr, end)``."""
    slot = mm.pte_slot(st, v, addr)
    n = mig[L.MIG_NPAGES]
    count = mm.pages_in(st, end - addr)
    unmapped = 0
    for k in range(count):
        prefetch_ahead(st, slot, k, count)
        unmapped += collect_pte_slot(st, slot + k, src, dst, n + k, mig, hmm)
    mig[L.MIG_NPAGES] = n + count
    if unmapped:
        st.counters[L.C_TLB_FLUSH] += 1  # one flush_tlb_range() per PMD


@internal(hot=True)
def collect_extent(st, v, addr, stop, src, dst, mig, hmm):
    """migrate_vma_collect_pmd()'s PMD-level branches for the extent ``[addr, stop)``.

    Returns True when they handled it (a hole, or a huge entry that could not be
    split), False when it is a page table (split here if it was huge) whose
    PTEs the caller's loop walks."""
    ext = mm.pmd_extent(st)
    count = mm.pages_in(st, stop - addr)
    pmd_i = mm.pmd_slot(st, v, addr)
    kind = mm.pmd_kind(st.pmd[pmd_i])
    if kind == L.PMD_NONE:
        migrate_vma_collect_hole(st, src, dst, mig, count)
        return True
    if kind != L.PMD_TABLE and not _collect_huge(
        st, v, addr, pmd_i, mm.pte_slot(st, v, addr & -ext)
    ):
        if hmm:
            migrate_vma_collect_skip(st, src, dst, mig, count)
        else:
            migrate_vma_collect_hole(st, src, dst, mig, count)
        return True
    return False


@internal
def collect_range(st, v, start, end, src, dst, mig):
    """migrate_vma_collect()'s walk over ``[start, end)``, one PMD extent at a time."""
    hmm = st.sys[L.SYS_PROFILE] == L.PROFILE_HMM_V25
    ext = mm.pmd_extent(st)
    addr = start
    while addr < end:
        stop = min((addr | (ext - 1)) + 1, end)  # the end of addr's PMD extent
        if not collect_extent(st, v, addr, stop, src, dst, mig, hmm):
            _collect_ptes(st, v, addr, stop, src, dst, mig, hmm)
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
    """
    collect_range(st, v, start, end, src, dst, mig)
