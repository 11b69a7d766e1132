"""One unit test per migrate_vma() pass, calling the compiled passes directly.

Each test drives ``collect -> prepare -> unmap -> pages -> finalize`` by hand on
a small machine, asserts the state right after the pass under test, then runs
the remaining passes (with the kernel's early returns) so the machine ends
consistent and the ``make_machine`` teardown check holds.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest

import migengine as me
from migengine.kernels import collect, finalize, layout, pages, prepare, unmap
from tests.helpers import assert_freed_by_drain, assert_in_batch, kinds, refs

PS = 4096
POISON = np.uint64(0xDEAD)


class Passes:
    """A ``struct migrate_vma`` driven pass by pass over ``[start, end)`` of a VMA."""

    ORDER = ("collect", "prepare", "unmap", "pages", "finalize")

    def __init__(
        self, m: me.Machine, vma: me.Vma, start: int | None = None, end: int | None = None
    ):
        self.m, self.vma = m, vma
        self.start = vma.start if start is None else start
        self.end = vma.end if end is None else end
        self.n = (self.end - self.start) // PS
        self.src = np.zeros(self.n, np.uint64)
        self.dst = np.full(self.n, POISON, np.uint64)  # collect must overwrite what it owns
        self.mig = np.zeros(layout.MIG_FIELDS, np.int64)
        self.mig[layout.MIG_START] = self.start
        self.mig[layout.MIG_END] = self.end
        self.mig[layout.MIG_VMA] = vma.index
        self.done: list[str] = []
        self.collected = -1

    @property
    def cpages(self) -> int:
        return int(self.mig[layout.MIG_CPAGES])

    def collect(self) -> None:
        st = self.m.state
        collect.migrate_vma_collect(
            st, self.vma.index, self.start, self.end, self.src, self.dst, self.mig
        )
        self.done.append("collect")

    def prepare(self) -> None:
        prepare.migrate_vma_prepare(self.m.state, self.vma.index, self.src, self.mig)
        self.done.append("prepare")

    def unmap(self) -> None:
        unmap.migrate_vma_unmap(self.m.state, self.src, self.mig)
        self.done.append("unmap")

    def pages(self) -> None:
        # A driver's alloc_and_copy() never leaves garbage in dst.
        self.dst[self.dst == POISON] = 0
        pages.migrate_vma_pages(
            self.m.state, self.vma.index, self.start, self.n, self.src, self.dst
        )
        self.done.append("pages")

    def finalize(self) -> None:
        self.collected = int(
            finalize.migrate_vma_finalize(self.m.state, self.n, self.src, self.dst)
        )
        self.done.append("finalize")

    def finish(self) -> None:
        """Run what is left, returning early as migrate_vma() does when cpages is 0."""
        for name in self.ORDER[len(self.done) :]:
            if name in ("prepare", "unmap", "pages") and self.cpages == 0:
                return
            getattr(self, name)()

    def give(self, i: int, *, device: bool = False, copy: bool = True) -> int:
        """alloc_and_copy() for slot i: a locked page, the source's bytes, dst set."""
        lay = self.m.layout
        pfn = self.m.alloc_page(device=device)
        spfn = self.m.mpfn_to_pfn(self.src[i])
        if copy and spfn >= 0:
            self.m.copy_page(pfn, spfn)
        self.dst[i] = self.m.migrate_pfn(pfn) | lay.LOCKED | (self.src[i] & lay.WRITE)
        return pfn


def mpfn(m: me.Machine, pfn: int, *flags: str) -> int:
    value = m.migrate_pfn(pfn)
    for f in flags:
        value |= getattr(m.layout, f)
    return int(value)


def delta(m: me.Machine, before: dict[str, int]) -> Callable[[str], int]:
    after = m.counters
    return lambda name: after[name] - before[name]


