"""Tests of the device model (m.device), after lib/test_hmm.c (dmirror) and hmm-tests.c.

The first group mirrors the hmm selftests (tools/testing/selftests/vm/hmm-tests.c),
scaled down: buffers are filled like the selftests (``ptr[i] = i`` as int32, so
page ``i`` holds ``i * k + j`` with ``k`` ints per page) and compared byte for
byte. Unless a test says otherwise it runs the hmm-v25 profile, whose device
frames are device-private (a CPU access faults them back). The seed profile's
device memory is CPU-addressable; its tests are at the end.
"""

from __future__ import annotations

import errno
import math
from functools import partial

import numpy as np
import pytest

import migengine as me
from tests import helpers

PS = 256  # small pages: the selftests' shapes at a fraction of the bytes
INTS = PS // 4  # int32 values per page
THP_NR = 512  # HPAGE_PMD_NR: pages per PMD-mapped THP
V25 = "hmm-v25"


# ------------------------------------------------------------------ helpers


# The selftests' buffer and the PTE kinds, at this file's page size.
pattern = partial(helpers.selftest_pattern, ps=PS)
kinds = partial(helpers.kinds, ps=PS)


def fill(p: me.Process, vma: me.Vma, base: int = 0, sign: int = 1) -> bytes:
    """CPU-write the selftest pattern over the whole VMA; returns the bytes."""
    data = pattern(vma.npages, base, sign)
    p.write(vma.start, data)
    return data


def page_addr(vma: me.Vma, i: int) -> int:
    return vma.start + i * PS


def ptes(p: me.Process, vma: me.Vma) -> list[me.Pte]:
    return [p.translate(page_addr(vma, i)) for i in range(vma.npages)]


def frames(m: me.Machine, p: me.Process, vma: me.Vma) -> bytes:
    """The VMA's bytes read through the page tables, without faulting anything."""
    out = []
    for pte in ptes(p, vma):
        out.append(bytes(PS) if pte.kind == "none" else m.frame(pte.pfn))
    return b"".join(out)


def v25(make_machine, ram: int = 256, dev: int = 128) -> me.Machine:
    return make_machine(ram, dev, page_size=PS, profile=V25)


def seed(make_machine, ram: int = 256, dev: int = 128) -> me.Machine:
    return make_machine(ram, dev, page_size=PS, profile="seed")


def recording_driver(m: me.Machine, *, migrate: bool):
    """A Python MigrateOps driver moving pages to fresh RAM (or nothing at all).

    Returns (ops, seen): ``seen["src"]`` is src as alloc_and_copy saw it,
    ``seen["final_src"]`` / ``seen["dst"]`` as finalize_and_map saw them.
    """
    lay = m.layout
    seen: dict[str, np.ndarray] = {}

    def alloc_and_copy(vma, src, dst, start, end, private):
        seen["src"] = src.copy()
        if not migrate:
            return
        for i in range(len(src)):
            spfn = m.mpfn_to_pfn(src[i])
            if spfn < 0 or not src[i] & lay.MIGRATE:
                continue
            pfn = m.alloc_page()
            m.copy_page(pfn, spfn)
            dst[i] = m.migrate_pfn(pfn) | lay.LOCKED | (src[i] & lay.WRITE)

    def finalize_and_map(vma, src, dst, start, end, private):
        seen["final_src"] = src.copy()
        seen["dst"] = dst.copy()

    return me.MigrateOps(alloc_and_copy, finalize_and_map), seen


def run_driver(ops: me.MigrateOps, vma: me.Vma) -> None:
    src = np.zeros(vma.npages, np.uint64)
    dst = np.zeros(vma.npages, np.uint64)
    assert me.migrate_vma(ops, vma, vma.start, vma.end, src, dst) == 0


# ------------------------------------------------------------------ hmm-tests.c, hmm-v25


def test_migrate(make_machine):
    """hmm-tests.c: migrate - every page of a filled anon buffer moves to the device,
    the PTEs become writable device-private entries and the device holds the data."""
    m = v25(make_machine)
    p = m.new_process()
    vma = p.mmap(64)
    data = fill(p, vma)

    assert m.device.migrate_to_device(p, vma.start, vma.end) == 64

    for i, pte in enumerate(ptes(p, vma)):
        assert (pte.kind, pte.writable, pte.huge) == ("device", True, False)
        assert pte.pfn >= m.ram_pages
        assert m.device.mirrored(p, page_addr(vma, i)) == pte.pfn
    assert frames(m, p, vma) == data
    assert m.device.counters["calloc"] == 64
    assert m.device.counters["faults"] == 0
    assert p.read(vma.start, 64 * PS) == data


