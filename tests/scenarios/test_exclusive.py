"""Device-exclusive access (modern): make_device_exclusive() and dmirror's
HMM_DMIRROR_EXCLUSIVE / CHECK_EXCLUSIVE, after hmm-tests.c's exclusive,
exclusive_mprotect and exclusive_cow. The selftests' fill is compared byte
for byte; make_machine checks every machine when the test ends.
"""

from __future__ import annotations

from functools import partial

import numpy as np
import pytest

import migengine as me
from tests import helpers

PS = 256
pattern = partial(helpers.selftest_pattern, ps=PS)


def machine(make_machine, profile: str = "modern") -> me.Machine:
    return make_machine(256, 64, page_size=PS, profile=profile)


def kinds(p: me.Process, vma: me.Vma) -> list[str]:
    return helpers.kinds(p, vma, ps=PS)


def test_exclusive(make_machine):
    """hmm-tests.c exclusive: every page becomes a device-exclusive entry that
    keeps its page's mapcount; the device reads through its ATOMIC mirror; a
    CPU access restores each PTE and revokes the device's atomic access."""
    m = machine(make_machine)
    p = m.new_process()
    vma = p.mmap(8)
    data = pattern(8)
    p.write(vma.start, data)
    m.lru_add_drain_all()  # so each page's one reference is its mapping's
    pfns = [p.translate(vma.start + i * PS).pfn for i in range(8)]
    m.device.make_exclusive(p, vma.start, vma.end)
    assert kinds(p, vma) == ["exclusive"] * 8
    assert [p.translate(vma.start + i * PS).pfn for i in range(8)] == pfns
    assert all(m.page(pfn).mapcount == 1 and m.page(pfn).refcount == 1 for pfn in pfns)
    assert m.device.check_exclusive(p, vma.start, vma.end)
    assert m.device.read(p, vma.start, 8 * PS) == data  # through the mirror
    assert m.device.last_faults == 0
    plus = pattern(8, 1)
    p.write(vma.start, plus)  # the CPU faults each entry back
    assert kinds(p, vma) == ["present"] * 8
    assert [p.translate(vma.start + i * PS).pfn for i in range(8)] == pfns
    assert not m.device.check_exclusive(p, vma.start, vma.end)
    assert p.read(vma.start, 8 * PS) == plus


def test_exclusive_mprotect(make_machine):
    """hmm-tests.c exclusive_mprotect: after mprotect(PROT_READ) the device cannot
    write (-EPERM: SegFault here); the entries stay exclusive, read-only, until
    a CPU access restores them."""
    m = machine(make_machine)
    p = m.new_process()
    vma = p.mmap(4)
    data = pattern(4)
    p.write(vma.start, data)
    m.device.make_exclusive(p, vma.start, vma.end)
    p.mprotect(vma.start, vma.end, "r")
    assert kinds(p, vma) == ["exclusive"] * 4
    assert not any(p.translate(vma.start + i * PS).writable for i in range(4))
    with pytest.raises(me.SegFault):
        m.device.write(p, vma.start, pattern(4, 7))
    assert p.read(vma.start, 4 * PS) == data
    assert kinds(p, vma) == ["present"] * 4


def test_exclusive_cow(make_machine):
    """hmm-tests.c exclusive_cow: fork restores the entries before copying them,
    then each process writes its own copy."""
    m = machine(make_machine)
    parent = m.new_process()
    vma = parent.mmap(4)
    data = pattern(4)
    parent.write(vma.start, data)
    m.device.make_exclusive(parent, vma.start, vma.end)
    child = parent.fork()
    assert kinds(parent, vma) == kinds(child, vma) == ["present"] * 4
    assert not m.device.check_exclusive(parent, vma.start, vma.end)
    child.write(vma.start, pattern(4, 100))
    parent.write(vma.start, pattern(4, 1))
    assert child.read(vma.start, 4 * PS) == pattern(4, 100)
    assert parent.read(vma.start, 4 * PS) == pattern(4, 1)