@pytest.fixture
def mixed(make_machine, profile):
    """A 4-page anonymous VMA: [present rw 'A', zero page, none, present rw 'D']."""
    m = make_machine(32, 8, profile=profile)
    p = m.new_process()
    vma = p.mmap(4)
    p.write(vma.start, b"A" * PS)
    p.read(vma.start + PS, 1)
    p.write(vma.start + 3 * PS, b"D" * PS)
    a, d = p.translate(vma.start).pfn, p.translate(vma.start + 3 * PS).pfn
    return m, p, vma, a, d


# ---------------------------------------------------------------- collect
def test_collect_classifies_every_pte(mixed):
    """collect: present -> P|V|M|W; zero page and pte_none -> seed 0, hmm-v25 MIGRATE
    (17/19); hmm-v25 locks and unmaps each page itself (15/19) and zeroes every dst
    (16/19), the seed writes only src in the PTE loop and leaves the PTEs alone."""
    m, p, vma, a, d = mixed
    assert refs(m, a) == (2, 1)  # the mapping + CPU 0's LRU-add batch
    before = m.counters
    mig = Passes(m, vma)
    mig.collect()
    assert mig.mig[layout.MIG_NPAGES] == 4
    assert mig.mig[layout.MIG_END] == vma.end
    if m.profile == "hmm-v25":
        assert mig.src.tolist() == [
            mpfn(m, a, "MIGRATE", "LOCKED", "WRITE"),
            int(m.layout.MIGRATE),
            int(m.layout.MIGRATE),
            mpfn(m, d, "MIGRATE", "LOCKED", "WRITE"),
        ]
        assert mig.dst.tolist() == [0, 0, 0, 0]
        assert mig.cpages == 4  # two pages and two holes
        assert kinds(p, vma) == ["migration", "zero", "none", "migration"]
        assert p.translate(vma.start).writable  # migration entry keeps the write bit
        for pfn in (a, d):
            info = m.page(pfn)
            assert info.locked and (info.refcount, info.mapcount) == (2, 0)  # batch + collect
        assert delta(m, before)("tlb_flush") == 1  # one flush per PMD batch
    else:
        assert mig.src.tolist() == [
            mpfn(m, a, "MIGRATE", "WRITE"),
            0,
            0,
            mpfn(m, d, "MIGRATE", "WRITE"),
        ]
        assert mig.dst.tolist() == [int(POISON)] * 4  # 14/19 PTE loop writes only src
        assert mig.cpages == 2
        assert kinds(p, vma) == ["present", "zero", "none", "present"]
        for pfn in (a, d):
            info = m.page(pfn)
            assert not info.locked and (info.refcount, info.mapcount) == (3, 1)  # + collect ref
        assert delta(m, before)("tlb_flush") == 0
    mig.finish()
    assert kinds(p, vma) == ["present", "zero", "none", "present"]
    assert [p.translate(vma.start + i * PS).pfn for i in (0, 3)] == [a, d]
    assert p.read(vma.start, PS) == b"A" * PS


def test_collect_pmd_none_is_a_hole_in_both_profiles(make_machine, profile):
    """collect_hole on pmd_none: dst = 0 in both; src = 0 (seed) or MIGRATE (hmm-v25)."""
    m = make_machine(16, 0, profile=profile)
    p = m.new_process()
    vma = p.mmap(3)
    mig = Passes(m, vma)
    mig.collect()
    assert mig.dst.tolist() == [0, 0, 0]
    if profile == "hmm-v25":
        assert mig.src.tolist() == [int(m.layout.MIGRATE)] * 3 and mig.cpages == 3
    else:
        assert mig.src.tolist() == [0, 0, 0] and mig.cpages == 0
    mig.finish()
    assert kinds(p, vma) == ["none"] * 3