def test_migrate_fault(make_machine):
    """hmm-tests.c: migrate_fault - reading the first half faults exactly those pages
    back; a second migrate moves the system half and leaves the device half's
    pages where they are. The modern selftest expects every page still mirrored
    (cpages 1024); in 4.14 the second migration's collect runs under an mmu
    notifier with no owner, so the device half leaves the mirror (the count is
    the system half), and those pages, collected and restored, come back as
    read-only device entries (4.14's read-only migration entries)."""
    m = v25(make_machine)
    p = m.new_process()
    vma = p.mmap(128)
    data = fill(p, vma)
    assert m.device.migrate_to_device(p, vma.start, vma.end) == 128
    device_half = [pte.pfn for pte in ptes(p, vma)[64:]]

    assert p.read(vma.start, 64 * PS) == data[: 64 * PS]

    assert m.device.counters["faults"] == 64
    assert m.device.counters["cfree"] == 64
    now = ptes(p, vma)
    assert all(pte.kind == "present" and pte.pfn < m.ram_pages for pte in now[:64])
    assert [pte.pfn for pte in now[64:]] == device_half
    calloc = m.device.counters["calloc"]

    assert m.device.migrate_to_device(p, vma.start, vma.end) == 64

    assert m.device.counters["calloc"] == calloc + 64  # only the system half moved
    assert [pte.pfn for pte in ptes(p, vma)[64:]] == device_half
    assert not any(pte.writable for pte in ptes(p, vma))  # read-faulted back: read-only
    assert set(kinds(p, vma)) == {"device"}
    assert frames(m, p, vma) == data
    assert p.read(vma.start, 128 * PS) == data


def test_migrate_multiple(make_machine):
    """hmm-tests.c: migrate_multiple - ten rounds of fill, migrate, CPU read back
    (device-private: the read faults every page back)."""
    m = v25(make_machine)
    p = m.new_process()
    vma = p.mmap(64)
    for c in range(10):
        data = fill(p, vma, base=c)
        assert m.device.migrate_to_device(p, vma.start, vma.end) == 64
        assert frames(m, p, vma) == data
        assert p.read(vma.start, 64 * PS) == data
        assert set(kinds(p, vma)) == {"present"}
        assert m.free_pages(device=True) == m.device_pages
        assert m.device.counters["faults"] == 64 * (c + 1)


def test_migrate_shared(make_machine):
    """hmm-tests.c: migrate_shared - an untouched MAP_SHARED|ANON (shmem) buffer: 4.14
    collects its holes but migrate_vma_insert_page() refuses a non-anonymous VMA, so
    nothing is mirrored (the selftest's -ENOENT) and every device page comes back."""
    m = v25(make_machine)
    p = m.new_process()
    vma = p.mmap(32, kind="shmem")

    assert m.device.migrate_to_device(p, vma.start, vma.end) == 0

    assert set(kinds(p, vma)) == {"none"}
    assert m.free_pages(device=True) == m.device_pages
    assert m.device.counters["calloc"] == m.device.counters["cfree"]
    assert m.counters["insert_page"] == 0


def test_migrate_shared_populated_stays_in_ram(make_machine, profile):
    """4.14 migrate_vma_pages(): a page with a mapping (shmem page cache) cannot move
    to device-private memory (M cleared); seed: page-cache pages look pinned to the
    posted migrate_vma_check_page(). Either way the data stays put in RAM."""
    m = make_machine(256, 128, page_size=PS, profile=profile)
    p = m.new_process()
    vma = p.mmap(16, kind="shmem")
    data = fill(p, vma)
    before = [pte.pfn for pte in ptes(p, vma)]

    assert m.device.migrate_to_device(p, vma.start, vma.end) == 0

    assert [pte.pfn for pte in ptes(p, vma)] == before
    assert m.free_pages(device=True) == m.device_pages
    assert p.read(vma.start, 16 * PS) == data


def test_migrate_release(make_machine):
    """hmm-tests.c: migrate_release - evicting the device moves every device page of
    every process back to RAM (migrate_device_range), with the data intact."""
    m = v25(make_machine)
    p, q = m.new_process(), m.new_process()
    pv, qv = p.mmap(48), q.mmap(32)
    pdata, qdata = fill(p, pv), fill(q, qv, base=7, sign=-1)
    assert m.device.migrate_to_device(p, pv.start, pv.end) == 48
    assert m.device.migrate_to_device(q, qv.start, qv.start + 16 * PS) == 16
    faults = m.device.counters["faults"]

    assert m.device.evict() == 64

    for proc, vma in ((p, pv), (q, qv)):
        assert all(pte.kind == "present" and pte.pfn < m.ram_pages for pte in ptes(proc, vma))
        assert all(m.device.mirrored(proc, page_addr(vma, i)) == -1 for i in range(vma.npages))
    assert m.free_pages(device=True) == m.device_pages
    assert m.device.counters["calloc"] == m.device.counters["cfree"] == 64
    assert m.device.counters["faults"] == faults  # eviction is not a CPU fault
    assert p.read(pv.start, 48 * PS) == pdata
    assert q.read(qv.start, 32 * PS) == qdata
    assert m.device.evict() == 0


