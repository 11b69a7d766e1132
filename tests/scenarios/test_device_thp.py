"""Device huge pages (modern, B_DEVICE_THP): hmm-tests.c cases 30-37 on THPs.

The 2025 device-private THP series (mm/migrate_device.c, lib/test_hmm.c): with
MIGRATE_VMA_SELECT_COMPOUND a PMD-aligned extent is one migration unit, a 2 MiB
device folio mapped by a device-private PMD entry. Each test is named after
the selftest case (or kernel branch) it mirrors and runs the selftests' fill
byte for byte; the same ranges in ``hmm-v25``, which splits every THP first,
are the contrast. make_machine checks every machine when the test ends,
PMD-level invariants included (no PMD migration entry, no half-split folio).
"""

from __future__ import annotations

from functools import partial

import pytest

import migengine as me
from tests import helpers

PS = 256
NR = 512  # HPAGE_PMD_NR: a "2 MiB" folio of 256-byte pages
pattern = partial(helpers.selftest_pattern, ps=PS)
LOCAL = int(me.HMM_DMIRROR_PROT_DEV_PRIVATE_LOCAL)
W, R, PMD = (
    int(me.HMM_DMIRROR_PROT_WRITE),
    int(me.HMM_DMIRROR_PROT_READ),
    int(me.HMM_DMIRROR_PROT_PMD),
)


def machine(make_machine, profile: str = "modern", ram: int = 4096) -> me.Machine:
    """RAM and device 0 (owner "dev0") both start 512-aligned, so both have
    free aligned runs: system THPs and device folios."""
    specs = [me.DeviceSpec(2048, owner="dev0"), me.DeviceSpec(64, owner="dev1")]
    return make_machine(ram, devices=specs, page_size=PS, profile=profile)


def thp_buffer(m: me.Machine, npages: int = NR, prot: str = "rw", fill: bool = True):
    """hmm-tests.c's THP buffer: an aligned MADV_HUGEPAGE region, ptr[i] = i."""
    p = m.new_process()
    vma = p.mmap(npages, prot=prot, thp=True)
    data = pattern(npages)
    if fill:
        p.write(vma.start, data)
    return p, vma, data


def device_pmd(p: me.Process, addr: int, writable: bool = True) -> bool:
    pte = p.translate(addr)
    return pte.kind == "device" and pte.huge and pte.writable == writable


# ------------------------------------------------------------------ cases 30-33
def test_migrate_anon_huge_empty(make_machine):
    """#30: an untouched PROT_READ THP extent is one COMPOUND hole (cpages 1 in
    the core, 512 pages for dmirror) filled by one zeroed device folio, mapped
    read-only by a device-private PMD entry."""
    m = machine(make_machine)
    p, vma, _ = thp_buffer(m, prot="r", fill=False)
    assert m.device.migrate_to_device(p, vma.start, vma.end) == NR
    assert device_pmd(p, vma.start, writable=False)
    assert m.counters["migrate_vma_collected"] == 1
    assert set(m.device.snapshot(p, vma.start, vma.end).tolist()) == {LOCAL | R | PMD}
    assert p.read(vma.start, NR * PS) == bytes(NR * PS)


def test_migrate_anon_huge_empty_splits_in_hmm_v25(make_machine):
    """Contrast: 4.14 has no COMPOUND; the same extent is 512 holes."""
    m = machine(make_machine, "hmm-v25")
    p, vma, _ = thp_buffer(m, prot="r", fill=False)
    assert m.device.migrate_to_device(p, vma.start, vma.end) == NR
    assert not p.translate(vma.start).huge
    assert m.counters["migrate_vma_collected"] == NR


def test_migrate_anon_huge_zero(make_machine):
    """#31: the huge zero page is collected as a COMPOUND hole (not split) and
    replaced by a device folio; the CPU read faults the whole folio back."""
    m = machine(make_machine)
    p, vma, _ = thp_buffer(m, prot="r", fill=False)
    assert p.read(vma.start, PS) == bytes(PS)
    assert p.translate(vma.start).kind == "zero" and p.translate(vma.start).huge
    assert m.device.migrate_to_device(p, vma.start, vma.end) == NR
    assert device_pmd(p, vma.start, writable=False)
    assert m.counters["thp_split_pmd"] == 0
    assert p.read(vma.start, NR * PS) == bytes(NR * PS)
    assert p.translate(vma.start).kind == "present" and p.translate(vma.start).huge


def test_migrate_anon_huge_free(make_machine):
    """#32: MADV_FREE of a device-private PMD is a no-op (madvise_free_huge_pmd()
    skips non-present PMDs): the folio stays, the data with it."""
    m = machine(make_machine)
    p, vma, data = thp_buffer(m)
    assert m.device.migrate_to_device(p, vma.start, vma.end) == NR
    assert m.device.read(p, vma.start, NR * PS) == data
    p.madvise(vma.start, vma.end, "free")
    assert device_pmd(p, vma.start)
    assert p.read(vma.start, NR * PS) == data


