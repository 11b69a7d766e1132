"""munmap(), mprotect() and madvise() (mm/mmap.c, mm/mprotect.c, mm/madvise.c).

Each test names the kernel path it follows, checks every byte that must
survive, and ends with ``m.check()`` (the ``make_machine`` fixture runs it
again at teardown). The hmm self-test that needs munmap is at the end.
"""

from __future__ import annotations

import numpy as np
import pytest

import migengine as me
from tests.helpers import HPAGE, PS, addr, assert_data, filled, pattern, pfn_at, thp_machine


def spans(p: me.Process) -> list[tuple[int, int]]:
    return [(v.start, v.end) for v in p.vmas()]


# ------------------------------------------------------------------ munmap
@pytest.mark.parametrize(
    ("lo", "hi", "left"),
    [
        (0, 4, [(4, 16)]),  # a prefix: the VMA keeps its record for the rest
        (12, 16, [(0, 12)]),  # a suffix
        (4, 12, [(0, 4), (12, 16)]),  # the middle: __split_vma() twice
        (0, 16, []),  # all of it
    ],
)
def test_munmap_splits_and_frees(make_machine, profile, lo, hi, left):
    """do_munmap(): __split_vma() at the ends, unmap_region() in between; the
    pages lose their mappings and, with no other reference, are freed."""
    m = make_machine(256, 16, profile=profile)
    p, vma = filled(m, 16)
    base = vma.start
    pfns = [pfn_at(p, vma, i) for i in range(16)]
    free_before = m.free_pages()
    p.munmap(base + lo * PS, base + hi * PS)
    m.check()
    assert spans(p) == [(base + a * PS, base + b * PS) for a, b in left]
    # The VMA's own record keeps the part below the range, or above it when the
    # range starts at the VMA's start (do_munmap()'s __split_vma() calls).
    assert vma.live == (lo != 0 or hi != 16)
    if vma.live:
        assert vma.start == base + (0 if lo else hi * PS)
    m.lru_add_drain_all()  # faulted pages wait in the LRU-add batch, holding a reference
    assert all(m.page(pfns[i]).free for i in range(lo, hi))
    assert m.free_pages() == free_before + (hi - lo)
    for i in [i for i in range(16) if not lo <= i < hi]:
        assert p.read(base + i * PS, PS) == pattern(i)
    for i in range(lo, hi):
        with pytest.raises(me.SegFault):
            p.read(base + i * PS, 1)
    m.check()


def test_munmap_spanning_vmas_and_holes(make_machine, profile):
    """A range over two VMAs and the gap between them unmaps both parts; a range
    with no mapping in it is no error (do_munmap() returns 0)."""
    m = make_machine(256, 0, profile=profile)
    p = m.new_process()
    a = p.mmap(8)
    b = p.mmap(8, addr=a.end + 4 * PS)
    for v in (a, b):
        p.write(v.start, b"x" * (8 * PS))
    a0, b0 = a.start, b.start
    p.munmap(a0 + 6 * PS, b0 + 2 * PS)
    assert spans(p) == [(a0, a0 + 6 * PS), (b0 + 2 * PS, b0 + 8 * PS)]
    p.munmap(a0 + 9 * PS, a0 + 10 * PS)  # a hole: nothing happens
    assert p.read(a0, 6 * PS) == b"x" * (6 * PS)
    assert p.read(b0 + 2 * PS, 6 * PS) == b"x" * (6 * PS)
    m.check()


@pytest.mark.parametrize("profile", ["hmm-v25"])
def test_munmap_returns_device_pages(make_machine, profile):
    """zap_pte_range() of a device-private entry drops its page's reference; at
    one (4.14's free value for ZONE_DEVICE) it goes back to the device's free
    list (the driver's page_free, counted in cfree)."""
    m = make_machine(256, 32, profile=profile)
    p, vma = filled(m, 16)
    assert m.device.migrate_to_device(p, vma.start, vma.end) == 16
    assert m.device.free_pages() == 16
    cfree = m.device.counters["cfree"]
    p.munmap(addr(vma, 4), addr(vma, 12))
    assert m.device.free_pages() == 24
    assert m.device.counters["cfree"] == cfree + 8
    assert [m.device.mirrored(p, addr(vma, i)) >= 0 for i in (3, 4, 11, 12)] == [
        True,
        False,
        False,
        True,
    ]
    for i in [*range(4), *range(12, 16)]:
        assert p.read(addr(vma, i), PS) == pattern(i)  # faults back from the device
    m.check()


