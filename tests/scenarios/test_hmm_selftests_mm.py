"""hmm-tests.c cases that need the process operations (munmap, mprotect, mremap,
madvise, private file mappings, get_user_pages).

Each test is named after the case of tools/testing/selftests/mm/hmm-tests.c it
mirrors, scaled down to 256-byte pages (a THP is still 512 of them), with the
selftests' fill (``ptr[i] = i`` as int32) compared byte for byte and
``m.check()`` after each step. Where 4.14 differs from the modern selftest's
expectation, the test asserts the 4.14 outcome and says why.
"""

from __future__ import annotations

import errno
from functools import partial

import numpy as np
import pytest

import migengine as me
from tests import helpers

PS = 256
THP_NR = 512
V25 = pytest.mark.parametrize("profile", ["hmm-v25"])
BOTH = pytest.mark.parametrize("profile", ["hmm-v25", "seed"])
pattern = partial(helpers.selftest_pattern, ps=PS)


def machine(make_machine, profile: str, ram: int = 512, dev: int = 128) -> me.Machine:
    return make_machine(ram, dev, page_size=PS, profile=profile)


def at(base: int, i: int) -> int:
    return base + i * PS


@BOTH
def test_migrate_file_private(make_machine, profile):
    """hmm-tests.c: migrate_file_private - a MAP_PRIVATE file mapping whose
    pages the CPU wrote (do_cow_fault(): each became a private anonymous copy)
    migrates whole (cpages npages), and the data comes back; the file's page
    cache never saw the writes."""
    m = machine(make_machine, profile)
    p = m.new_process()
    vma = p.mmap(16, kind="file_private")
    assert p.read(vma.start, PS) == bytes(PS)  # a read maps the page-cache page
    cache_pfn = p.translate(vma.start).pfn
    assert m.page(cache_pfn).file and not p.translate(vma.start).writable
    p.write(vma.start, pattern(16))
    assert m.page(p.translate(vma.start).pfn).anon  # copied on write
    assert m.frame(cache_pfn) == bytes(PS)
    assert m.device.migrate_to_device(p, vma.start, vma.end) == 16
    m.check()
    assert p.read(vma.start, 16 * PS) == pattern(16)
    child = p.fork()  # a private file VMA forks as anonymous memory does
    child.write(vma.start, b"c")
    assert p.read(vma.start, 1) == pattern(1)[:1]
    m.check()


@pytest.mark.parametrize("offset", [0, 128, 256], ids=["0", "quarter", "half"])
@pytest.mark.parametrize("thp", [False, True], ids=["small", "thp"])
@pytest.mark.parametrize("before", [False, True], ids=["after", "before"])
@V25
def test_migrate_remap_fault(make_machine, profile, before, thp, offset):
    """hmm-tests.c: migrate_remap_fault - mremap(MREMAP_MAYMOVE | MREMAP_FIXED)
    of a 2 MiB buffer before or after migrating it to the device, to a new
    address ``offset`` pages past a PMD boundary; CPU reads at the new address
    fault the device pages back and see ``i``. The move carries device-private
    entries (move_ptes()); a THP moves whole only where the extents line up
    (move_huge_pmd()), else it is split first. MREMAP_DONTUNMAP (5.7) is not in
    4.14 and is left out."""
    m = make_machine(4 * THP_NR, THP_NR, page_size=PS, profile=profile)
    p = m.new_process()
    ext = THP_NR * PS
    vma = p.mmap(THP_NR, thp=thp)
    base = vma.start
    data = pattern(THP_NR)
    p.write(base, data)
    assert p.translate(base).huge == thp
    target = base + 4 * ext + offset * PS
    if before:
        assert m.device.migrate_to_device(p, base, base + ext) == THP_NR
    new = p.mremap(base, base + ext, target)
    m.check()
    assert (new.start, new.end) == (target, target + ext) and not vma.live
    if thp and not before:
        assert p.translate(target).huge == (offset == 0)
    if not before:
        assert m.device.migrate_to_device(p, target, target + ext) == THP_NR
    assert p.translate(target).kind == "device"
    assert p.read(target, THP_NR * PS) == data
    with pytest.raises(me.SegFault):
        p.read(base, 1)
    m.check()


