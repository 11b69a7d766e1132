"""The schedule of a migration's plain metadata sweeps, over threads (hmm-v25, modern).

A sweep does the same steps for every slot, and each slot's steps touch only
that slot's own pages and page-table entry. What slots share is:

* counters and the ``struct migrate_vma`` counts: each thread keeps its own
  (``State.sweep_counters`` / ``sweep_mig``, on separate cache lines) and they
  are summed afterwards (``merge_thread_counts``);
* the free stacks, whose order decides which frame the next allocation gets:
  pops are ranked in slot order before the parallel region, and frees are
  placed afterwards, in slot order;
* the LRU-add batches and their drains, THP splits, pins, foreign locks and
  pages mapped twice: a thread handles only *plain* slots and stops at the
  first other one; each thread's remaining slots then run serially, in slot
  order (kernels.parallel.setup, kernels.device.finish).

So a parallel sweep ends in exactly the state of the serial one.
Threads own whole PMD extents, so the one-flush-per-PMD accounting and a
PMD-level pte_alloc() stay within a thread. The per-thread bodies are separate
functions called from the prange loop, not inlined into it: inlined, numba 0.68
lowered a thread's while-loop counter as if it never moved. They take the
thread index as ``np.int64(t)``: numba types a prange index as uint64 in one
pass and int64 in another, and an uncast index compiled each body twice.
Only ``hmm-v25`` and ``modern`` take this path; ``seed`` unmaps through
try_to_unmap(), which counts TLB flushes as it goes, and takes the per-slot
steps. A migration below the engine's ``parallel_min_pages`` runs the same
plain sweeps on one thread, without a parallel region.
"""

import numpy as np

from .. import _indices as I
from .. import layout as L
from .. import mm
from .._jit import internal
from .._llvm import get_thread_count, state_with
from ..copy.params import ENG_PAR_MIN_PAGES, ENG_PLAIN_MIN_PAGES, ENG_THREADS


@internal(inline=True)
def with_counters(st, counters):
    """The same state with another counters array (a thread's own). Inlined:
    numba returns only arrays a function was passed from a compiled one."""
    return state_with(st, "counters", counters)


@internal
def plain_sweeps(st, npages):
    """Whether a migration of ``npages`` slots takes the plain sweeps (on
    sweep_threads() threads, one included): a profile the fast paths serve
    (kernels._indices: FAST_PATH_NEEDS and FAST_PATH_BEHAVIOURS: hmm-v25 and
    modern; modern only for a migration that selects system memory or
    device-private memory, the kinds a plain slot holds), from the engine's
    ``plain_min_pages`` up."""
    beh = st.sys[L.SYS_BEHAVIOUR]
    if (beh & I.FAST_PATH_NEEDS) != I.FAST_PATH_NEEDS or (beh & ~I.FAST_PATH_BEHAVIOURS) != 0:
        return False
    plain_kinds = L.MIGRATE_VMA_SELECT_SYSTEM | L.MIGRATE_VMA_SELECT_DEVICE_PRIVATE
    if mm.behaves(st, L.B_SELECT) and (st.mig[L.MIG_FLAGS] & plain_kinds) == 0:
        return False
    return npages >= st.engine[ENG_PLAIN_MIN_PAGES]


@internal
def sweep_threads(st, npages):
    """How many threads a sweep of ``npages`` slots uses (1: stay serial).

    Parallel only where the plain sweeps run (plain_sweeps()), from
    ``parallel_min_pages`` up, within the engine's ``threads`` cap and numba's
    current thread count, and with at least one PMD extent per thread.
    """
    if not plain_sweeps(st, npages) or npages < st.engine[ENG_PAR_MIN_PAGES]:
        return 1
    cap = np.int64(st.engine[ENG_THREADS])
    threads = get_thread_count()
    if cap > 0:
        threads = min(threads, cap)
    threads = min(threads, I.MAX_SWEEP_THREADS, npages // L.HPAGE_PMD_NR)
    return max(threads, 1)


@internal
def plan_chunks(st, start, npages, threads):
    """Split slots ``[0, npages)`` into ``threads`` runs of whole PMD extents.

    Writes SW_FIRST / SW_END of each thread's row in ``st.sweep_info`` and
    sets SW_STOP to SW_FIRST; returns the number of threads that got slots.
    """
    info = st.sweep_info
    ext_pages = L.HPAGE_PMD_NR
    first_ext = mm.pages_in(st, (start | (mm.pmd_extent(st) - 1)) + 1 - start)  # slots to 1st edge
    if first_ext == ext_pages:
        first_ext = 0  # start is on an extent edge
    extents = (npages - first_ext + ext_pages - 1) // ext_pages
    per = (extents + threads - 1) // threads
    used = 0
    lo = 0
    for t in range(threads):
        hi = min(npages, first_ext + (t + 1) * per * ext_pages)
        if t == threads - 1:
            hi = npages
        if hi <= lo:
            continue
        info[used, I.SW_FIRST] = lo
        info[used, I.SW_END] = hi
        info[used, I.SW_STOP] = lo
        info[used, I.SW_PARTIAL] = 0
        used += 1
        lo = hi
    return used


@internal
def clear_thread_counts(st, threads):
    for t in range(threads):
        st.sweep_mig[t, :] = 0
        st.sweep_counters[t, :] = 0


@internal
def merge_thread_counts(st, threads, mig):
    """Add each thread's counters and cpages / collected counts to the machine's."""
    for t in range(threads):
        for c in range(st.counters.shape[0]):
            st.counters[c] += st.sweep_counters[t, c]
        mig[L.MIG_CPAGES] += st.sweep_mig[t, L.MIG_CPAGES]
        mig[L.MIG_COLLECTED] += st.sweep_mig[t, L.MIG_COLLECTED]
