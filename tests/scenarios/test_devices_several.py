"""Several devices on one machine (``Machine(devices=[DeviceSpec(...), ...])``).

Frames are numbered RAM first, then each device's in turn; each device has its
own free list, mirror, counters, fault handler and injected failures. Both
profiles are 4.14, which had no owner filter: a migration collects every
device's pages. The hmm2 (two-device) parts of hmm-tests.c cases are here,
each named after its case, asserting 4.14's outcome where the modern selftest
expects the owner filter's.
"""

from __future__ import annotations

from functools import partial

import pytest

import migengine as me
from tests import helpers

PS = 256
BOTH = pytest.mark.parametrize("profile", ["hmm-v25", "seed"])
V25 = pytest.mark.parametrize("profile", ["hmm-v25"])
pattern = partial(helpers.selftest_pattern, ps=PS)
LOCAL, REMOTE = me.HMM_DMIRROR_PROT_DEV_PRIVATE_LOCAL, me.HMM_DMIRROR_PROT_DEV_PRIVATE_REMOTE
W, R = me.HMM_DMIRROR_PROT_WRITE, me.HMM_DMIRROR_PROT_READ


def two(make_machine, profile: str, ram: int = 512) -> me.Machine:
    specs = [me.DeviceSpec(64), me.DeviceSpec(32, owner="gpu1")]
    return make_machine(ram, devices=specs, page_size=PS, profile=profile)


def at(base: int, i: int) -> int:
    return base + i * PS


@BOTH
def test_frames_are_ram_then_each_device(make_machine, profile):
    m = two(make_machine, profile)
    d0, d1 = m.devices
    assert m.device is d0 and (d0.index, d1.index) == (0, 1)
    assert (d0.first_pfn, d0.npages, d1.first_pfn, d1.npages) == (512, 64, 576, 32)
    assert (d0.free_pages(), d1.free_pages(), m.free_pages(device=True)) == (64, 32, 96)
    assert m.page(575).device and m.page(576).device and not m.page(511).device
    assert (d0.kind, d1.kind, d1.owner) == ("private", "private", "gpu1")
    assert d0.owner != d1.owner and d0.owner is not None
    m.check()


def test_shared_owner(make_machine):
    """Two devices given one owner cookie share its id (pgmap->owner)."""
    specs = [me.DeviceSpec(8, owner=("gpu", 0)), me.DeviceSpec(8, owner=("gpu", 0))]
    m = make_machine(64, devices=specs, page_size=PS)
    assert m.devices[0].owner == m.devices[1].owner
    assert m.state.dev[0, 4] == m.state.dev[1, 4]  # layout.DEV_OWNER
    other = make_machine(64, devices=[me.DeviceSpec(8), me.DeviceSpec(8)], page_size=PS)
    assert other.state.dev[0, 4] != other.state.dev[1, 4]


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"device_pages": 8, "devices": [me.DeviceSpec(8)]}, ValueError),
        ({"devices": [me.DeviceSpec(8, kind="coherent")]}, ValueError),
        ({"devices": [me.DeviceSpec(8, kind="fast")]}, ValueError),
        ({"devices": [me.DeviceSpec(8, owner=[1])]}, TypeError),
        ({"devices": []}, ValueError),
        ({"devices": [8]}, TypeError),
        ({"devices": "gpu"}, TypeError),
        ({"devices": [me.DeviceSpec(-1)]}, ValueError),
    ],
)
def test_device_spec_bad_input(kwargs, error):
    with pytest.raises(error):
        me.Machine(64, page_size=PS, **kwargs)


@V25
def test_each_device_has_its_own_lists_and_handler(make_machine, profile):
    """Each device allocates from its own frames, counts its own pages, serves
    the CPU faults on its own pages, and fails its own injected allocations."""
    m = two(make_machine, profile)
    d0, d1 = m.devices
    p = m.new_process()
    vma = p.mmap(8)
    p.write(vma.start, pattern(8))
    d1.fail_alloc(1)
    assert d1.migrate_to_device(p, vma.start, at(vma.start, 4)) == 3  # one failed
    assert d0.migrate_to_device(p, at(vma.start, 4), vma.end) == 4
    pfns = [p.translate(at(vma.start, i)).pfn for i in range(8)]
    assert all(d1.first_pfn <= f < d1.first_pfn + 32 for f in pfns[1:4])
    assert all(d0.first_pfn <= f < d0.first_pfn + 64 for f in pfns[4:])
    assert (d0.free_pages(), d1.free_pages()) == (60, 29)
    assert p.read(at(vma.start, 2), PS) == pattern(8)[2 * PS : 3 * PS]
    assert (d0.counters["faults"], d1.counters["faults"]) == (0, 1)
    p.munmap(at(vma.start, 3), vma.end)  # each page goes back to its own device
    assert (d0.free_pages(), d1.free_pages()) == (64, 31)
    m.check()


