"""migrate_vma() and its callback-free split form.

``migrate_vma`` runs the seed's pipeline: argument checks, collect, prepare,
unmap, ``alloc_and_copy``, pages, ``finalize_and_map``, finalize, returning as
soon as ``cpages`` reaches 0 so that no callback is called for nothing.
``migrate_vma_setup`` / ``migrate_vma_pages`` / ``migrate_vma_finalize`` are the
same passes without callbacks (the shape later kernels adopted), so a driver
written in numba calls them directly and stays cacheable.
"""

import numpy as np
from numba import njit
from numba.extending import overload

from . import layout as L
from . import mm
from ._jit import internal, kernel
from .args import (
    close_window,
    continue_args,
    dst_sound,
    mpfn_arrays,
    mutable_mpfn_type,
    range_in_vma,
    src_sound,
    window_tag,
)
from .collect import migrate_vma_collect
from .finalize import migrate_vma_finalize as _finalize
from .fused_setup import setup_sweep
from .mm import lru_add_drain
from .pages import migrate_vma_pages as _pages
from .parallel.schedule import plain_sweeps, sweep_threads
from .parallel.setup import setup_parallel, starts_plain
from .prepare import migrate_vma_prepare
from .unmap import migrate_vma_unmap


@kernel
def migrate_vma_check_args(st, v, start, end, nsrc, ndst):
    """The sanity checks of migrate_vma(): -EINVAL or the number of pages.

    ``start`` and ``end`` are rounded down to a page first. EINVAL for: no such
    VMA, a hugetlb or VM_SPECIAL (IO, DONTEXPAND, PFNMAP, MIXEDMAP) VMA, a start
    outside [vm_start, vm_end), an end outside (vm_start, vm_end], start >= end,
    or (compiled level only) arrays shorter than the range.
    """
    start = mm.page_down(st, start)
    end = mm.page_down(st, end)
    if not range_in_vma(st, v, start, end):
        return -L.EINVAL
    if (st.vma["flags"][v] & (L.VM_HUGETLB | L.VM_SPECIAL)) != 0:
        return -L.EINVAL
    npages = mm.pages_in(st, end - start)
    if nsrc < npages or ndst < npages:
        return -L.EINVAL
    return npages


@kernel(inline=True)
def migrate_vma_setup(state, vma_index, start, end, src, dst):
    """migrate_vma_setup() - check, collect, prepare and unmap a range.

    Args:
        state: ``m.state``. vma_index: ``Vma.index``. start, end: the range.
        src, dst: writable uint64 arrays of at least (end - start) / page_size.
    Returns: the number of pages left to migrate (cpages), or -22 (-EINVAL,
    nothing changed): a bad VMA or range (migrate_vma_check_args()), arrays
    too short, not 1-D uint64, or overlapping.
    Post: ``src`` is zeroed over the range, then filled as collect/prepare/unmap
    leave it: every MIGRATE slot with a page is locked and unmapped. The three
    passes run as one sweep (kernels.fused_setup), over threads for a large
    range (kernels.parallel); both end in the state of setup_by_passes(). When
    it returns a positive count the caller must fill ``dst`` and then call
    migrate_vma_pages() and migrate_vma_finalize() over the same range.
    """
    return _typed(setup_entry, state, vma_index, start, end, src, dst)


@kernel(inline=True)
def migrate_vma_setup_flags(state, vma_index, start, end, src, dst, flags, owner, fault_pfn):
    """migrate_vma_setup() with ``struct migrate_vma``'s later fields.

    Args:
        state, vma_index, start, end, src, dst: as migrate_vma_setup().
        flags: MIGRATE_VMA_SELECT_* bits (v5.9 on). owner: the int that
            ``m.owner_id(owner)`` gives, the ``pgmap_owner`` (v5.7 ``src_owner``).
        fault_pfn: the locked device page of a CPU fault being served
            (``fault_page``, v6.1), or -1.
    Returns: as migrate_vma_setup(): cpages, or -22 with nothing changed.
    Profiles: seed and hmm-v25 follow kernels without these fields, so
    ``flags``, ``owner`` and ``fault_pfn`` are ignored (never an error) and the
    4.14 passes run exactly as migrate_vma_setup() runs them. modern: -22 also
    for a DAX VMA, flags outside MIGRATE_VMA_SELECT_*, an owner no device has
    (other than OWNER_NONE), and a ``fault_pfn`` that is not a locked
    device-private page mapped in the range (setup_fields_ok()).
    """
    f, o, p = np.int64(flags), np.int64(owner), np.int64(fault_pfn)
    return _typed_flags(setup_entry_flags, state, vma_index, start, end, src, dst, f, o, p)