@pytest.mark.parametrize(("write", "longterm"), [(False, False), (True, False), (False, True)])
@V25
def test_hmm_gup_test(make_machine, profile, write, longterm):
    """hmm-tests.c: hmm_gup_test, the device-private part - get_user_pages() of
    a migrated page faults it back to system memory first (faultin_page() runs
    the device's fault handler), so every pinned page is a RAM page with the
    data; unpinned, it behaves as any page. The modern selftest snapshots
    every page WRITE; in 4.14 a page faulted back comes back read-only (its
    migration entry was), so a read pin leaves it READ and a write pin's own
    write fault makes it WRITE."""
    m = machine(make_machine, profile)
    p = m.new_process()
    vma = p.mmap(4)
    p.write(vma.start, pattern(4))
    assert m.device.migrate_to_device(p, vma.start, vma.end) == 4
    pfns = [p.pin(at(vma.start, i), write=write, longterm=longterm) for i in range(4)]
    m.check()
    for i, pfn in enumerate(pfns):
        assert not m.page(pfn).device and m.page(pfn).pins == 1
        assert p.translate(at(vma.start, i)) == ("present", pfn, write, False)
    codes = m.device.snapshot(p, vma.start, vma.end)
    want = me.HMM_DMIRROR_PROT_WRITE if write else me.HMM_DMIRROR_PROT_READ
    assert list(codes) == [want] * 4
    # Pinned: migrate_vma_check_page() refuses every page, and nothing moves.
    assert m.device.migrate_to_device(p, vma.start, vma.end) == 0
    assert [p.translate(at(vma.start, i)).pfn for i in range(4)] == pfns
    for pfn in pfns:
        m.unpin(pfn)
    assert p.read(vma.start, 4 * PS) == pattern(4)
    m.check()


def test_pin_bad_input(make_machine):
    """GUP's -EFAULT (no VMA, or a write pin of a read-only mapping) is SegFault;
    an unpin of a pfn never pinned is ValueError, a flag not a bool TypeError;
    nothing changes."""
    m = machine(make_machine, "hmm-v25")
    p = m.new_process()
    ro = p.mmap(2, prot="r")
    with pytest.raises(me.SegFault):
        p.pin(ro.end + 16 * PS)
    with pytest.raises(me.SegFault):
        p.pin(ro.start, write=True)
    zero = p.pin(ro.start)  # a read pin of an untouched page pins the zero page
    assert zero == m.zero_pfn and p.translate(ro.start).kind == "zero"
    m.unpin(zero)
    with pytest.raises(ValueError):
        m.unpin(zero)
    with pytest.raises(TypeError):
        p.pin(ro.start, write="yes")
    m.check()


@V25
def test_migrate_anon_huge_free(make_machine, profile):
    """hmm-tests.c: migrate_anon_huge_free - a THP filled with ``i`` migrates
    (cpages 512; 4.14 splits it, as it has no device THPs) and MADV_FREE of the
    range succeeds: madvise_free_pte_range() skips device-private entries, so
    the data stays on the device and reads back."""
    m = make_machine(2 * THP_NR + 64, THP_NR, page_size=PS, profile=profile)
    p = m.new_process()
    vma = p.mmap(THP_NR, thp=True)
    p.write(vma.start, pattern(THP_NR))
    assert p.translate(vma.start).huge
    assert m.device.migrate_to_device(p, vma.start, vma.end) == THP_NR
    p.madvise(vma.start, vma.end, "free")
    assert m.reclaim() == 0
    assert p.translate(vma.start).kind == "device"
    assert p.read(vma.start, THP_NR * PS) == pattern(THP_NR)
    m.check()


@V25
def test_migrate_anon_huge_zero_err(make_machine, profile):
    """hmm-tests.c: migrate_anon_huge_zero_err - the huge zero page (a read fault
    in a THP region) with the device's next allocation failing. The modern
    selftest expects cpages 512 (dmirror falls back from a huge device page to
    small ones); 4.14 has no device THPs: collect splits the huge zero page,
    the failed allocation leaves one page behind, 511 migrate. Zeros everywhere."""
    m = make_machine(2 * THP_NR + 64, THP_NR, page_size=PS, profile=profile)
    p = m.new_process()
    vma = p.mmap(THP_NR, thp=True)
    assert p.read(vma.start, PS) == bytes(PS)
    assert p.translate(vma.start) == ("zero", m.zero_pfn, False, True)
    m.device.fail_alloc(1)
    assert m.device.migrate_to_device(p, vma.start, vma.end) == THP_NR - 1
    assert p.read(vma.start, THP_NR * PS) == bytes(THP_NR * PS)
    m.check()


