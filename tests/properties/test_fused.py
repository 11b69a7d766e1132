"""The fused sweeps against the passes they fuse, on identical copies of a state.

migrate_vma_setup() runs collect, prepare and unmap as one sweep (each page goes
through all three as soon as it is collected), and the device's own driver runs
pages, finalize_and_map and finalize as one sweep. That is only allowed because
each slot's steps touch that slot's pages and mappings alone, so the order
across slots does not matter. These tests hold the fused code to it: on random
machines built through the public API (forks, pins, foreign locks and
isolations, swap, THP, file pages, pages already on the device), the fused run
and the pass-by-pass run must leave every array of the state identical.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from migengine import kernels
from migengine.kernels import device, finalize, pages
from migengine.kernels import layout as L
from migengine.kernels.state import State
from tests.helpers import assert_same_state, comparable_state, copy_state
from tests.properties.test_reference_model import PROFILES, SETTINGS, build_world, draw_call


def _setup_by_passes(s: State, v: int, start: int, end: int, src, dst) -> int:
    """migrate_vma()'s setup half as 14/19 writes it: three loops, early returns
    (kernels.migrate.setup_by_passes, the oracle the fused sweep is held to)."""
    return int(kernels.migrate.setup_by_passes(s, v, start, end, src, dst))


def _scratch_free(s: State) -> dict[str, np.ndarray]:
    """The state without what may differ: scratch (rewritten before every use, or, for
    the dst check's marks, valid only where the slot they name still names the frame;
    compared as empty slices) and the copy's measured wall time."""
    return comparable_state(
        s._replace(
            mig=s.mig[:0],
            copy_scratch=s.copy_scratch[:, :0],
            dst_mark=s.dst_mark[:0],
            # the plain sweeps' schedule and per-thread counts, which the passes never use
            sweep_info=s.sweep_info[:0],
            sweep_mig=s.sweep_mig[:0],
            sweep_counters=s.sweep_counters[:0],
        )
    )


@pytest.mark.parametrize("hostile", [False, True], ids=["plain", "hostile"])
@pytest.mark.parametrize("profile", PROFILES)
@SETTINGS
@given(data=st.data())
def test_fused_setup_equals_collect_prepare_unmap(make_machine, profile, hostile, data):
    """migrate_vma_setup() (one sweep) == collect; prepare; unmap (14/19's
    migrate_vma() body up to the first callback), including the early returns
    and lru_add_drain()/lru_add_drain_all() calls."""
    w = build_world(data, make_machine, profile, hostile=hostile)
    call = draw_call(data, w)
    fused, passes = copy_state(w.m.state), copy_state(w.m.state)
    src_f, dst_f = call.src.copy(), call.dst.copy()
    src_p, dst_p = call.src.copy(), call.dst.copy()
    v = call.vma.index
    got = kernels.migrate_vma_setup(fused, v, call.start, call.end, src_f, dst_f)
    want = _setup_by_passes(passes, v, call.start, call.end, src_p, dst_p)
    assert got == want
    np.testing.assert_array_equal(src_f, src_p)
    np.testing.assert_array_equal(dst_f, dst_p)
    assert_same_state(_scratch_free(fused), _scratch_free(passes))


def _driver_by_passes(s: State, to_device: bool, v: int, start: int, end: int, src, dst) -> int:
    """The device driver as separate passes: setup, alloc_and_copy, pages,
    finalize_and_map, finalize; returns dmirror's moved count. Setup takes what
    dmirror asks for in modern (ignored by the 4.14 profiles): SELECT_SYSTEM to
    the device, its own memory back, both with SELECT_COMPOUND (whole folios),
    and the device's owner."""
    flags = L.MIGRATE_VMA_SELECT_SYSTEM if to_device else L.MIGRATE_VMA_SELECT_DEVICE_PRIVATE
    flags |= L.MIGRATE_VMA_SELECT_COMPOUND
    owner = int(s.dev[0, L.DEV_OWNER])
    cpages = int(
        kernels.migrate.setup_by_passes_flags(s, v, start, end, src, dst, flags, owner, -1)
    )
    if cpages <= 0:
        return min(cpages, 0)
    ps = int(s.sys[L.SYS_PAGE_SIZE])
    start, end = start - start % ps, end - end % ps
    n = (end - start) // ps
    if to_device:
        device.device_alloc_and_copy(s, v, src, dst, start, end, 0)
    else:
        device.system_alloc_and_copy(s, v, src, dst, start, end, 1)
    pages.migrate_vma_pages(s, v, start, n, src, dst)
    lay = s.layout
    moved = 0
    for i in range(n):
        valid = int(src[i]) & int(lay[L.L_VALID]) and int(src[i]) & int(lay[L.L_MIGRATE])
        pages_of_slot = L.HPAGE_PMD_NR if int(src[i]) & int(lay[L.L_COMPOUND]) else 1
        moved += pages_of_slot * bool(valid and int(dst[i]) & int(lay[L.L_VALID]))
    if to_device:
        device.device_finalize_and_map(s, v, src, dst, start, end, 0)
    else:
        device.system_finalize_and_map(s, v, src, dst, start, end, 1)
    finalize.migrate_vma_finalize(s, n, src, dst)
    return moved


@pytest.mark.parametrize("to_device", [True, False], ids=["to-device", "to-system"])
@pytest.mark.parametrize("profile", PROFILES)
@SETTINGS
@given(data=st.data())
def test_fused_driver_equals_the_passes(make_machine, profile, to_device, data):
    """The device's migrate_vma (fused setup, alloc_and_copy, fused pages +
    finalize_and_map + finalize) == the same driver run pass by pass, in both
    directions (dmirror MIGRATE_TO_DEV and MIGRATE_TO_SYS), data bytes included."""
    w = build_world(data, make_machine, profile, hostile=data.draw(st.booleans()))
    if data.draw(st.booleans(), label="some pages on the device first"):
        for vma in w.vmas:
            w.m.device.migrate_to_device(vma.process, vma.start, vma.end)
    call = draw_call(data, w)
    fused, passes = copy_state(w.m.state), copy_state(w.m.state)
    src_f, dst_f = call.src.copy(), call.dst.copy()
    src_p, dst_p = call.src.copy(), call.dst.copy()
    v, s, e = call.vma.index, call.start, call.end
    if to_device:
        got = kernels.migrate_vma_to_device(fused, v, s, e, src_f, dst_f, 0)
    else:
        got = kernels.migrate_vma_to_system(fused, v, s, e, src_f, dst_f, 1)
    want = _driver_by_passes(passes, to_device, v, s, e, src_p, dst_p)
    assert got == (min(want, 0) if to_device else want)
    np.testing.assert_array_equal(src_f, src_p)
    np.testing.assert_array_equal(dst_f, dst_p)
    assert_same_state(_scratch_free(fused), _scratch_free(passes))