def test_migrate_anon_huge_fault(make_machine):
    """#33: a filled THP moves as one folio: snapshot DEV_PRIVATE_LOCAL|WRITE|PMD
    everywhere; a CPU read is one fault that brings the whole folio back into
    a system THP (do_huge_pmd_device_private(), dmirror_devmem_fault() order 9)."""
    m = machine(make_machine)
    p, vma, data = thp_buffer(m)
    assert m.device.migrate_to_device(p, vma.start, vma.end) == NR
    assert set(m.device.snapshot(p, vma.start, vma.end).tolist()) == {LOCAL | W | PMD}
    assert m.device.free_pages() == m.device.npages - NR
    assert m.counters["thp_split_page"] == 0
    assert p.read(vma.start, NR * PS) == data
    assert m.device.counters["faults"] == 1
    pte = p.translate(vma.start)
    assert (pte.kind, pte.huge, pte.writable) == ("present", True, True)
    assert m.device.free_pages() == m.device.npages


def test_migrate_anon_huge_fault_splits_in_hmm_v25(make_machine):
    """Contrast: 4.14's collect splits the THP and migrates 512 base pages; each
    CPU fault brings one page back."""
    m = machine(make_machine, "hmm-v25")
    p, vma, data = thp_buffer(m)
    assert m.device.migrate_to_device(p, vma.start, vma.end) == NR
    assert m.counters["thp_split_page"] == 1
    assert not p.translate(vma.start).huge
    assert p.read(vma.start, 2 * PS) == data[: 2 * PS]
    assert m.device.counters["faults"] == 2