@pytest.mark.parametrize("migrate", [False, True], ids=["no-migrate", "migrate"])
def test_anon_write_child(make_machine, migrate):
    """hmm-tests.c: anon_write_child - the parent fills i, optionally migrates, forks;
    the child sees i, writes -i and sees -i; the parent still sees i. fork shares
    device-private entries read-only in both (copy_one_pte, is_cow_mapping)."""
    m = v25(make_machine)
    parent = m.new_process()
    vma = parent.mmap(32)
    data = fill(parent, vma)
    if migrate:
        assert m.device.migrate_to_device(parent, vma.start, vma.end) == 32

    child = parent.fork()

    for pp, cp in zip(ptes(parent, vma), ptes(child, vma), strict=True):
        assert pp == cp
        assert (pp.kind, pp.writable) == ("device" if migrate else "present", False)
        info = m.page(pp.pfn)
        assert info.mapcount == 2
        if migrate:
            assert info.refcount == 1 + 2  # 4.14: the device's own ref + two mappings
    assert child.read(vma.start, 32 * PS) == data
    negated = pattern(32, sign=-1)
    child.write(vma.start, negated)
    assert child.read(vma.start, 32 * PS) == negated
    assert parent.read(vma.start, 32 * PS) == data
    assert m.free_pages(device=True) == m.device_pages


def test_hmm_cow_in_device(make_machine):
    """hmm-tests.c: hmm_cow_in_device - migrate, fork, parent writes: the write fault
    migrates the shared device page back with every mapping redirected (try_to_unmap +
    remove_migration_ptes over the rmap), then breaks COW; the child keeps the old data."""
    m = v25(make_machine)
    parent = m.new_process()
    vma = parent.mmap(8)
    data = fill(parent, vma)
    assert m.device.migrate_to_device(parent, vma.start, vma.end) == 8
    child = parent.fork()
    cow = m.counters["cow_break"]

    parent.write(vma.start, pattern(8, sign=-1))

    assert m.device.counters["faults"] == 8
    assert m.counters["cow_break"] == cow + 8
    for pp, cp in zip(ptes(parent, vma), ptes(child, vma), strict=True):
        assert (pp.kind, pp.writable) == ("present", True)
        assert (cp.kind, cp.writable) == ("present", False)  # redirected, still COW
        assert pp.pfn < m.ram_pages and cp.pfn < m.ram_pages and pp.pfn != cp.pfn
        assert m.page(cp.pfn).mapcount == 1
    assert m.free_pages(device=True) == m.device_pages
    assert child.read(vma.start, 8 * PS) == data
    assert parent.read(vma.start, 8 * PS) == pattern(8, sign=-1)
    assert m.device.counters["faults"] == 8  # the child's read did not fault


def test_migrate_anon_huge_empty(make_machine):
    """hmm-tests.c: migrate_anon_huge_empty - an untouched PROT_READ THP extent (pmd_none):
    4.14 collects the hole, the device allocates and zero-fills every page, insert_page
    maps them read-only (no VM_WRITE)."""
    m = v25(make_machine, ram=1024, dev=THP_NR)
    p = m.new_process()
    vma = p.mmap(THP_NR, prot="r", thp=True)

    assert m.device.migrate_to_device(p, vma.start, vma.end) == THP_NR

    assert all((pte.kind, pte.writable) == ("device", False) for pte in ptes(p, vma))
    assert m.counters["insert_page"] == THP_NR
    assert frames(m, p, vma) == bytes(THP_NR * PS)
    assert p.read(vma.start, THP_NR * PS) == bytes(THP_NR * PS)


def test_migrate_anon_huge_zero(make_machine):
    """hmm-tests.c: migrate_anon_huge_zero - a read fault maps the huge zero page;
    collect splits the PMD into zero-page PTEs, each collected as a hole; the device
    maps all of them and the CPU reads zeros back."""
    m = v25(make_machine, ram=1024, dev=THP_NR)
    p = m.new_process()
    vma = p.mmap(THP_NR, thp=True)
    assert p.read(vma.start, 1) == b"\0"
    assert p.translate(page_addr(vma, 7)) == me.Pte("zero", m.zero_pfn, False, True)

    assert m.device.migrate_to_device(p, vma.start, vma.end) == THP_NR

    assert m.counters["thp_split_pmd"] == 1
    assert all((pte.kind, pte.huge) == ("device", False) for pte in ptes(p, vma))
    assert p.read(vma.start, THP_NR * PS) == bytes(THP_NR * PS)