def test_collect_swap_entry_and_device_page(make_machine, profile):
    """collect: a swap entry gives 0 and stays; a device page gives P|V|M|W plus
    DEVICE in hmm-v25 (16/19, device-private entry), plain in seed (CPU-addressable)."""
    m = make_machine(32, 8, profile=profile)
    p = m.new_process()
    vma = p.mmap(2)
    p.write(vma.start, b"dev" * 100)
    p.write(vma.start + PS, b"swp" * 100)
    assert m.device.migrate_to_device(p, vma.start, vma.start + PS) == 1
    p.swap_out(vma.start + PS)
    dev = p.translate(vma.start).pfn
    assert dev >= m.ram_pages
    mig = Passes(m, vma)
    mig.collect()
    if profile == "hmm-v25":
        assert mig.src[0] == mpfn(m, dev, "MIGRATE", "DEVICE", "WRITE", "LOCKED")
        assert kinds(p, vma) == ["migration", "swap"]
    else:
        assert mig.src[0] == mpfn(m, dev, "MIGRATE", "WRITE")
        assert kinds(p, vma) == ["present", "swap"]
    assert mig.src[1] == 0
    mig.finish()
    assert kinds(p, vma) == ["device" if profile == "hmm-v25" else "present", "swap"]
    assert p.translate(vma.start).pfn == dev
    assert p.read(vma.start, 300) == b"dev" * 100
    assert p.read(vma.start + PS, 300) == b"swp" * 100


def test_collect_page_without_mapping_is_skipped(make_machine, profile):
    """collect: !page->mapping -> src = 0, no reference taken, PTE untouched."""
    m = make_machine(16, 0, profile=profile)
    p = m.new_process()
    vma = p.mmap(1)
    p.write(vma.start, b"x")
    pfn = p.translate(vma.start).pfn
    saved = m.state.page["mapping"][pfn]
    m.state.page["mapping"][pfn] = 0
    try:
        before = refs(m, pfn)
        mig = Passes(m, vma)
        mig.collect()
        assert mig.src.tolist() == [0]
        assert mig.cpages == 0
        assert refs(m, pfn) == before
        assert kinds(p, vma) == ["present"]
    finally:
        m.state.page["mapping"][pfn] = saved


# ---------------------------------------------------------------- prepare
def test_prepare_locks_isolates_and_drops_the_collect_reference(mixed):
    """prepare: local lru_add_drain(), lru_add_drain_all() once for pages still in
    CPU 0's batch, isolate, drop the collect ref (the seed's documented correction);
    the seed takes the page lock here (LOCKED), hmm-v25 already holds it."""
    m, p, vma, a, d = mixed
    mig = Passes(m, vma)
    mig.collect()
    src_after_collect = mig.src.copy()
    before = m.counters
    mig.prepare()
    assert delta(m, before)("lru_add_drain_all") == 1
    assert delta(m, before)("lru_add_drain") == 1
    for pfn in (a, d):
        info = m.page(pfn)
        assert info.locked and not info.lru and not info.pagevec
    if m.profile == "hmm-v25":
        assert mig.src.tolist() == src_after_collect.tolist()
        assert mig.cpages == 4
        assert refs(m, a) == (1, 0)  # the isolation reference only
        assert kinds(p, vma)[0] == "migration"
    else:
        assert mig.src.tolist() == [
            mpfn(m, a, "MIGRATE", "LOCKED", "WRITE"),
            0,
            0,
            mpfn(m, d, "MIGRATE", "LOCKED", "WRITE"),
        ]
        assert mig.cpages == 2
        assert refs(m, a) == (2, 1)  # the mapping + isolation
        assert kinds(p, vma)[0] == "present"
    mig.finish()


def test_prepare_skips_drain_all_when_pages_are_on_the_lru(make_machine, profile):
    """prepare: drain_all only if a page is not PageLRU."""
    m = make_machine(16, 0, profile=profile)
    p = m.new_process()
    vma = p.mmap(2)
    p.populate(vma.start, vma.end)
    m.lru_add_drain_all()
    before = m.counters
    mig = Passes(m, vma)
    mig.collect()
    mig.prepare()
    assert delta(m, before)("lru_add_drain_all") == 0
    assert mig.cpages == 2
    mig.finish()