def test_exclusive_faults_pages_in_and_splits_a_thp(make_machine):
    """make_device_exclusive() faults each page in writable: a hole gets a fresh
    page, the zero page is replaced (COW), and a PMD-mapped THP is split first
    (FOLL_SPLIT_PMD; the model splits the folio too)."""
    m = make_machine(1200, 64, page_size=PS, profile="modern")
    p = m.new_process()
    thp = p.mmap(512, thp=True)
    p.populate(thp.start, thp.end)
    assert p.translate(thp.start).huge
    m.device.make_exclusive(p, thp.start, thp.start + 2 * PS)
    assert [p.translate(thp.start + i * PS).kind for i in range(3)] == [
        "exclusive",
        "exclusive",
        "present",
    ]
    small = p.mmap(2)
    p.read(small.start, PS)  # the zero page
    m.device.make_exclusive(p, small.start, small.end)
    assert kinds(p, small) == ["exclusive"] * 2
    assert p.read(small.start, 2 * PS) == bytes(2 * PS)


def test_migration_never_takes_an_exclusive_entry(make_machine):
    """migrate_vma_collect_pmd(): a device-exclusive entry is not a device-private
    one, so collect leaves it (src = 0) whatever the flags."""
    m = machine(make_machine)
    p = m.new_process()
    vma = p.mmap(2)
    p.write(vma.start, pattern(2))
    m.device.make_exclusive(p, vma.start, vma.end)
    src, dst = np.zeros(2, np.uint64), np.zeros(2, np.uint64)
    flags = me.MIGRATE_VMA_SELECT_SYSTEM | me.MIGRATE_VMA_SELECT_DEVICE_PRIVATE
    args = me.MigrateVma(vma, vma.start, vma.end, src, dst, flags=flags)
    me.migrate_vma_setup(args)
    assert args.cpages == 0 and src.tolist() == [0, 0]
    assert kinds(p, vma) == ["exclusive"] * 2
    p.munmap(vma.start, vma.end)  # zap: the entries' mappings go like present ones


def test_exclusive_bad_input(make_machine):
    """Not anonymous (-EOPNOTSUPP: ValueError), not read-write or outside every
    VMA (GUP's -EFAULT: SegFault), another profile (ValueError): nothing changes.
    A page locked by someone else is -EBUSY (MigengineError)."""
    m = machine(make_machine)
    p = m.new_process()
    shm = p.mmap(2, kind="shmem")
    ro = p.mmap(2, prot="r")
    with pytest.raises(ValueError, match="anonymous"):
        m.device.make_exclusive(p, shm.start, shm.end)
    with pytest.raises(me.SegFault):
        m.device.make_exclusive(p, ro.start, ro.end)
    with pytest.raises(me.SegFault):
        m.device.make_exclusive(p, ro.end + 64 * PS, ro.end + 65 * PS)
    with pytest.raises(ValueError):
        m.device.make_exclusive(p, ro.start, ro.start)
    assert kinds(p, shm) == ["none"] * 2 and kinds(p, ro) == ["none"] * 2
    vma = p.mmap(2)
    p.write(vma.start, pattern(2))
    m.lock_page(p.translate(vma.start + PS).pfn)
    with pytest.raises(me.MigengineError, match="errno 16"):
        m.device.make_exclusive(p, vma.start, vma.end)
    assert kinds(p, vma) == ["exclusive", "present"]
    m.unlock_page(p.translate(vma.start + PS).pfn)
    old = machine(make_machine, "hmm-v25")
    q = old.new_process()
    other = q.mmap(1)
    with pytest.raises(ValueError, match="modern"):
        old.device.make_exclusive(q, other.start, other.end)
    with pytest.raises(ValueError, match="modern"):
        old.device.check_exclusive(q, other.start, other.end)