def test_migrate_anon_huge_err(make_machine):
    """hmm-tests.c: migrate_anon_huge_err, with fail_alloc - a populated THP is split in
    collect; the first n device allocations fail so those pages stay in RAM, the rest
    move. A fault-back that cannot allocate gets dst=ERROR: SIGBUS, the device entry
    stays, and once allocations succeed the same read works and sees the data."""
    m = v25(make_machine, ram=1024, dev=THP_NR)
    p = m.new_process()
    vma = p.mmap(THP_NR, thp=True)
    data = fill(p, vma)
    assert p.translate(vma.start).huge
    n = 3

    m.device.fail_alloc(n)
    assert m.device.migrate_to_device(p, vma.start, vma.end) == THP_NR - n

    now = ptes(p, vma)
    assert all(pte.kind == "present" and not pte.huge for pte in now[:n])
    assert all(pte.kind == "device" for pte in now[n:])
    assert m.counters["thp_split_page"] == 1
    assert frames(m, p, vma) == data

    addr = page_addr(vma, 2 * n)
    before = p.translate(addr)
    m.device.fail_alloc(1)
    with pytest.raises(me.SigBus):
        p.read(addr, 4)
    # 4.14: the failed fault-back restores the device entry from its read-only
    # migration entry, and its collect's notifier wiped the mirror entry.
    assert p.translate(addr) == before._replace(writable=False)
    assert m.device.mirrored(p, addr) == -1

    assert p.read(addr, PS) == data[2 * n * PS : (2 * n + 1) * PS]
    assert p.translate(addr).kind == "present"
    assert p.read(vma.start, THP_NR * PS) == data


def test_device_ops_through_migrate_vma(make_machine):
    """dmirror_migrate_alloc_and_copy() via me.migrate_vma(m.device.ops, ...): each
    collected slot gets dst = device pfn|VALID|LOCKED, plus WRITE when src had it (a
    hole's src has none); the data is copied, the hole zero-filled, and 4.14
    insert_page maps the hole writable anyway because the VMA is VM_WRITE."""
    m = v25(make_machine)
    lay = m.layout
    p = m.new_process()
    vma = p.mmap(4)
    data = pattern(2)
    p.write(vma.start, data)  # pages 2 and 3 stay holes
    src = np.zeros(4, np.uint64)
    dst = np.zeros(4, np.uint64)

    assert me.migrate_vma(m.device.ops, vma, vma.start, vma.end, src, dst) == 0

    for i, pte in enumerate(ptes(p, vma)):
        assert (pte.kind, pte.writable) == ("device", True)
        write = lay.WRITE if i < 2 else np.uint64(0)
        assert dst[i] == m.migrate_pfn(pte.pfn) | lay.LOCKED | write
        assert src[i] & lay.MIGRATE
    assert frames(m, p, vma) == data + bytes(2 * PS)
    assert m.counters["insert_page"] == 2


# ------------------------------------------------------------------ the fault path, hmm-v25


def test_device_sources_carry_device_flag(make_machine):
    """4.14 collect: a device-private entry gives src = P|V|M|D (+W if the entry is
    writable), locked in collect (L); a present page gives P|V|M|L(+W) without D.
    The driver here migrates nothing, so pages clears M and finalize restores all:
    a device entry comes back read-only (4.14's migration entry for it is) and out
    of the mirror (collect's mmu notifier has no owner to spare it)."""
    m = v25(make_machine)
    lay = m.layout
    p = m.new_process()
    rw = p.mmap(8)
    ro = p.mmap(4, prot="r", addr=rw.end)
    data = fill(p, rw)
    p.read(ro.start, 4 * PS)  # zero pages: collected as holes, inserted read-only
    assert m.device.migrate_to_device(p, rw.start, page_addr(rw, 6)) == 6
    assert m.device.migrate_to_device(p, ro.start, ro.end) == 4
    before = {v.index: ptes(p, v) for v in (rw, ro)}
    ops, seen = recording_driver(m, migrate=False)

    for vma, write in ((rw, lay.WRITE), (ro, np.uint64(0))):
        run_driver(ops, vma)
        for i, pte in enumerate(before[vma.index]):
            flags = lay.MIGRATE | lay.LOCKED | write
            if pte.kind == "device":
                flags |= lay.DEVICE
            assert seen["src"][i] == m.migrate_pfn(pte.pfn) | flags
            assert not seen["final_src"][i] & lay.MIGRATE  # no dst: M cleared in pages
        want = [
            pte._replace(writable=False) if pte.kind == "device" else pte
            for pte in before[vma.index]
        ]
        assert ptes(p, vma) == want
        assert all(m.device.mirrored(p, page_addr(vma, i)) == -1 for i in range(vma.npages))
    assert m.device.counters["faults"] == 0
    assert p.read(rw.start, 8 * PS) == data


