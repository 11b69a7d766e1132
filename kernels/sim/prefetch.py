"""Which pages of a 2 MiB VA block a fault batch moves: the faulted units and the prefetch.

NVIDIA's driver services a batch one VA block at a time. The faulted pages,
grown to the migration unit, are what the block must receive; the prefetcher
may add more (``uvm_perf_prefetch.c``):

* ``PF_SEQUENTIAL``: UVM-Smart's sequential-local prefetcher, the whole 64 KiB
  basic block around each faulted page.
* ``PF_TREE``: the density tree. Over the block's pages, a binary tree counts
  the pages that are resident or faulted; for each faulted page, the largest
  aligned subtree around it whose count is more than ``threshold`` percent of
  its size (``counter * 100 > pages * threshold``, threshold 51) is prefetched
  (compute_prefetch_region()). The counts are those before the batch's
  prefetch, as the driver builds the tree once per block.
"""

import numpy as np

from .._jit import internal
from .layout import (
    C_BLOCK_PAGES,
    C_PREFETCH,
    C_SEQ_PAGES,
    C_THRESHOLD,
    C_UNIT,
    C_UNIT_SHIFT,
    PF_SEQUENTIAL,
    PF_TREE,
    S_BATCH_ID,
    S_FAULTS_COALESCED,
)


@internal
def faulted_units(sim, b):
    """Mark in ``sim.req`` the units of block ``b`` its batch entries fault on.

    An entry whose unit an earlier entry of the batch already asked for is
    coalesced (counted, nothing more to move). Returns the entries of the block.
    """
    bp = sim.cfg[C_BLOCK_PAGES]
    unit = sim.cfg[C_UNIT]
    batch_id = sim.ctr[S_BATCH_ID]
    base = b * bp
    entries = 0
    e = sim.blk_head[b]
    while e >= 0:
        entries += 1
        page = sim.b_page[e]
        u = page >> sim.cfg[C_UNIT_SHIFT]
        if sim.unit_mark[u] == batch_id:
            sim.ctr[S_FAULTS_COALESCED] += 1
        else:
            sim.unit_mark[u] = batch_id
            first = u * unit - base
            sim.req[first : first + unit] = 1
        e = sim.b_next[e]
    return entries


@internal
def prefetch_region(sim, b):
    """Fill ``sim.want`` for block ``b``: its faulted units plus what the prefetcher adds."""
    bp = sim.cfg[C_BLOCK_PAGES]
    base = b * bp
    want = sim.want
    req = sim.req
    for i in range(bp):
        want[i] = req[i]
    kind = sim.cfg[C_PREFETCH]
    if kind == PF_SEQUENTIAL:
        seq = sim.cfg[C_SEQ_PAGES]
        e = sim.blk_head[b]
        while e >= 0:
            first = ((sim.b_page[e] - base) // seq) * seq
            want[first : first + seq] = 1
            e = sim.b_next[e]
    elif kind == PF_TREE:
        _tree(sim, b, base, bp)


@internal
def _tree(sim, b, base, bp):
    """compute_prefetch_region() for every faulted page of block ``b``."""
    occ = sim.occ  # occ[i]: resident-or-faulted pages among the block's first i
    occ[0] = 0
    for i in range(bp):
        occ[i + 1] = occ[i] + (1 if (sim.resident[base + i] | sim.req[i]) != 0 else 0)
    threshold = sim.cfg[C_THRESHOLD]
    e = sim.blk_head[b]
    while e >= 0:
        local = sim.b_page[e] - base
        lo = local
        hi = local + 1
        size = np.int64(2)
        while size <= bp:
            first = (local // size) * size
            count = occ[first + size] - occ[first]
            if count * 100 > size * threshold:
                lo = first
                hi = first + size
            size *= 2
        sim.want[lo:hi] = 1
        e = sim.b_next[e]
