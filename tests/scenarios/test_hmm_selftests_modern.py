"""hmm-tests.c in the modern profile, in both device variants.

tools/testing/selftests/mm/hmm-tests.c runs each case on the ``hmm`` fixture's
two variants, a device-private device and a device-coherent one, and the
two-device (``hmm2``) cases on two devices with different owners. Here the
cases where the device kind or the owner matters run the same way: the
``variant`` parameter is the first device's kind, the second device (hmm2) is
device-private with an owner of its own. Each test is named after its case and
compares the selftests' fill byte for byte; make_machine checks every machine.
"""

from __future__ import annotations

from functools import partial

import pytest

import migengine as me
from tests import helpers

PS = 256
THP_NR = 512
VARIANTS = pytest.mark.parametrize("variant", ["private", "coherent"])
pattern = partial(helpers.selftest_pattern, ps=PS)
W = int(me.HMM_DMIRROR_PROT_WRITE)


def machine(make_machine, variant: str, pages: int = 256, ram: int = 1024) -> me.Machine:
    """One device of ``variant`` (owner "dev0"), and a private one with owner "dev1"."""
    specs = [me.DeviceSpec(pages, variant, owner="dev0"), me.DeviceSpec(64, owner="dev1")]
    return make_machine(ram, devices=specs, page_size=PS, profile="modern")


def filled(m: me.Machine, npages: int, base: int = 0) -> tuple[me.Process, me.Vma, bytes]:
    p = m.new_process()
    vma = p.mmap(npages)
    data = pattern(npages, base)
    p.write(vma.start, data)
    return p, vma, data


def at(vma: me.Vma, i: int) -> int:
    return vma.start + i * PS


def on_device(m: me.Machine, p: me.Process, vma: me.Vma, i: int, d: int = 0) -> bool:
    """Page ``i`` sits in device ``d``'s memory: a device-private entry or, for
    device-coherent memory, a present PTE to one of its frames."""
    dev = m.devices[d]
    pte = p.translate(at(vma, i))
    return dev.first_pfn <= pte.pfn < dev.first_pfn + dev.npages


def local_code(variant: str) -> int:
    if variant == "private":
        return int(me.HMM_DMIRROR_PROT_DEV_PRIVATE_LOCAL)
    return int(me.HMM_DMIRROR_PROT_DEV_COHERENT_LOCAL)


def back_to_ram(m: me.Machine, p: me.Process, vma: me.Vma, data: bytes, variant: str) -> None:
    """hmm-tests.c's way back: a CPU read faults device-private pages back;
    device-coherent pages are read in place and need HMM_DMIRROR_MIGRATE_TO_SYS."""
    assert p.read(vma.start, len(data)) == data
    if variant == "coherent":
        assert all(on_device(m, p, vma, i) for i in range(vma.npages))
        assert m.device.migrate_to_system(p, vma.start, vma.end) == vma.npages
    assert not any(on_device(m, p, vma, i) for i in range(vma.npages))


@VARIANTS
def test_migrate(make_machine, variant):
    """migrate: every page moves; a private page is a writable device entry, a
    coherent one a present PTE to device memory; the device mirrors each."""
    m = machine(make_machine, variant)
    p, vma, data = filled(m, 64)
    assert m.device.migrate_to_device(p, vma.start, vma.end) == 64
    kind = "device" if variant == "private" else "present"
    for i in range(64):
        pte = p.translate(at(vma, i))
        assert (pte.kind, pte.writable) == (kind, True) and on_device(m, p, vma, i)
        assert m.device.mirrored(p, at(vma, i)) == pte.pfn
    assert b"".join(m.frame(p.translate(at(vma, i)).pfn) for i in range(64)) == data
    back_to_ram(m, p, vma, data, variant)