def test_foreign_driver_moves_device_pages_back(make_machine):
    """4.14 migrate_vma over device-private pages by another driver: the data lands in
    the driver's RAM pages, each device page returns to the free list at refcount 1
    (page_free), and the device's mirror loses those pages (the mmu notifier range
    collect opens invalidates dmirror's entries for a migration it does not own)."""
    m = v25(make_machine)
    p = m.new_process()
    vma = p.mmap(8)
    data = fill(p, vma)
    assert m.device.migrate_to_device(p, vma.start, vma.end) == 8
    device_pfns = [pte.pfn for pte in ptes(p, vma)]
    ops, seen = recording_driver(m, migrate=True)

    run_driver(ops, vma)

    assert all(seen["final_src"] & m.layout.MIGRATE)
    assert all(pte.kind == "present" and pte.pfn < m.ram_pages for pte in ptes(p, vma))
    assert all(m.page(pfn).free and m.page(pfn).refcount == 1 for pfn in device_pfns)
    assert m.free_pages(device=True) == m.device_pages
    assert m.device.counters["cfree"] == 8
    assert frames(m, p, vma) == data
    assert [m.device.mirrored(p, page_addr(vma, i)) for i in range(8)] == [-1] * 8
    m.check()


@pytest.mark.parametrize(
    ("profile", "how"),
    [
        (V25, "fault"),
        (V25, "to_system"),
        (V25, "evict"),
        ("seed", "to_system"),
        ("seed", "evict"),
    ],
)
def test_shared_device_page_leaving_erases_every_mirror_entry(make_machine, profile, how):
    """A fork-shared device page moved back through the other process (the Jul 2019
    fix "fix bad subpage pointer in try_to_unmap_one": both mappings are found and
    redirected). The mapping the device mirrors is redirected by the rmap walk, so
    its mirror entry must go too (dmirror's notifier on that mm), or the device
    would keep a freed page mapped."""
    m = make_machine(64, 16, page_size=PS, profile=profile)
    parent = m.new_process()
    vma = parent.mmap(4)
    data = fill(parent, vma)
    child = parent.fork()
    # evict walks VMAs in order, so let the child own the mirror there: the parent's
    # VMA, walked first, then moves the page through the child's mapping.
    owner, other = (child, parent) if how == "evict" else (parent, child)
    assert m.device.migrate_to_device(owner, vma.start, vma.end) == 4
    assert all(m.device.mirrored(owner, page_addr(vma, i)) >= m.ram_pages for i in range(4))

    if how == "fault":
        assert other.read(vma.start, 4 * PS) == data
    elif how == "to_system":
        assert m.device.migrate_to_system(other, vma.start, vma.end) == 4
    else:
        assert m.device.evict() == 4

    for op, cp in zip(ptes(owner, vma), ptes(other, vma), strict=True):
        assert op == cp and op.kind == "present" and op.pfn < m.ram_pages
    assert [m.device.mirrored(owner, page_addr(vma, i)) for i in range(4)] == [-1] * 4
    m.lru_add_drain_all()  # seed puts its CPU-addressable device pages back like RAM
    assert m.free_pages(device=True) == m.device_pages
    m.check()
    assert owner.read(vma.start, 4 * PS) == data


def test_error_dst_restores_device_entry(make_machine):
    """4.14 migrate_vma_pages/finalize with dst = MIGRATE_PFN_ERROR: the core does
    nothing special, M is cleared and finalize re-installs the device-private entry
    (same pfn; read-only, from 4.14's read-only migration entry); the page keeps its
    refcount, and the mirror lost its entry to collect's notifier."""
    m = v25(make_machine)
    lay = m.layout
    p = m.new_process()
    vma = p.mmap(4)
    data = fill(p, vma)
    assert m.device.migrate_to_device(p, vma.start, vma.end) == 4
    before = ptes(p, vma)

    def alloc_and_copy(vma, src, dst, start, end, private):
        dst[:] = lay.ERROR

    run_driver(me.MigrateOps(alloc_and_copy, lambda *args: None), vma)

    assert ptes(p, vma) == [pte._replace(writable=False) for pte in before]
    for i, pte in enumerate(before):
        info = m.page(pte.pfn)
        assert (info.refcount, info.mapcount, info.locked) == (2, 1, False)
        assert m.device.mirrored(p, page_addr(vma, i)) == -1
    assert frames(m, p, vma) == data


