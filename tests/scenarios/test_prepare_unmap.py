"""Scenarios of migrate_vma_prepare() and migrate_vma_unmap(), through the public API:
others holding the page, mlock, fork, early returns and LRU drains.

Each test's docstring names the kernel branch (HMM v25 14/19 as posted = seed,
the 4.14 merge of 14-17/19 = hmm-v25) or the hmm selftest it mirrors. Drivers
are Python callbacks (``me.migrate_vma`` with ``MigrateOps``) or ``m.device.ops``.
Every machine comes from ``make_machine``, so each test ends with ``m.check()``.
"""

from __future__ import annotations

import numpy as np

import migengine as me
from tests.helpers import (
    PS,
    Driver,
    addr,
    assert_data,
    assert_freed_by_drain,
    assert_in_batch,
    filled,
    pattern,
    pfn_at,
    refs,
)


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
    src = 0, the page is restored in place. 4.14's prepare: get_page() +
    putback_lru_page(), so the page waits in the driver CPU's LRU-add batch,
    which holds one reference more until it drains."""
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
    assert refs(m, pfn) == (before[0] + 1, before[1])
    assert_in_batch(m, pfn)
    m.lru_add_drain_all()
    assert refs(m, pfn) == before and m.page(pfn).lru
    m.unpin(pfn)
    assert_data(p, vma, range(2))


def test_isolation_failure_is_restored(make_machine, profile):
    """prepare: isolate_lru_page() fails (isolated by another) -> src = 0; prepare's
    restore loop drops the collect reference (put_page, not putback). The other
    isolator's putback_lru_page() then goes through the LRU-add batch."""
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
    assert_in_batch(m, pfn)
    m.lru_add_drain_all()
    assert m.page(pfn).lru
    assert_data(p, vma, range(2))


def test_late_reference_gives_eagain_and_the_page_is_restored(make_machine, profile):
    """pages: a reference taken after unmap (GUP in alloc_and_copy) makes
    migrate_page_move_mapping() return -EAGAIN -> MIGRATE cleared; finalize restores
    the source (putback_lru_page(): into the driver CPU's batch) and puts (frees)
    the unused destination."""
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
    assert_in_batch(m, victim)
    assert refs(m, victim) == (2, 1)
    m.lru_add_drain_all()
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
    assert_freed_by_drain(m, old)
    assert_data(p, vma, range(2))


def test_fork_shared_pages_are_redirected_in_both_processes(make_machine, profile):
    """unmap: try_to_unmap() reaches the child's COW mapping; finalize:
    remove_migration_ptes(page, newpage) redirects every migration entry, and
    putback_lru_page() leaves each new page in the driver CPU's batch."""
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
        assert refs(m, new) == (3, 2)
        assert_in_batch(m, new)
    assert_data(p, vma, range(2))
    assert_data(child, child.vmas()[0], range(2))
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
    assert_freed_by_drain(m, [dev])  # seed's device frames are put back like RAM
    assert m.device.mirrored(child, vma.start) == -1
    assert_data(p, vma, [0])
    assert_data(child, child.vmas()[0], [0])


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
    p, vma = filled(m, 20)  # the 14th fault drained the batch (PAGEVEC_SIZE 14): 6 wait in it
    in_batch = [i for i in range(20) if m.page(pfn_at(p, vma, i)).pagevec]
    assert in_batch == list(range(14, 20))
    Driver(m).run(vma)
    assert m.counters["lru_add_drain_all"] == 1
    Driver(m).run(vma)  # every page now sits on the LRU
    assert m.counters["lru_add_drain_all"] == 1
    assert m.counters["migrate_vma_calls"] == 2
    assert_data(p, vma, range(20))