def test_prepare_backs_off_a_page_locked_by_another(make_machine, profile):
    """prepare: trylock_page() fails -> src = 0, cpages--, put the collect ref
    (best effort, never wait: no ABBA deadlock between two migrations)."""
    m = make_machine(16, 0, profile=profile)
    p = m.new_process()
    vma = p.mmap(2)
    p.populate(vma.start, vma.end)
    pfn = p.translate(vma.start).pfn
    m.lock_page(pfn)
    before = refs(m, pfn)
    mig = Passes(m, vma)
    mig.collect()
    assert mig.src[0] == mpfn(m, pfn, "MIGRATE", "WRITE")  # collected, but not locked
    assert kinds(p, vma)[0] == "present"  # hmm-v25 collect could not unmap it
    mig.prepare()
    assert mig.src[0] == 0
    assert mig.cpages == 1
    assert refs(m, pfn)[1] == before[1]
    assert m.page(pfn).refcount == 1  # the mapping; the batch was drained, collect ref put
    mig.finish()
    m.unlock_page(pfn)
    assert kinds(p, vma) == ["present", "present"]


def test_prepare_isolation_failure_restores(make_machine, profile):
    """prepare: isolate_lru_page() fails (another isolator) -> src = 0; hmm-v25 re-maps
    the page it unmapped in collect (remove_migration_pte at the original address)."""
    m = make_machine(16, 0, profile=profile)
    p = m.new_process()
    vma = p.mmap(1)
    p.write(vma.start, b"iso")
    pfn = p.translate(vma.start).pfn
    m.isolate_lru_page(pfn)
    before = refs(m, pfn)
    mig = Passes(m, vma)
    mig.collect()
    mig.prepare()
    assert mig.src.tolist() == [0]
    assert mig.cpages == 0
    assert kinds(p, vma) == ["present"]
    assert p.translate(vma.start).pfn == pfn
    assert refs(m, pfn) == before
    assert not m.page(pfn).locked
    mig.finish()
    m.putback_lru_page(pfn)
    assert p.read(vma.start, 3) == b"iso"


def test_prepare_pinned_page_is_put_back(make_machine, profile):
    """prepare: migrate_vma_check_page() fails (page_count - 1 > mapcount) ->
    src = 0, unlock, putback_lru_page() (into the driver CPU's LRU-add batch,
    which holds a reference); hmm-v25 also re-maps it."""
    m = make_machine(16, 0, profile=profile)
    p = m.new_process()
    vma = p.mmap(1)
    p.write(vma.start, b"pin")
    pfn = p.translate(vma.start).pfn
    m.pin(pfn)
    mig = Passes(m, vma)
    mig.collect()
    mig.prepare()
    assert mig.src.tolist() == [0]
    assert_in_batch(m, pfn)
    assert refs(m, pfn) == (3, 1)  # mapping + pin + the batch
    assert kinds(p, vma) == ["present"]
    mig.finish()
    m.unpin(pfn)


# ---------------------------------------------------------------- unmap
def test_unmap_installs_migration_entries(mixed):
    """unmap: try_to_unmap(TTU_MIGRATION) for the seed; hmm-v25 calls it only for
    pages still mapped, and collect already unmapped a singly mapped page."""
    m, p, vma, a, d = mixed
    mig = Passes(m, vma)
    mig.collect()
    mig.prepare()
    src = mig.src.copy()
    before = m.counters
    mig.unmap()
    assert mig.src.tolist() == src.tolist()
    assert kinds(p, vma) == ["migration", "zero", "none", "migration"]
    assert p.translate(vma.start).writable
    for pfn in (a, d):
        info = m.page(pfn)
        assert info.locked and (info.refcount, info.mapcount) == (1, 0)
    flushes = delta(m, before)("tlb_flush")
    assert flushes == (0 if m.profile == "hmm-v25" else 2)
    mig.finish()


