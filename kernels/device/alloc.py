"""dmirror's allocation and copy: the ``alloc_and_copy`` callbacks, both directions.

dmirror_migrate_alloc_and_copy() (system to device) and the device-to-system
copy routine of the fault path, migrate_to_system and evict. Destinations are
allocated slot by slot (or over threads, kernels.device.alloc_parallel), their
pairs queued in the copy scratch, and copied in one engine batch. The callbacks
take ``private`` as an int64 of ``DEV_*`` bits.
"""

import numpy as np

from .. import _indices as I
from .. import layout as L
from .. import mm
from .._jit import internal, kernel
from ..copy import engine_copy_into
from ..parallel.schedule import sweep_threads
from .alloc_parallel import alloc_device_parallel
from .common import (
    DEV_KEEP_STATS,
    DEV_NOFAIL,
    allocation_fails,
    dev_index,
    hand_over,
    moves_bytes,
    wants_device_page,
)
from .mirror import callback_args


@internal(inline=True)
def device_alloc_page(st, private):
    """dmirror_devmem_alloc_page(): pop a device frame, take a reference, lock it."""
    if allocation_fails(st, private):
        return -1
    return mm.alloc_locked_page(st, dev_index(private))


@internal(inline=True)
def system_alloc_page(st, private):
    """The device-to-system copy's allocation: a locked RAM page, or -1 (also
    when a failure is injected)."""
    if allocation_fails(st, private):
        return -1
    return mm.alloc_locked_page(st, np.int64(L.RAM_POOL))


@internal(inline=True)
def start_batch(stats, n, private):
    """Clear the last copy's stats unless DEV_KEEP_STATS; False: nothing to copy."""
    if (private & DEV_KEEP_STATS) == 0:
        stats[:] = 0.0
    return n > 0


@internal(hot=True)
def copy_pairs(data, sysv, engine, stats, scratch, load, n, private):
    """One engine batch over the first ``n`` pairs of the copy scratch.

    It takes the six arrays it uses, not the state: a call that passes the state
    hands over ~1.9 KB of array fields, which a one-page migration notices."""
    if not start_batch(stats, n, private):
        return
    engine_copy_into(
        data,
        sysv[L.SYS_PAGE_SIZE],
        moves_bytes(sysv, private),
        scratch[I.COPY_SRC],
        scratch[I.COPY_DST],
        n,
        engine,
        stats,
        scratch[I.COPY_DESC_SRC],
        scratch[I.COPY_DESC_DST],
        scratch[I.COPY_DESC_LEN],
        load,
    )


@kernel(inline=True)
def device_alloc_and_copy(state, vma_index, src, dst, start, end, private):
    """dmirror_migrate_alloc_and_copy() - system to device.

    Args: the migrate_vma() callback arguments; ``private``: DEV_* bits.
    Pre: MIGRATE slots are locked and unmapped (or holes / zero pages).
    Post: for each MIGRATE slot that is not already device memory and for
    which a device page could be had: the page is allocated and locked, the
    data copied through the copy engine (zero-filled for a hole or zero page),
    and ``dst = pfn | VALID | LOCKED`` plus WRITE when the source had it.
    A failed allocation leaves ``dst = 0``: that page stays where it is.
    Does nothing on a bad argument (callback_args()).
    """
    v, s, e = np.int64(vma_index), np.int64(start), np.int64(end)
    alloc_and_copy_to(state, True, v, src, dst, s, e, np.int64(private))


@internal
def alloc_and_copy_to(state, to_device, vma_index, src, dst, start, end, private):
    """The compiled body of both directions' alloc_and_copy callbacks, checks
    included: one call from users' code (run_driver inlines alloc_and_copy
    itself, for the one-page path)."""
    if callback_args(state, vma_index, src, dst, start, end, private) < 0:
        return
    start = mm.page_down(state, start)
    alloc_and_copy(state, to_device, src, dst, start, mm.page_down(state, end), private)


@internal(inline=True)
def alloc_and_copy(state, to_device, src, dst, start, end, private):
    """Allocate destinations for one direction, then copy them in one engine
    batch: one per window of the copy scratch's width, when the range holds
    more slots than that (a window ends on a 2 MiB boundary, so it never
    splits a folio's slots)."""
    npages = mm.pages_in(state, end - start)
    width = state.copy_scratch.shape[1]
    first = np.int64(0)
    while first < npages:
        stop = npages
        if npages - first > width:
            reach = start + (first + width) * mm.page_size(state)
            stop = mm.pages_in(state, reach - reach % mm.pmd_extent(state) - start)
            if stop <= first:
                stop = first + width  # too narrow for a folio: the device has none
        n = alloc_pairs(state, to_device, src[first:stop], dst[first:stop], stop - first, private)
        copy_engine_batch(state, n, private)
        private |= DEV_KEEP_STATS  # the windows' batches add up to the call's copy
        first = stop


@internal(inline=True)
def copy_engine_batch(state, n, private):
    """Copy the first ``n`` pairs of the copy scratch in one engine batch."""
    copy_pairs(
        state.data,
        state.sys,
        state.engine,
        state.copy_stats,
        state.copy_scratch,
        state.engine_load,
        n,
        private,
    )


@internal(hot=True)
def alloc_pairs(state, to_device, src, dst, npages, private):
    """Allocate the destinations of one direction; returns how many copy pairs
    it left in ``state.copy_scratch``."""
    sp = state.copy_scratch[I.COPY_SRC]
    dp = state.copy_scratch[I.COPY_DST]
    if to_device:
        return alloc_device_pages(state, src, dst, npages, private, sp, dp)
    return alloc_system_pages(state, src, dst, npages, private, sp, dp)