@VARIANTS
def test_migrate_fault(make_machine, variant):
    """migrate_fault: read the first half back with the CPU (private: it faults
    back; coherent: read in place), migrate again: the system pages move, the
    device's own pages stay and stay mirrored (MMU_NOTIFY_MIGRATE with its
    owner), so every page is mirrored (the selftest's cpages == npages)."""
    m = machine(make_machine, variant)
    p, vma, data = filled(m, 128)
    assert m.device.migrate_to_device(p, vma.start, vma.end) == 128
    assert p.read(vma.start, 64 * PS) == data[: 64 * PS]
    faults = m.device.counters["faults"]
    assert faults == (64 if variant == "private" else 0)
    assert m.device.migrate_to_device(p, vma.start, vma.end) == 128
    assert all(on_device(m, p, vma, i) for i in range(128))
    assert m.device.counters["calloc"] == (192 if variant == "private" else 128)
    back_to_ram(m, p, vma, data, variant)


@VARIANTS
def test_migrate_multiple(make_machine, variant):
    """migrate_multiple: ten rounds of fill, migrate and back."""
    m = machine(make_machine, variant)
    p = m.new_process()
    vma = p.mmap(32)
    for c in range(10):
        data = pattern(32, c)
        p.write(vma.start, data)
        assert m.device.migrate_to_device(p, vma.start, vma.end) == 32
        back_to_ram(m, p, vma, data, variant)
        assert m.device.free_pages() == m.device.npages


@VARIANTS
def test_migrate_release(make_machine, variant):
    """migrate_release: HMM_DMIRROR_RELEASE evicts by pfn (migrate_device_range),
    every page of every process comes back with its data."""
    m = machine(make_machine, variant)
    p, vma, data = filled(m, 48)
    q, qv, qdata = filled(m, 16, base=9)
    m.device.migrate_to_device(p, vma.start, vma.end)
    m.device.migrate_to_device(q, qv.start, qv.end)
    assert m.device.evict() == 64
    assert m.device.free_pages() == m.device.npages
    assert p.read(vma.start, 48 * PS) == data and q.read(qv.start, 16 * PS) == qdata


@VARIANTS
def test_migrate_shared(make_machine, variant):
    """migrate_shared: an untouched shared anonymous (shmem) buffer: modern collects
    no hole outside an anonymous VMA (0744f2807a4f), so the device allocates
    nothing and mirrors nothing (the selftest's -ENOENT)."""
    m = machine(make_machine, variant)
    p = m.new_process()
    vma = p.mmap(32, kind="shmem")
    assert m.device.migrate_to_device(p, vma.start, vma.end) == 0
    assert m.device.counters["calloc"] == 0 and m.counters["migrate_vma_collected"] == 0


@VARIANTS
def test_anon_write_child(make_machine, variant):
    """anon_write_child (migrate): fork shares the device pages copy-on-write; the
    child writes -i and sees it, the parent still sees i."""
    m = machine(make_machine, variant)
    parent, vma, data = filled(m, 32)
    assert m.device.migrate_to_device(parent, vma.start, vma.end) == 32
    child = parent.fork()
    assert child.read(vma.start, 32 * PS) == data
    negated = pattern(32, sign=-1)
    child.write(vma.start, negated)
    assert child.read(vma.start, 32 * PS) == negated
    assert parent.read(vma.start, 32 * PS) == data


@VARIANTS
def test_hmm_cow_in_device(make_machine, variant):
    """hmm_cow_in_device: migrate, fork, the parent writes: COW is broken into
    system memory (private: after the fault brings the page back; coherent: the
    copy is read straight from device memory); the child keeps the old data."""
    m = machine(make_machine, variant)
    parent, vma, data = filled(m, 8)
    m.device.migrate_to_device(parent, vma.start, vma.end)
    child = parent.fork()
    parent.write(vma.start, pattern(8, sign=-1))
    assert m.device.counters["faults"] == (8 if variant == "private" else 0)
    assert not any(on_device(m, parent, vma, i) for i in range(8))
    assert child.read(vma.start, 8 * PS) == data
    assert parent.read(vma.start, 8 * PS) == pattern(8, sign=-1)


