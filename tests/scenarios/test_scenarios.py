"""Scenario tests through the public API: one per migrate_vma() branch.

Each test's docstring names the kernel branch (HMM v25 14/19 as posted = seed,
the 4.14 merge of 14-17/19 = hmm-v25) or the hmm selftest it mirrors. Drivers
are Python callbacks (``me.migrate_vma`` with ``MigrateOps``) or ``m.device.ops``.
Every machine comes from ``make_machine``, so each test ends with ``m.check()``.
"""

from __future__ import annotations

import copy
import errno
from collections.abc import Callable

import numpy as np
import pytest

import migengine as me

PS = 4096
HPAGE = 512  # HPAGE_PMD_NR: a PMD maps 2 MiB of 4 KiB pages


# ---------------------------------------------------------------- helpers
class Driver:
    """A Python migrate_vma_ops: allocate, copy (zero-fill holes), set dst.

    ``want(i, src_i)`` picks the slots to give a destination; ``hook(driver, src)``
    runs inside alloc_and_copy first (someone acting during the migration).
    """

    def __init__(
        self,
        m: me.Machine,
        *,
        device: bool = False,
        want: Callable[[int, np.uint64], bool] | None = None,
        hook: Callable[[Driver, np.ndarray], None] | None = None,
    ) -> None:
        self.m = m
        self.device = device
        self.want = want or (lambda i, s: True)
        self.hook = hook
        self.calls: list[str] = []
        self.given: dict[int, int] = {}
        self.src_at_alloc: np.ndarray | None = None
        self.src_at_finalize: np.ndarray | None = None
        self.dst_at_finalize: np.ndarray | None = None
        self.ops = me.MigrateOps(self.alloc_and_copy, self.finalize_and_map)

    def alloc_and_copy(self, vma, src, dst, start, end, private) -> None:
        self.calls.append("alloc_and_copy")
        assert not src.flags.writeable  # the core passes src read-only
        self.src_at_alloc = src.copy()
        if self.hook is not None:
            self.hook(self, src)
        m, lay = self.m, self.m.layout
        for i in range((end - start) // PS):
            if not src[i] & lay.MIGRATE or not self.want(i, src[i]):
                continue
            pfn = m.alloc_page(device=self.device)
            spfn = m.mpfn_to_pfn(src[i])
            m.copy_page(pfn, spfn if spfn >= 0 else m.zero_pfn)
            dst[i] = m.migrate_pfn(pfn) | lay.LOCKED | (src[i] & lay.WRITE)
            self.given[i] = pfn

    def finalize_and_map(self, vma, src, dst, start, end, private) -> None:
        self.calls.append("finalize_and_map")
        self.src_at_finalize = src.copy()
        self.dst_at_finalize = dst.copy()

    def run(self, vma: me.Vma, start: int | None = None, end: int | None = None) -> np.ndarray:
        start = vma.start if start is None else start
        end = vma.end if end is None else end
        n = (end - start) // PS
        src = np.zeros(n, np.uint64)
        dst = np.zeros(n, np.uint64)
        assert me.migrate_vma(self.ops, vma, start, end, src, dst) == 0
        return src


def addr(vma: me.Vma, i: int) -> int:
    return vma.start + i * PS


def pfn_at(p: me.Process, vma: me.Vma, i: int) -> int:
    return p.translate(addr(vma, i)).pfn


def refs(m: me.Machine, pfn: int) -> tuple[int, int]:
    info = m.page(pfn)
    return info.refcount, info.mapcount


def pattern(i: int, n: int = PS) -> bytes:
    return bytes((i * 7 + k) % 251 for k in range(n))


def filled(m: me.Machine, npages: int, **mmap_kw) -> tuple[me.Process, me.Vma]:
    """A process with one VMA whose page i holds pattern(i)."""
    p = m.new_process()
    vma = p.mmap(npages, **mmap_kw)
    for i in range(npages):
        p.write(addr(vma, i), pattern(i))
    return p, vma


def snapshot(m: me.Machine) -> dict[str, tuple]:
    """A deep copy of every array of the flat state (field by field for struct
    arrays: their alignment padding holds no state and is not copied reliably)."""
    out: dict[str, tuple] = {}
    for name, arr in zip(m.state._fields, m.state, strict=True):
        for field in arr.dtype.names or (None,):
            col = arr if field is None else arr[field]
            out[f"{name}.{field}"] = (col.dtype.str, col.shape, copy.deepcopy(col).tobytes())
    return out


def assert_data(p: me.Process, vma: me.Vma, pages: range | list[int]) -> None:
    for i in pages:
        assert p.read(addr(vma, i), PS) == pattern(i), f"page {i}"


HMM = pytest.mark.parametrize("profile", ["hmm-v25"])


# ---------------------------------------------------------------- a plain migration
def test_plain_anonymous_migration_moves_every_page(make_machine, profile):
    """migrate_vma(): collect -> prepare -> unmap -> alloc_and_copy -> pages ->
    finalize_and_map -> finalize; returns 0; src keeps P|V|M(|L)|W for migrated pages."""
    m = make_machine(32, 0, profile=profile)
    p, vma = filled(m, 4)
    old = [pfn_at(p, vma, i) for i in range(4)]
    drv = Driver(m)
    src = drv.run(vma)
    assert drv.calls == ["alloc_and_copy", "finalize_and_map"]
    lay = m.layout
    for i in range(4):
        assert m.mpfn_to_pfn(src[i]) == old[i]
        assert src[i] & lay.MIGRATE and src[i] & lay.WRITE and src[i] & lay.LOCKED
        assert pfn_at(p, vma, i) == drv.given[i]
        assert m.page(old[i]).free
        assert refs(m, drv.given[i]) == (1, 1)
    assert m.counters["pgmigrate_success"] == 4
    assert_data(p, vma, range(4))


def test_unaligned_range_is_rounded_down(make_machine, profile):
    """migrate_vma(): start &= PAGE_MASK, end &= PAGE_MASK before anything else."""
    m = make_machine(32, 0, profile=profile)
    p, vma = filled(m, 4)
    old = [pfn_at(p, vma, i) for i in range(4)]
    drv = Driver(m)
    src = np.full(4, 0xAB, np.uint64)
    dst = np.zeros(4, np.uint64)
    me.migrate_vma(drv.ops, vma, addr(vma, 1) + 100, addr(vma, 3) + 5, src, dst)
    assert sorted(drv.given) == [0, 1]  # slots 0-1 are pages 1-2
    assert [pfn_at(p, vma, i) == old[i] for i in range(4)] == [True, False, False, True]
    assert src[2:].tolist() == [0xAB, 0xAB]  # only (end - start) / PAGE_SIZE slots written
    assert_data(p, vma, range(4))


# ---------------------------------------------------------------- holes
def test_holes_seed_are_not_collected(make_machine):
    """v25-14 collect: pmd_none and pte_none holes -> src = 0; nothing collected ->
    migrate_vma() returns 0 without calling either callback."""
    m = make_machine(16, 0, profile="seed")
    p = m.new_process()
    vma = p.mmap(4)
    drv = Driver(m)
    src = drv.run(vma)
    assert src.tolist() == [0] * 4
    assert drv.calls == []
    p.write(addr(vma, 0), b"x")  # now a PTE table with three pte_none holes
    src = drv.run(vma, addr(vma, 1))
    assert src.tolist() == [0] * 3 and drv.calls == []
    assert [p.translate(addr(vma, i)).kind for i in range(4)] == ["present"] + ["none"] * 3


@HMM
def test_holes_hmm_are_filled_by_insert_page(make_machine, profile):
    """4.14 collect: pte_none / pmd_none -> src = MIGRATE without VALID (17/19);
    pages: no src page + M + a dst -> migrate_vma_insert_page(); src stays MIGRATE."""
    m = make_machine(16, 0, profile=profile)
    p = m.new_process()
    vma = p.mmap(3)
    p.write(addr(vma, 2), b"present")
    drv = Driver(m, want=lambda i, s: i == 0)  # slot 1 gets no destination
    src = drv.run(vma, addr(vma, 0), addr(vma, 2))
    lay = m.layout
    assert drv.src_at_alloc.tolist() == [int(lay.MIGRATE)] * 2
    assert drv.src_at_finalize.tolist() == [int(lay.MIGRATE), 0]  # no dst: M cleared
    assert src[0] == lay.MIGRATE
    assert p.translate(addr(vma, 0)) == me.Pte("present", drv.given[0], True, False)
    assert p.translate(addr(vma, 1)).kind == "none"
    assert m.counters["insert_page"] == 1
    info = m.page(drv.given[0])
    assert info.anon and not info.locked and info.mapcount == 1
    assert p.read(addr(vma, 0), PS) == bytes(PS)


@HMM
def test_hole_filled_with_device_memory_becomes_a_device_entry(make_machine, profile):
    """4.14 insert_page: a device-private dst page -> device-private swap entry,
    writable iff VM_WRITE (hmm-tests.c: migrate of an untouched buffer)."""
    m = make_machine(16, 4, profile=profile)
    p = m.new_process()
    vma = p.mmap(2)
    assert m.device.migrate_to_device(p, vma.start, vma.end) == 2
    for i in range(2):
        pte = p.translate(addr(vma, i))
        assert pte.kind == "device" and pte.writable and pte.pfn >= m.ram_pages
    assert p.read(vma.start, 2 * PS) == bytes(2 * PS)
    assert [p.translate(addr(vma, i)).kind for i in range(2)] == ["present"] * 2


@HMM
def test_inserted_page_is_writable_only_in_a_writable_vma(make_machine, profile):
    """4.14 insert_page: the new PTE is writable (and dirty) iff VM_WRITE."""
    m = make_machine(16, 0, profile=profile)
    p = m.new_process()
    vma = p.mmap(1, prot="r")
    assert p.read(vma.start, 8) == bytes(8)
    drv = Driver(m)
    drv.run(vma)
    assert p.translate(vma.start) == me.Pte("present", drv.given[0], False, False)
    with pytest.raises(me.SegFault):
        p.write(vma.start, b"no")
    assert p.read(vma.start, PS) == bytes(PS)


# ---------------------------------------------------------------- non-present entries
def test_swap_entry_is_left_alone(make_machine, profile):
    """collect: a swap entry is non-present and not device-private -> src = 0;
    it is neither swapped in nor touched."""
    m = make_machine(32, 0, profile=profile)
    p, vma = filled(m, 2)
    p.swap_out(addr(vma, 0))
    assert p.translate(addr(vma, 0)).kind == "swap"
    drv = Driver(m)
    src = drv.run(vma)
    assert src[0] == 0
    assert sorted(drv.given) == [1]
    assert p.translate(addr(vma, 0)).kind == "swap"
    assert m.counters["pswpin"] == 0
    assert_data(p, vma, range(2))


def test_only_swap_entries_means_no_callback(make_machine, profile):
    """migrate_vma(): cpages == 0 after collect -> return 0 before alloc_and_copy."""
    m = make_machine(32, 0, profile=profile)
    p, vma = filled(m, 1)
    p.swap_out(vma.start)
    drv = Driver(m)
    assert drv.run(vma).tolist() == [0]
    assert drv.calls == []


# ---------------------------------------------------------------- zero page
def test_zero_page_seed_is_not_collected(make_machine):
    """v25-14 collect: vm_normal_page() is NULL for the zero pfn -> src = 0."""
    m = make_machine(16, 0, profile="seed")
    p = m.new_process()
    vma = p.mmap(2)
    p.read(vma.start, 2 * PS)
    drv = Driver(m)
    assert drv.run(vma).tolist() == [0, 0]
    assert drv.calls == []
    assert p.translate(vma.start).kind == "zero"


@HMM
def test_zero_page_hmm_is_replaced_by_insert_page(make_machine, profile):
    """4.14 collect: present zero-pfn PTE -> src = MIGRATE (17/19 "support zero pfn");
    insert_page replaces it and flushes the TLB for the old entry."""
    m = make_machine(16, 0, profile=profile)
    p = m.new_process()
    vma = p.mmap(2)
    p.read(vma.start, 2 * PS)
    flushes = m.counters["tlb_flush"]
    drv = Driver(m, want=lambda i, s: i == 1)
    src = drv.run(vma)
    lay = m.layout
    assert drv.src_at_alloc.tolist() == [int(lay.MIGRATE)] * 2
    assert src[1] == lay.MIGRATE
    assert p.translate(addr(vma, 0)).kind == "zero"
    assert p.translate(addr(vma, 1)) == me.Pte("present", drv.given[1], True, False)
    assert m.counters["tlb_flush"] - flushes == 1
    assert p.read(vma.start, 2 * PS) == bytes(2 * PS)


# ---------------------------------------------------------------- no mapping
def test_page_without_mapping_is_skipped(make_machine, profile):
    """collect: !page->mapping -> src = 0, the PTE and the page stay as they were."""
    m = make_machine(16, 0, profile=profile)
    p, vma = filled(m, 2)
    pfn = pfn_at(p, vma, 0)
    saved = m.state.page["mapping"][pfn]
    m.state.page["mapping"][pfn] = 0
    try:
        m.lru_add_drain_all()  # so the migration's own drain does not move refs
        before = refs(m, pfn)
        drv = Driver(m)
        src = drv.run(vma)
        assert src[0] == 0 and sorted(drv.given) == [1]
        assert p.translate(vma.start) == me.Pte("present", pfn, True, False)
        assert refs(m, pfn) == before
    finally:
        m.state.page["mapping"][pfn] = saved
    assert_data(p, vma, range(2))


# ---------------------------------------------------------------- THP
def thp_machine(make_machine, profile) -> me.Machine:
    # RAM for one aligned 512-page run (frame 0 is the zero page) plus spares.
    return make_machine(2 * HPAGE + 64, 0, profile=profile)


def test_thp_is_split_then_migrated(make_machine, profile):
    """collect_pmd: pmd_trans_huge -> get + trylock + split_huge_page() (v5: "split THP
    instead of skipping them"), then the PTE loop collects the base pages."""
    m = thp_machine(make_machine, profile)
    p = m.new_process()
    vma = p.mmap(HPAGE, thp=True)
    p.populate(vma.start, vma.end)
    for i in (0, 1, 2, 3, 100):
        p.write(addr(vma, i), pattern(i))
    head = p.translate(vma.start)
    assert head.huge and m.page(head.pfn).compound
    drv = Driver(m)
    drv.run(vma, addr(vma, 0), addr(vma, 4))
    assert m.counters["thp_split_page"] == 1
    assert sorted(drv.given) == [0, 1, 2, 3]
    for i in (0, 3, 4, 100):
        pte = p.translate(addr(vma, i))
        assert not pte.huge and pte.kind == "present"
    assert pfn_at(p, vma, 4) == head.pfn + 4  # split, not migrated
    assert not m.page(head.pfn + 4).compound
    assert_data(p, vma, [0, 1, 2, 3, 100])


def test_pinned_thp_cannot_be_split_and_the_whole_range_is_skipped(make_machine, profile):
    """collect_pmd: split_huge_page() fails on a pinned THP -> the whole PMD range is
    skipped (seed: collect_hole, src = 0; hmm-v25: collect_skip, src = dst = 0)."""
    m = thp_machine(make_machine, profile)
    p = m.new_process()
    vma = p.mmap(HPAGE, thp=True)
    p.populate(vma.start, vma.end)
    head = p.translate(vma.start).pfn
    m.pin(head)
    before = refs(m, head)
    drv = Driver(m)
    src = drv.run(vma)
    assert src.tolist() == [0] * HPAGE
    assert drv.calls == []
    assert m.counters["thp_split_page"] == 0
    assert p.translate(addr(vma, 7)) == me.Pte("present", head + 7, True, True)
    assert refs(m, head) == before
    m.unpin(head)


def test_huge_zero_pmd_is_split(make_machine, profile):
    """collect_pmd: is_huge_zero_page() -> split_huge_pmd() into zero-page PTEs, which
    collect then treats as the zero page (seed 0, hmm-v25 MIGRATE)."""
    m = make_machine(32, 0, profile=profile)
    p = m.new_process()
    vma = p.mmap(HPAGE, thp=True)
    p.read(addr(vma, 5), 1)
    assert p.translate(addr(vma, 9)) == me.Pte("zero", m.zero_pfn, False, True)
    drv = Driver(m)
    src = drv.run(vma, addr(vma, 0), addr(vma, 2))
    assert m.counters["thp_split_pmd"] == 1
    assert p.translate(addr(vma, 9)) == me.Pte("zero", m.zero_pfn, False, False)
    if profile == "hmm-v25":
        assert src.tolist() == [int(m.layout.MIGRATE)] * 2
        assert [pfn_at(p, vma, i) for i in range(2)] == [drv.given[0], drv.given[1]]
    else:
        assert src.tolist() == [0, 0] and drv.calls == []
    assert p.read(vma.start, 3 * PS) == bytes(3 * PS)


# ---------------------------------------------------------------- others holding the page
def test_page_locked_by_another_is_skipped_without_waiting(make_machine, profile):
    """collect (4.14) and prepare: trylock_page() only; a page locked by someone else
    -> src = 0 ("best effort, avoid ABBA deadlock"); the rest of the range migrates."""
    m = make_machine(32, 0, profile=profile)
    p, vma = filled(m, 3)
    pfn = pfn_at(p, vma, 1)
    m.lock_page(pfn)
    drv = Driver(m)
    src = drv.run(vma)
    assert src[1] == 0
    assert sorted(drv.given) == [0, 2]
    assert p.translate(addr(vma, 1)) == me.Pte("present", pfn, True, False)
    assert m.page(pfn).locked  # still the other thread's
    m.unlock_page(pfn)
    assert_data(p, vma, range(3))


def test_concurrent_migration_skips_migration_entries(make_machine, profile):
    """collect: a migration entry (another migrate_vma() holds the page) is a
    non-present, non-device entry -> src = 0; two overlapping migrations never wait
    on each other and each moves a disjoint set of pages."""
    m = make_machine(32, 0, profile=profile)
    p, vma = filled(m, 3)
    inner = Driver(m)
    inner_src: list[np.ndarray] = []

    def migrate_again(drv: Driver, src: np.ndarray) -> None:
        assert [p.translate(addr(vma, i)).kind for i in range(2)] == ["migration"] * 2
        inner_src.append(inner.run(vma))

    outer = Driver(m, hook=migrate_again)
    outer.run(vma, vma.start, addr(vma, 2))
    assert inner_src[0][:2].tolist() == [0, 0]
    assert sorted(inner.given) == [2] and sorted(outer.given) == [0, 1]
    assert [pfn_at(p, vma, i) for i in range(3)] == [outer.given[0], outer.given[1], inner.given[2]]
    assert_data(p, vma, range(3))


def test_pinned_page_is_restored(make_machine, profile):
    """migrate_vma_check_page(): page_count - extra > mapcount (get_user_pages) ->
    src = 0, the page is restored in place and its refcount comes back."""
    m = make_machine(32, 0, profile=profile)
    p, vma = filled(m, 2)
    m.lru_add_drain_all()
    pfn = pfn_at(p, vma, 0)
    m.pin(pfn)
    before = refs(m, pfn)
    drv = Driver(m)
    src = drv.run(vma)
    assert src[0] == 0 and sorted(drv.given) == [1]
    assert p.translate(vma.start) == me.Pte("present", pfn, True, False)
    assert refs(m, pfn) == before
    info = m.page(pfn)
    assert info.lru and not info.locked
    m.unpin(pfn)
    assert_data(p, vma, range(2))


def test_isolation_failure_is_restored(make_machine, profile):
    """prepare: isolate_lru_page() fails (isolated by another) -> src = 0."""
    m = make_machine(32, 0, profile=profile)
    p, vma = filled(m, 2)
    pfn = pfn_at(p, vma, 1)
    m.isolate_lru_page(pfn)
    before = refs(m, pfn)
    drv = Driver(m)
    src = drv.run(vma)
    assert src[1] == 0 and sorted(drv.given) == [0]
    assert p.translate(addr(vma, 1)) == me.Pte("present", pfn, True, False)
    assert refs(m, pfn) == before
    m.putback_lru_page(pfn)
    assert m.page(pfn).lru
    assert_data(p, vma, range(2))


def test_late_reference_gives_eagain_and_the_page_is_restored(make_machine, profile):
    """pages: a reference taken after unmap (GUP in alloc_and_copy) makes
    migrate_page_move_mapping() return -EAGAIN -> MIGRATE cleared; finalize restores
    the source and puts (frees) the unused destination."""
    m = make_machine(32, 0, profile=profile)
    p, vma = filled(m, 2)
    victim = pfn_at(p, vma, 0)

    def pin_now(drv: Driver, src: np.ndarray) -> None:
        drv.m.pin(victim)

    drv = Driver(m, hook=pin_now)
    src = drv.run(vma)
    lay = m.layout
    assert drv.src_at_alloc[0] & lay.MIGRATE
    assert not drv.src_at_finalize[0] & lay.MIGRATE
    assert drv.src_at_finalize[1] & lay.MIGRATE
    assert m.mpfn_to_pfn(src[0]) == victim
    assert p.translate(vma.start) == me.Pte("present", victim, True, False)
    assert m.page(drv.given[0]).free
    assert pfn_at(p, vma, 1) == drv.given[1]
    assert m.counters["pgmigrate_fail"] == 1
    assert m.counters["pgmigrate_success"] == 1
    m.unpin(victim)
    assert refs(m, victim) == (1, 1)
    assert_data(p, vma, range(2))


# ---------------------------------------------------------------- mlock, fork
def test_mlocked_pages_migrate_and_keep_mlocked(make_machine, profile):
    """unmap: TTU_IGNORE_MLOCK; pages: migrate_page() moves PG_mlocked to the new page."""
    m = make_machine(32, 0, profile=profile)
    p, vma = filled(m, 2, flags=me.VM_LOCKED)
    old = [pfn_at(p, vma, i) for i in range(2)]
    assert all(m.page(pfn).mlocked for pfn in old)
    drv = Driver(m)
    drv.run(vma)
    for i in range(2):
        new = pfn_at(p, vma, i)
        assert new == drv.given[i]
        assert m.page(new).mlocked
        assert m.page(old[i]).free
    assert_data(p, vma, range(2))


def test_fork_shared_pages_are_redirected_in_both_processes(make_machine, profile):
    """unmap: try_to_unmap() reaches the child's COW mapping; finalize:
    remove_migration_ptes(page, newpage) redirects every migration entry."""
    m = make_machine(32, 0, profile=profile)
    p, vma = filled(m, 2)
    child = p.fork()
    drv = Driver(m)
    src = drv.run(vma)
    assert not src[0] & m.layout.WRITE  # fork write-protected the PTEs
    for i in range(2):
        new = drv.given[i]
        assert p.translate(addr(vma, i)) == me.Pte("present", new, False, False)
        assert child.translate(addr(vma, i)) == me.Pte("present", new, False, False)
        assert refs(m, new) == (2, 2)
    assert_data(p, vma, range(2))
    assert_data(child, child.vmas[0], range(2))
    child.write(addr(vma, 0), b"child")  # COW still breaks after the move
    assert p.read(addr(vma, 0), PS) == pattern(0)


def test_fork_shared_device_page_moved_back_from_the_other_process(make_machine, profile):
    """rmap on a device page mapped twice (after fork; fix "mm/hmm: fix bad subpage
    pointer in try_to_unmap_one"): moving it back from the parent finds and redirects
    the child's entry too, and the child's device mirror must drop the freed page
    (the mmu-notifier invalidation of the unmapped range)."""
    m = make_machine(32, 8, profile=profile)
    p, vma = filled(m, 1)
    child = p.fork()
    assert m.device.migrate_to_device(child, vma.start, vma.end) == 1
    dev = pfn_at(child, vma, 0)
    assert dev >= m.ram_pages and pfn_at(p, vma, 0) == dev
    if profile == "hmm-v25":
        assert p.read(vma.start, PS) == pattern(0)  # the device's CPU-fault handler
    else:
        assert m.device.migrate_to_system(p, vma.start, vma.end) == 1
    new = pfn_at(p, vma, 0)
    assert new < m.ram_pages
    assert child.translate(vma.start) == me.Pte("present", new, False, False)
    assert m.page(dev).free
    assert m.device.mirrored(child, vma.start) == -1
    assert_data(p, vma, [0])
    assert_data(child, child.vmas[0], [0])


# ---------------------------------------------------------------- file and shmem
@pytest.mark.parametrize("kind", ["file", "shmem"])
def test_file_page_to_system_memory(make_machine, kind):
    """4.14 pages: a page-cache page migrates to system memory; the page-cache slot
    moves over (check_page and move_mapping count the page cache's reference)."""
    m = make_machine(32, 4, profile="hmm-v25")
    p, vma = filled(m, 1, kind=kind)
    old = pfn_at(p, vma, 0)
    assert m.page(old).file
    drv = Driver(m)
    drv.run(vma)
    new = drv.given[0]
    assert pfn_at(p, vma, 0) == new
    assert m.page(new).file and m.page(old).free
    assert refs(m, new) == (2, 1)  # the mapping + the page cache
    child = p.fork()  # shared VMAs: the child faults from the page cache
    assert child.read(vma.start, PS) == pattern(0)
    assert pfn_at(child, child.vmas[0], 0) == new
    assert_data(p, vma, [0])


@pytest.mark.parametrize("kind", ["file", "shmem"])
def test_file_page_to_device_private_is_refused(make_machine, kind):
    """4.14 pages: device-private destination and page_mapping() != NULL -> clear M;
    finalize restores the page and puts the device page back on the free list."""
    m = make_machine(32, 4, profile="hmm-v25")
    p, vma = filled(m, 1, kind=kind)
    old = pfn_at(p, vma, 0)
    free_dev = m.free_pages(device=True)
    drv = Driver(m, device=True)
    src = drv.run(vma)
    assert drv.src_at_alloc[0] & m.layout.MIGRATE
    assert not drv.src_at_finalize[0] & m.layout.MIGRATE
    assert m.mpfn_to_pfn(src[0]) == old
    assert p.translate(vma.start) == me.Pte("present", old, True, False)
    assert m.page(drv.given[0]).free
    assert m.free_pages(device=True) == free_dev
    assert_data(p, vma, [0])


@pytest.mark.parametrize("device", [False, True])
@pytest.mark.parametrize("kind", ["file", "shmem"])
def test_file_page_seed_is_refused_as_pinned(make_machine, kind, device):
    """v25-14 check_page: extra = 1 only, so the page cache's reference makes every
    page-cache page look pinned -> src = 0, whatever the destination."""
    m = make_machine(32, 4, profile="seed")
    p, vma = filled(m, 1, kind=kind)
    old = pfn_at(p, vma, 0)
    drv = Driver(m, device=device)
    assert drv.run(vma).tolist() == [0]
    assert drv.calls == []
    assert p.translate(vma.start) == me.Pte("present", old, True, False)
    assert_data(p, vma, [0])


# ---------------------------------------------------------------- insert back-offs
@HMM
@pytest.mark.parametrize("kind", ["file", "shmem"])
def test_insert_backs_off_in_a_non_anonymous_vma(make_machine, profile, kind):
    """4.14 insert_page: !vma_is_anonymous(vma) -> abort (clear M); the hole was still
    collected (no anonymous check in 4.14 collect) and the dst page is freed."""
    m = make_machine(16, 0, profile=profile)
    p = m.new_process()
    vma = p.mmap(1, kind=kind)
    free = m.free_pages()
    drv = Driver(m)
    src = drv.run(vma)
    assert drv.src_at_alloc.tolist() == [int(m.layout.MIGRATE)]
    assert src.tolist() == [0]
    assert p.translate(vma.start).kind == "none"
    assert m.free_pages() == free
    assert m.counters["insert_page"] == 0


@HMM
def test_insert_backs_off_with_userfaultfd_missing(make_machine, profile):
    """4.14 insert_page: userfaultfd_missing(vma) -> back off, do not bypass the uffd."""
    m = make_machine(16, 0, profile=profile)
    p = m.new_process()
    vma = p.mmap(2, flags=me.VM_UFFD_MISSING)
    free = m.free_pages()
    drv = Driver(m)
    src = drv.run(vma)
    assert len(drv.given) == 2
    assert src.tolist() == [0, 0]
    assert [p.translate(addr(vma, i)).kind for i in range(2)] == ["none", "none"]
    assert m.free_pages() == free


@HMM
def test_insert_backs_off_when_the_hole_was_populated_meanwhile(make_machine, profile):
    """4.14 insert_page: the PTE is now present and not the zero pfn -> abort; the
    CPU's page stays and the driver's page is freed."""
    m = make_machine(16, 0, profile=profile)
    p = m.new_process()
    vma = p.mmap(2)

    def cpu_writes_hole(drv: Driver, src: np.ndarray) -> None:
        p.write(addr(vma, 0), b"cpu was first")

    drv = Driver(m, hook=cpu_writes_hole)
    src = drv.run(vma)
    assert src.tolist() == [0, int(m.layout.MIGRATE)]  # slot 1 was inserted
    pte = p.translate(vma.start)
    assert pte.kind == "present" and pte.pfn != drv.given[0]
    assert m.page(drv.given[0]).free
    assert p.read(vma.start, 13) == b"cpu was first"
    assert pfn_at(p, vma, 1) == drv.given[1]


@HMM
def test_insert_backs_off_under_a_huge_pmd(make_machine, profile):
    """4.14 insert_page: the PMD became a THP meanwhile (pmd_trans_huge) -> abort."""
    m = thp_machine(make_machine, profile)
    p = m.new_process()
    vma = p.mmap(HPAGE, thp=True)

    def cpu_faults_a_thp(drv: Driver, src: np.ndarray) -> None:
        p.write(addr(vma, 1), b"thp")

    drv = Driver(m, hook=cpu_faults_a_thp)
    src = drv.run(vma, addr(vma, 0), addr(vma, 2))
    assert src.tolist() == [0, 0]
    assert p.translate(vma.start).huge
    assert all(m.page(pfn).free for pfn in drv.given.values())
    assert p.read(addr(vma, 1), 3) == b"thp"


# ---------------------------------------------------------------- no destination
def test_slot_without_destination(make_machine, profile):
    """pages: no dst page -> hmm-v25 clears MIGRATE (17/19); the seed keeps it (14/19
    just skips the slot). Either way finalize restores the source."""
    m = make_machine(32, 0, profile=profile)
    p, vma = filled(m, 2)
    old = pfn_at(p, vma, 1)
    drv = Driver(m, want=lambda i, s: i == 0)
    drv.run(vma)
    kept = bool(drv.src_at_finalize[1] & m.layout.MIGRATE)
    assert kept == (profile == "seed")
    assert p.translate(addr(vma, 1)) == me.Pte("present", old, True, False)
    assert pfn_at(p, vma, 0) == drv.given[0]
    assert m.counters["pgmigrate_success"] == 1
    assert_data(p, vma, range(2))


def test_error_dst_restores_the_page(make_machine, profile):
    """2.7: dst = MIGRATE_PFN_ERROR has no VALID, so the core sees no destination
    and restores the source (a device entry in hmm-v25)."""
    m = make_machine(32, 4, profile=profile)
    p, vma = filled(m, 1)
    assert m.device.migrate_to_device(p, vma.start, vma.end) == 1
    dev = pfn_at(p, vma, 0)
    kind = p.translate(vma.start).kind

    def error_out(vma_, src, dst, start, end, private):
        dst[0] = m.layout.ERROR

    src = np.zeros(1, np.uint64)
    dst = np.zeros(1, np.uint64)
    me.migrate_vma(me.MigrateOps(error_out, lambda *a: None), vma, vma.start, vma.end, src, dst)
    lay = m.layout
    if profile == "hmm-v25":
        assert src[0] & lay.DEVICE  # 16/19: collected from a device-private entry
    assert m.mpfn_to_pfn(src[0]) == dev
    assert p.translate(vma.start) == me.Pte(kind, dev, True, False)
    assert_data(p, vma, [0])


# ---------------------------------------------------------------- early returns, drains
def test_all_pages_pinned_calls_no_callback(make_machine, profile):
    """migrate_vma(): cpages reaches 0 in prepare -> return 0, no callback."""
    m = make_machine(32, 0, profile=profile)
    p, vma = filled(m, 3)
    pfns = [pfn_at(p, vma, i) for i in range(3)]
    for pfn in pfns:
        m.pin(pfn)
    drv = Driver(m)
    assert drv.run(vma).tolist() == [0] * 3
    assert drv.calls == []
    assert m.counters["migrate_vma_calls"] == 1
    for pfn in pfns:
        m.unpin(pfn)
    assert [pfn_at(p, vma, i) for i in range(3)] == pfns


def test_lru_add_drain_all_at_most_once_per_call(make_machine, profile):
    """prepare: `if (!PageLRU(page) && allow_drain)` -> lru_add_drain_all() once; pages
    already on the LRU need none."""
    m = make_machine(64, 0, profile=profile)
    p, vma = filled(m, 20)  # 16 drained by the batch itself, 4 still in it
    in_batch = [i for i in range(20) if m.page(pfn_at(p, vma, i)).pagevec]
    assert len(in_batch) == 4
    Driver(m).run(vma)
    assert m.counters["lru_add_drain_all"] == 1
    Driver(m).run(vma)  # every page now sits on the LRU
    assert m.counters["lru_add_drain_all"] == 1
    assert m.counters["migrate_vma_calls"] == 2
    assert_data(p, vma, range(20))


# ---------------------------------------------------------------- device-private sources
@HMM
def test_device_private_source_carries_the_device_flag(make_machine, profile):
    """4.14 collect: a device-private swap entry -> src = P|V|M|D(|W); migrating it to
    system memory gives a present PTE again (the fault path's job, done by hand)."""
    m = make_machine(32, 4, profile=profile)
    p, vma = filled(m, 2)
    m.device.migrate_to_device(p, vma.start, vma.end)
    devs = [pfn_at(p, vma, i) for i in range(2)]
    drv = Driver(m)
    src = drv.run(vma)
    lay = m.layout
    for i in range(2):
        assert src[i] & lay.DEVICE and src[i] & lay.WRITE
        assert m.mpfn_to_pfn(src[i]) == devs[i]
        assert p.translate(addr(vma, i)) == me.Pte("present", drv.given[i], True, False)
        assert m.page(devs[i]).free
    assert m.device.counters["faults"] == 0
    assert_data(p, vma, range(2))


# ---------------------------------------------------------------- argument checks
@pytest.fixture
def target(make_machine, profile):
    m = make_machine(32, 0, profile=profile)
    p, vma = filled(m, 4)
    return m, p, vma


def expect_einval(m, ops, vma, start, end, src, dst) -> None:
    before = snapshot(m)
    src_before = None if src is None else src.copy()
    with pytest.raises(me.MigrateError) as info:
        me.migrate_vma(ops, vma, start, end, src, dst)
    assert info.value.errno == errno.EINVAL
    assert isinstance(info.value, OSError)
    assert snapshot(m) == before
    if src is not None:
        assert src.tolist() == src_before.tolist()  # checks come before the memset
    m.check()


@pytest.mark.parametrize(
    "flag", ["VM_HUGETLB", "VM_IO", "VM_PFNMAP", "VM_MIXEDMAP", "VM_DONTEXPAND"]
)
def test_einval_for_hugetlb_and_vm_special(make_machine, profile, flag):
    """migrate_vma(): is_vm_hugetlb_page(vma) || (vma->vm_flags & VM_SPECIAL)."""
    m = make_machine(16, 0, profile=profile)
    p = m.new_process()
    vma = p.mmap(2, flags=getattr(me, flag))
    drv = Driver(m)
    src = np.full(2, 7, np.uint64)
    expect_einval(m, drv.ops, vma, vma.start, vma.end, src, np.zeros(2, np.uint64))
    assert drv.calls == []


@pytest.mark.parametrize(
    "bounds",
    [
        (-1, 1),  # start below vm_start
        (0, 5),  # end above vm_end
        (4, 5),  # start at vm_end
        (-2, 0),  # end at vm_start
        (2, 1),  # start > end
        (1, 1),  # start == end
    ],
)
def test_einval_for_ranges_outside_the_vma(target, bounds):
    """migrate_vma(): start outside [vm_start, vm_end), end outside (vm_start, vm_end],
    start >= end."""
    m, p, vma = target
    drv = Driver(m)
    start, end = (vma.start + b * PS for b in bounds)
    src = np.full(8, 7, np.uint64)
    expect_einval(m, drv.ops, vma, start, end, src, np.zeros(8, np.uint64))
    assert drv.calls == []


def test_einval_when_rounding_empties_the_range(target):
    """migrate_vma(): start &= PAGE_MASK; end &= PAGE_MASK; start >= end."""
    m, p, vma = target
    src = np.full(1, 7, np.uint64)
    expect_einval(m, Driver(m).ops, vma, vma.start + 1, vma.start + PS - 1, src, src.copy())


def test_einval_for_missing_arguments(target):
    """migrate_vma(): !vma, !ops, !src, !dst."""
    m, p, vma = target
    ops = Driver(m).ops
    src, dst = np.zeros(4, np.uint64), np.zeros(4, np.uint64)
    expect_einval(m, ops, None, vma.start, vma.end, src, dst)
    expect_einval(m, None, vma, vma.start, vma.end, src, dst)
    expect_einval(m, ops, vma, vma.start, vma.end, None, dst)
    expect_einval(m, ops, vma, vma.start, vma.end, src, None)


def malformed_calls(vma: me.Vma, ops: me.MigrateOps) -> dict[str, tuple]:
    ok = np.zeros(4, np.uint64)
    read_only = np.zeros(4, np.uint64)
    read_only.flags.writeable = False
    strided = np.zeros(8, np.uint64)[::2]
    return {
        "int64 src": (ops, vma, vma.start, vma.end, np.zeros(4, np.int64), ok),
        "float dst": (ops, vma, vma.start, vma.end, ok, np.zeros(4, np.float64)),
        "list src": (ops, vma, vma.start, vma.end, [0, 0, 0, 0], ok),
        "short src": (ops, vma, vma.start, vma.end, np.zeros(3, np.uint64), ok),
        "short dst": (ops, vma, vma.start, vma.end, ok, np.zeros(2, np.uint64)),
        "read-only dst": (ops, vma, vma.start, vma.end, ok, read_only),
        "non-contiguous src": (ops, vma, vma.start, vma.end, strided, ok),
        "2-D src": (ops, vma, vma.start, vma.end, np.zeros((4, 1), np.uint64), ok),
        "overlapping src/dst": (ops, vma, vma.start, vma.end, ok, ok),
        "float start": (ops, vma, float(vma.start), vma.end, ok, np.zeros(4, np.uint64)),
        "str end": (ops, vma, vma.start, str(vma.end), ok, np.zeros(4, np.uint64)),
        "ops not MigrateOps": ((ops[0], ops[1]), vma, vma.start, vma.end, ok, ok.copy()),
        "uncallable op": (me.MigrateOps(1, 2), vma, vma.start, vma.end, ok, ok.copy()),
        "vma not a Vma": (ops, "vma", vma.start, vma.end, ok, ok.copy()),
    }


MALFORMED = [
    "int64 src",
    "float dst",
    "list src",
    "short src",
    "short dst",
    "read-only dst",
    "non-contiguous src",
    "2-D src",
    "overlapping src/dst",
    "float start",
    "str end",
    "ops not MigrateOps",
    "uncallable op",
    "vma not a Vma",
]


@pytest.mark.parametrize("case", MALFORMED)
def test_malformed_arguments_change_nothing(target, case):
    """api.md: malformed arguments are TypeError/ValueError, raised before any change."""
    m, p, vma = target
    drv = Driver(m)
    args = malformed_calls(vma, drv.ops)[case]
    before = snapshot(m)
    with pytest.raises((TypeError, ValueError)) as info:
        me.migrate_vma(*args)
    assert not isinstance(info.value, me.MigrateError)
    assert snapshot(m) == before
    assert drv.calls == []
    m.check()
    assert_data(p, vma, range(4))


@pytest.mark.parametrize(
    "call",
    [
        lambda p, v: p.mmap(1, prot="wx"),
        lambda p, v: p.mmap(1, kind="hugetlbfs"),
        lambda p, v: p.mmap(1, flags=1 << 40),
        lambda p, v: p.mmap(1.5),
        lambda p, v: p.mmap(1, addr=v.start),  # overlaps
        lambda p, v: p.read(float(v.start), 4),
        lambda p, v: p.write(v.start, "text"),
        lambda p, v: p.translate(str(v.start)),
        lambda p, v: p.populate(v.start, None),
        lambda p, v: p.machine.pin(10**6),
        lambda p, v: p.machine.page(-1),
        lambda p, v: p.machine.lock_page(0),  # the zero page
    ],
)
def test_malformed_process_calls_change_nothing(target, call):
    """Bad kind/prot/flags/addresses are TypeError/ValueError with no state change."""
    m, p, vma = target
    before = snapshot(m)
    with pytest.raises((TypeError, ValueError)):
        call(p, vma)
    assert snapshot(m) == before
    m.check()


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(profile="hmm-v24"),
        dict(profile=None),
        dict(page_size=1000),
        dict(store_data="yes"),
        dict(device_pages=-1),
    ],
)
def test_malformed_machine_arguments(kwargs):
    with pytest.raises((TypeError, ValueError)):
        me.Machine(16, **kwargs)