@BOTH
def test_anon_teardown(make_machine, profile):
    """hmm-tests.c: anon_teardown, sequential form - ten rounds of: fill, device
    read, munmap the second half. The selftest races the munmap against the
    device read (either may win); this engine has no concurrency, so each
    order is run in turn: a read after the munmap fails for the unmapped half
    and works for the rest, and the mirror forgets the unmapped pages."""
    m = machine(make_machine, profile)
    p = m.new_process()
    for c in range(10):
        vma = p.mmap(16)
        data = pattern(16, base=c)
        p.write(vma.start, data)
        if c % 2:
            assert m.device.read(p, vma.start, 16 * PS) == data
        base = vma.start
        p.munmap(at(base, 8), at(base, 16))
        m.check()
        with pytest.raises(me.SegFault):
            m.device.read(p, base, 16 * PS)
        assert m.device.read(p, base, 8 * PS) == data[: 8 * PS]
        assert all(m.device.mirrored(p, at(base, i)) == -1 for i in range(8, 16))
        p.munmap(base, at(base, 8))
        m.check()
    assert p.vmas() == []


@V25
def test_migrate_mixed(make_machine, profile):
    """hmm-tests.c: migrate_mixed, the one-device part - six PROT_NONE pages do
    not migrate (no VM_READ: -EINVAL); after munmap of page 1 a range over the
    hole is -EINVAL; then page 2 read-only (zero page), page 3 read-only data,
    pages 4-5 read-write data migrate (cpages 4). The second device's part
    (-ENOENT for its page in a SYSTEM-only migration) needs two devices."""
    m = machine(make_machine, profile)
    p = m.new_process()
    vma = p.mmap(6, prot="none")
    base = vma.start
    with pytest.raises(me.MigrateError) as err:
        m.device.migrate_to_device(p, base, at(base, 6))
    assert err.value.errno == errno.EINVAL
    p.munmap(at(base, 1), at(base, 2))
    with pytest.raises(me.MigrateError):
        m.device.migrate_to_device(p, at(base, 1), at(base, 4))
    p.mprotect(at(base, 2), at(base, 4), "r")
    p.mprotect(at(base, 4), at(base, 6), "rw")
    data = pattern(6)
    p.mprotect(at(base, 3), at(base, 4), "rw")
    p.write(at(base, 3), data[3 * PS : 4 * PS])
    p.mprotect(at(base, 3), at(base, 4), "r")
    p.write(at(base, 4), data[4 * PS :])
    assert p.read(at(base, 2), PS) == bytes(PS)
    assert [(v.start - base) // PS for v in p.vmas()] == [0, 2, 4]
    assert m.device.migrate_to_device(p, at(base, 2), at(base, 6)) == 4
    assert [p.translate(at(base, i)).kind for i in range(2, 6)] == ["device"] * 4
    assert p.read(at(base, 3), 3 * PS) == data[3 * PS :]
    m.check()


def test_mremap_bad_input(make_machine):
    """mremap() validates before it changes anything: overlapping ranges and an
    unaligned new address are EINVAL (ValueError), a range not inside one VMA
    EFAULT (SegFault)."""
    m = machine(make_machine, "hmm-v25")
    p = m.new_process()
    vma = p.mmap(8)
    p.write(vma.start, pattern(8))
    base = vma.start
    for args, error in (
        ((base, at(base, 4), at(base, 2)), ValueError),
        ((base, at(base, 4), base + 4 * THP_NR * PS + 1), ValueError),
        ((base, at(base, 9), base + 4 * THP_NR * PS), me.SegFault),
        ((at(base, 20), at(base, 22), base + 4 * THP_NR * PS), me.SegFault),
    ):
        with pytest.raises(error):
            p.mremap(*args)
    assert [(v.start, v.end) for v in p.vmas()] == [(base, at(base, 8))]
    assert p.read(base, 8 * PS) == pattern(8)
    m.check()


def test_vmas_are_listed_in_address_order(make_machine):
    """p.vmas(): the live VMAs in address order, whatever order they were made in."""
    m = machine(make_machine, "hmm-v25")
    p = m.new_process()
    hi = p.mmap(2, addr=0x40_0000)
    lo = p.mmap(2, addr=0x20_0000)
    assert p.vmas() == [lo, hi]
    p.munmap(lo.start, lo.end)
    assert p.vmas() == [hi] and not lo.live
    assert np.all(m.state.vma["live"][[hi.index]] == 1)