@VARIANTS
def test_hmm_gup_test(make_machine, variant):
    """hmm_gup_test: pages 0-1 pinned short-term, 2-3 with FOLL_LONGTERM. A
    private page always comes back to RAM to be pinned; a coherent page stays
    for a short-term pin (COHERENT_LOCAL in the snapshot) and moves for a
    long-term one (migrate_device_coherent_folio())."""
    m = machine(make_machine, variant)
    p, vma, data = filled(m, 4)
    m.device.migrate_to_device(p, vma.start, vma.end)
    pins = [p.pin(at(vma, i), write=i % 2 == 1, longterm=i >= 2) for i in range(4)]
    stays = [variant == "coherent" and i < 2 for i in range(4)]
    assert [on_device(m, p, vma, i) for i in range(4)] == stays
    snap = m.device.snapshot(p, vma.start, vma.end).tolist()
    for i in range(4):
        if stays[i]:
            assert snap[i] == local_code(variant) | W
    for pfn in pins:
        m.unpin(pfn)
    assert p.read(vma.start, 4 * PS) == data


@VARIANTS
def test_migrate_mixed(make_machine, variant):
    """migrate_mixed (hmm2): each device migrates back only its own pages
    (pgmap_owner); the other device's pages stay where they are."""
    m = machine(make_machine, variant)
    dev0, dev1 = m.devices
    p, vma, data = filled(m, 4)
    assert dev0.migrate_to_device(p, at(vma, 0), at(vma, 2)) == 2
    assert dev1.migrate_to_device(p, at(vma, 2), vma.end) == 2
    assert dev0.migrate_to_system(p, vma.start, vma.end) == 2
    assert [on_device(m, p, vma, i, 1) for i in range(4)] == [False, False, True, True]
    assert dev1.migrate_to_system(p, vma.start, vma.end) == 2
    assert p.read(vma.start, 4 * PS) == data


@VARIANTS
def test_snapshot(make_machine, variant):
    """snapshot (hmm2): device 1 sees device 0's coherent pages as COHERENT_REMOTE
    and device 0's private pages not at all (not its owner: not reported to a
    snapshot); device 0 sees its own as LOCAL."""
    m = machine(make_machine, variant)
    dev0, dev1 = m.devices
    p, vma, data = filled(m, 2)
    dev0.migrate_to_device(p, vma.start, vma.end)
    assert dev0.snapshot(p, vma.start, vma.end).tolist() == [local_code(variant) | W] * 2
    remote = int(me.HMM_DMIRROR_PROT_DEV_COHERENT_REMOTE) | W
    assert (
        dev1.snapshot(p, vma.start, vma.end).tolist()
        == [remote if variant == "coherent" else 0] * 2
    )
    back_to_ram(m, p, vma, data, variant)


@VARIANTS
def test_double_map(make_machine, variant):
    """double_map (hmm2): device 1 reads pages that sit in device 0's memory: a
    private page of another owner is faulted back to RAM first (v6.1 "mm/hmm:
    fault non-owner device private entries"); a coherent one is read in place."""
    m = machine(make_machine, variant)
    dev0, dev1 = m.devices
    p, vma, data = filled(m, 4)
    dev0.migrate_to_device(p, vma.start, vma.end)
    assert dev1.read(p, vma.start, 4 * PS) == data
    assert all(on_device(m, p, vma, i) for i in range(4)) == (variant == "coherent")
    back_to_ram(m, p, vma, data, variant)


@VARIANTS
def test_migrate_anon_huge_empty(make_machine, variant):
    """migrate_anon_huge_empty on a device with no free aligned 2 MiB run (its
    frames start off-alignment, and device-coherent memory gives no folios):
    the COMPOUND hole gets dmirror's fallback, 512 zeroed base device pages.
    The device-folio form is tests/scenarios/test_device_thp.py."""
    m = machine(make_machine, variant, pages=THP_NR + 8, ram=2 * THP_NR + 64)
    p = m.new_process()
    vma = p.mmap(THP_NR, prot="r", thp=True)
    assert m.device.migrate_to_device(p, vma.start, vma.end) == THP_NR
    assert all(on_device(m, p, vma, i) for i in range(THP_NR))
    assert p.read(vma.start, THP_NR * PS) == bytes(THP_NR * PS)


