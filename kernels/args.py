"""The compiled API's argument checks: bounds on a call's own arguments, O(1) each.

Every public kernel (docs/embedding.md, "Bad arguments") checks its VMA index,
range, pfns, device and arrays with these, once, at entry, and refuses a bad
one with its documented code having changed nothing. Only src_sound() looks
at an array's entries (one compare per slot): the split API hands the user's
``src`` back to migrate_vma_pages() and migrate_vma_finalize(), which index
the frames with it.

**The window.** migrate_vma_pages() and migrate_vma_finalize() must get the
range migrate_vma_setup() collected (the kernel passes them its ``struct
migrate_vma``). Setup records that range in ``state.mig`` (``MIG_VMA``,
``MIG_START``, ``MIG_END``) and leaves it *open* when it collected something;
finalize (and the device's own pipeline, when it is done) closes it by
setting ``MIG_END = MIG_START``. A migration may nest in another's callbacks
(a CPU fault on a device page, or another driver's migrate_vma(), runs a
whole migration of its own), and ``state.mig`` holds one window only: so a
setup that finds a window open counts it as *suspended* in the high bits of
``MIG_VMA`` (``MIG_VMA = vma + suspended << 32``). With the window open, a
call must name it exactly; with it closed, a call is taken on trust only
while a suspended migration is to finish (its finalize drops the count), and
refused otherwise: a finalize twice, or after a setup that collected nothing.

The checks a compiled entry repeats at several sites (continue_args(),
held_refs()) are ``hot``: numba types them once and LLVM inlines them, where
``inline=True`` would have numba type them again at every site (it made the
callback form of migrate_vma() take half as long again to compile).
"""

import numpy as np
from numba import types
from numba.extending import overload

from . import layout as L
from ._jit import internal
from .marks import MARK_DST, MARK_SRC, marked, set_mark, unmark_named
from .pgtable import device_base_ref, has_flag, mpfn_to_pfn, page_down, pages_in

_SUSPENDED = np.int64(1) << np.int64(32)  # one suspended window, in MIG_VMA
_VMA_BITS = _SUSPENDED - np.int64(1)


# --------------------------------------------------------------------- scalars
@internal(inline=True)
def valid_vma(st, v):
    """A live VMA's index."""
    return v >= 0 and v < st.sys[L.SYS_NR_VMAS] and st.vma["live"][v] != 0


@internal(inline=True)
def in_vma(st, v, addr):
    """``addr`` lies in live VMA ``v``."""
    return valid_vma(st, v) and st.vma["start"][v] <= addr and addr < st.vma["end"][v]


@internal(inline=True)
def range_in_vma(st, v, start, end):
    """``[start, end)`` is non-empty and lies in live VMA ``v``."""
    if not valid_vma(st, v):
        return False
    return st.vma["start"][v] <= start and start < end and end <= st.vma["end"][v]


@internal(inline=True)
def valid_pfn(st, pfn):
    """A frame of the machine (RAM or device)."""
    return pfn >= 0 and pfn < st.page.shape[0]


@internal(inline=True)
def valid_device(st, d):
    """A row of the device table."""
    return d >= 0 and d < st.dev.shape[0]


@internal(hot=True)
def held_refs(st, pfn):
    """The references a page's mappings, pins, LRU batch, other isolator, page
    cache and (ZONE_DEVICE) device hold: what check() expects its refcount to
    be once it is in use. A put_page() may only drop references above these."""
    flags = st.page["flags"][pfn]
    ref = np.int64(st.page["mapcount"][pfn]) + st.page["pins"][pfn]
    if (flags & L.PG_PAGEVEC) != 0:
        ref += 1
    if (flags & L.PG_EXT_ISOLATED) != 0:
        ref += 1
    ref += device_base_ref(st, pfn)
    if in_page_cache(st, pfn):
        ref += 1
    return ref


@internal(inline=True)
def in_page_cache(st, pfn):
    """The page cache holds a reference on ``pfn``: its slot still names it. A
    file page that migrated away keeps its mapping (migrate_page() leaves the
    old page's) until it is freed, so the mapping alone does not tell."""
    if st.page["mapping"][pfn] != L.MAPPING_FILE:
        return False
    pc = st.page["index"][pfn]
    return 0 <= pc < st.sys[L.SYS_PCACHE_USED] and st.pcache[pc] == pfn


# --------------------------------------------------------------------- arrays
def is_mpfn_array(a):
    """True for a 1-D uint64 array (decided when numba compiles the caller)."""
    return False


@overload(is_mpfn_array, inline="always")
def _is_mpfn_array(a):
    ok = isinstance(a, types.Array) and a.ndim == 1 and a.dtype == types.uint64
    if ok:
        return lambda a: True
    return lambda a: False


@internal(inline=True)
def arrays_overlap(a, b):
    """Whether two arrays' memory overlaps (their spans, for strided arrays)."""
    lo_a, lo_b = a.ctypes.data, b.ctypes.data
    return lo_a < lo_b + b.nbytes and lo_b < lo_a + a.nbytes


@internal(inline=True)
def mpfn_arrays(src, dst, npages):
    """``src`` and ``dst`` are 1-D uint64 arrays of ``npages`` slots or more that
    do not overlap."""
    if not (is_mpfn_array(src) and is_mpfn_array(dst)):
        return False
    if src.shape[0] < npages or dst.shape[0] < npages:
        return False
    return not arrays_overlap(src, dst)


