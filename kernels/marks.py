"""Per-frame mark bits of the argument and dst checks (``state.dst_mark``).

A check that must see whether a frame is named twice in one call marks each
frame it meets: two bits per frame, 32 frames to a uint64 word, a quarter of a
byte per frame (a per-frame slot number took 4). ``MARK_SRC`` marks a source
of the call, ``MARK_DST`` a destination. Each check clears the bits it set
before it returns, so every call starts from zeros, and a fresh machine's
words are zeros its pages are never touched for.
"""

import numpy as np

from ._jit import internal
from .pgtable import mpfn_to_pfn

MARK_SRC = np.uint64(1)
MARK_DST = np.uint64(2)
_BOTH = np.uint64(3)


@internal(inline=True)
def _bit(pfn, mark):
    return mark << np.uint64(2 * (pfn & 31))


@internal(inline=True)
def marked(st, pfn, mark):
    """Whether frame ``pfn`` carries ``mark`` (MARK_SRC or MARK_DST)."""
    return (st.dst_mark[np.uint64(pfn) >> np.uint64(5)] & _bit(pfn, mark)) != 0


@internal(inline=True)
def set_mark(st, pfn, mark):
    st.dst_mark[np.uint64(pfn) >> np.uint64(5)] |= _bit(pfn, mark)


@internal(inline=True)
def clear_marks(st, pfn):
    """Clear both of frame ``pfn``'s marks."""
    st.dst_mark[np.uint64(pfn) >> np.uint64(5)] &= ~_bit(pfn, _BOTH)


@internal
def unmark_named(st, arr, n):
    """Clear the marks of every frame of the machine the mpfns ``arr[:n]`` name."""
    lay = st.layout
    for i in range(n):
        pfn = mpfn_to_pfn(lay, arr[i])
        if 0 <= pfn < st.page.shape[0]:
            clear_marks(st, pfn)