def test_munmap_keeps_what_others_hold(make_machine, profile):
    """A fork-shared page and a page-cache page outlive one unmapping: only this
    mapping's reference goes (page_remove_rmap() + put_page())."""
    m = make_machine(256, 0, profile=profile)
    p, anon = filled(m, 4)
    shared = p.mmap(4, kind="shmem")
    p.write(shared.start, b"s" * (4 * PS))
    child = p.fork()
    pfn = pfn_at(p, anon, 1)
    refs = m.page(pfn).refcount
    p.munmap(anon.start, anon.end)
    p.munmap(shared.start, shared.end)
    assert m.page(pfn).refcount == refs - 1 and m.page(pfn).mapcount == 1
    assert child.read(addr(anon, 1), PS) == pattern(1)
    assert child.read(shared.start, 4 * PS) == b"s" * (4 * PS)
    m.check()


def test_munmap_swap_entries(make_machine, profile):
    """zap_pte_range() frees a swap entry's slot (free_swap_and_cache())."""
    m = make_machine(256, 0, profile=profile)
    p, vma = filled(m, 4)
    p.swap_out(addr(vma, 2))
    assert p.translate(addr(vma, 2)).kind == "swap"
    p.munmap(addr(vma, 2), addr(vma, 3))
    m.check()  # the checker recounts every swap slot's users
    assert_data(p, vma, [0, 1, 3])


def test_munmap_thp_whole_and_split(make_machine, profile):
    """zap_huge_pmd() for a PMD the range covers whole; a cut one is split first
    (4.14 splits the PMD; this model splits the page, see kernels/zap.py)."""
    m = make_machine(3 * HPAGE + 64, 0, profile=profile)  # two aligned THP runs
    p = m.new_process()
    vma = p.mmap(2 * HPAGE, thp=True)
    base, end = vma.start, vma.end
    p.write(base, b"a" * PS)
    p.write(base + HPAGE * PS, b"b" * PS)
    assert p.translate(base).huge
    head = p.translate(base).pfn
    p.munmap(base + 100 * PS, base + 101 * PS)
    m.check()
    assert not p.translate(base).huge and p.read(base, PS) == b"a" * PS
    assert m.counters["thp_split_page"] == 1 and not m.page(head).compound
    assert p.translate(base + HPAGE * PS).huge
    p.munmap(base + HPAGE * PS, end)  # zap_huge_pmd(): no split
    assert m.counters["thp_split_page"] == 1
    p.munmap(base, end)
    m.check()
    m.lru_add_drain_all()
    assert m.free_pages() == m.ram_pages - 1


def test_munmap_refused_while_migrating(make_machine, profile):
    """A driver's callback runs under mmap_sem, which munmap() takes for writing."""
    m = make_machine(64, 8, profile=profile)
    p, vma = filled(m, 4)
    seen = []

    def alloc(vma_, src, dst, start, end, private):
        with pytest.raises(me.MigengineError, match="munmap"):
            p.munmap(vma.start, vma.end)
        seen.append(True)

    me.migrate_vma(me.MigrateOps(alloc, lambda *a: None), vma, vma.start, vma.end, *_arrays(4))
    assert seen and spans(p) == [(vma.start, vma.end)]
    assert_data(p, vma, range(4))
    m.check()


def _arrays(n):
    return np.zeros(n, np.uint64), np.zeros(n, np.uint64)


@pytest.mark.parametrize(
    ("start", "end", "error"),
    [
        (1, PS, ValueError),
        (0, 0, ValueError),
        (PS, 0, ValueError),
        (2**64, 2**64 + PS, ValueError),
    ],
)
def test_munmap_bad_input(make_machine, start, end, error):
    m = make_machine(64, 0)
    p, vma = filled(m, 4)
    with pytest.raises(error):
        p.munmap(vma.start + start, vma.start + end)
    assert spans(p) == [(vma.start, vma.end)]
    assert_data(p, vma, range(4))
    m.check()


# ------------------------------------------------------------------ mprotect
def test_mprotect_splits_protects_and_merges(make_machine, profile):
    """mprotect_fixup(): split_vma() at both ends, change_protection() drops the
    write bit of every PTE; granting write again leaves PTEs read-only until a
    store's fault reuses the page (do_wp_page()); vma_merge() joins the parts."""
    m = make_machine(256, 0, profile=profile)
    p, vma = filled(m, 16)
    base, end = vma.start, vma.end
    pfn = pfn_at(p, vma, 5)
    p.mprotect(base + 4 * PS, base + 8 * PS, "r")
    assert [v.flags & 3 for v in p.vmas()] == [3, 1, 3]
    assert (vma.start, vma.end) == (base + 4 * PS, base + 8 * PS)  # it keeps the inside
    assert not p.translate(base + 5 * PS).writable and p.translate(base + 3 * PS).writable
    with pytest.raises(me.SegFault):
        p.write(base + 5 * PS, b"x")
    assert p.read(base + 5 * PS, PS) == pattern(5)
    m.check()
    p.mprotect(base + 4 * PS, base + 8 * PS, "rw")
    assert spans(p) == [(base, end)]
    assert not p.translate(base + 5 * PS).writable
    p.write(base + 5 * PS, b"y")
    assert p.translate(base + 5 * PS) == ("present", pfn, True, False)
    p.mprotect(base, end, "none")
    with pytest.raises(me.SegFault):
        p.read(base, 1)
    p.mprotect(base, end, "rw")
    assert p.read(base + 5 * PS, 1) == b"y"
    whole = p.vmas()[0]
    assert_data(p, whole, [0, 1, 2, 3, 4, 6, 7, 8, 15])
    m.check()


