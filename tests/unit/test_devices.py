"""Device state is held per device (state.dev, the mirror's rows, the pools).

The public API builds one device today; the compiled level already keeps each
device's frames, free stack, injected failures, counters and mirror in its own
row. Here a state with two devices is built directly and driven from compiled
code (the internal primitives have no Python entry).
"""

from __future__ import annotations

import numpy as np
import pytest
from numba import njit

import migengine as me
from migengine.kernels import layout as L
from migengine.kernels import mm
from migengine.kernels import state as kstate
from migengine.kernels.check import CHECK_MESSAGES, check_state
from migengine.kernels.device.common import allocation_fails, dev_private

NR_RAM = 16


def _two_devices(sizes=(8, 4)) -> kstate.State:
    engine = me.CopyEngine().to_array()
    return kstate.new_state(
        NR_RAM, sum(sizes), 4096, False, L.PROFILE_HMM_V25, engine, 4, device_sizes=sizes
    )


def _ok(st: kstate.State) -> None:
    code, idx = check_state(st)
    assert code == 0, (CHECK_MESSAGES[code], idx)


@njit
def _alloc_free_cycle(st, pool):
    pfn = mm.alloc_locked_page(st, pool)
    owner = mm.device_of(st, pfn)
    mm.unlock_page(st, pfn)
    mm.put_page(st, pfn)  # the driver's reference: back to the free value, freed
    return pfn, owner


@njit
def _owners(st, pfns):
    out = np.empty(pfns.shape[0], np.int64)
    for k in range(pfns.shape[0]):
        out[k] = mm.device_of(st, pfns[k])
    return out


def test_each_device_has_its_own_row_and_stack():
    st = _two_devices()
    np.testing.assert_array_equal(st.dev[:, L.DEV_FIRST_PFN], [NR_RAM, NR_RAM + 8])
    np.testing.assert_array_equal(st.dev[:, L.DEV_NPAGES], [8, 4])
    np.testing.assert_array_equal(st.dev[:, L.DEV_FREE], [8, 4])
    assert st.mirror.shape[0] == 2
    pfns = np.array([0, NR_RAM - 1, NR_RAM, NR_RAM + 7, NR_RAM + 8, NR_RAM + 11])
    np.testing.assert_array_equal(_owners(st, pfns), [-1, -1, 0, 0, 1, 1])
    _ok(st)


def test_allocation_and_free_stay_in_the_device_pool():
    st = _two_devices()
    pfn, owner = _alloc_free_cycle(st, 1)
    assert owner == 1 and NR_RAM + 8 <= pfn < NR_RAM + 12
    assert st.dev[1, L.DEV_CALLOC] == 1 and st.dev[1, L.DEV_CFREE] == 1
    assert st.dev[0, L.DEV_CALLOC] == 0 and st.dev[0, L.DEV_CFREE] == 0
    np.testing.assert_array_equal(st.dev[:, L.DEV_FREE], [8, 4])
    assert st.counters[L.C_DEVICE_CALLOC] == 1  # the machine-wide vmstat counts both
    pfn, owner = _alloc_free_cycle(st, 0)
    assert owner == 0 and NR_RAM <= pfn < NR_RAM + 8
    _ok(st)


def test_injected_failures_are_per_device():
    st = _two_devices()
    st.dev[1, L.DEV_FAIL_ALLOC] = 1

    @njit
    def fails(st, d):
        return allocation_fails(st, dev_private(d, 0))

    assert not fails(st, 0)
    assert fails(st, 1) and not fails(st, 1)  # one-shot
    _ok(st)


def test_a_frame_on_another_device_s_stack_is_an_invariant_break():
    st = _two_devices()
    kstate.write_untouched(st)  # the stacks' entries, written as the allocator would
    st.free_stack[NR_RAM], st.free_stack[NR_RAM + 8] = (
        st.free_stack[NR_RAM + 8],
        st.free_stack[NR_RAM],
    )
    st.page["index"][st.free_stack[NR_RAM]] = NR_RAM  # a free frame's stack position
    st.page["index"][st.free_stack[NR_RAM + 8]] = NR_RAM + 8
    code, _ = check_state(st)
    assert CHECK_MESSAGES[code] != "ok"


def test_device_sizes_must_add_up():
    with pytest.raises(ValueError, match="add up"):
        kstate.new_state(
            NR_RAM,
            12,
            4096,
            False,
            L.PROFILE_HMM_V25,
            me.CopyEngine().to_array(),
            4,
            device_sizes=(8, 8),
        )


def test_the_machine_s_device_reads_its_own_row(make_machine):
    m = make_machine(64, 16)
    p = m.new_process()
    vma = p.mmap(4)
    p.populate(vma.start, vma.end)
    m.lru_add_drain_all()
    assert m.device.index == 0 and m.device.first_pfn == 64 and m.device.npages == 16
    assert m.device.migrate_to_device(p, vma.start, vma.end) == 4
    assert m.device.counters["calloc"] == int(m.state.dev[0, L.DEV_CALLOC]) == 4
    assert m.free_pages(device=True) == 12 == int(m.state.dev[0, L.DEV_FREE])
    m.device.fail_alloc(2)
    assert int(m.state.dev[0, L.DEV_FAIL_ALLOC]) == 2
    assert m.device.mirrored(p, vma.start) == p.translate(vma.start).pfn
