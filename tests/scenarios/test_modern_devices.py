"""The modern profile's devices: device-coherent memory, the device-range API,
eviction by pfn, and the owner rules of hmm_range_fault().

Each test names the kernel branch or hmm-tests.c case it mirrors; data is
compared byte for byte and make_machine checks every machine when it ends.
"""

from __future__ import annotations

import numpy as np
import pytest

import migengine as me
from migengine import kernels
from tests.helpers import addr, assert_data, filled

LOCAL_PRIVATE = int(me.HMM_DMIRROR_PROT_DEV_PRIVATE_LOCAL)
REMOTE_COHERENT = int(me.HMM_DMIRROR_PROT_DEV_COHERENT_REMOTE)
LOCAL_COHERENT = int(me.HMM_DMIRROR_PROT_DEV_COHERENT_LOCAL)
WRITE = int(me.HMM_DMIRROR_PROT_WRITE)


def two_devices(make_machine, second: str = "coherent") -> me.Machine:
    specs = [me.DeviceSpec(8, owner="a"), me.DeviceSpec(8, second, owner="b")]
    return make_machine(64, profile="modern", devices=specs)


def to_ram(m: me.Machine, src: np.ndarray) -> np.ndarray:
    """A driver: a system page for each collected slot, the data copied."""
    dst = np.zeros_like(src)
    for i, s in enumerate(src.tolist()):
        if s & int(m.layout.MIGRATE):
            pfn = m.alloc_page()
            m.copy_page(pfn, m.mpfn_to_pfn(s))
            dst[i] = m.migrate_pfn(pfn)
    return dst


# ------------------------------------------------------------------ device-coherent memory
def test_coherent_kind_is_modern_only():
    with pytest.raises(ValueError, match="modern"):
        me.Machine(16, devices=[me.DeviceSpec(4, "coherent")])


def test_coherent_pages_are_mapped_present_and_read_in_place(make_machine):
    """MEMORY_DEVICE_COHERENT (v6.0): a page migrated there is mapped by a present
    PTE, read and written by the CPU in place, never on the LRU; only
    SELECT_DEVICE_COHERENT with its owner takes it back (dmirror's
    MIGRATE_TO_SYS on the coherent devices 2 and 3)."""
    m = two_devices(make_machine)
    a, b = m.devices
    p, vma = filled(m, 2)
    assert b.migrate_to_device(p, vma.start, vma.end) == 2
    pte = p.translate(vma.start)
    assert pte.kind == "present" and b.first_pfn <= pte.pfn < b.first_pfn + 8
    info = m.page(pte.pfn)
    assert info.device and not info.lru and not info.pagevec
    faults = m.counters["device_faults"]
    assert_data(p, vma, range(2))
    assert m.counters["device_faults"] == faults  # no fault: read in place
    assert a.migrate_to_system(p, vma.start, vma.end) == 0  # another owner's memory
    assert b.migrate_to_system(p, vma.start, vma.end) == 2
    assert p.translate(vma.start).pfn < 64 and b.free_pages() == 8
    assert_data(p, vma, range(2))


def test_hmm_gup_test_coherent(make_machine):
    """hmm-tests.c hmm_gup_test on the coherent device: a short-term pin leaves the
    page in place; FOLL_LONGTERM migrates it to RAM first
    (migrate_device_coherent_folio())."""
    m = two_devices(make_machine)
    b = m.devices[1]
    p, vma = filled(m, 2)
    b.migrate_to_device(p, vma.start, vma.end)
    short = p.pin(addr(vma, 0))
    assert short == p.translate(addr(vma, 0)).pfn and m.page(short).device
    long = p.pin(addr(vma, 1), longterm=True)
    assert not m.page(long).device and p.translate(addr(vma, 1)).pfn == long
    assert b.free_pages() == 7
    m.unpin(short)
    m.unpin(long)
    assert_data(p, vma, range(2))


