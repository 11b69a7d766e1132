"""Frames never handed out stay unwritten (kernels.page_alloc, "Untouched frames").

A machine is built with only the zero page's struct page written; a pool's
struct pages and free-stack entries are written in 2 MiB steps as its stack's
top reaches them, as the kernel's CONFIG_DEFERRED_STRUCT_PAGE_INIT defers them:
nothing anyone reads may tell the two apart, which the eager-build comparison
below holds the engine to, scenario by scenario and profile by profile.
"""

from __future__ import annotations

import numpy as np
import pytest

import migengine as me
from migengine.kernels import driver as kdriver
from migengine.kernels import layout as L
from migengine.kernels.state import write_untouched
from tests.helpers import assert_same_state, comparable_state, copy_state, snapshot

RAM, DEVICE = 4096, 2048
PROFILES = ("seed", "hmm-v25", "modern")


def _marks(m: me.Machine) -> tuple[int, int]:
    return int(m.state.sys[L.SYS_RAM_FRESH]), int(m.state.dev[0, L.DEV_FRESH])


@pytest.mark.parametrize("profile", PROFILES)
def test_a_new_machine_writes_the_zero_page_only(make_machine, profile):
    m = make_machine(RAM, DEVICE, profile=profile)
    assert _marks(m) == (1, RAM)
    assert not m.state.page[1:].view(np.uint8).any()  # no frame but the zero page written
    assert not m.state.free_stack.any()
    # and yet every frame is free, as the machine's readers see it
    assert m.free_pages() == RAM - 1 and m.free_pages(device=True) == DEVICE
    assert m.page(RAM - 1).free and m.page(RAM + DEVICE - 1).free
    device_ref = 1 if profile == "hmm-v25" else 0  # 4.14: the device holds one
    assert m.page(RAM + DEVICE - 1).refcount == device_ref
    assert m.page(RAM + DEVICE - 1).device
    m.check()


def test_the_marks_advance_in_2_mib_steps_as_the_stacks_reach_them(make_machine):
    """A pop reads the stack's top; the untouched frames fill its bottom
    positions, so a pool is written up to the 512-frame boundary past the
    frames handed out, no further (serial and parallel pops alike)."""
    m = make_machine(RAM, DEVICE)
    p = m.new_process()
    vma = p.mmap(600)
    p.populate(vma.start, vma.end)  # 600 RAM frames, from frame 1 up
    assert _marks(m) == (1024, RAM)
    assert m.device.migrate_to_device(p, vma.start, vma.end) == 600
    assert _marks(m) == (1024, RAM + 1024)
    assert not m.state.page[RAM + 1024 :].view(np.uint8).any()
    m.check()


def _scenario(m: me.Machine, profile: str) -> None:
    """Frames handed out, freed, and handed out again, from both pools, by every
    allocator path: faults, a THP (modern: a device folio too), the device's
    range migrations (serial and parallel pops), CPU faults back, munmap."""
    ps = m.page_size
    p = m.new_process()
    a = p.mmap(1500)
    p.write(a.start, bytes(range(256)) * (1500 * ps // 256))
    thp = p.mmap(2 * L.HPAGE_PMD_NR, thp=True)
    p.populate(thp.start, thp.end)
    m.device.migrate_to_device(p, a.start, a.end)
    m.device.migrate_to_device(p, thp.start, thp.end)
    assert p.read(a.start + 7 * ps, 3) == bytes(range(3))  # a CPU fault brings one back
    m.device.migrate_to_system(p, a.start, a.start + 900 * ps)
    p.munmap(a.start + 100 * ps, a.start + 1200 * ps)
    b = p.mmap(1700)
    p.populate(b.start, b.end)
    m.device.migrate_to_device(p, b.start, b.end)
    m.check()


@pytest.mark.parametrize("profile", PROFILES)
def test_lazy_and_eagerly_written_machines_end_alike(make_machine, profile):
    lazy = make_machine(RAM, DEVICE, profile=profile)
    eager = make_machine(RAM, DEVICE, profile=profile)
    write_untouched(eager.state)
    assert _marks(eager) == (RAM, RAM + DEVICE)
    _scenario(lazy, profile)
    _scenario(eager, profile)
    assert _marks(lazy) < (RAM, RAM + DEVICE)  # some frames never handed out
    st = copy_state(lazy.state)
    write_untouched(st)
    drop = ("dst_mark",)
    assert_same_state(comparable_state(st, drop=drop), comparable_state(eager.state, drop=drop))


def test_callers_naming_an_untouched_frame_get_einval_and_nothing_changes(make_machine):
    """put_page(), unlock_page() and copy_page() refuse a free frame (-EINVAL):
    an untouched one is free, though its flags word is still zero."""
    m = make_machine(RAM, DEVICE)
    p = m.new_process()
    vma = p.mmap(4)
    p.populate(vma.start, vma.end)
    used = p.translate(vma.start).pfn
    before = snapshot(m)
    for pfn in (RAM - 1, RAM + DEVICE - 1):
        assert kdriver.put_page(m.state, pfn) == -L.EINVAL
        assert kdriver.unlock_page(m.state, pfn) == -L.EINVAL
        assert kdriver.copy_page(m.state, pfn, used) == -L.EINVAL
        with pytest.raises(ValueError, match="free"):
            m.lock_page(pfn)
    assert snapshot(m) == before
    m.check()


def test_check_finds_an_entry_naming_an_untouched_frame_or_swap_slot(make_machine):
    m = make_machine(RAM, DEVICE)
    p = m.new_process()
    vma = p.mmap(2)
    p.populate(vma.start, vma.end)
    slot = int(m.state.vma["pte_base"][vma.index])
    saved = m.state.pte[slot]
    low = np.uint64((1 << int(L.PTE_PFN_SHIFT)) - 1)  # kind, write, dirty
    m.state.pte[slot] = (saved & low) | (np.uint64(RAM - 1) << L.PTE_PFN_SHIFT)
    with pytest.raises(me.InvariantError, match="maps a free frame"):
        m.check()
    m.state.pte[slot] = np.uint64(L.PTE_SWAP) | (np.uint64(5) << L.PTE_PFN_SHIFT)
    with pytest.raises(me.InvariantError, match="swap map"):
        m.check()
    m.state.pte[slot] = saved