@V25
def test_ops_of_each_device(make_machine, profile):
    """``me.migrate_vma(dev.ops, ...)`` runs that device's pipeline."""
    import numpy as np

    m = two(make_machine, profile)
    p = m.new_process()
    vma = p.mmap(4)
    p.write(vma.start, pattern(4))
    src, dst = np.zeros(4, np.uint64), np.zeros(4, np.uint64)
    me.migrate_vma(m.devices[1].ops, vma, vma.start, vma.end, src, dst)
    assert m.devices[1].free_pages() == 28 and m.devices[0].free_pages() == 64
    assert p.read(vma.start, 4 * PS) == pattern(4)
    m.check()


@V25
def test_snapshot(make_machine, profile):
    """hmm-tests.c: snapshot (hmm2) - seven pages: [0] PROT_NONE, [1] unmapped,
    [2] the zero page read-only, [3] read-only data, [4] read-write data, [5]
    on device 0, [6] on device 1; device 0's snapshot. 4.14 had no owner: its
    walk reports device 1's page as a device page (DEV_PRIVATE_REMOTE | WRITE)
    where the modern selftest expects NONE, and the PROT_NONE page as NONE
    where it expects ERROR (docs/fidelity.md, "The device")."""
    m = two(make_machine, profile)
    d0, d1 = m.devices
    p = m.new_process()
    vma = p.mmap(7)
    base = vma.start
    p.write(at(base, 3), pattern(1))
    p.write(at(base, 4), pattern(3)[PS:])
    assert p.read(at(base, 2), 1) == b"\0"
    assert d0.migrate_to_device(p, at(base, 5), at(base, 6)) == 1
    assert d1.migrate_to_device(p, at(base, 6), at(base, 7)) == 1
    p.mprotect(at(base, 2), at(base, 4), "r")
    p.mprotect(base, at(base, 1), "none")
    p.munmap(at(base, 1), at(base, 2))
    got = [int(c) for c in d0.snapshot(p, base, at(base, 7))]
    zero = me.HMM_DMIRROR_PROT_ZERO | R
    assert got[:6] == [me.HMM_DMIRROR_PROT_NONE, me.HMM_DMIRROR_PROT_ERROR, zero, R, W, LOCAL | W]
    assert got[6:] == [REMOTE | W]
    m.check()


@V25
def test_double_map(make_machine, profile):
    """hmm-tests.c: double_map (hmm2) - six read-only pages read by both
    devices (faults 1 each, data ``i``), then migrated to device 1; device 0
    reads them again. The modern selftest expects that read to force device
    1's pages back to RAM (another owner's page faults back). 4.14's walk
    reports them in place, so they stay on device 1, and the data is right."""
    m = two(make_machine, profile)
    d0, d1 = m.devices
    p = m.new_process()
    vma = p.mmap(6)
    p.write(vma.start, pattern(6))
    p.mprotect(vma.start, vma.end, "r")
    for dev in (d0, d1):
        assert dev.read(p, vma.start, 6 * PS) == pattern(6)
        assert dev.last_faults == 1
    assert d1.migrate_to_device(p, vma.start, vma.end) == 6
    assert d0.read(p, vma.start, 6 * PS) == pattern(6)
    assert [p.translate(at(vma.start, i)).kind for i in range(6)] == ["device"] * 6
    assert d1.free_pages() == 26
    m.check()


@V25
def test_migrate_mixed_second_device(make_machine, profile):
    """hmm-tests.c: migrate_mixed (hmm2), last step - a page migrated to device
    1, then device 0 migrates it. The modern selftest expects -ENOENT (device
    0's SYSTEM-only selection does not collect device 1's page). 4.14 collects
    it (no owner filter), but the driver gives a device page no destination:
    the page stays on device 1, device 0 maps nothing, no error; the collected
    and restored entry comes back read-only (4.14's migration entry for a
    device-private page is)."""
    m = two(make_machine, profile)
    d0, d1 = m.devices
    p = m.new_process()
    vma = p.mmap(1)
    p.write(vma.start, pattern(1))
    assert d1.migrate_to_device(p, vma.start, vma.end) == 1
    pfn = p.translate(vma.start).pfn
    assert d0.migrate_to_device(p, vma.start, vma.end) == 0
    assert p.translate(vma.start) == ("device", pfn, False, False)
    assert p.read(vma.start, PS) == pattern(1)
    m.check()