def test_fork_copies_from_coherent_memory(make_machine):
    """hmm-tests.c hmm_cow_in_device (coherent variant): after fork a store breaks
    COW by copying straight from device memory."""
    m = two_devices(make_machine)
    b = m.devices[1]
    p, vma = filled(m, 1)
    b.migrate_to_device(p, vma.start, vma.end)
    child = p.fork()
    child.write(vma.start, b"x")
    assert not m.page(child.translate(vma.start).pfn).device
    assert m.page(p.translate(vma.start).pfn).device
    assert_data(p, vma, range(1))


# ------------------------------------------------------------------ the owner rules of the walk
def test_snapshot_local_and_remote(make_machine):
    """hmm_range_fault() with dev_private_owner (v5.7, v6.1): a device sees its
    own private pages in place; another device's private pages are not reported
    to a snapshot; coherent pages are reported to anyone, LOCAL or REMOTE.
    hmm-tests.c snapshot and migrate_mixed with two owners."""
    m = two_devices(make_machine)
    a, b = m.devices
    p, vma = filled(m, 4)
    a.migrate_to_device(p, addr(vma, 0), addr(vma, 2))
    b.migrate_to_device(p, addr(vma, 2), vma.end)
    assert (
        a.snapshot(p, vma.start, vma.end).tolist()
        == [LOCAL_PRIVATE | WRITE] * 2 + [REMOTE_COHERENT | WRITE] * 2
    )
    assert b.snapshot(p, vma.start, vma.end).tolist() == [0, 0] + [LOCAL_COHERENT | WRITE] * 2
    # A read through b faults a's private pages back to RAM (the owner's handler).
    assert b.read(p, vma.start, 64) == bytes(k % 251 for k in range(64))
    assert p.translate(vma.start).kind == "present"
    assert a.free_pages() == 7
    assert_data(p, vma, range(4))


# ------------------------------------------------------------------ the device-range API
def test_migrate_device_range_moves_a_device_back(make_machine):
    """migrate_device_range() (v6.1): free frames are skipped, pages in use are
    locked and unmapped from every process (a forked child too); pages and
    finalize without a VMA finish it. hmm-tests.c migrate_release."""
    m = make_machine(64, 8, profile="modern")
    dev = m.device
    p, vma = filled(m, 3)
    dev.migrate_to_device(p, vma.start, vma.end)
    child = p.fork()
    src = np.zeros(8, np.uint64)
    assert me.migrate_device_range(m, src, dev.first_pfn, 8) == 0
    assert [bool(s) for s in src.tolist()] == [True] * 3 + [False] * 5
    assert p.translate(vma.start).kind == "migration"
    dst = to_ram(m, src)
    me.migrate_device_pages(m, src, dst)
    me.migrate_device_finalize(m, src, dst)
    assert dev.free_pages() == 8
    for proc in (p, child):
        assert [proc.translate(addr(vma, i)).kind for i in range(3)] == ["present"] * 3
        assert_data(proc, vma, range(3))


def test_migrate_device_pfns(make_machine):
    """migrate_device_pfns() (a14fa8ec9d81): the same for a list of pfns, rewritten
    in place; a page left without a destination is restored in finalize."""
    m = make_machine(64, 8, profile="modern")
    p, vma = filled(m, 3)
    m.device.migrate_to_device(p, vma.start, vma.end)
    pfns = [p.translate(addr(vma, i)).pfn for i in (2, 0)]
    src = np.array(pfns, np.uint64)
    me.migrate_device_pfns(m, src)
    assert [m.mpfn_to_pfn(int(s)) for s in src] == pfns
    dst = to_ram(m, src)
    m.put_page(m.mpfn_to_pfn(int(dst[1])))  # no destination for the second slot
    dst[1] = 0
    me.migrate_device_pages(m, src, dst)
    me.migrate_device_finalize(m, src, dst)
    assert [p.translate(addr(vma, i)).kind for i in range(3)] == ["device", "device", "present"]
    assert_data(p, vma, range(3))