@pytest.mark.parametrize("write", [False, True], ids=["read", "write"])
def test_sigbus_leaves_device_entry_and_mirror(make_machine, write):
    """4.14 device_private_entry_fault() -> VM_FAULT_SIGBUS (dmirror's fault path): the fault-back
    allocation fails, the driver writes dst=ERROR, the core restores the device entry
    and the page is as before; the access can be retried. 4.14: the entry comes back
    read-only (its migration entry was) and the fault's collect dropped the mirror's."""
    m = v25(make_machine)
    p = m.new_process()
    vma = p.mmap(4)
    data = fill(p, vma)
    assert m.device.migrate_to_device(p, vma.start, vma.end) == 4
    addr = page_addr(vma, 1)
    pte = p.translate(addr)
    info = m.page(pte.pfn)

    m.device.fail_alloc(1)
    with pytest.raises(me.SigBus):
        if write:
            p.write(addr, b"\xff" * 8)
        else:
            p.read(addr, 8)

    assert p.translate(addr) == pte._replace(writable=False)
    assert m.device.mirrored(p, addr) == -1
    assert m.page(pte.pfn) == info
    assert m.frame(pte.pfn) == data[PS : 2 * PS]  # a failed store changed nothing
    counters = m.device.counters
    assert (counters["faults"], counters["sigbus"]) == (1, 1)
    m.check()

    if write:
        p.write(addr, b"\xff" * 8)
        data = data[:PS] + b"\xff" * 8 + data[PS + 8 :]
    assert p.read(vma.start, 4 * PS) == data
    assert p.translate(addr).kind == "present"


def test_device_page_refcount_convention(make_machine):
    """4.14 ZONE_DEVICE refcounts (hmm_devmem page_free()): a free device page holds 1, an
    allocated one 2, a mapped one 1 + mapcount; a put back to 1 is page_free: the
    frame returns to the device's free list."""
    m = v25(make_machine, dev=16)
    device_pfns = range(m.ram_pages, m.ram_pages + m.device_pages)
    assert all(m.page(pfn).refcount == 1 and m.page(pfn).free for pfn in device_pfns)

    pfn = m.alloc_page(device=True)
    info = m.page(pfn)
    assert (info.device, info.locked, info.refcount, info.free) == (True, True, 2, False)
    assert m.free_pages(device=True) == 15
    assert m.device.counters["calloc"] == 1
    m.put_page(pfn)
    assert m.page(pfn).free and m.page(pfn).refcount == 1
    assert m.free_pages(device=True) == 16
    assert m.device.counters["cfree"] == 1

    p = m.new_process()
    vma = p.mmap(4)
    fill(p, vma)
    assert m.device.migrate_to_device(p, vma.start, vma.end) == 4
    mapped = [pte.pfn for pte in ptes(p, vma)]
    assert all((m.page(d).refcount, m.page(d).mapcount) == (2, 1) for d in mapped)
    assert m.free_pages(device=True) == 12
    p.read(vma.start, 4 * PS)
    assert all((m.page(d).refcount, m.page(d).free) == (1, True) for d in mapped)
    assert m.free_pages(device=True) == 16


def test_device_counters(make_machine):
    """test_hmm.c counters: calloc counts pages handed out, cfree pages returned
    (dmirror_devmem_free), faults the CPU faults served by the device."""
    m = v25(make_machine)
    p = m.new_process()
    vma = p.mmap(16)
    fill(p, vma)
    assert m.device.counters == {"calloc": 0, "cfree": 0, "faults": 0, "sigbus": 0}

    m.device.migrate_to_device(p, vma.start, vma.end)
    assert m.device.counters == {"calloc": 16, "cfree": 0, "faults": 0, "sigbus": 0}
    p.read(page_addr(vma, 3), 2 * PS)
    assert m.device.counters == {"calloc": 16, "cfree": 2, "faults": 2, "sigbus": 0}
    assert m.device.migrate_to_system(p, vma.start, page_addr(vma, 8)) == 6
    assert m.device.counters == {"calloc": 16, "cfree": 8, "faults": 2, "sigbus": 0}
    assert m.device.evict() == 8
    assert m.device.counters == {"calloc": 16, "cfree": 16, "faults": 2, "sigbus": 0}


def test_swap_out_device_entry_raises(make_machine):
    """A device-private page is not on the LRU and cannot be reclaimed to swap:
    swap_out raises a clear MigengineError and the entry stays."""
    m = v25(make_machine)
    p = m.new_process()
    vma = p.mmap(2)
    data = fill(p, vma)
    m.device.migrate_to_device(p, vma.start, vma.end)
    pte = p.translate(vma.start)

    with pytest.raises(me.MigengineError, match="device"):
        p.swap_out(vma.start)

    assert p.translate(vma.start) == pte
    assert p.read(vma.start, 2 * PS) == data
    p.swap_out(vma.start)  # back in RAM it can be swapped
    assert p.translate(vma.start).kind == "swap"
    assert p.read(vma.start, 2 * PS) == data