def test_unmap_reaches_fork_shared_mappings(make_machine, profile):
    """unmap: the rmap walk turns the child's PTE into a migration entry as well."""
    m = make_machine(16, 0, profile=profile)
    p = m.new_process()
    vma = p.mmap(1)
    p.write(vma.start, b"shared")
    child = p.fork()
    pfn = p.translate(vma.start).pfn
    assert refs(m, pfn)[1] == 2
    mig = Passes(m, vma)
    mig.collect()
    mig.prepare()
    mig.unmap()
    assert mig.cpages == 1
    assert p.translate(vma.start).kind == "migration"
    assert child.translate(vma.start).kind == "migration"
    assert not p.translate(vma.start).writable  # fork write-protected both sides
    assert refs(m, pfn) == (1, 0)
    mig.finish()
    assert child.translate(vma.start).pfn == pfn
    assert child.read(vma.start, 6) == b"shared"


def test_unmap_restores_a_page_pinned_after_prepare(make_machine, profile):
    """unmap: page_mapped() or check_page() fails -> clear M, cpages--, then the
    restore loop: remove_migration_ptes(page, page), src = 0, unlock, putback."""
    m = make_machine(16, 0, profile=profile)
    p = m.new_process()
    vma = p.mmap(2)
    p.populate(vma.start, vma.end)
    pfn = p.translate(vma.start).pfn
    mig = Passes(m, vma)
    mig.collect()
    mig.prepare()
    m.pin(pfn)
    mig.unmap()
    assert mig.src[0] == 0
    assert mig.cpages == 1
    assert kinds(p, vma) == ["present", "migration"]
    assert_in_batch(m, pfn)  # unmap's restore: putback_lru_page()
    assert refs(m, pfn) == (3, 1)  # mapping + pin + the batch
    mig.finish()
    m.unpin(pfn)


# ---------------------------------------------------------------- pages
def test_pages_moves_struct_page_metadata(mixed):
    """pages: migrate_page(MIGRATE_SYNC_NO_COPY) moves mapping, index, dirty; a slot
    without a dst keeps MIGRATE in the seed and loses it in hmm-v25 (17/19); hmm-v25
    inserts the dst of a zero-page slot and of a hole (migrate_vma_insert_page)."""
    m, p, vma, a, d = mixed
    mig = Passes(m, vma)
    mig.collect()
    mig.prepare()
    mig.unmap()
    new_a = mig.give(0)
    hmm = m.profile == "hmm-v25"
    if hmm:
        new_zero, new_hole = mig.give(1), mig.give(2)
    src = mig.src.copy()
    before = m.counters
    mig.pages()
    assert mig.src[0] == src[0]
    info = m.page(new_a)
    assert info.anon and info.dirty and info.locked
    assert m.state.page["index"][new_a] == m.state.page["index"][a]
    assert not m.page(a).dirty
    if hmm:
        assert mig.src[3] == src[3] & ~m.layout.MIGRATE
        assert mig.src[1] == mig.src[2] == m.layout.MIGRATE  # inserted: M, still no VALID
        assert [p.translate(vma.start + i * PS).pfn for i in (1, 2)] == [new_zero, new_hole]
        assert kinds(p, vma) == ["migration", "present", "present", "migration"]
        assert delta(m, before)("insert_page") == 2
        assert delta(m, before)("tlb_flush") == 1  # replacing the zero page flushes
        # The driver's ref + the mapping + the driver CPU's LRU-add batch.
        assert refs(m, new_hole) == (3, 1)
    else:
        assert mig.src[3] == src[3]
        assert kinds(p, vma) == ["migration", "zero", "none", "migration"]
    mig.finish()


def test_pages_late_reference_fails_with_eagain(make_machine, profile):
    """pages: migrate_page_move_mapping() sees page_count != expected (a
    get_user_pages() after unmap) -> -EAGAIN -> MIGRATE cleared, nothing moved."""
    m = make_machine(16, 0, profile=profile)
    p = m.new_process()
    vma = p.mmap(1)
    p.write(vma.start, b"late")
    pfn = p.translate(vma.start).pfn
    mig = Passes(m, vma)
    mig.collect()
    mig.prepare()
    mig.unmap()
    new = mig.give(0)
    m.pin(pfn)
    mig.pages()
    assert mig.src[0] == mpfn(m, pfn, "LOCKED", "WRITE")
    assert not m.page(new).anon
    assert m.page(pfn).anon and m.page(pfn).dirty
    mig.finish()
    assert p.translate(vma.start).pfn == pfn
    assert m.page(new).free
    m.unpin(pfn)