def _typed(fn, state, vma_index, start, end, src, dst):
    """``fn(...)``, or -EINVAL when ``src`` or ``dst`` is not a writable 1-D
    uint64 array: decided when numba compiles the caller, so an array of
    another dtype or a read-only one compiles to the -EINVAL branch alone
    (typed, the passes' bit operations on it would not compile at all)."""
    return fn(state, vma_index, start, end, src, dst)


@overload(_typed, inline="always")
def _typed_impl(fn, state, vma_index, start, end, src, dst):
    if mutable_mpfn_type(src) and mutable_mpfn_type(dst):
        return lambda fn, state, vma_index, start, end, src, dst: fn(
            state, vma_index, start, end, src, dst
        )
    return lambda fn, state, vma_index, start, end, src, dst: np.int64(-L.EINVAL)


def _typed_flags(fn, state, vma_index, start, end, src, dst, flags, owner, fault_pfn):
    """_typed() with the modern setup's three scalars."""
    return fn(state, vma_index, start, end, src, dst, flags, owner, fault_pfn)


@overload(_typed_flags, inline="always")
def _typed_flags_impl(fn, state, vma_index, start, end, src, dst, flags, owner, fault_pfn):
    if mutable_mpfn_type(src) and mutable_mpfn_type(dst):
        return lambda fn, state, vma_index, start, end, src, dst, flags, owner, fault_pfn: fn(
            state, vma_index, start, end, src, dst, flags, owner, fault_pfn
        )
    return lambda fn, state, vma_index, start, end, src, dst, flags, owner, fault_pfn: np.int64(
        -L.EINVAL
    )


@internal(hot=True)
def setup_entry(state, vma_index, start, end, src, dst):
    """setup_range() for users' code, compiled once without reference counting:
    inlined by numba into their reference-counted code, its reads of the state
    under branches would incref and decref every array (kernels.driver)."""
    return setup_range(state, vma_index, start, end, src, dst)


@internal(hot=True)
def setup_entry_flags(state, vma_index, start, end, src, dst, flags, owner, fault_pfn):
    """setup_entry() with the modern fields."""
    return setup_range_flags(state, vma_index, start, end, src, dst, flags, owner, fault_pfn)


@internal
def _begin(state, vma_index, start, end, src, dst, flags, owner, fault_pfn):
    """The argument checks, then the call's ``struct migrate_vma`` scalars zeroed
    and set (its window opened, kernels.args) and the call counted. Returns
    npages, or -EINVAL (nothing changed): also for arrays that are not 1-D
    uint64 or that overlap, and (modern) for setup_fields_ok()."""
    npages = migrate_vma_check_args(state, vma_index, start, end, src.shape[0], dst.shape[0])
    if npages < 0:
        return npages
    if not mpfn_arrays(src, dst, npages):
        return np.int64(-L.EINVAL)
    select = mm.behaves(state, L.B_SELECT)
    if select and (end - start) >> state.sys[L.SYS_PAGE_SHIFT] <= 0:
        # modern counts the pages of the unrounded range first (v5.4's
        # migrate_vma_setup()): less than a page is EINVAL.
        return np.int64(-L.EINVAL)
    start = mm.page_down(state, start)
    if select and not setup_fields_ok(state, vma_index, start, npages, flags, owner, fault_pfn):
        return np.int64(-L.EINVAL)
    mig = state.mig
    tag = window_tag(mig, vma_index)
    mig[:] = 0
    mig[L.MIG_START] = start
    mig[L.MIG_END] = start + npages * state.sys[L.SYS_PAGE_SIZE]
    mig[L.MIG_VMA] = tag
    mig[L.MIG_FLAGS] = flags if select else L.MIGRATE_VMA_SELECT_SYSTEM
    mig[L.MIG_OWNER] = owner if select else L.OWNER_NONE
    mig[L.MIG_FAULT_PFN] = fault_pfn if mm.behaves(state, L.B_FAULT_PAGE) else -1
    state.counters[L.C_MIGRATE_VMA_CALLS] += 1
    first = mm.pte_slot(state, vma_index, start)
    if mm.behaves(state, L.B_OWNER_NOTIFIER):
        # modern (998427b3ad2c, v5.9): MMU_NOTIFY_MIGRATE carries pgmap_owner,
        # and dmirror leaves its mirror alone for its own migrations.
        mirrors_forget_range(state, first, npages, owner)
    elif mm.behaves(state, L.B_COLLECT_UNMAPS):
        # hmm-v25 (15/19, 8c3328f1f36a): collect runs under
        # mmu_notifier_invalidate_range_start() over the whole range, and 4.14's
        # notifier has no owner to tell a mirror its own migration from any other
        # change: every device's mirror forgets the range (the device re-mirrors
        # what it migrated in finalize_and_map). The seed's collect has no notifier.
        mm.invalidate_mirrors(state, first, npages)
    return npages