def test_access_outside_every_vma_is_a_segfault(target):
    """A load or store with no VMA (or against prot) raises SegFault, changing nothing."""
    m, p, vma = target
    ro = p.mmap(1, prot="none")
    before = snapshot(m)
    for call in (
        lambda: p.read(vma.end + 16 * PS, 1),
        lambda: p.write(vma.start - PS, b"x"),
        lambda: p.read(ro.start, 1),
        lambda: p.write(ro.start, b"x"),
    ):
        with pytest.raises(me.SegFault):
            call()
        assert snapshot(m) == before


# ---------------------------------------------------------------- errors
def test_out_of_memory_on_a_write_fault(make_machine, profile):
    """A write fault with no free frame raises OutOfMemory; the machine stays sound."""
    m = make_machine(6, 0, profile=profile)  # five usable frames besides the zero page
    p = m.new_process()
    vma = p.mmap(8)
    for i in range(5):
        p.write(addr(vma, i), pattern(i))
    assert m.free_pages() == 0
    with pytest.raises(me.OutOfMemory):
        p.write(addr(vma, 5), b"no room")
    m.check()
    assert p.translate(addr(vma, 5)).kind == "none"
    with pytest.raises(me.OutOfMemory):
        m.alloc_page()
    with pytest.raises(me.OutOfMemory):
        m.alloc_page(device=True)  # no device memory at all
    assert_data(p, vma, range(5))


