"""A fault batch's bytes, moved by one engine copy instead of one per call.

Each migrate_vma() of a batch still models its own copy (moves.record_copy), but
with bytes stored it passes ``DEV_DEFER_BYTES``: the engine leaves the call's
descriptors in the copy scratch and moves nothing. They gather in
``sim.queue``, and flush_copies() moves them all at once, on the engine's own
path for a batch of that size (parallel from ``parallel_min_bytes``, streamed
from ``stream_min_bytes``), as a driver pushes a VA block's copies to its DMA
engine and waits once. One 64 KiB call copied alone at 10-12 GB/s here; a
gathered batch of them, on two threads, at 17-21 GB/s (docs/performance.md).

Bytes wait only while nothing reads or reuses their frames:

- a batch's calls go one way at a time. Each way frees its sources once
  they are copied, and the other way allocates from their pool (a LIFO stack,
  so it takes them first), so a change of direction flushes first;
- a call with a slot that failed after its destination was allocated has freed
  that destination, which a later call may take: it flushes at once;
- a call too large for one engine batch (more pages than the copy scratch)
  moves its own bytes, after a flush;
- service_batch() flushes before the batch's faulting accesses complete, and
  the replay's accesses come after it.
"""

import numpy as np

from .. import _indices as I
from .. import layout as L
from .._jit import internal
from ..copy import STAT_DESCRIPTORS, engine_copy_ns
from .layout import C_GATHER, Q_DST, Q_LEN, Q_SRC, S_QDIR, S_QN, S_QPAGES


@internal
def flush_copies(sim, state):
    """Move the bytes of every gathered descriptor; the queue is empty after."""
    nq = sim.ctr[S_QN]
    if nq == 0:
        return
    ps = state.sys[L.SYS_PAGE_SIZE]
    q = sim.queue
    engine_copy_ns(
        state.data, ps, state.engine, q[Q_SRC], q[Q_DST], q[Q_LEN], nq, sim.ctr[S_QPAGES] * ps
    )
    sim.ctr[S_QN] = 0
    sim.ctr[S_QPAGES] = 0


@internal
def defers_bytes(sim, state, n, to_device):
    """Whether a call of ``n`` pages one way may leave its bytes to the queue;
    flushes first what it must (a change of direction, or a call that cannot)."""
    defer = (
        sim.cfg[C_GATHER] != 0
        and state.sys[L.SYS_STORE_DATA] != 0
        and n <= state.copy_scratch.shape[1]
    )
    if sim.ctr[S_QN] > 0 and (not defer or sim.ctr[S_QDIR] != np.int64(to_device)):
        flush_copies(sim, state)
    sim.ctr[S_QDIR] = np.int64(to_device)
    return defer


@internal
def gather_copies(sim, state, freed_dst):
    """Queue the descriptors the last call left in the copy scratch, then flush
    at once if that call freed a destination (``freed_dst``)."""
    ndesc = np.int64(state.copy_stats[STAT_DESCRIPTORS])
    q = sim.queue
    if sim.ctr[S_QN] + ndesc > q.shape[1]:
        flush_copies(sim, state)
    scratch = state.copy_scratch
    base = sim.ctr[S_QN]
    pages = np.int64(0)
    for k in range(ndesc):
        q[Q_SRC, base + k] = scratch[I.COPY_DESC_SRC, k]
        q[Q_DST, base + k] = scratch[I.COPY_DESC_DST, k]
        q[Q_LEN, base + k] = scratch[I.COPY_DESC_LEN, k]
        pages += scratch[I.COPY_DESC_LEN, k]
    sim.ctr[S_QN] = base + ndesc
    sim.ctr[S_QPAGES] += pages
    if freed_dst:
        flush_copies(sim, state)
