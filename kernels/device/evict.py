"""dmirror_device_evict_chunk() (modern): a device's memory moved back to RAM by pfn.

A driver being removed (or HMM_DMIRROR_RELEASE) does not know which virtual
addresses map its pages: it runs migrate_device_range() over its own frames,
allocates system pages that cannot fail (__GFP_NOFAIL), copies, and finishes
with migrate_device_pages() and migrate_device_finalize(). A device page in
use that nothing maps moves too; its data is copied as for the others.
"""

import numpy as np

from .. import layout as L
from .._jit import internal
from ..migrate_device import migrate_device_finalize, migrate_device_pages, migrate_device_range
from .alloc import alloc_pairs, copy_engine_batch
from .common import DEV_KEEP_STATS, DEV_NOFAIL, dev_private
from .mirror import moved_count


@internal
def evict_device(state, d):
    """Device ``d``'s pages back to RAM, a chunk of its frames at a time; the
    pages moved. Chunks fit the range scratch and the copy scratch."""
    first = state.dev[d, L.DEV_FIRST_PFN]
    end = state.dev[d, L.DEV_FRESH]  # the frames after it were never handed out
    chunk = min(state.range_src.shape[0], state.copy_scratch.shape[1])
    if chunk >= L.HPAGE_PMD_NR:
        chunk -= chunk % L.HPAGE_PMD_NR  # whole folios per chunk (device folios are aligned)
    private = dev_private(d, DEV_NOFAIL | DEV_KEEP_STATS)
    lay = state.layout
    moved = 0
    base = first
    while base < end:
        n = min(chunk, end - base)
        if chunk % L.HPAGE_PMD_NR == 0:
            n = min(end, base - base % L.HPAGE_PMD_NR + chunk) - base  # chunks end aligned
        src = state.range_src[:n]
        dst = state.range_dst[:n]
        if migrate_device_range(state, src, base, n) == 0:
            pairs = alloc_pairs(state, False, src, dst, n, private)
            copy_engine_batch(state, pairs, private)
            migrate_device_pages(state, src, dst)
            for i in range(n):
                moved += moved_count(lay, src, dst, i)
            migrate_device_finalize(state, src, dst)
        base += n
    return np.int64(moved)