def test_out_of_memory_inside_alloc_and_copy(make_machine, profile):
    """A driver that runs out of memory midway: OutOfMemory propagates, the
    migration completes for nothing and every page is back in place."""
    m = make_machine(6, 0, profile=profile)
    p, vma = filled(m, 3)
    old = [pfn_at(p, vma, i) for i in range(3)]
    drv = Driver(m)
    with pytest.raises(me.OutOfMemory):
        drv.run(vma)
    m.check()
    assert [pfn_at(p, vma, i) for i in range(3)] == old
    assert m.free_pages() == 2
    assert_data(p, vma, range(3))


def test_callback_raising_before_any_dst_restores_everything(make_machine, profile):
    """A Python alloc_and_copy() that raises: the passes still run to the end (no
    page left locked or unmapped), then the exception propagates."""
    m = make_machine(32, 0, profile=profile)
    p, vma = filled(m, 2)
    old = [pfn_at(p, vma, i) for i in range(2)]

    def boom(vma_, src, dst, start, end, private):
        raise RuntimeError("driver bug")

    fin = []
    ops = me.MigrateOps(boom, lambda *a: fin.append(1))
    with pytest.raises(RuntimeError, match="driver bug"):
        me.migrate_vma(ops, vma, vma.start, vma.end, np.zeros(2, np.uint64), np.zeros(2, np.uint64))
    m.check()
    assert fin == []
    assert [pfn_at(p, vma, i) for i in range(2)] == old
    assert all(not m.page(pfn).locked for pfn in old)
    assert_data(p, vma, range(2))


