"""One migrate_vma() call of the simulation, and what it records.

Every move, in either direction, is a real ``migrate_vma()`` over a run of
simulated pages with the device's own callbacks (kernels.device.pipeline), so
refcounts, page tables, the mirror and the copy engine all do their work. The
copy engine's cost model times it; the call's per-channel busy times become
rows of the run's ``copies``.
"""

import numpy as np

from .. import layout as L
from .. import mm
from .._jit import internal
from ..copy import ENG_CHANNELS, STAT_BYTES, STAT_MODEL_S
from ..device.common import DEV_DEFER_BYTES, DEV_KEEP_STATS
from ..device.pipeline import migrate_vma_driver
from .copies import defers_bytes, gather_copies
from .layout import (
    C_PAGE_SHIFT,
    C_VMA,
    C_VSTART,
    ERR_MIGRATE,
    S_BYTES_TO_DEVICE,
    S_BYTES_TO_HOST,
    S_COPIES,
    S_COPIES_DROPPED,
    S_ERROR,
    S_ERROR_ARG,
    S_MIGRATE_CALLS,
    T_COPY,
    T_NOW,
)
from .residency import page_in, page_out


@internal(hot=True)
def clear_copy_stats(state):
    """Zero the copy stats and the channels' loads before a call (only the
    engine's channels: the load array has room for MAX_CHANNELS)."""
    state.copy_stats[:] = 0.0
    nch = max(np.int64(state.engine[ENG_CHANNELS]), 1)
    state.engine_load[:nch] = 0.0


@internal
def record_copy(sim, state, kind, nbytes, batch_row, model_s):
    """Charge one call's copy to the clock and record one row per busy channel."""
    t0 = sim.clock[T_NOW]
    dur_us = model_s * 1e6
    nch = max(np.int64(state.engine[ENG_CHANNELS]), 1)
    ctr = sim.ctr
    rows = sim.copies
    busiest = 0.0
    for c in range(nch):
        busiest = max(busiest, state.engine_load[c])
    for c in range(nch):
        # The load is the call's per-channel time when the engine modelled the
        # batch over channels; a one-descriptor copy (the CPU fault path) has none.
        busy = state.engine_load[c] * 1e-3 if busiest > 0.0 else (dur_us if c == 0 else 0.0)
        if busy <= 0.0:
            continue
        i = ctr[S_COPIES]
        if i >= rows.shape[0]:
            ctr[S_COPIES_DROPPED] += 1
            continue
        rows["t_start_us"][i] = t0
        rows["dur_us"][i] = busy
        rows["channel"][i] = c
        rows["kind"][i] = kind
        rows["bytes"][i] = nbytes
        rows["batch"][i] = batch_row
        ctr[S_COPIES] = i + 1
    sim.clock[T_NOW] = t0 + dur_us
    sim.clock[T_COPY] += dur_us


@internal
def move_run(sim, state, first, n, to_device, kind, batch_row, k):
    """migrate_vma() of simulated pages ``[first, first + n)`` to or from the device.

    Preconditions: for ``to_device`` no page of the run is resident; otherwise
    every page is. Postconditions: the pages whose slot kept MIGRATE with a
    destination moved, and the residency arrays say so; the copy is charged
    to the clock (record_copy()). With bytes stored, their bytes may wait in
    ``sim.queue`` (copies.py) until the batch flushes it. Returns the pages
    moved, or -1 after setting ``ERR_MIGRATE`` when migrate_vma() refused the
    range.
    """
    shift = sim.cfg[C_PAGE_SHIFT]
    start = sim.cfg[C_VSTART] + (first << shift)
    end = start + (n << shift)
    src = sim.src[:n]
    dst = sim.dst[:n]
    clear_copy_stats(state)
    defer = defers_bytes(sim, state, n, to_device)
    private = np.int64(DEV_KEEP_STATS | (DEV_DEFER_BYTES if defer else 0))
    ret = migrate_vma_driver(state, to_device, sim.cfg[C_VMA], start, end, src, dst, private)
    sim.ctr[S_MIGRATE_CALLS] += 1
    if ret < 0:
        sim.ctr[S_ERROR] = ERR_MIGRATE
        sim.ctr[S_ERROR_ARG] = ret
        return np.int64(-1)
    lay = state.layout
    moved = 0
    freed_dst = False
    for i in range(n):
        pfn = mm.mpfn_to_pfn(lay, dst[i])
        if (src[i] & lay[L.L_MIGRATE]) == 0 or pfn < 0:
            # A destination whose slot failed: migrate_vma_finalize() freed it.
            freed_dst |= pfn >= 0
            continue
        moved += 1
        if to_device:
            page_in(sim, first + i, pfn, k)
        else:
            page_out(sim, first + i)
    if defer:
        gather_copies(sim, state, freed_dst)
    nbytes = np.int64(state.copy_stats[STAT_BYTES])
    sim.ctr[S_BYTES_TO_DEVICE if to_device else S_BYTES_TO_HOST] += nbytes
    record_copy(sim, state, kind, nbytes, batch_row, state.copy_stats[STAT_MODEL_S])
    return np.int64(moved)