@pytest.mark.parametrize("profile", ["hmm-v25"])
def test_mprotect_write_protects_device_entries(make_machine, profile):
    """4.14 change_pte_range(): a writable device-private entry becomes a
    read-only one; the mirror forgets the range (mmu-notifier invalidation)."""
    m = make_machine(256, 16, profile=profile)
    p, vma = filled(m, 4)
    m.device.migrate_to_device(p, vma.start, vma.end)
    assert p.translate(vma.start) == ("device", p.translate(vma.start).pfn, True, False)
    p.mprotect(vma.start, vma.end, "r")
    assert p.translate(vma.start).kind == "device" and not p.translate(vma.start).writable
    assert m.device.mirrored(p, vma.start) == -1
    assert_data(p, vma, range(4))
    m.check()


def test_mprotect_thp(make_machine, profile):
    """change_huge_pmd() write-protects a PMD the range covers whole; a cut one
    is split first (__split_huge_pmd())."""
    m = thp_machine(make_machine, profile)
    p = m.new_process()
    vma = p.mmap(HPAGE, thp=True)
    p.write(vma.start, b"t" * PS)
    p.mprotect(vma.start, vma.end, "r")
    assert p.translate(vma.start).huge and not p.translate(vma.start).writable
    p.mprotect(vma.start, vma.end, "rw")
    p.write(vma.start, b"u")  # do_huge_pmd_wp_page(): mapped once, reused
    assert p.translate(vma.start).huge and p.translate(vma.start).writable
    base = vma.start
    p.mprotect(base + PS, base + 2 * PS, "r")
    assert not p.translate(base).huge and len(p.vmas()) == 3
    assert p.read(base, 2) == b"ut"
    m.check()


@pytest.mark.parametrize(
    ("skew", "pages", "prot", "error"),
    [(0, 8, "r", me.SegFault), (0, 2, "rwx", ValueError), (1, 2, "r", ValueError)],
)
def test_mprotect_bad_input(make_machine, skew, pages, prot, error):
    """A range with a hole (ENOMEM in the kernel), an unknown prot or an
    unaligned start change nothing."""
    m = make_machine(64, 0)
    p, vma = filled(m, 4)
    with pytest.raises(error):
        p.mprotect(vma.start + skew, addr(vma, pages), prot)
    assert spans(p) == [(vma.start, vma.end)] and p.translate(vma.start).writable
    assert_data(p, vma, range(4))
    m.check()


# ------------------------------------------------------------------ madvise
def test_madvise_dontneed(make_machine, profile):
    """MADV_DONTNEED zaps the range: anonymous pages refault as zeroes, file
    pages from the page cache, which still holds them."""
    m = make_machine(256, 0, profile=profile)
    p, anon = filled(m, 4)
    f = p.mmap(4, kind="file")
    p.write(f.start, b"f" * (4 * PS))
    p.madvise(anon.start, addr(anon, 2), "dontneed")
    p.madvise(f.start, f.end, "dontneed")
    assert p.translate(anon.start).kind == "none" and p.translate(f.start).kind == "none"
    assert p.read(anon.start, PS) == bytes(PS)
    assert_data(p, anon, [2, 3])
    assert p.read(f.start, 4 * PS) == b"f" * (4 * PS)
    m.check()


def test_madvise_free_and_reclaim(make_machine, profile):
    """MADV_FREE (madvise_free_pte_range()): pages mapped only here are cleaned
    and, once on the LRU, marked lazily freeable (mark_page_lazyfree() skips a
    page still in the LRU-add batch); reclaim discards the clean ones and keeps
    one stored to since; a fork-shared page is left alone."""
    m = make_machine(256, 0, profile=profile)
    p, vma = filled(m, 8)
    m.lru_add_drain_all()
    p.madvise(vma.start, vma.end, "free")
    assert all(m.page(pfn_at(p, vma, i)).lazyfree for i in range(8))
    p.write(addr(vma, 3), b"d")
    freed = m.reclaim()
    assert freed == 7 and m.counters["pglazyfreed"] == 7
    assert p.read(addr(vma, 3), PS) == b"d" + pattern(3)[1:]
    assert not m.page(pfn_at(p, vma, 3)).lazyfree
    assert p.read(addr(vma, 0), PS) == bytes(PS)  # discarded: a zero page now
    m.check()