def test_callback_raising_after_filling_dst_restores_everything(make_machine, profile):
    """A Python alloc_and_copy() that raises after filling some dst: the failed call
    must not migrate anything (pages restored), the dst pages are freed, and the
    error propagates."""
    m = make_machine(32, 0, profile=profile)
    p, vma = filled(m, 2)
    old = [pfn_at(p, vma, i) for i in range(2)]
    free = m.free_pages()

    def first_slot_then_fail(i: int, src_i: np.uint64) -> bool:
        if i > 0:
            raise RuntimeError("midway")
        return True

    drv = Driver(m, want=first_slot_then_fail)
    with pytest.raises(RuntimeError, match="midway"):
        drv.run(vma)
    m.check()
    assert 0 in drv.given
    assert [pfn_at(p, vma, i) for i in range(2)] == old
    assert m.page(drv.given[0]).free
    assert m.free_pages() == free
    assert_data(p, vma, range(2))


def test_invalid_destination_is_dropped_and_reported(make_machine, profile):
    """A dst naming the source page itself is no valid destination: the slot is not
    migrated, the others are, and ValueError is raised after the call completes."""
    m = make_machine(32, 0, profile=profile)
    p, vma = filled(m, 2)
    old1 = pfn_at(p, vma, 1)

    drv = Driver(m, want=lambda i, s: i == 0)
    src, dst = np.zeros(2, np.uint64), np.zeros(2, np.uint64)

    def alloc(vma_, s, d, start, end, private):
        drv.alloc_and_copy(vma_, s, d, start, end, private)
        d[1] = m.migrate_pfn(old1) | m.layout.LOCKED  # the source itself

    ops = me.MigrateOps(alloc, drv.finalize_and_map)
    with pytest.raises(ValueError):
        me.migrate_vma(ops, vma, vma.start, vma.end, src, dst)
    m.check()
    assert pfn_at(p, vma, 0) == drv.given[0]
    assert pfn_at(p, vma, 1) == old1
    assert_data(p, vma, range(2))
