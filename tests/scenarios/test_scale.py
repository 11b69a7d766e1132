"""A machine at a real memory size: 2**26 RAM frames (256 GiB simulated), metadata only.

The issue's 2**28-frame machine scaled down by four, in the same proportions:
a quarter as many device frames, a process that maps and populates half the
RAM, and all of device memory's worth of its pages migrated to the device and
back, one dmirror range call each way (the device takes the range a
``RANGE_WINDOW`` at a time, as dmirror takes 64 pages per migrate_vma()).
``bench/bench_scaling.py`` measures the same machine up to 2**28 frames.
"""

from __future__ import annotations

import os

import numpy as np

from migengine.kernels import _indices as I
from migengine.kernels.layout import HPAGE_PMD_NR
from tests.helpers import selftest_pattern

RAM, DEVICE = 1 << 26, 1 << 24
MIB = 1 << 20


def _resident() -> int:
    """This process's resident bytes (what the OS backs, not what numpy reserved)."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def test_a_2_26_frame_machine_costs_the_frames_it_uses(make_machine):
    """Untouched frames (kernels.page_alloc): building the machine writes no
    struct page but the zero page's, and m.check() reads only the frames
    handed out, so neither costs the 2.8 GiB that 36 bytes a frame would.
    A 2**20-page process then costs its own frames and page tables."""
    before = _resident()
    m = make_machine(RAM, DEVICE, store_data=False)
    m.check()
    assert _resident() - before < 64 * MIB
    p = m.new_process()
    vma = p.mmap(1 << 20)
    p.populate(vma.start, vma.end)
    assert m.device.migrate_to_device(p, vma.start, vma.start + (1 << 18) * m.page_size) == 1 << 18
    m.check()
    # struct pages, stack entries and page tables of 2**20 pages: about 60 MiB
    assert _resident() - before < 256 * MIB


def test_a_2_26_frame_machine_migrates_device_memory_s_worth_each_way_in_one_call(make_machine):
    m = make_machine(RAM, DEVICE, store_data=False)
    p = m.new_process()
    vma = p.mmap(RAM // 2)
    p.populate(vma.start, vma.end)
    st = m.state
    # int32 indices, the range and copy scratch one window wide, two mark bits a
    # frame: at most 48 bytes of state per frame, page tables included
    assert sum(a.nbytes for a in st) / (RAM + DEVICE) <= 48
    assert st.range_src.shape[0] == I.RANGE_WINDOW == st.copy_scratch.shape[1]
    end = vma.start + DEVICE * m.page_size
    assert m.device.migrate_to_device(p, vma.start, end) == DEVICE
    assert m.device.free_pages() == 0
    ps = m.page_size
    probes = np.array([0, 1, I.RANGE_WINDOW - 1, I.RANGE_WINDOW, DEVICE // 2, DEVICE - 1])
    assert [p.translate(vma.start + int(k) * ps).kind for k in probes] == ["device"] * 6
    assert p.translate(end).kind == "present"  # the first page past the range stayed
    assert m.device.mirrored(p, vma.start) == m.device.first_pfn  # lowest free frame first
    m.check()
    assert m.device.migrate_to_system(p, vma.start, end) == DEVICE
    assert m.device.free_pages() == DEVICE
    assert [p.translate(vma.start + int(k) * ps).kind for k in probes] == ["present"] * 6
    assert m.device.counters["faults"] == 0


def test_a_range_wider_than_a_window_keeps_every_folio_whole(make_machine):
    """Modern device THPs (SELECT_COMPOUND) over a range one window and a half wide
    that starts half a folio into a THP buffer: every window ends on a 2 MiB
    boundary, so each folio the range covers whole goes as one device folio and
    comes back byte for byte; only the half folio at the start is split, as the
    kernel splits a THP the range covers in part."""
    ps, nr = 64, HPAGE_PMD_NR
    npages = I.RANGE_WINDOW + I.RANGE_WINDOW // 2
    m = make_machine(npages + 4 * nr, npages + 4 * nr, page_size=ps, profile="modern")
    p = m.new_process()
    vma = p.mmap(npages, thp=True)
    data = selftest_pattern(npages, ps=ps)
    p.write(vma.start, data)
    start = vma.start + nr // 2 * ps
    moved = m.device.migrate_to_device(p, start, vma.end)
    assert moved == npages - nr // 2
    heads = range(nr, npages, nr)  # the folios the range covers whole
    assert all(p.translate(vma.start + k * ps).huge for k in heads)
    assert not p.translate(start).huge and p.translate(start).kind == "device"
    m.check()
    assert m.device.migrate_to_system(p, start, vma.end) == npages - nr // 2
    assert p.read(vma.start, npages * ps) == data