@internal
def mirrors_forget_range(state, first, npages, owner):
    """dmirror_interval_invalidate() for an MMU_NOTIFY_MIGRATE range of
    ``owner``: every device of another owner forgets the slots."""
    for d in range(state.mirror.shape[0]):
        if state.dev[d, L.DEV_OWNER] != owner:
            state.mirror[d, first : first + npages] = -1


@internal
def setup_fields_ok(state, v, start, npages, flags, owner, fault_pfn):
    """modern migrate_vma_setup()'s checks of the later fields: not a DAX VMA
    (vma_is_dax(), v5.4), known selection flags, an owner some device has (or
    none), and a fault page that is a locked device-private page (v6.1, and
    the trylock of v6.15) mapped by a device entry of this range (a PMD entry
    for a folio's head, B_DEVICE_THP)."""
    if (state.vma["flags"][v] & L.VM_DAX) != 0:
        return False
    if flags < 0 or (flags & ~L.MIGRATE_VMA_SELECT_ALL) != 0:
        return False
    if owner != L.OWNER_NONE and not owner_known(state, owner):
        return False
    if fault_pfn == -1:
        return True
    if fault_pfn < 0 or fault_pfn >= state.page.shape[0]:
        return False
    if not mm.is_zone_device(state, fault_pfn) or not mm.has_flag(state, fault_pfn, L.PG_LOCKED):
        return False
    d = mm.device_of(state, fault_pfn)
    if state.dev[d, L.DEV_KIND] != L.DEVICE_PRIVATE:
        return False
    first = mm.pte_slot(state, v, start)
    slot = np.int64(state.page["rmap"][fault_pfn])
    huge = mm.has_flag(state, fault_pfn, L.PG_HEAD)
    while slot >= 0:
        if first <= slot < first + npages:
            if huge:  # a device folio (B_DEVICE_THP): its chain links PMD entries
                at = start + (slot - first) * state.sys[L.SYS_PAGE_SIZE]
                if mm.pmd_kind(state.pmd[mm.pmd_slot(state, v, at)]) == L.PMD_DEVICE:
                    return True
            elif mm.pte_kind(state.pte[slot]) == L.PTE_DEVICE:
                return True
        slot = np.int64(state.pte_next[slot])
    return False


@internal(inline=True)
def owner_known(state, owner):
    """Some device has pgmap owner ``owner``."""
    for d in range(state.dev.shape[0]):
        if state.dev[d, L.DEV_OWNER] == owner:
            return True
    return False


@internal(inline=True)
def setup_range(state, vma_index, start, end, src, dst):
    """setup_range_flags() as 4.14's setup and me.migrate_vma take it: in
    modern MIGRATE_VMA_SELECT_SYSTEM, no owner, no fault page."""
    return setup_range_flags(
        state,
        vma_index,
        start,
        end,
        src,
        dst,
        np.int64(L.MIGRATE_VMA_SELECT_SYSTEM),
        np.int64(L.OWNER_NONE),
        np.int64(-1),
    )


@internal(inline=True)
def setup_range_flags(state, vma_index, start, end, src, dst, flags, owner, fault_pfn):
    """migrate_vma_setup()'s body, shared with the device's own pipeline.

    Post: as migrate_vma_setup(); ``state.mig`` holds the call's scalars, with
    ``MIG_ALL_PLAIN`` set when the plain sweep found every slot plain."""
    npages = _begin(state, vma_index, start, end, src, dst, flags, owner, fault_pfn)
    if npages < 0:
        return npages
    start = mm.page_down(state, start)
    mig = state.mig
    threads = sweep_threads(state, npages)
    if threads > 1 or (plain_sweeps(state, npages) and starts_plain(state, vma_index, start)):
        # No memset of src first: the sweep writes every slot of it.
        setup_parallel(state, vma_index, start, npages, src, dst, mig, threads)
    else:
        src[:npages] = 0
        setup_sweep(state, vma_index, start, mig[L.MIG_END], src, dst, mig, np.int64(0))
    state.counters[L.C_MIGRATE_VMA_COLLECTED] += mig[L.MIG_COLLECTED]
    if mig[L.MIG_COLLECTED] > 0 and mig[L.MIG_DRAINED] == 0:
        # Prepare ran (for holes or plain pages): it drained this CPU's batch.
        lru_add_drain(state, mm.this_cpu(state))
        mig[L.MIG_DRAINED] = 1
    if mig[L.MIG_CPAGES] <= 0:
        close_window(mig)  # nothing to migrate: no pages or finalize call follows
    return mig[L.MIG_CPAGES]