def test_fail_alloc_semantics(make_machine):
    """test_hmm.c HMM_DMIRROR_FLAG_FAIL_ALLOC, as a count: the next n device-side or
    fault-back allocations fail, then allocations succeed again."""
    m = v25(make_machine)
    p = m.new_process()
    vma = p.mmap(8)
    data = fill(p, vma)
    with pytest.raises(ValueError):
        m.device.fail_alloc(-1)
    with pytest.raises(TypeError):
        m.device.fail_alloc(1.5)

    m.device.fail_alloc(0)
    assert m.device.migrate_to_device(p, vma.start, page_addr(vma, 2)) == 2
    m.device.fail_alloc(2)
    # Pages 2, 3 fail; 0, 1 were on the device already and leave the mirror at
    # collect (4.14's notifier), so the device maps the four it moved.
    assert m.device.migrate_to_device(p, vma.start, vma.end) == 4
    assert kinds(p, vma)[:4] == ["device", "device", "present", "present"]
    assert m.device.migrate_to_device(p, vma.start, vma.end) == 2  # count consumed
    assert set(kinds(p, vma)) == {"device"}

    m.device.fail_alloc(1)  # a migrate_to_system allocation fails too: page stays
    assert m.device.migrate_to_system(p, vma.start, page_addr(vma, 2)) == 1
    assert kinds(p, vma)[:2] == ["device", "present"]
    assert m.device.migrate_to_system(p, vma.start, page_addr(vma, 2)) == 1
    assert p.read(vma.start, 8 * PS) == data


def test_copy_stats_after_migration(make_machine):
    """The device copies with the chunked engine: physically contiguous runs coalesce
    into descriptors of at most chunk_pages; the model time is setup_ns per descriptor
    plus bytes / gbps on one channel."""
    m = v25(make_machine)
    engine = me.CopyEngine(chunk_pages=16, channels=1, setup_ns=1600.0, gbps=12.7)
    m.device.engine = engine
    p = m.new_process()
    vma = p.mmap(64)
    fill(p, vma)  # one store: RAM pfns ascend, and so do the device pfns popped

    m.device.migrate_to_device(p, vma.start, vma.end)

    stats = m.device.copy_stats
    assert set(stats) == {"descriptors", "bytes", "wall_s", "model_s"}
    assert stats["bytes"] == 64 * PS
    assert stats["descriptors"] == 64 // 16
    assert stats["wall_s"] > 0
    model_ns = stats["descriptors"] * 1600.0 + stats["bytes"] / 12.7
    assert math.isclose(stats["model_s"], model_ns * 1e-9, rel_tol=1e-9)


def test_engine_settable(make_machine):
    """m.device.engine is settable with a CopyEngine; the next copy uses it."""
    m = v25(make_machine)
    with pytest.raises(TypeError):
        m.device.engine = "ptdma"
    single = me.CopyEngine(chunk_pages=1)
    m.device.engine = single
    assert m.device.engine is single
    p = m.new_process()
    vma = p.mmap(32)
    data = fill(p, vma)

    m.device.migrate_to_device(p, vma.start, vma.end)

    assert m.device.copy_stats["descriptors"] == 32
    assert frames(m, p, vma) == data


def test_migrate_to_device_spans_vmas(make_machine, profile):
    """dmirror_migrate_to_device(): the range is walked VMA by VMA (migrate_vma per
    piece); the result is every page mirrored across the pieces."""
    m = make_machine(256, 128, page_size=PS, profile=profile)
    p = m.new_process()
    first = p.mmap(24)
    second = p.mmap(40, addr=first.end)
    data = fill(p, first) + fill(p, second, base=24 * INTS)

    assert m.device.migrate_to_device(p, first.start + 4 * PS, second.end) == 60

    assert kinds(p, first)[:4] == ["present"] * 4
    assert all(m.device.mirrored(p, page_addr(first, i)) >= m.ram_pages for i in range(4, 24))
    assert all(m.device.mirrored(p, page_addr(second, i)) >= m.ram_pages for i in range(40))
    assert m.device.migrate_to_system(p, first.start, second.end) == 60
    assert p.read(first.start, 64 * PS) == data


def test_migrate_to_device_range_not_covered(make_machine, profile):
    """dmirror_migrate_to_device(): a piece without a readable VMA is -EINVAL."""
    m = make_machine(256, 128, page_size=PS, profile=profile)
    p = m.new_process()
    vma = p.mmap(8)
    data = fill(p, vma)
    hidden = p.mmap(4, prot="none", addr=vma.end + 4 * PS)

    for start, end in (
        (vma.start, vma.end + PS),  # runs into the gap
        (vma.end, vma.end + 2 * PS),  # only the gap
        (hidden.start, hidden.end),  # no VM_READ
        (vma.start - 4 * PS, vma.start + PS),  # starts before the VMA
    ):
        with pytest.raises(me.MigrateError) as err:
            m.device.migrate_to_device(p, start, end)
        assert err.value.errno == errno.EINVAL
    with pytest.raises(me.MigrateError):
        m.device.migrate_to_system(p, vma.end, vma.end + PS)
    assert p.read(vma.start, 8 * PS) == data