def test_madvise_free_skips_batch_and_shared(make_machine, profile):
    """mark_page_lazyfree() needs PageLRU (a freshly faulted page waits in the
    LRU-add batch); madvise_free_pte_range() skips page_mapcount() != 1."""
    m = make_machine(256, 0, profile=profile)
    p, vma = filled(m, 2)  # both in the fault CPU's batch (13 fit)
    p.madvise(vma.start, vma.end, "free")
    assert not any(m.page(pfn_at(p, vma, i)).lazyfree for i in range(2))
    m.lru_add_drain_all()
    child = p.fork()
    p.madvise(vma.start, vma.end, "free")
    assert not any(m.page(pfn_at(p, vma, i)).lazyfree for i in range(2))
    assert m.reclaim() == 0
    assert_data(p, vma, range(2))
    assert_data(child, child.vmas()[0], range(2))
    m.check()


@pytest.mark.parametrize(
    ("kind", "flags", "advice"),
    [
        ("anon", me.VM_LOCKED, "dontneed"),
        ("shmem", 0, "free"),
        ("file", 0, "free"),
        ("anon", 0, "willneed"),
    ],
)
def test_madvise_bad_input(make_machine, kind, flags, advice):
    """can_madv_dontneed_vma() refuses mlocked VMAs; MADV_FREE takes private
    anonymous memory only; unknown advice is EINVAL."""
    m = make_machine(64, 0)
    p = m.new_process()
    vma = p.mmap(2, kind=kind, flags=flags)
    p.write(vma.start, b"k" * (2 * PS))
    with pytest.raises(ValueError):
        p.madvise(vma.start, vma.end, advice)
    with pytest.raises(me.SegFault):
        p.madvise(vma.start, vma.end + PS, "dontneed")  # ENOMEM: a hole
    assert p.read(vma.start, 2 * PS) == b"k" * (2 * PS)
    m.check()


# ------------------------------------------------------------------ hmm-tests.c
ONEMEG = 256  # pages of 4 KiB


@pytest.mark.parametrize("offset", [0, 128, 256])
@pytest.mark.parametrize("thp", [False, True], ids=["small", "thp"])
@pytest.mark.parametrize("profile", ["hmm-v25"])
def test_migrate_partial_unmap_fault(make_machine, profile, thp, offset):
    """hmm-tests.c migrate_partial_unmap_fault: migrate 2 MiB (a THP, or small
    pages) to the device, munmap 1 MiB of it at offset 0, 512 KiB or 1 MiB, then
    read the rest back (each read faults a device page back) and check it; the
    unmapped part's device pages are back on the device's free list. 4.14 has no
    device THPs: collect splits the THP, so the modern selftest's split of a
    device-private PMD on the partial unmap has no counterpart."""
    m = make_machine(2 * HPAGE + 64, HPAGE, profile=profile)
    p = m.new_process()
    vma = p.mmap(HPAGE, thp=thp)
    data = b"".join(i.to_bytes(4, "little") * (PS // 4) for i in range(HPAGE))
    p.write(vma.start, data)
    assert p.translate(vma.start).huge == thp
    assert m.device.migrate_to_device(p, vma.start, vma.end) == HPAGE
    base = vma.start
    p.munmap(base + offset * PS, base + (offset + ONEMEG) * PS)
    assert m.device.free_pages() == ONEMEG
    for i in range(HPAGE):
        if offset <= i < offset + ONEMEG:
            continue
        assert p.read(base + i * PS, PS) == data[i * PS : (i + 1) * PS]
    m.check()


def test_madvise_free_of_a_whole_thp(make_machine, profile):
    """madvise_free_huge_pmd(): a PMD the range covers whole marks the THP (mapped
    once, on the LRU) lazily freeable as one page; reclaim discards it whole,
    after a device read had mirrored its pages (the mirror forgets all 512)."""
    m = thp_machine(make_machine, profile)
    p = m.new_process()
    vma = p.mmap(HPAGE, thp=True)
    p.write(vma.start, b"h" * PS)
    head = p.translate(vma.start).pfn
    assert p.translate(vma.start).huge and m.page(head).lru
    assert m.device.read(p, vma.start + 7 * PS, 4) == bytes(4)
    p.madvise(vma.start, vma.end, "free")
    assert m.page(head).lazyfree and m.counters["thp_split_page"] == 0
    assert m.reclaim() == HPAGE and m.page(head).free
    assert m.device.mirrored(p, vma.start + 7 * PS) == -1
    assert p.read(vma.start, PS) == bytes(PS)
    m.check()