@VARIANTS
@pytest.mark.parametrize("offset", [0, THP_NR // 4, THP_NR // 2])
def test_migrate_partial_unmap_fault(make_machine, variant, offset):
    """migrate_partial_unmap_fault (use_thp=0; the THP form is in
    test_device_thp.py): munmap half of a migrated 2 MiB buffer at three
    offsets: its device pages go back to the device's free list; the rest reads
    back (private: faulting)."""
    m = machine(make_machine, variant, pages=THP_NR + 8, ram=2 * THP_NR + 64)
    p, vma, data = filled(m, THP_NR)
    assert m.device.migrate_to_device(p, vma.start, vma.end) == THP_NR
    half, base = THP_NR // 2, vma.start  # the Vma is a live view: munmap moves its start
    p.munmap(at(vma, offset), at(vma, offset + half))
    assert m.device.free_pages() == m.device.npages - half
    for i in range(THP_NR):
        if not offset <= i < offset + half:
            assert p.read(base + i * PS, PS) == data[i * PS : (i + 1) * PS]


@VARIANTS
@pytest.mark.parametrize("before", [True, False], ids=["migrate-then-mremap", "mremap-first"])
def test_migrate_remap_fault(make_machine, variant, before):
    """migrate_remap_fault: mremap(MREMAP_MAYMOVE|MREMAP_FIXED) carries the device
    entries (private) or present PTEs to device memory (coherent) to the new
    address, where the data reads back."""
    m = machine(make_machine, variant)
    p, vma, data = filled(m, 16)
    target = vma.start + 8 * 1024 * 1024
    if before:
        assert m.device.migrate_to_device(p, vma.start, vma.end) == 16
    new = p.mremap(vma.start, vma.end, target)
    if not before:
        assert m.device.migrate_to_device(p, new.start, new.end) == 16
    assert all(on_device(m, p, new, i) for i in range(16))
    assert p.read(new.start, 16 * PS) == data


@VARIANTS
def test_anon_read_and_write_of_device_memory(make_machine, variant):
    """anon_read / anon_write on pages in the device's own memory: the device
    reads and writes them in place (its own private pages are reported, not
    faulted; coherent pages are present), and the CPU then sees the device's
    stores."""
    m = machine(make_machine, variant)
    p, vma, data = filled(m, 4)
    m.device.migrate_to_device(p, vma.start, vma.end)
    assert m.device.read(p, vma.start, 4 * PS) == data
    new = pattern(4, 50)
    m.device.write(p, vma.start, new)
    assert all(on_device(m, p, vma, i) for i in range(4))
    assert m.device.counters["faults"] == 0
    back_to_ram(m, p, vma, new, variant)


@VARIANTS
def test_anon_write_child_shared(make_machine, variant):
    """anon_write_child_shared: a MAP_SHARED anonymous buffer is not migrated (no
    hole or page-cache page goes to device memory: -ENOENT in the selftest); the
    child's stores are the parent's."""
    m = machine(make_machine, variant)
    p = m.new_process()
    vma = p.mmap(8, kind="shmem")
    p.write(vma.start, pattern(8))
    assert m.device.migrate_to_device(p, vma.start, vma.end) == 0
    child = p.fork()
    child.write(vma.start, pattern(8, sign=-1))
    assert p.read(vma.start, 8 * PS) == pattern(8, sign=-1)


@VARIANTS
def test_migrate_anon_huge_zero_err(make_machine, variant):
    """migrate_anon_huge_zero_err with every allocation failing (the device
    folio's and all 512 base fallbacks): the huge zero page, collected as a
    COMPOUND hole (SELECT_SYSTEM), stays; the zeros read back. The selftest's
    one-shot form is in test_device_thp.py."""
    m = machine(make_machine, variant, pages=THP_NR + 8, ram=2 * THP_NR + 64)
    p = m.new_process()
    vma = p.mmap(THP_NR, thp=True)
    assert p.read(vma.start, PS) == bytes(PS)
    assert p.translate(vma.start).huge  # the huge zero page
    m.device.fail_alloc(THP_NR + 1)
    assert m.device.migrate_to_device(p, vma.start, vma.end) == 0
    assert not any(on_device(m, p, vma, i) for i in range(THP_NR))
    assert p.read(vma.start, THP_NR * PS) == bytes(THP_NR * PS)