# ---------------------------------------------------------------- finalize
def test_finalize_redirects_or_restores_each_slot(mixed):
    """finalize: M and a dst -> remove_migration_ptes(page, newpage), and the
    source's putback_lru_page() leaves it held by the driver CPU's LRU-add batch
    alone (freed when it drains); no M or no dst -> the source is restored;
    everything ends unlocked, put back through the batch, and the unused dst
    pages are put."""
    m, p, vma, a, d = mixed
    mig = Passes(m, vma)
    mig.collect()
    mig.prepare()
    mig.unmap()
    new_a = mig.give(0)
    mig.pages()
    before = m.counters
    mig.finalize()
    assert mig.collected == 2
    assert delta(m, before)("pgmigrate_success") == 1
    assert delta(m, before)("pgmigrate_fail") == 0  # slot 3 was never offered a dst
    assert p.translate(vma.start) == me.Pte("present", new_a, True, False)
    assert p.translate(vma.start + 3 * PS) == me.Pte("present", d, True, False)
    for pfn in (new_a, d):
        assert_in_batch(m, pfn)
        assert refs(m, pfn) == (2, 1)  # the mapping + the batch
    assert_freed_by_drain(m, [a])
    for pfn in (new_a, d):
        assert m.page(pfn).lru and refs(m, pfn) == (1, 1)
    assert p.read(vma.start, PS) == b"A" * PS
    assert p.read(vma.start + 3 * PS, PS) == b"D" * PS


def test_finalize_maps_a_device_destination(make_machine, profile):
    """finalize: a device-private target gets a device entry (hmm-v25; the free
    page's reference + the mapping), CPU-addressable device memory a present PTE."""
    m = make_machine(16, 4, profile=profile)
    p = m.new_process()
    vma = p.mmap(1)
    p.write(vma.start, b"to-device")
    old = p.translate(vma.start).pfn
    mig = Passes(m, vma)
    mig.collect()
    mig.prepare()
    mig.unmap()
    dev = mig.give(0, device=True)
    mig.pages()
    mig.finalize()
    assert_freed_by_drain(m, [old])
    pte = p.translate(vma.start)
    info = m.page(dev)
    assert pte.pfn == dev and pte.writable and not info.locked
    if profile == "hmm-v25":
        assert pte.kind == "device"
        assert (info.refcount, info.mapcount) == (2, 1)
        assert not info.lru
    else:
        assert pte.kind == "present"
        assert (info.refcount, info.mapcount) == (1, 1)
        assert info.lru
    assert m.frame(dev)[:9] == b"to-device"
    assert p.read(vma.start, 9) == b"to-device"


def test_finalize_frees_the_destination_of_a_failed_slot(make_machine, profile):
    """finalize: !(src & MIGRATE) with a dst -> unlock_page(newpage), put_page()."""
    m = make_machine(16, 0, profile=profile)
    p = m.new_process()
    vma = p.mmap(1)
    p.write(vma.start, b"keep")
    pfn = p.translate(vma.start).pfn
    free_before = m.free_pages()
    mig = Passes(m, vma)
    mig.collect()
    mig.prepare()
    mig.unmap()
    new = mig.give(0)
    mig.src[0] &= ~m.layout.MIGRATE  # as pages() leaves a failed slot
    mig.done.append("pages")
    before = m.counters
    mig.finalize()
    assert delta(m, before)("pgmigrate_fail") == 1  # a destination went unused
    assert delta(m, before)("pgmigrate_success") == 0
    assert m.page(new).free
    assert m.free_pages() == free_before
    assert p.translate(vma.start).pfn == pfn
    assert not m.page(pfn).locked