# ------------------------------------------------------------------ cases 34-35
@pytest.mark.parametrize("offset", [0, NR // 4, NR // 2])
def test_migrate_partial_unmap_fault(make_machine, offset):
    """#34 (thp): munmap of half a device PMD splits it (__split_huge_pmd_locked()
    device-private branch: 512 device entries with the PMD's write bit; the
    model splits the folio with it, the pgmap's folio_split()); the unmapped
    half goes back to the device, the rest faults back page by page."""
    m = machine(make_machine)
    p, vma, data = thp_buffer(m)
    assert m.device.migrate_to_device(p, vma.start, vma.end) == NR
    base, half = vma.start, NR // 2
    p.munmap(base + offset * PS, base + (offset + half) * PS)
    assert m.device.free_pages() == m.device.npages - half
    keep = [i for i in range(NR) if not offset <= i < offset + half]
    assert all(p.translate(base + i * PS).kind == "device" for i in keep)
    assert not p.translate(base + keep[0] * PS).huge
    for i in keep:
        assert p.read(base + i * PS, PS) == data[i * PS : (i + 1) * PS]


@pytest.mark.parametrize("offset", [0, NR // 4, NR // 2])
@pytest.mark.parametrize("before", [True, False], ids=["mremap-first", "migrate-first"])
def test_migrate_remap_fault(make_machine, offset, before):
    """#35 (thp): mremap(MREMAP_MAYMOVE|MREMAP_FIXED) to map + size + offset,
    before or after the migration: a lined-up move carries the device PMD
    whole (move_huge_pmd()), an offset one splits it first; the data reads
    back at the new address. (MREMAP_DONTUNMAP is not modelled.)"""
    m = machine(make_machine)
    p, vma, data = thp_buffer(m)
    target = vma.start + 4 * NR * PS + offset * PS
    if before:
        vma = p.mremap(vma.start, vma.end, target)
    assert m.device.migrate_to_device(p, vma.start, vma.end) == NR
    if not before:
        vma = p.mremap(vma.start, vma.end, target)
    assert p.translate(vma.start).kind == "device"
    # lined up: one PMD entry moves; mremap-first to an offset: no THP there
    assert p.translate(vma.start).huge == (offset == 0)
    assert p.read(vma.start, NR * PS) == data


# ------------------------------------------------------------------ cases 36-37
def test_migrate_anon_huge_err(make_machine):
    """#36: FAIL_ALLOC makes the device folio allocation fail; dmirror hands
    back 512 base device pages, so the core splits the source THP after unmap
    (migrate_vma_split_unmapped_folio()); ptr[2048] faults one page back. Then
    a THP migrated whole, and MIGRATE_TO_SYS with FAIL_ALLOC: the system THP
    allocation fails, 512 base pages come back, the device folio is split."""
    m = machine(make_machine)
    p, vma, data = thp_buffer(m)
    m.device.fail_alloc(1)
    assert m.device.migrate_to_device(p, vma.start, vma.end) == NR
    assert m.counters["thp_split_page"] == 1
    assert p.translate(vma.start).kind == "device" and not p.translate(vma.start).huge
    assert m.device.read(p, vma.start, NR * PS) == data
    i = 2048 * 4 // PS  # the page of the selftest's int ptr[2048]
    assert p.read(vma.start + i * PS, PS) == data[i * PS : (i + 1) * PS]
    p.munmap(vma.start, vma.end)
    p, vma, data = thp_buffer(m)
    assert m.device.migrate_to_device(p, vma.start, vma.end) == NR
    assert device_pmd(p, vma.start)
    m.device.fail_alloc(1)
    assert m.device.migrate_to_system(p, vma.start, vma.end) == NR
    assert p.translate(vma.start).kind == "present" and not p.translate(vma.start).huge
    assert m.counters["thp_split_page"] == 2
    assert p.read(vma.start, NR * PS) == data


def test_migrate_anon_huge_zero_err(make_machine):
    """#37: the huge zero page with FAIL_ALLOC: the COMPOUND hole is filled by
    512 base device pages (the huge zero PMD is split as each is inserted);
    zeros everywhere after."""
    m = machine(make_machine)
    p, vma, _ = thp_buffer(m, prot="r", fill=False)
    assert p.read(vma.start, PS) == bytes(PS)
    m.device.fail_alloc(1)
    assert m.device.migrate_to_device(p, vma.start, vma.end) == NR
    assert p.translate(vma.start).kind == "device" and not p.translate(vma.start).huge
    assert m.counters["thp_split_pmd"] == 1
    assert p.read(vma.start, NR * PS) == bytes(NR * PS)


# ------------------------------------------------------------------ case 6, thp half
@pytest.mark.parametrize("migrate", [False, True], ids=["no-migrate", "migrate"])
def test_anon_write_child_thp(make_machine, migrate):
    """#6 (use_thp): a THP (migrated as one device folio, or not) shared by
    fork; fork made both PMDs read-only (copy_huge_pmd(), a device-private PMD
    entry too); the child's read faults the shared folio back for both, its
    write copies it (do_huge_pmd_wp_page()); the parent keeps i."""
    m = machine(make_machine)
    p, vma, data = thp_buffer(m)
    if migrate:
        assert m.device.migrate_to_device(p, vma.start, vma.end) == NR
    child = p.fork()
    if migrate:
        assert device_pmd(p, vma.start, writable=False)
        assert device_pmd(child, vma.start, writable=False)
    assert child.read(vma.start, NR * PS) == data
    child.write(vma.start, pattern(NR, sign=-1))
    assert child.read(vma.start, NR * PS) == pattern(NR, sign=-1)
    assert p.read(vma.start, NR * PS) == data
    assert p.translate(vma.start).pfn != child.translate(vma.start).pfn


# ------------------------------------------------------------------ the device
def test_fault_back_without_a_free_system_thp_splits_the_device_folio(make_machine):
    """dmirror_devmem_fault_alloc_and_copy(): no system THP (FAIL_ALLOC here) ->
    512 base pages; the core splits the device folio, the fault page keeping
    its lock until the handler returns."""
    m = machine(make_machine)
    p, vma, data = thp_buffer(m)
    m.device.migrate_to_device(p, vma.start, vma.end)
    m.device.fail_alloc(1)
    assert p.read(vma.start, NR * PS) == data
    assert p.translate(vma.start).kind == "present" and not p.translate(vma.start).huge
    assert m.device.counters["faults"] == 1
    assert m.device.free_pages() == m.device.npages


def test_device_allocator_hands_out_aligned_chunks(make_machine):
    """dmirror's free_folios: a device folio is an aligned 512-frame run; with
    none left (small pages fragment every run) the device falls back to base
    pages."""
    m = machine(make_machine)
    p, vma, data = thp_buffer(m, 2 * NR)
    assert m.device.migrate_to_device(p, vma.start, vma.end) == 2 * NR
    heads = [p.translate(vma.start + k * NR * PS).pfn for k in range(2)]
    assert all(h % NR == 0 and h >= m.device.first_pfn for h in heads)
    assert m.device.counters["calloc"] == 2 * NR
    assert p.read(vma.start, 2 * NR * PS) == data
    assert m.device.counters["cfree"] == 2 * NR


def test_evict_moves_folios_whole(make_machine):
    """dmirror_device_evict_chunk(): migrate_device_range() collects a folio as
    one COMPOUND slot; a system THP takes it; the PMD maps it again."""
    m = machine(make_machine)
    p, vma, data = thp_buffer(m)
    m.device.migrate_to_device(p, vma.start, vma.end)
    assert m.device.evict() == NR
    pte = p.translate(vma.start)
    assert (pte.kind, pte.huge) == ("present", True)
    assert p.read(vma.start, NR * PS) == data


def test_mprotect_makes_the_device_pmd_read_only(make_machine):
    """change_non_present_huge_pmd(): a writable device-private PMD entry becomes
    readable; a write then faults the folio back and the VMA refuses it."""
    m = machine(make_machine)
    p, vma, data = thp_buffer(m)
    m.device.migrate_to_device(p, vma.start, vma.end)
    p.mprotect(vma.start, vma.end, "r")
    assert device_pmd(p, vma.start, writable=False)
    assert p.read(vma.start, NR * PS) == data