@internal(hot=True)
def src_sound(st, src, npages):
    """Every pfn ``src[:npages]`` names is a frame of the machine, locked, and
    named by one slot only.

    migrate_vma_setup() leaves each slot that names a page with that page
    collected, locked and referenced, and clears the others (4.14's
    migrate_vma_prepare() sets ``src[i] = 0`` for a page it could not lock).
    So a slot naming a frame past the machine, an unlocked page or a page an
    earlier slot names was written by the caller after setup; the kernel would
    index ``struct page`` with it, or finish one page twice. So was a COMPOUND
    slot (modern) that names no folio head, or whose extent runs past
    ``npages``. Leaves no frame marked.
    """
    ok, reached = _mark_sources(st, src, npages)
    unmark_named(st, src, reached)
    return ok


@internal
def _mark_sources(st, src, npages):
    """src_sound()'s scan, marking each frame it passes: (sound, slots scanned)."""
    lay = st.layout
    compound = lay[L.L_COMPOUND]
    for i in range(npages):
        pfn = mpfn_to_pfn(lay, src[i])
        if (src[i] & compound) != 0 and i + L.HPAGE_PMD_NR > npages:
            return False, i  # a COMPOUND slot (modern) heads a whole PMD extent
        if pfn < 0:
            continue
        if not valid_pfn(st, pfn) or not has_flag(st, pfn, L.PG_LOCKED):
            return False, i
        if ((src[i] & compound) != 0) != has_flag(st, pfn, L.PG_HEAD):
            return False, i  # COMPOUND names a folio's head, and only it does
        if marked(st, pfn, MARK_SRC):
            return False, i
        set_mark(st, pfn, MARK_SRC)
    return True, npages


@internal(hot=True)
def dst_sound(st, src, dst, npages):
    """Every pfn ``dst[:npages]`` names is one finalize may unlock and put: a frame
    of the machine, allocated, locked by the engine (not by m.lock_page()),
    named by no source and by one slot only, and mapped nowhere unless its
    slot had no source page (a hole the pages pass filled). Call after
    src_sound() found ``src`` sound. Leaves no frame marked."""
    lay = st.layout
    for i in range(npages):
        pfn = mpfn_to_pfn(lay, src[i])
        if pfn >= 0 and valid_pfn(st, pfn):
            set_mark(st, pfn, MARK_SRC)
    ok, reached = _mark_destinations(st, src, dst, npages)
    unmark_named(st, src, npages)
    unmark_named(st, dst, reached)
    return ok


@internal
def _mark_destinations(st, src, dst, npages):
    """dst_sound()'s scan, marking each destination it passes: (sound, slots scanned)."""
    lay = st.layout
    for i in range(npages):
        pfn = mpfn_to_pfn(lay, dst[i])
        if pfn < 0:
            continue
        if not valid_pfn(st, pfn):
            return False, i
        flags = st.page["flags"][pfn]
        if (flags & L.PG_LOCKED) == 0 or (flags & (L.PG_EXT_LOCKED | L.PG_FREE)) != 0:
            return False, i
        if marked(st, pfn, MARK_SRC):
            return False, i  # a source of this migration
        if marked(st, pfn, MARK_DST):
            return False, i  # an earlier slot's destination
        if st.page["mapcount"][pfn] != 0 and mpfn_to_pfn(lay, src[i]) >= 0:
            return False, i
        set_mark(st, pfn, MARK_DST)
    return True, npages


def mutable_mpfn_type(a):
    """A numba type: a writable 1-D uint64 array (for the callers' overloads
    that compile a bad array to an -EINVAL return)."""
    return isinstance(a, types.Array) and a.ndim == 1 and a.dtype == types.uint64 and a.mutable


# --------------------------------------------------------------------- the window
@internal(inline=True)
def window_open(mig):
    """A migrate_vma_setup() window is open, or one is suspended."""
    return mig[L.MIG_END] > mig[L.MIG_START] or mig[L.MIG_VMA] >= _SUSPENDED


@internal(inline=True)
def window_tag(mig, v):
    """``MIG_VMA`` for a window setup opens on VMA ``v``: an open window under
    it becomes one more suspended one."""
    suspended = mig[L.MIG_VMA] >> np.int64(32)
    if mig[L.MIG_END] > mig[L.MIG_START]:
        suspended += 1
    return np.int64(v) + (suspended << np.int64(32))


@internal(inline=True)
def window_allows(mig, v, start, end):
    """Whether pages/finalize (or a callback) may run on ``[start, end)`` of VMA
    ``v`` (page-rounded): the open window itself, or, with none open, on trust
    while a suspended migration is to finish."""
    if mig[L.MIG_END] > mig[L.MIG_START]:
        return (
            (mig[L.MIG_VMA] & _VMA_BITS) == v
            and mig[L.MIG_START] == start
            and mig[L.MIG_END] == end
        )
    return mig[L.MIG_VMA] >= _SUSPENDED


@internal(inline=True)
def close_window(mig):
    """A migration is done: close the open window, or, with none open, count
    the suspended one it was as finished."""
    if mig[L.MIG_END] > mig[L.MIG_START]:
        mig[L.MIG_END] = mig[L.MIG_START]
    elif mig[L.MIG_VMA] >= _SUSPENDED:
        mig[L.MIG_VMA] -= _SUSPENDED


@internal(hot=True)
def continue_args(st, v, start, end, src, dst):
    """The checks of the calls that continue a migration (migrate_vma_pages(),
    migrate_vma_finalize(), the driver callbacks): the range rounded to pages
    lies in live VMA ``v`` and is the window setup opened, the arrays hold it.
    Returns npages, or -EINVAL."""
    start = page_down(st, start)
    end = page_down(st, end)
    if not range_in_vma(st, v, start, end):
        return np.int64(-L.EINVAL)
    npages = pages_in(st, end - start)
    if not mpfn_arrays(src, dst, npages) or not window_allows(st.mig, v, start, end):
        return np.int64(-L.EINVAL)
    return npages
