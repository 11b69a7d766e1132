"""The state's one field list (STATE_SPEC) and the handle built from it.

kernels.handle.make_handle writes each array's address and shape into a table;
compiled code rebuilds the same State from it (state_at). Both follow
STATE_SPEC, so a field added, moved or retyped there changes all three at once;
these tests catch a table that no longer matches the arrays it names.
"""

from __future__ import annotations

import numpy as np
import pytest
from numba import literal_unroll, njit

from migengine.kernels import handle as khandle
from migengine.kernels.parallel.schedule import with_counters
from migengine.kernels.state import STATE_SPEC, State


@njit
def _views(h):
    """(address, length, size, itemsize) of every array of the State behind ``h``."""
    s = khandle.state_at(h)
    out = np.empty((len(s), 4), np.int64)
    k = 0
    for arr in literal_unroll(s):
        out[k, 0] = arr.ctypes.data
        out[k, 1] = arr.shape[0]
        out[k, 2] = arr.size
        out[k, 3] = arr.itemsize
        k += 1
    return out


def _expected(state: State) -> np.ndarray:
    return np.array([[a.ctypes.data, a.shape[0], a.size, a.itemsize] for a in state], np.int64)


def test_state_fields_follow_the_spec(make_machine):
    m = make_machine(64, 16)
    assert State._fields == tuple(name for name, _, _ in STATE_SPEC)
    for (name, dtype, ndim), arr in zip(STATE_SPEC, m.state, strict=True):
        assert arr.dtype == np.dtype(dtype) and arr.ndim == ndim, name


def test_handle_round_trips_every_array(make_machine):
    """make_handle -> state_at gives views of exactly the machine's arrays."""
    m = make_machine(64, 16)
    p = m.new_process()
    p.mmap(8)  # grows the page tables: a new state, a new table
    table = khandle.make_handle(m.state)
    got = _views(table.ctypes.data)
    np.testing.assert_array_equal(got, _expected(m.state))


def test_a_view_from_the_handle_writes_the_machine(make_machine):
    m = make_machine(64, 16)
    table = khandle.make_handle(m.state)

    @njit
    def bump(h):
        khandle.state_at(h).counters[0] += 7

    before = int(m.state.counters[0])
    bump(table.ctypes.data)
    assert int(m.state.counters[0]) == before + 7


def test_make_handle_refuses_an_array_that_does_not_match_the_spec(make_machine):
    m = make_machine(64, 16)
    bad = m.state._replace(counters=m.state.counters.astype(np.int32))
    with pytest.raises(ValueError, match="state.counters"):
        khandle.make_handle(bad)
    strided = m.state._replace(pte=m.state.pte[::2])
    with pytest.raises(ValueError, match="state.pte"):
        khandle.make_handle(strided)


def test_with_counters_replaces_one_field_only(make_machine):
    m = make_machine(64, 16)
    mine = np.zeros_like(m.state.counters)

    @njit
    def swap(st, c):
        t = with_counters(st, c)
        t.counters[1] = 5
        return t.sys[0] == st.sys[0], t.page.shape[0] == st.page.shape[0]

    before = int(m.state.counters[1])
    assert swap(m.state, mine) == (True, True)
    assert mine[1] == 5 and int(m.state.counters[1]) == before


def test_state_size_limits_and_scratch_widths() -> None:
    """Frame numbers are int32: past 2**31 - 1 frames new_state refuses before allocating
    anything. The copy scratch is as wide as device memory (every batch pair has a device
    frame), with a floor for the dst check's records and a ceiling of one range window,
    and the dst marks (two bits a frame) cover every frame."""
    from migengine.kernels import _indices as I
    from migengine.kernels import layout as L
    from migengine.kernels import state as kstate

    engine = np.zeros(16)
    with pytest.raises(ValueError, match="int32 frame numbers"):
        kstate.new_state(2**31, 0, 4096, False, L.PROFILE_HMM_V25, engine, 0)
    st = kstate.new_state(1000, 300, 4096, False, L.PROFILE_HMM_V25, engine, 10)
    assert st.copy_scratch.shape[1] == 300 and st.dst_mark.shape == ((1300 + 31) // 32,)
    assert st.free_stack.dtype == st.pte_next.dtype == st.swap_map.dtype == np.int32
    small = kstate.new_state(100, 8, 4096, False, L.PROFILE_SEED, engine, 10)
    assert small.copy_scratch.shape[1] == kstate.MIN_COPY_SCRATCH
    assert kstate.copy_scratch_width(2**26) == I.RANGE_WINDOW
