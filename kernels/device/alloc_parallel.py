"""device_alloc_and_copy()'s allocation over threads (kernels.parallel.schedule).

Each thread counts the device pages its slots want; the counts are ranked in
slot order; then each thread pops the frames its slots rank to, which are the
frames device_alloc_page() would have popped one by one.
"""

import numpy as np
from numba import prange

from .. import _indices as I
from .. import layout as L
from .. import mm
from .._jit import internal
from ..parallel.schedule import plan_chunks
from .common import hand_over, take_device_frame, wants_device_page


@internal
def _count_wants(state, src, t):
    info = state.sweep_info
    need = 0
    pairs = 0
    for i in range(info[t, I.SW_FIRST], info[t, I.SW_END]):
        if (src[i] & state.layout[L.L_COMPOUND]) != 0:
            info[t, I.SW_NEED] = -1  # a folio slot: the serial loop allocates (modern)
            return
        if wants_device_page(state, src[i]):
            need += 1
            if mm.mpfn_to_pfn(state.layout, src[i]) >= 0:
                pairs += 1
    info[t, I.SW_NEED] = need
    info[t, I.SW_PAIRS] = pairs


@internal(parallel=True)
def _count_wants_all(state, src, threads):
    for t in prange(threads):
        _count_wants(state, src, np.int64(t))


@internal
def _take_device_pages(state, d, src, dst, t, sp, dp):
    """One thread: pop device ``d``'s frames its slots rank to (slot order), as
    device_alloc_page() would have popped them one by one."""
    info = state.sweep_info
    top = mm.free_top(state, d)
    rank = info[t, I.SW_NEED0]
    n = info[t, I.SW_PAIRS0]
    for i in range(info[t, I.SW_FIRST], info[t, I.SW_END]):
        mpfn = src[i]
        dst[i] = L.MPFN_NONE
        if not wants_device_page(state, mpfn):
            continue
        dpfn = take_device_frame(state, top - rank)
        rank += 1
        n = hand_over(state, dst, i, mpfn, dpfn, sp, dp, n)


@internal(parallel=True)
def _take_device_pages_all(state, d, src, dst, threads, sp, dp):
    for t in prange(threads):
        _take_device_pages(state, d, src, dst, np.int64(t), sp, dp)


@internal
def alloc_device_parallel(state, d, src, dst, npages, sp, dp, threads):
    """device_alloc_and_copy()'s allocation over threads (kernels.parallel): count
    each thread's wants, rank them in slot order, then pop by rank. Returns the
    copy pairs, or -1 (nothing done) when the pool cannot serve every slot,
    or a slot is a folio: then the serial loop decides."""
    used = plan_chunks(state, 0, npages, threads)
    info = state.sweep_info
    _count_wants_all(state, src, used)
    need = 0
    pairs = 0
    for t in range(used):
        if info[t, I.SW_NEED] < 0:
            return -1
    for t in range(used):
        info[t, I.SW_NEED0] = need
        info[t, I.SW_PAIRS0] = pairs
        need += info[t, I.SW_NEED]
        pairs += info[t, I.SW_PAIRS]
    if need > state.dev[d, L.DEV_FREE]:
        return -1
    mm.ready_pops(state, d, need)
    _take_device_pages_all(state, d, src, dst, used, sp, dp)
    state.dev[d, L.DEV_FREE] -= need
    state.dev[d, L.DEV_CALLOC] += need
    state.counters[L.C_DEVICE_CALLOC] += need
    return pairs
