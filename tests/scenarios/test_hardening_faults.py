"""Hardening of the CPU side: access_error() on every fault path, THP copy-on-write
after fork (do_huge_pmd_wp_page()), and m.check()'s frames held by nothing.

Each scenario names the kernel function or invariant it mirrors. ``m.check()`` runs
after every step (and the make_machine fixture runs it again at teardown), and the
bytes a process sees are compared in full.
"""

from __future__ import annotations

import re

import numpy as np
import pytest

import migengine as me
from migengine import kernels
from migengine.kernels import layout as L

PS = 256  # small pages: a THP extent (512 pages) is 128 KiB
THP_NR = 512
V25 = "hmm-v25"


def fill_driver(m: me.Machine, *, device: bool = False) -> me.MigrateOps:
    """The README's driver: a fresh page for every MIGRATE slot (device memory iff
    ``device``), holding a copy of the source, or zeroes for a hole."""
    lay = m.layout

    def alloc_and_copy(vma, src, dst, start, end, private) -> None:
        for i in range((end - start) // PS):
            if not src[i] & lay.MIGRATE:
                continue
            pfn = m.alloc_page(device=device)
            spfn = m.mpfn_to_pfn(src[i])
            m.copy_page(pfn, spfn if spfn >= 0 else m.zero_pfn)
            dst[i] = m.migrate_pfn(pfn) | lay.LOCKED | (src[i] & lay.WRITE)

    return me.MigrateOps(alloc_and_copy, lambda *args: None)


def migrate(ops: me.MigrateOps, vma: me.Vma) -> None:
    src = np.zeros(vma.npages, np.uint64)
    dst = np.zeros(vma.npages, np.uint64)
    assert me.migrate_vma(ops, vma, vma.start, vma.end, src, dst) == 0


def ptes(p: me.Process, vma: me.Vma) -> list[me.Pte]:
    return [p.translate(vma.start + i * PS) for i in range(vma.npages)]


def pattern(npages: int, seed: int) -> bytes:
    return bytes((seed + 7 * (k // PS) + k) % 251 for k in range(npages * PS))


# ====================================================================== access_error()
def refused(m: me.Machine, p: me.Process, vma: me.Vma, *, reads: bool) -> None:
    """Every access the VMA's protection forbids raises SegFault (or returns
    FAULT_SEGV, compiled) and changes nothing: PTEs, device counters, state."""
    before = ptes(p, vma)
    faults = m.device.counters["faults"]
    attempts = [
        lambda: p.write(vma.start, b"x"),
        lambda: p.write(vma.end - 3, b"xyz"),
        lambda: p.populate(vma.start, vma.end),  # write=True
    ]
    if reads:
        attempts += [
            lambda: p.read(vma.start, 1),
            lambda: p.read(vma.start + PS // 2, 2 * PS),
            lambda: p.populate(vma.start, vma.end, write=False),
        ]
    for attempt in attempts:
        with pytest.raises(me.SegFault):
            attempt()
        m.check()
    buf = np.zeros(8, np.uint8)
    assert kernels.cpu_write(m.state, p.pid, vma.start, buf) == L.FAULT_SEGV
    assert kernels.populate(m.state, vma.index, vma.start, vma.end, True)[0] == L.FAULT_SEGV
    if reads:
        assert kernels.cpu_read(m.state, p.pid, vma.start + PS, buf) == L.FAULT_SEGV
        status, reached = kernels.populate(m.state, vma.index, vma.start, vma.end, False)
        assert (status, reached) == (L.FAULT_SEGV, vma.start)
    m.check()
    assert ptes(p, vma) == before
    assert m.device.counters["faults"] == faults


def test_access_error_prot_none_after_migrate_vma_fills_holes(make_machine, profile):
    """access_error(): PROT_NONE - after migrate_vma() filled the holes of a
    PROT_NONE VMA (hmm-v25, migrate_vma_insert_page(); the seed leaves holes
    alone), every load, store and populate is a SEGV, whatever the PTE holds;
    so in a fork child."""
    m = make_machine(64, 16, page_size=PS, profile=profile)
    p = m.new_process()
    vma = p.mmap(4, prot="none")
    migrate(fill_driver(m), vma)
    m.check()
    kinds = {pte.kind for pte in ptes(p, vma)}
    assert kinds == ({"present"} if profile == V25 else {"none"})
    refused(m, p, vma, reads=True)
    child = p.fork()
    m.check()
    refused(m, child, child.vmas()[0], reads=True)
    for pte in ptes(p, vma):
        if pte.kind == "present":
            assert m.frame(pte.pfn) == bytes(PS)  # the inserted pages: untouched zeroes


def test_access_error_prot_none_device_private_entry(make_machine):
    """access_error(): PROT_NONE over device-private entries (hmm-v25) - the device's
    fault handler never runs; after evict() (the pages back in RAM) still SEGV."""
    m = make_machine(64, 16, page_size=PS, profile=V25)
    p = m.new_process()
    vma = p.mmap(4, prot="none")
    migrate(fill_driver(m, device=True), vma)
    m.check()
    assert {pte.kind for pte in ptes(p, vma)} == {"device"}
    refused(m, p, vma, reads=True)
    assert m.device.evict() == 4
    m.check()
    assert {pte.kind for pte in ptes(p, vma)} == {"present"}
    refused(m, p, vma, reads=True)


def test_access_error_write_to_read_only_vma_with_inserted_pages(make_machine, profile):
    """access_error(): a store to a read-only VMA - SEGV before do_wp_page() or any
    fault handler, for pages migrate_vma() inserted and for zero-page PTEs alike;
    loads read the zeroes."""
    m = make_machine(64, 16, page_size=PS, profile=profile)
    p = m.new_process()
    vma = p.mmap(4, prot="r")
    migrate(fill_driver(m), vma)
    m.check()
    assert p.read(vma.start, vma.npages * PS) == bytes(vma.npages * PS)
    m.check()
    assert all(pte.kind in ("present", "zero") and not pte.writable for pte in ptes(p, vma))
    refused(m, p, vma, reads=False)
    p.populate(vma.start, vma.end, write=False)
    m.check()


def test_access_error_read_only_device_entry_faults_back_on_read_only(make_machine):
    """access_error() then do_swap_page() -> the device's fault handler (hmm-v25): in a
    read-only VMA a load of a device-private entry faults the page back, a store is
    refused before the handler runs."""
    m = make_machine(64, 16, page_size=PS, profile=V25)
    p = m.new_process()
    vma = p.mmap(2, prot="r")
    migrate(fill_driver(m, device=True), vma)
    assert [pte.kind for pte in ptes(p, vma)] == ["device", "device"]
    refused(m, p, vma, reads=False)
    assert p.read(vma.start, PS) == bytes(PS)
    m.check()
    assert p.translate(vma.start).kind == "present"
    assert m.device.counters["faults"] == 1


# ====================================================================== THP copy-on-write
def shared_thp(make_machine, profile: str, ram: int = 2048):
    """A THP written by the parent, then shared with a fork child (mapcount 2)."""
    m = make_machine(ram, 1024, page_size=PS, profile=profile)
    p = m.new_process()
    vma = p.mmap(THP_NR, thp=True)
    data = pattern(THP_NR, 1)
    p.write(vma.start, data)
    m.check()
    child = p.fork()
    m.check()
    head = p.translate(vma.start).pfn
    assert p.translate(vma.start) == child.translate(vma.start) == ("present", head, False, True)
    assert m.page(head).mapcount == 2
    return m, p, child, vma, data


class Shadow:
    """What each process must read over the VMA."""

    def __init__(self, m: me.Machine, vma: me.Vma, procs: dict[str, me.Process], data: bytes):
        self.m, self.vma, self.procs = m, vma, procs
        self.want = {name: bytearray(data) for name in procs}

    def write(self, name: str, page: int, payload: bytes) -> None:
        self.procs[name].write(self.vma.start + page * PS, payload)
        self.want[name][page * PS : page * PS + len(payload)] = payload
        self.m.check()

    def verify(self) -> None:
        for name, p in self.procs.items():
            assert p.read(self.vma.start, THP_NR * PS) == bytes(self.want[name]), name
            self.m.check()


@pytest.mark.parametrize("writer", ["child", "parent"])
def test_do_huge_pmd_wp_page_copies_a_shared_thp(make_machine, profile, writer):
    """do_huge_pmd_wp_page(): a write to a fork-shared THP copies the whole THP for the
    writer; the other process keeps the old one, its reverse-map chain intact, and
    its next write reuses it (mapcount 1)."""
    m, p, child, vma, data = shared_thp(make_machine, profile)
    procs = {"parent": p, "child": child}
    other = "parent" if writer == "child" else "child"
    old = p.translate(vma.start).pfn
    cow = m.counters["cow_break"]
    s = Shadow(m, vma, procs, data)
    s.write(writer, 3, b"first write")
    new = procs[writer].translate(vma.start)
    assert new.huge and new.writable and new.pfn != old
    assert procs[other].translate(vma.start) == ("present", old, False, True)
    assert (m.page(old).mapcount, m.page(new.pfn).mapcount) == (1, 1)
    assert m.counters["cow_break"] == cow + 1
    s.verify()
    s.write(other, THP_NR - 1, b"reused")
    assert procs[other].translate(vma.start) == ("present", old, True, True)
    assert m.counters["cow_break"] == cow + 1
    s.verify()


def test_do_huge_pmd_wp_page_three_ways(make_machine, profile):
    """do_huge_pmd_wp_page(): a THP shared by three processes (two forks); each write
    takes the writer's slot out of the middle or the ends of the chain."""
    m, p, c1, vma, data = shared_thp(make_machine, profile)
    c2 = p.fork()
    m.check()
    old = p.translate(vma.start).pfn
    assert m.page(old).mapcount == 3
    s = Shadow(m, vma, {"parent": p, "c1": c1, "c2": c2}, data)
    s.write("c1", 0, b"one")
    s.write("parent", 100, b"two")
    assert c2.translate(vma.start).pfn == old and m.page(old).mapcount == 1
    s.write("c2", 200, b"three")  # the last mapping: reused
    assert c2.translate(vma.start) == ("present", old, True, True)
    s.verify()


# RAM for: a second THP; only 512 order-0 pages (one aligned run, the THP's, and 575
# frames free); not even those (511 free), so the THP splits.
COW_RAM = {"thp-copy": 2048, "pte-copy": 2 * THP_NR + 64, "split": 2 * THP_NR}


@pytest.mark.parametrize("how", list(COW_RAM))
def test_do_huge_pmd_wp_page_without_a_free_thp(make_machine, profile, how):
    """do_huge_pmd_wp_page(): with no THP free, do_huge_pmd_wp_page_fallback() copies
    the THP into 512 order-0 pages PTE-mapped in the writer, the other process
    keeping the THP; with fewer free pages than that, the THP is split (this
    model's split_huge_pmd()) and do_wp_page() copies the one page written."""
    m, p, child, vma, data = shared_thp(make_machine, profile, ram=COW_RAM[how])
    old = p.translate(vma.start).pfn
    splits, cow = m.counters["thp_split_page"], m.counters["cow_break"]
    s = Shadow(m, vma, {"parent": p, "child": child}, data)
    s.write("child", 5, b"child's copy")
    mine, theirs = child.translate(vma.start + 5 * PS), p.translate(vma.start + 5 * PS)
    assert mine.writable and mine.pfn != theirs.pfn
    assert mine.huge == (how == "thp-copy")
    assert theirs.huge == (how != "split") and theirs.pfn == old + 5
    assert m.counters["thp_split_page"] == splits + (how == "split")
    assert m.counters["cow_break"] == cow + 1
    if how == "pte-copy":
        assert all(pte.writable and not pte.huge for pte in ptes(child, vma))
        assert m.page(old).mapcount == 1
    s.verify()
    s.write("parent", 6, b"the parent's")
    s.verify()


def test_do_huge_pmd_wp_page_pinned_thp_that_cannot_split(make_machine, profile):
    """do_huge_pmd_wp_page() with no THP and fewer than 512 free pages, on a pinned
    THP: this model cannot split a pinned page (4.14 would split only the PMD),
    so the store is OutOfMemory, with nothing changed; after unpin it succeeds."""
    m, p, child, vma, data = shared_thp(make_machine, profile, ram=COW_RAM["split"])
    head = p.translate(vma.start).pfn
    m.pin(head)
    with pytest.raises(me.OutOfMemory):
        child.write(vma.start, b"no")
    m.check()
    assert child.translate(vma.start) == ("present", head, False, True)
    s = Shadow(m, vma, {"parent": p, "child": child}, data)
    s.verify()
    m.unpin(head)
    s.write("child", 0, b"yes")
    s.verify()


def after_cow(make_machine, profile, *, ram: int = 2048):
    m, p, child, vma, data = shared_thp(make_machine, profile, ram=ram)
    s = Shadow(m, vma, {"parent": p, "child": child}, data)
    s.write("child", 0, b"child's copy")
    return m, s


@pytest.mark.parametrize("how", list(COW_RAM))
def test_thp_cow_then_migrate_to_device_and_back(make_machine, profile, how):
    """do_huge_pmd_wp_page() then migrate_vma(): after each kind of COW both
    processes' ranges migrate whole to the device and back, the THPs split by
    collect, data and invariants intact."""
    m, s = after_cow(make_machine, profile, ram=COW_RAM[how])
    for name in ("parent", "child"):
        p = s.procs[name]
        assert m.device.migrate_to_device(p, s.vma.start, s.vma.end) == THP_NR
        m.check()
        assert all(pte.pfn >= m.ram_pages for pte in ptes(p, s.vma))
        s.verify()  # hmm-v25: every page faults back; the seed reads device memory
        m.device.migrate_to_system(p, s.vma.start, s.vma.end)
        m.check()
        assert all(0 < pte.pfn < m.ram_pages for pte in ptes(p, s.vma))
        s.verify()
        s.write(name, 7, name.encode())
    s.verify()


@pytest.mark.parametrize("how", list(COW_RAM))
def test_thp_cow_then_swap_out_and_back(make_machine, profile, how):
    """do_huge_pmd_wp_page() then reclaim: swapping out a page of either copy splits
    a THP (split_huge_page()) and swaps the page; do_swap_page() brings it back."""
    m, s = after_cow(make_machine, profile, ram=COW_RAM[how])
    for name in ("parent", "child"):
        p = s.procs[name]
        for page in (0, 1, THP_NR - 1):
            p.swap_out(s.vma.start + page * PS)
            m.check()
            assert p.translate(s.vma.start + page * PS).kind == "swap"
        s.verify()
        s.write(name, 1, b"after swap-in")
    s.verify()


def test_thp_cow_then_device_migrate_vma_and_evict(make_machine):
    """do_huge_pmd_wp_page() then the device's migrate_vma() ops (hmm-v25) over both
    copies, then evict(): every page comes back with its bytes."""
    m, s = after_cow(make_machine, V25)
    for p in s.procs.values():
        v = p.vmas()[0]
        src = np.zeros(THP_NR, np.uint64)
        dst = np.zeros(THP_NR, np.uint64)
        assert me.migrate_vma(m.device.ops, v, v.start, v.end, src, dst) == 0
        m.check()
        assert {pte.kind for pte in ptes(p, v)} == {"device"}
    assert m.device.evict() == 2 * THP_NR
    m.check()
    s.verify()


# ====================================================================== frames held by nothing
def test_check_reports_a_frame_held_by_nothing(make_machine, profile):
    """m.check(): an allocated frame no mapping, page-cache slot, LRU-add batch, pin,
    lock or isolation holds is a leak, named by pfn (RAM and device frames)."""
    m = make_machine(16, 4, page_size=PS, profile=profile)
    st = m.state
    for device in (False, True):
        pfn = kernels.alloc_page(st, device)
        m.check()  # locked: the driver holds it, between alloc_page() and migrate_vma()
        m.pin(pfn)
        kernels.unlock_page(st, pfn)
        m.check()  # pinned
        m.unpin(pfn)
        with pytest.raises(me.InvariantError, match=rf"leaked frame.* \(at pfn {pfn}\)"):
            m.check()
        kernels.put_page(st, pfn)
        assert m.page(pfn).free
        m.check()


def test_check_a_file_page_out_of_its_page_cache_slot_is_a_leak(make_machine, profile):
    """m.check(): a page-cache page is held by its slot; once the slot names another
    frame (or none) and nothing maps the page, nothing holds it."""
    m = make_machine(16, 0, page_size=PS, profile=profile)
    p = m.new_process()
    vma = p.mmap(1, kind="shmem")
    p.write(vma.start, b"cached")
    m.lru_add_drain_all()
    pfn = p.translate(vma.start).pfn
    m.check()
    slot = int(m.state.page["index"][pfn])
    assert int(m.state.pcache[slot]) == pfn
    child = p.fork()  # shmem: the child maps the page-cache page on its fault
    assert child.read(vma.start, 6) == b"cached"
    m.check()
    # Unmap it from both by hand and take it out of its slot: nothing holds it.
    st = m.state
    for proc in (p, child):
        v = proc.vmas()[0]
        kslot = int(st.vma["pte_base"][v.index])
        st.pte[kslot] = L.PTE_NONE
        st.pte_next[kslot] = -1
    st.page["rmap"][pfn] = -1
    st.page["mapcount"][pfn] = 0
    st.page["refcount"][pfn] = 1
    st.pcache[slot] = -1
    with pytest.raises(me.InvariantError, match=re.escape(f"(at pfn {pfn})")):
        m.check()
    st.pcache[slot] = pfn  # the slot holds it again
    m.check()