def test_evict_uses_the_device_range(make_machine):
    """dmirror_device_evict_chunk() (modern): eviction goes by pfn over the device's
    frames, so every page moves, wherever it is mapped."""
    m = make_machine(64, 8, profile="modern")
    p, vma = filled(m, 4)
    m.device.migrate_to_device(p, vma.start, vma.end)
    child = p.fork()
    assert m.device.evict() == 4
    assert m.device.free_pages() == 8
    for proc in (p, child):
        assert_data(proc, vma, range(4))


def test_device_range_bad_input(make_machine):
    """ValueError from Python and -22 from the compiled forms, nothing changed:
    another profile, frames outside one device, a pfn twice, a finalize
    without a range."""
    old = make_machine(64, 8)
    with pytest.raises(ValueError, match="modern"):
        me.migrate_device_range(old, np.zeros(8, np.uint64), 64, 8)
    assert kernels.migrate_device_range(old.state, np.zeros(8, np.uint64), 64, 8) == -22
    m = two_devices(make_machine, "private")
    p, vma = filled(m, 2)
    m.device.migrate_to_device(p, vma.start, vma.end)
    src = np.zeros(16, np.uint64)
    for start, n in ((3, 2), (64, 16), (70, 4), (64, 0)):
        with pytest.raises(ValueError):
            me.migrate_device_range(m, src, start, n)
        assert kernels.migrate_device_range(m.state, src, start, max(n, 1) if n else 0) == -22
    with pytest.raises(ValueError, match="twice"):
        me.migrate_device_pfns(m, np.array([64, 64], np.uint64))
    assert kernels.migrate_device_pfns(m.state, np.array([64, 64], np.uint64)) == -22
    z = np.zeros(2, np.uint64)
    bogus = np.array([m.migrate_pfn(64) | m.layout.MIGRATE, 0], np.uint64)
    with pytest.raises(ValueError):
        me.migrate_device_finalize(m, bogus, z)
    assert kernels.migrate_device_finalize(m.state, bogus, z) == -22
    assert [p.translate(addr(vma, i)).kind for i in range(2)] == ["device"] * 2
    assert_data(p, vma, range(2))


def test_an_open_device_range_blocks_what_would_tear_it_down(make_machine):
    """Between migrate_device_range() and migrate_device_finalize() the pages are
    behind migration entries: munmap, madvise, mprotect, mremap, fork and evict
    wait for it (MigengineError, nothing changed), as for an open split-API
    migration."""
    m = make_machine(64, 8, profile="modern")
    p, vma = filled(m, 4)
    m.device.migrate_to_device(p, vma.start, vma.end)
    src = np.zeros(8, np.uint64)
    me.migrate_device_range(m, src, m.device.first_pfn, 8)
    for op in (
        lambda: p.munmap(vma.start, vma.end),
        lambda: p.madvise(vma.start, vma.end, "dontneed"),
        lambda: p.mprotect(vma.start, vma.end, "r"),
        lambda: p.fork(),
        lambda: m.device.evict(),
    ):
        with pytest.raises(me.MigengineError, match="open"):
            op()
    me.migrate_device_finalize(m, src, np.zeros(8, np.uint64))  # no destination: restored
    assert [p.translate(addr(vma, i)).kind for i in range(4)] == ["device"] * 4
    assert_data(p, vma, range(4))


def test_evict_moves_only_its_own_device(make_machine):
    """dmirror_device_evict_chunk() (modern) evicts the device's own frames; in
    4.14 eviction walks every VMA and, with no owner filter, takes every
    device's pages."""
    for profile, kinds in (("modern", "coherent"), ("hmm-v25", "private")):
        specs = [me.DeviceSpec(8, owner="a"), me.DeviceSpec(8, kinds, owner="b")]
        m = make_machine(64, devices=specs, profile=profile)
        d0, d1 = m.devices
        p, vma = filled(m, 4)
        d0.migrate_to_device(p, vma.start, addr(vma, 2))
        d1.migrate_to_device(p, addr(vma, 2), vma.end)
        assert d0.evict() == (2 if profile == "modern" else 4)
        assert d1.free_pages() == (6 if profile == "modern" else 8)
        assert_data(p, vma, range(4))