@internal(hot=True)
def alloc_device_pages(state, src, dst, npages, private, sp, dp):
    """The per-page part of device_alloc_and_copy(); returns the copy pairs."""
    threads = sweep_threads(state, npages)
    d = dev_index(private)
    if threads > 1 and state.dev[d, L.DEV_FAIL_ALLOC] == 0:
        n = alloc_device_parallel(state, d, src, dst, npages, sp, dp, threads)
        if n >= 0:
            return n
    n = 0
    i = 0
    while i < npages:
        mpfn = src[i]
        dst[i] = L.MPFN_NONE  # the seed's collect leaves dst alone, so a driver writes every slot
        if not wants_device_page(state, mpfn):
            i += 1
            continue
        if (mpfn & state.layout[L.L_COMPOUND]) != 0 and i + L.HPAGE_PMD_NR <= npages:
            n = alloc_folio_pairs(state, d, src, dst, i, private, sp, dp, n)
            i += L.HPAGE_PMD_NR
            continue
        dpfn = device_alloc_page(state, private)
        if dpfn >= 0:
            n = hand_over(state, dst, i, mpfn, dpfn, sp, dp, n)
        i += 1
    return n


@internal
def alloc_folio_pairs(state, pool, src, dst, i, private, sp, dp, n):
    """A COMPOUND slot's destination (modern, B_DEVICE_THP): a 2 MiB folio of
    ``pool`` (a device, or RAM_POOL), ``dst = head|COMPOUND`` with the 512 copy
    pairs queued (a hole's folio zeroed). When the folio cannot be had (a
    one-shot fail_alloc, no free aligned run, or a device-coherent device),
    dmirror hands back 512 base pages instead, without COMPOUND, so the core
    splits the source (or fills the hole page by page); eviction (DEV_NOFAIL:
    device-range pages cannot split) gets no fallback. Returns the new number
    of copy pairs."""
    lay = state.layout
    mpfn = src[i]
    spfn = mm.mpfn_to_pfn(lay, mpfn)
    head = np.int64(-1)
    # Device folios are device-private (the series is "device-private THP"): a
    # device-coherent device hands out base pages.
    coherent = pool >= 0 and state.dev[pool, L.DEV_KIND] == L.DEVICE_COHERENT
    if not allocation_fails(state, private) and not coherent:
        head = mm.alloc_locked_folio(state, pool)
    dst[i + 1 : i + L.HPAGE_PMD_NR] = L.MPFN_NONE  # a slice: no per-element index wrap
    if head >= 0:
        if spfn >= 0:
            for j in range(L.HPAGE_PMD_NR):
                sp[mm.ix(n + j)] = spfn + j
                dp[mm.ix(n + j)] = head + j
            n += L.HPAGE_PMD_NR
        else:
            for j in range(L.HPAGE_PMD_NR):
                mm.zero_frame(state, head + j)
        dst[i] = mm.make_mpfn(lay, head) | lay[L.L_LOCKED] | lay[L.L_COMPOUND]
        dst[i] |= mpfn & lay[L.L_WRITE]
        return n
    if (private & DEV_NOFAIL) != 0:
        return n
    for j in range(L.HPAGE_PMD_NR):
        pfn = (
            np.int64(-1) if allocation_fails(state, private) else mm.alloc_locked_page(state, pool)
        )
        if pfn < 0:
            continue
        sub = (
            lay[L.L_MIGRATE] if spfn < 0 else mm.make_mpfn(lay, spfn + j) | (mpfn & lay[L.L_WRITE])
        )
        n = hand_over(state, dst, i + j, sub, pfn, sp, dp, n)
    return n


@kernel(inline=True)
def system_alloc_and_copy(state, vma_index, src, dst, start, end, private):
    """The device-to-system copy routine (fault path, migrate_to_system, evict).

    Post: each MIGRATE slot holding a device page gets a locked system page with
    the data copied and ``dst = pfn | VALID | LOCKED`` (+ WRITE). If the
    allocation fails and the slot carries MIGRATE_PFN_DEVICE (hmm-v25), the
    driver writes ``dst = MIGRATE_PFN_ERROR``, as migrate.h requires of it.
    Does nothing on a bad argument (callback_args()).
    """
    v, s, e = np.int64(vma_index), np.int64(start), np.int64(end)
    alloc_and_copy_to(state, False, v, src, dst, s, e, np.int64(private))


@internal(hot=True)
def alloc_system_pages(state, src, dst, npages, private, sp, dp):
    """The per-page part of system_alloc_and_copy(); returns the copy pairs."""
    lay = state.layout
    n = 0
    i = 0
    while i < npages:
        mpfn = src[i]
        dst[i] = L.MPFN_NONE
        spfn = mm.mpfn_to_pfn(lay, mpfn)
        i += 1
        if (mpfn & lay[L.L_MIGRATE]) == 0 or spfn < 0 or not mm.is_device_pfn(state, spfn):
            continue
        if (mpfn & lay[L.L_COMPOUND]) != 0 and i - 1 + L.HPAGE_PMD_NR <= npages:
            n = alloc_folio_pairs(state, np.int64(L.RAM_POOL), src, dst, i - 1, private, sp, dp, n)
            i += L.HPAGE_PMD_NR - 1
            continue
        rpfn = system_alloc_page(state, private)
        if rpfn < 0:
            if lay[L.L_DEVICE] != 0 and (mpfn & lay[L.L_DEVICE]) != 0:
                dst[i - 1] = lay[L.L_ERROR]
            continue
        sp[n] = spfn
        dp[n] = rpfn
        n += 1
        dst[i - 1] = mm.make_mpfn(lay, rpfn) | lay[L.L_LOCKED] | (mpfn & lay[L.L_WRITE])
    return n
