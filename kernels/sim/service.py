"""Servicing one fault batch, as NVIDIA's uvm_gpu_service_replayable_faults() does.

The batch's entries (one per faulting page) are grouped by 2 MiB VA block and
the blocks serviced in address order. For each block: the faulted units and
the prefetch (prefetch.py), room made by eviction (evict.py), then one
migrate_vma() per run of pages to move (moves.py). The faulting accesses then
complete: a device write stores its byte in device memory, or, when its page
could not be moved in, through the CPU path (a remote access), once the
batch's gathered bytes have moved (copies.py). The batch is charged
``batch_us`` plus ``fault_us`` per entry, plus its copies.
"""

import numpy as np

from .. import mm
from .._jit import internal
from ..cpu import cpu_write
from ..memory import handle_mm_fault
from .copies import flush_copies
from .evict import evict_one
from .layout import (
    C_BLOCK_PAGES,
    C_BLOCK_SHIFT,
    C_PAGE_SHIFT,
    C_PID,
    C_STORE,
    C_UNIT,
    C_VMA,
    C_VSTART,
    ERR_CPU_FAULT,
    F_BATCH_US,
    F_FAULT_US,
    S_BATCH_ID,
    S_BATCHES,
    S_BYTES_TO_DEVICE,
    S_BYTES_TO_HOST,
    S_CPU_SINCE,
    S_ERROR,
    S_ERROR_ARG,
    S_FAULTS_COALESCED,
    S_FAULTS_SERVICED,
    S_NB,
    S_PAGES_EVICTED,
    S_PAGES_PREFETCHED,
    S_PAGES_TO_DEVICE,
    S_REMOTE,
    S_RESIDENT,
    T_COPY,
    T_FIXED,
    T_NOW,
)
from .moves import move_run
from .prefetch import faulted_units, prefetch_region
from .records import COPY_TO_DEVICE
from .residency import lru_used


@internal(hot=True)
def write_value(k):
    """The byte access ``k`` of the trace stores (its index, low byte, plus one)."""
    return np.uint8((k + 1) & 0xFF)


@internal
def _need(sim, base, bp):
    """Pages of the block ``want``s that are not resident yet."""
    need = 0
    for i in range(bp):
        if sim.want[i] != 0 and sim.resident[base + i] == 0:
            need += 1
    return need


