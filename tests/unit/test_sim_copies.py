"""kernels.sim.copies: when a fault batch's bytes may wait for one engine copy.

The rules mirror a driver that pushes a VA block's copies to its DMA engine and
waits once: bytes wait only while no frame they read or write can be reused or
read. Each case calls the compiled rules on a real machine and checks the frames
byte for byte.
"""

from __future__ import annotations

import numpy as np
from numba import njit

import migengine as me
from migengine import sim as msim
from migengine.kernels import _indices as I
from migengine.kernels.copy import STAT_DESCRIPTORS
from migengine.kernels.sim import layout as S
from migengine.kernels.sim.copies import defers_bytes, flush_copies, gather_copies


@njit
def _defers(sim, state, n, to_device):
    return defers_bytes(sim, state, n, to_device)


@njit
def _gather(sim, state, freed_dst):
    gather_copies(sim, state, freed_dst)


@njit
def _flush(sim, state):
    flush_copies(sim, state)


def _world(store_data: bool = True):
    m = me.Machine(64, 32, store_data=store_data)
    sim = msim._new_sim(me.SimConfig(device_pages=32), m, 0, 0, np.zeros(1, np.uint64))
    ps = m.page_size
    if store_data:
        for pfn in range(m.ram_pages):
            m.state.data[pfn * ps : (pfn + 1) * ps] = pfn + 1
    return m, sim


def _call_left(m, *descs) -> None:
    """What a migrate_vma() call with DEV_DEFER_BYTES leaves: its descriptors in
    the copy scratch, counted in the copy stats."""
    scratch = m.state.copy_scratch
    for k, (src, dst, n) in enumerate(descs):
        scratch[I.COPY_DESC_SRC, k] = src
        scratch[I.COPY_DESC_DST, k] = dst
        scratch[I.COPY_DESC_LEN, k] = n
    m.state.copy_stats[STAT_DESCRIPTORS] = len(descs)


def _frame(m, pfn) -> np.ndarray:
    ps = m.page_size
    return m.state.data[pfn * ps : (pfn + 1) * ps]


def test_bytes_wait_until_the_direction_changes() -> None:
    m, sim = _world()
    dev = m.ram_pages
    assert _defers(sim, m.state, 16, True)
    _call_left(m, (5, dev + 2, 2), (9, dev + 7, 1))
    _gather(sim, m.state, False)
    assert sim.ctr[S.S_QN] == 2 and sim.ctr[S.S_QPAGES] == 3
    assert not _frame(m, dev + 2).any() and not _frame(m, dev + 7).any()  # not moved yet
    assert _defers(sim, m.state, 16, True)  # same way: still waiting
    assert sim.ctr[S.S_QN] == 2
    assert _defers(sim, m.state, 4, False)  # the way back frees and allocates: flush first
    assert sim.ctr[S.S_QN] == 0 and sim.ctr[S.S_QPAGES] == 0
    for src, dst in ((5, dev + 2), (6, dev + 3), (9, dev + 7)):
        assert (_frame(m, dst) == src + 1).all()
    m.check()


def test_a_call_that_freed_a_destination_flushes_at_once() -> None:
    """A slot that failed after its destination was allocated: finalize freed it,
    and the next call may take it again, so its bytes cannot wait."""
    m, sim = _world()
    dev = m.ram_pages
    assert _defers(sim, m.state, 1, True)
    _call_left(m, (3, dev, 1))
    _gather(sim, m.state, True)
    assert sim.ctr[S.S_QN] == 0 and (_frame(m, dev) == 4).all()


def test_a_call_too_large_for_one_engine_batch_copies_its_own_bytes() -> None:
    m, sim = _world()
    dev = m.ram_pages
    assert _defers(sim, m.state, 1, True)
    _call_left(m, (3, dev, 1))
    _gather(sim, m.state, False)
    width = m.state.copy_scratch.shape[1]
    assert not _defers(sim, m.state, width + 1, True)
    assert sim.ctr[S.S_QN] == 0 and (_frame(m, dev) == 4).all()


def test_a_full_queue_flushes_before_it_takes_more() -> None:
    m, sim = _world()
    dev = m.ram_pages
    room = sim.queue.shape[1]
    sim.ctr[S.S_QN] = room - 1  # all but one slot taken, by descriptors of no pages
    _call_left(m, (3, dev, 1), (4, dev + 1, 1))
    _gather(sim, m.state, False)
    assert sim.ctr[S.S_QN] == 2 and not _frame(m, dev).any()
    _flush(sim, m.state)
    assert (_frame(m, dev) == 4).all() and (_frame(m, dev + 1) == 5).all()


def test_nothing_waits_without_bytes() -> None:
    m, sim = _world(store_data=False)
    assert not _defers(sim, m.state, 16, True)
