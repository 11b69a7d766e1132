"""The dst check: a driver's destinations are sound before migrate_vma_pages() uses them.

4.14 trusts ``dst``: ``migrate_vma_pages()`` takes ``migrate_pfn_to_page(dst[i])``
as a page the driver allocated and locked for slot ``i`` alone, and a dst naming
a free frame, the zero page, another slot's page or a page someone else owns
corrupts memory. The engine checks every VALID entry once, in one pass before
the pages pass, and drops an unsound one (``dst[i] = 0``), so the slot fails
exactly as one without a destination does in that profile (hmm-v25 clears
MIGRATE, seed keeps it; either way finalize restores the source) and the page
behind the entry is left untouched: no refcount, lock or flag changes.

A destination is sound when its frame is (in this order of reasons):

* inside the machine (``DST_OUT_OF_RANGE``);
* not the shared zero page (``DST_ZERO_PAGE``);
* allocated (``DST_FREE``);
* a base page: a compound head or tail is no destination (``DST_WRONG_KIND``),
  except that an entry with MIGRATE_PFN_COMPOUND (modern) must name a folio's
  head, which alloc_thp_pool() hands out aligned;
* locked, as ``alloc_page()`` returns it (``DST_NOT_LOCKED``);
* owned by nobody else: no mapping, no page-cache or anon mapping, not on an
  LRU or its add batch, not locked or isolated by someone else (``DST_IN_USE``;
  a source of this migration is one);
* named by no earlier slot (``DST_DUPLICATE``: the first slot keeps it).

Any base frame is the right kind otherwise: 4.14's pages pass accepts a system
destination for every source (NUMA-style system to system migration) and a
device-private one for an anonymous source; what it refuses (a page-cache page
to device-private memory) it refuses in the pages pass, as the kernel does.

Duplicates are found in the same pass, with no allocation: the first slot to
name a frame marks it (kernels.marks), a later one finds the mark, and a second
pass over the entries left clears the marks. Each refused slot is recorded in
four rows of the copy scratch (slot, reason, pfn, earlier slot; its batch is
over by the pages pass) for the Python layer's warnings, and counted in
``migrate_dst_invalid``.
"""

import numpy as np

from . import _indices as I
from . import layout as L
from . import mm
from ._jit import internal
from .marks import MARK_DST, marked, set_mark, unmark_named

DST_OK = 0
DST_OUT_OF_RANGE = 1
DST_FREE = 2
DST_NOT_LOCKED = 3
DST_WRONG_KIND = 4
DST_ZERO_PAGE = 5
DST_DUPLICATE = 6
DST_IN_USE = 7
#: What each DST_* code means, for messages.
DST_REASONS = (
    "sound",
    "the pfn is outside the machine",
    "the frame is free",
    "the page is not locked",
    "the page is of the wrong kind (a compound page)",
    "it is the shared zero page",
    "an earlier slot names the same page",
    "the page is in use (mapped, in the page cache, on an LRU, or locked or isolated "
    "by someone else)",
)

# Rows of state.copy_scratch the check writes; state.dst_mark holds, per frame,
# the slot that took it as its destination.
REC_SLOT = I.COPY_SRC  # per refused entry, in slot order: its slot,
REC_REASON = I.COPY_DST  # its DST_* code,
REC_PFN = I.COPY_DESC_SRC  # the pfn it named,
REC_OTHER = I.COPY_DESC_DST  # and, for a duplicate, the slot that keeps the page (else -1)

_COMPOUND = L.PG_HEAD | L.PG_TAIL
_OTHERS = L.PG_LRU | L.PG_PAGEVEC | L.PG_EXT_LOCKED | L.PG_EXT_ISOLATED


@internal(inline=True)
def dst_fault(st, pfn, compound):
    """Why frame ``pfn`` (inside the machine) cannot be a destination: a DST_* code,
    DST_OK when it can (duplicates aside). ``compound``: the entry carries
    MIGRATE_PFN_COMPOUND (modern), so it must name a folio's head instead."""
    flags = mm.frame_flags(st, pfn)
    if (flags & L.PG_ZERO) != 0:
        return DST_ZERO_PAGE
    if (flags & L.PG_FREE) != 0:
        return DST_FREE
    if (flags & _COMPOUND) != (L.PG_HEAD if compound else np.uint32(0)):
        return DST_WRONG_KIND
    if (flags & L.PG_LOCKED) == 0:
        return DST_NOT_LOCKED
    if (
        (flags & _OTHERS) != 0
        or st.page["mapcount"][mm.ix(pfn)] != 0
        or st.page["mapping"][mm.ix(pfn)] != L.MAPPING_NONE
    ):
        return DST_IN_USE
    return DST_OK


@internal(inline=True)
def _record(scratch, k, i, why, pfn, other):
    if k < scratch.shape[1]:
        scratch[REC_SLOT, k] = i
        scratch[REC_REASON, k] = why
        scratch[REC_PFN, k] = pfn
        scratch[REC_OTHER, k] = other


@internal
def _first_taker(dst, i, frame, valid, shift):
    """The slot before ``i`` whose destination is ``frame``: the one that kept
    it (a later duplicate's entry was zeroed). Only a refused entry asks."""
    for j in range(i):
        if (dst[j] & valid) != 0 and (dst[j] >> shift) == frame:
            return np.int64(j)
    return np.int64(-1)


@internal(hot=True)
def check_dst(st, dst, npages):
    """The dst check over slots ``[0, npages)``; returns the entries refused.

    Post: every refused entry is 0 (no destination), recorded in the copy
    scratch's REC_* rows (as many as it has columns) and counted in
    ``migrate_dst_invalid``; no struct page changed, no frame left marked.
    """
    lay = st.layout
    valid = lay[L.L_VALID]
    shift = lay[L.L_SHIFT]
    nframes = np.uint64(st.page.shape[0])
    scratch = st.copy_scratch
    bad = 0
    for i in range(npages):
        mpfn = dst[mm.ix(i)]
        if (mpfn & valid) == 0:
            continue
        frame = mpfn >> shift
        pfn = np.int64(frame)
        other = np.int64(-1)
        if frame >= nframes:
            why = DST_OUT_OF_RANGE
        else:
            why = dst_fault(st, pfn, (mpfn & lay[L.L_COMPOUND]) != 0)
            if why == DST_OK:
                if marked(st, pfn, MARK_DST):
                    why = DST_DUPLICATE
                    other = _first_taker(dst, i, frame, valid, shift)
                else:
                    set_mark(st, pfn, MARK_DST)
        if why != DST_OK:
            _record(scratch, bad, i, why, pfn, other)
            bad += 1
            dst[mm.ix(i)] = L.MPFN_NONE
    unmark_named(st, dst, npages)  # the entries left name every frame marked
    st.counters[L.C_MIGRATE_DST_INVALID] += bad
    return bad