@internal
def _protect(sim, b, base, bp, unit, batch_id):
    """Mark block ``b`` and every unit it wants with the batch id: no victim among them."""
    sim.blk_mark[b] = batch_id
    for first in range(0, bp, unit):
        for i in range(first, first + unit):
            if sim.want[i] != 0:
                sim.unit_mark[(base + first) // unit] = batch_id
                break


@internal
def _service_block(sim, state, policy, b, row, now):
    """Move in what block ``b`` wants. Returns 0, or -1 on an error."""
    bp = sim.cfg[C_BLOCK_PAGES]
    unit = sim.cfg[C_UNIT]
    base = b * bp
    batch_id = sim.ctr[S_BATCH_ID]
    faulted_units(sim, b)
    prefetch_region(sim, b)
    _protect(sim, b, base, bp, unit, batch_id)
    need = _need(sim, base, bp)
    while mm.pool_free_pages(state, 0) < need:
        got = evict_one(sim, state, policy, row, now)
        if got < 0:
            return np.int64(-1)
        if got == 0:
            break
    if mm.pool_free_pages(state, 0) < need:  # no room for the prefetch: the faults alone
        for i in range(bp):
            sim.want[i] = sim.req[i]
    moved_any = False
    i = np.int64(0)
    while i < bp:
        if sim.want[i] == 0 or sim.resident[base + i] != 0:
            i += 1
            continue
        j = i
        while j < bp and sim.want[j] != 0 and sim.resident[base + j] == 0:
            j += 1
        got = move_run(
            sim, state, base + i, j - i, np.bool_(True), np.int64(COPY_TO_DEVICE), row, now
        )
        if got < 0:
            return np.int64(-1)
        for p in range(i, j):
            if sim.resident[base + p] != 0:
                moved_any = True
                if sim.req[p] != 0:
                    sim.ctr[S_PAGES_TO_DEVICE] += 1
                else:
                    sim.ctr[S_PAGES_PREFETCHED] += 1
        i = j
    if moved_any:
        lru_used(sim, b)
    sim.want[:bp] = 0
    sim.req[:bp] = 0
    return np.int64(0)


@internal
def _complete(sim, state, now):
    """The batch's faulting accesses run: device stores land, remote when not moved in."""
    shift = sim.cfg[C_PAGE_SHIFT]
    ps = np.int64(1) << shift
    store = sim.cfg[C_STORE] != 0
    for e in range(sim.ctr[S_NB]):
        page = sim.b_page[e]
        info = sim.b_info[e]
        off = info >> 1
        if sim.resident[page] != 0:
            if store and (info & 1) != 0:
                val = write_value(sim.b_access[e])
                state.data[sim.dev_pfn[page] * ps + off] = val
            continue
        sim.ctr[S_REMOTE] += 1
        if (info & 1) != 0:
            addr = sim.cfg[C_VSTART] + (page << shift) + off
            if store:
                sim.iobuf[0] = write_value(sim.b_access[e])
                status = cpu_write(state, sim.cfg[C_PID], addr, sim.iobuf[:1])
            else:
                # No bytes to store, but the store's fault still runs: a page that
                # came back from the device read-only (4.14) is made writable.
                status = handle_mm_fault(state, sim.cfg[C_VMA], addr, True)
            if status != 0:
                sim.ctr[S_ERROR] = ERR_CPU_FAULT
                sim.ctr[S_ERROR_ARG] = status
                return np.int64(-1)
    return np.int64(0)


@internal
def _sort_blocks(touched, n):
    """Insertion sort of the batch's VA blocks (a batch touches few)."""
    for i in range(1, n):
        x = touched[i]
        j = i - 1
        while j >= 0 and touched[j] > x:
            touched[j + 1] = touched[j]
            j -= 1
        touched[j + 1] = x


@internal
def service_batch(sim, state, policy, now):
    """Service the open batch; ``now`` is the index of the access that closed it.

    Preconditions: ``ctr[S_NB] > 0`` and a free row in ``sim.batches``.
    Postconditions: one batch row is written, the batch is empty, and its id
    moves on (so ``pend`` and the marks of this batch go stale). Returns 0, or
    -1 on an error (``ctr[S_ERROR]``).
    """
    ctr = sim.ctr
    nb = ctr[S_NB]
    row = ctr[S_BATCHES]
    rec = sim.batches
    before_to = ctr[S_PAGES_TO_DEVICE]
    before_pf = ctr[S_PAGES_PREFETCHED]
    before_ev = ctr[S_PAGES_EVICTED]
    t0 = sim.clock[T_NOW]
    fixed = sim.fcfg[F_BATCH_US] + sim.fcfg[F_FAULT_US] * nb
    sim.clock[T_NOW] = t0 + fixed
    sim.clock[T_FIXED] += fixed
    copy_before = sim.clock[T_COPY]
    bytes_before = ctr[S_BYTES_TO_DEVICE] + ctr[S_BYTES_TO_HOST]
    coalesced_before = ctr[S_FAULTS_COALESCED]
    nt = 0
    for e in range(nb):
        b = sim.b_page[e] >> sim.cfg[C_BLOCK_SHIFT]
        if sim.blk_head[b] < 0:
            sim.touched[nt] = b
            nt += 1
        sim.b_next[e] = sim.blk_head[b]
        sim.blk_head[b] = e
    _sort_blocks(sim.touched, nt)
    status = np.int64(0)
    for t in range(nt):
        b = sim.touched[t]
        if status == 0:
            status = _service_block(sim, state, policy, b, row, now)
        sim.blk_head[b] = -1
    flush_copies(sim, state)  # the batch's bytes land before its accesses complete
    if status == 0:
        status = _complete(sim, state, now)
    ctr[S_FAULTS_SERVICED] += nb
    rec["t_start_us"][row] = t0
    rec["t_end_us"][row] = sim.clock[T_NOW]
    rec["access"][row] = now
    rec["faults"][row] = nb
    rec["coalesced"][row] = ctr[S_FAULTS_COALESCED] - coalesced_before
    rec["vablocks"][row] = nt
    rec["pages_to_device"][row] = ctr[S_PAGES_TO_DEVICE] - before_to
    rec["pages_prefetched"][row] = ctr[S_PAGES_PREFETCHED] - before_pf
    rec["pages_evicted"][row] = ctr[S_PAGES_EVICTED] - before_ev
    rec["cpu_faults"][row] = ctr[S_CPU_SINCE]
    rec["bytes"][row] = ctr[S_BYTES_TO_DEVICE] + ctr[S_BYTES_TO_HOST] - bytes_before
    rec["copy_us"][row] = sim.clock[T_COPY] - copy_before
    rec["resident_pages"][row] = ctr[S_RESIDENT]
    ctr[S_CPU_SINCE] = 0
    ctr[S_BATCHES] = row + 1
    ctr[S_NB] = 0
    ctr[S_BATCH_ID] += 1
    return status
