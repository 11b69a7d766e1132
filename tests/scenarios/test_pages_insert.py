"""Scenarios of migrate_vma_pages() and migrate_vma_insert_page(), through the public API:
holes, the zero page, file and shmem pages, the insert's back-offs.

Each test's docstring names the kernel branch (HMM v25 14/19 as posted = seed,
the 4.14 merge of 14-17/19 = hmm-v25) or the hmm selftest it mirrors. Drivers
are Python callbacks (``me.migrate_vma`` with ``MigrateOps``) or ``m.device.ops``.
Every machine comes from ``make_machine``, so each test ends with ``m.check()``.
"""

from __future__ import annotations

import numpy as np
import pytest

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


# ---------------------------------------------------------------- file and shmem
@pytest.mark.parametrize("kind", ["file", "shmem"])
def test_file_page_to_system_memory(make_machine, kind):
    """4.14 pages: a page-cache page migrates to system memory; the page-cache slot
    moves over (check_page and move_mapping count the page cache's reference).
    finalize puts both back through the driver CPU's LRU-add batch: the old page
    (which keeps its mapping, as migrate_page() leaves it) is freed when it drains."""
    m = make_machine(32, 4, profile="hmm-v25")
    p, vma = filled(m, 1, kind=kind)
    old = pfn_at(p, vma, 0)
    assert m.page(old).file
    drv = Driver(m)
    drv.run(vma)
    new = drv.given[0]
    assert pfn_at(p, vma, 0) == new
    assert m.page(new).file
    assert refs(m, new) == (3, 1)  # the mapping + the page cache + the batch
    assert_freed_by_drain(m, [old])
    assert refs(m, new) == (2, 1)
    child = p.fork()  # shared VMAs: the child faults from the page cache
    assert child.read(vma.start, PS) == pattern(0)
    assert pfn_at(child, child.vmas()[0], 0) == new
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