@kernel
def setup_by_passes(state, vma_index, start, end, src, dst):
    """migrate_vma_setup() as 14/19's migrate_vma() writes it: three loops, early returns.

    The unfused form of setup_range(): collect, then prepare, then unmap, each
    over the whole range, returning as soon as cpages reaches 0: the oracle
    tests/properties/test_fused.py holds the fused sweep to.
    Returns cpages or -EINVAL; ``state.mig`` holds the call's scalars.
    modern: collect, then unmap (prepare is folded into it).
    """
    f, o = np.int64(L.MIGRATE_VMA_SELECT_SYSTEM), np.int64(L.OWNER_NONE)
    return setup_by_passes_flags(state, vma_index, start, end, src, dst, f, o, np.int64(-1))


@kernel
def setup_by_passes_flags(state, vma_index, start, end, src, dst, flags, owner, fault_pfn):
    """setup_by_passes() with the modern fields (migrate_vma_setup_flags())."""
    npages = _begin(state, vma_index, start, end, src, dst, flags, owner, fault_pfn)
    if npages < 0:
        return npages
    start = mm.page_down(state, start)
    mig = state.mig
    src[:npages] = 0
    migrate_vma_collect(state, vma_index, start, mig[L.MIG_END], src, dst, mig)
    state.counters[L.C_MIGRATE_VMA_COLLECTED] += mig[L.MIG_CPAGES]
    if mig[L.MIG_CPAGES] != 0 and not mm.behaves(state, L.B_LOCK_IN_COLLECT):
        migrate_vma_prepare(state, vma_index, src, mig)
    if mig[L.MIG_CPAGES] != 0:
        migrate_vma_unmap(state, src, mig)
    if mig[L.MIG_CPAGES] == 0:
        close_window(mig)
    return mig[L.MIG_CPAGES]


@kernel(inline=True)
def migrate_vma_pages(state, vma_index, start, end, src, dst):
    """migrate_vma_pages() - the struct-page move for a range set up by
    migrate_vma_setup(); see :func:`kernels.pages.migrate_vma_pages`.

    Returns 0, or -22 (-EINVAL, nothing changed) unless the VMA and the range
    (rounded to pages) are the ones setup collected and the arrays hold it
    (kernels.args.continue_args), and every pfn ``src`` names is still a
    locked frame of the machine (kernels.args.src_sound: a ``src`` the caller
    wrote after setup)."""
    return _typed(pages_checked, state, vma_index, start, end, src, dst)


@internal
def pages_checked(state, vma_index, start, end, src, dst):
    """migrate_vma_pages()'s checks and pass: one call from users' code, its
    checks compiled without reference counting (see setup_entry())."""
    npages = continue_args(state, vma_index, start, end, src, dst)
    if npages < 0:
        return npages
    if not src_sound(state, src, npages):
        return np.int64(-L.EINVAL)
    _pages(state, vma_index, mm.page_down(state, start), npages, src, dst)
    return np.int64(0)


@kernel(inline=True)
def migrate_vma_finalize(state, vma_index, start, end, src, dst):
    """migrate_vma_finalize() - remap and release a range after
    migrate_vma_pages(); see :func:`kernels.finalize.migrate_vma_finalize`.

    Returns 0, or -22 (nothing changed) for the checks of migrate_vma_pages();
    a second finalize of the same migration is refused too."""
    return _typed(finalize_checked, state, vma_index, start, end, src, dst)


@internal
def finalize_checked(state, vma_index, start, end, src, dst):
    """migrate_vma_finalize()'s checks and pass, one call from users' code."""
    npages = continue_args(state, vma_index, start, end, src, dst)
    if npages < 0:
        return npages
    if not src_sound(state, src, npages) or not dst_sound(state, src, dst, npages):
        return np.int64(-L.EINVAL)
    _finalize(state, npages, src, dst)
    close_window(state.mig)
    return np.int64(0)


@njit(nogil=True)
def migrate_vma(state, alloc_and_copy, finalize_and_map, vma_index, start, end, src, dst, private):
    """migrate_vma() - migrate a range of memory inside a VMA, with callbacks.

    Args:
        state: ``m.state``. alloc_and_copy, finalize_and_map: ``@njit`` functions
        ``(state, vma_index, src, dst, start, end, private) -> None``.
        vma_index, start, end, src, dst: as for migrate_vma_setup().
        private: any value numba can type, passed to both callbacks.
    Returns: 0, also when nothing migrated, or -22 for the argument checks.
    Neither callback runs when no page was collected (cpages reaches 0 after
    collect, prepare or unmap). Not cached: numba compiles it once per process
    for each pair of callbacks.
    """
    cpages = migrate_vma_setup(state, vma_index, start, end, src, dst)
    if cpages <= 0:
        return min(cpages, 0)
    start = mm.page_down(state, start)
    end = mm.page_down(state, end)
    alloc_and_copy(state, vma_index, src, dst, start, end, private)
    migrate_vma_pages(state, vma_index, start, end, src, dst)
    finalize_and_map(state, vma_index, src, dst, start, end, private)
    migrate_vma_finalize(state, vma_index, start, end, src, dst)
    return 0