# ------------------------------------------------------------------ seed: CPU-addressable memory


def test_seed_device_memory_is_cpu_addressable(make_machine):
    """v25-14 (the patch's CAPI example): device memory is CPU-addressable, so a
    migrated page is mapped by an ordinary present PTE with a device pfn; CPU loads
    and stores go straight to it, without faults; migrate_to_system brings it back."""
    m = seed(make_machine)
    p = m.new_process()
    vma = p.mmap(32)
    data = fill(p, vma)

    assert m.device.migrate_to_device(p, vma.start, vma.end) == 32

    on_device = ptes(p, vma)
    assert all(
        (pte.kind, pte.writable) == ("present", True) and pte.pfn >= m.ram_pages
        for pte in on_device
    )
    pgfault = m.counters["pgfault"]
    assert p.read(vma.start, 32 * PS) == data
    newer = pattern(32, sign=-1)
    p.write(vma.start, newer)
    assert ptes(p, vma) == on_device
    assert m.device.counters["faults"] == 0
    assert m.counters["pgfault"] == pgfault
    assert b"".join(m.frame(pte.pfn) for pte in on_device) == newer

    assert m.device.migrate_to_system(p, vma.start, vma.end) == 32

    assert all(pte.kind == "present" and pte.pfn < m.ram_pages for pte in ptes(p, vma))
    # finalize put each device page back through the driver CPU's LRU-add batch
    # (seed releases every page with putback_lru_page()): 32 adds drained it
    # twice, so the last 4 wait in it until the next drain.
    assert m.free_pages(device=True) == m.device_pages - 32 % 14
    m.lru_add_drain_all()
    assert m.free_pages(device=True) == m.device_pages
    assert p.read(vma.start, 32 * PS) == newer


def test_seed_fork_cow_on_device_memory(make_machine):
    """seed fork: a page in device memory is shared copy-on-write like any anonymous
    page; the child's store copies it to a new RAM page, the parent keeps the device
    page (and, mapped once again, reuses it on its own store)."""
    m = seed(make_machine)
    parent = m.new_process()
    vma = parent.mmap(8)
    data = fill(parent, vma)
    assert m.device.migrate_to_device(parent, vma.start, vma.end) == 8
    on_device = ptes(parent, vma)
    child = parent.fork()
    assert all(m.page(pte.pfn).mapcount == 2 for pte in on_device)

    child.write(vma.start, pattern(8, sign=-1))

    assert all(pte.kind == "present" and pte.pfn < m.ram_pages for pte in ptes(child, vma))
    assert [pte.pfn for pte in ptes(parent, vma)] == [pte.pfn for pte in on_device]
    assert parent.read(vma.start, 8 * PS) == data
    assert child.read(vma.start, 8 * PS) == pattern(8, sign=-1)
    parent.write(vma.start, pattern(8, base=5))
    assert [pte.pfn for pte in ptes(parent, vma)] == [pte.pfn for pte in on_device]
    assert parent.read(vma.start, 8 * PS) == pattern(8, base=5)
    assert m.device.counters["faults"] == 0


def test_seed_holes_are_not_collected(make_machine):
    """v25-14 collect: pte_none and zero-page entries give src = 0, so an untouched or
    read-only-faulted buffer is not migrated and the device allocates nothing."""
    m = seed(make_machine)
    p = m.new_process()
    vma = p.mmap(16)
    p.read(vma.start, 8 * PS)

    assert m.device.migrate_to_device(p, vma.start, vma.end) == 0

    assert kinds(p, vma) == ["zero"] * 8 + ["none"] * 8
    assert m.device.counters["calloc"] == 0


def test_seed_fail_alloc_never_sigbus(make_machine):
    """seed: failed device allocations leave those pages in RAM; CPU accesses never
    reach a device fault handler, so a pending fail_alloc cannot cause SIGBUS."""
    m = seed(make_machine)
    p = m.new_process()
    vma = p.mmap(8)
    data = fill(p, vma)

    m.device.fail_alloc(2)
    assert m.device.migrate_to_device(p, vma.start, vma.end) == 6
    m.device.fail_alloc(1)
    assert p.read(vma.start, 8 * PS) == data
    assert m.device.counters["sigbus"] == 0
    assert [pte.pfn >= m.ram_pages for pte in ptes(p, vma)] == [False] * 2 + [True] * 6
