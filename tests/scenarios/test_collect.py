"""Scenarios of migrate_vma_collect(), through the public API: what it collects, what it skips.

Each test's docstring names the kernel branch (HMM v25 14/19 as posted = seed,
the 4.14 merge of 14-17/19 = hmm-v25) or the hmm selftest it mirrors. Drivers
are Python callbacks (``me.migrate_vma`` with ``MigrateOps``) or ``m.device.ops``.
Every machine comes from ``make_machine``, so each test ends with ``m.check()``.
"""

from __future__ import annotations

import numpy as np

import migengine as me
from tests.helpers import (
    HMM,
    HPAGE,
    PS,
    Driver,
    addr,
    assert_data,
    assert_freed_by_drain,
    filled,
    pattern,
    pfn_at,
    refs,
    thp_machine,
)


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
    # finalize's putback_lru_page() of each source and each new page: the batch
    # holds a reference on both until it drains, and frees the sources then.
    assert_freed_by_drain(m, old)
    assert all(refs(m, pfn) == (1, 1) for pfn in drv.given.values())
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


# ---------------------------------------------------------------- device-private sources
@HMM
def test_device_private_source_carries_the_device_flag(make_machine, profile):
    """4.14 collect: a device-private swap entry -> src = P|V|M|D(|W); migrating it to
    system memory gives a present PTE again (the fault path's job, done by hand),
    read-only: 4.14 takes the migration entry's write bit from the swap PTE's
    (clear on x86-64), while src keeps WRITE from is_write_device_private_entry()."""
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
        assert p.translate(addr(vma, i)) == me.Pte("present", drv.given[i], False, False)
        assert m.page(devs[i]).free
    assert m.device.counters["faults"] == 0
    assert_data(p, vma, range(2))
