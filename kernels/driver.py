"""Helpers a driver needs, callable from users' ``@njit`` code.

They take ``m.state`` first and return plain scalars; negative values are
``-errno``. The Python ``Machine`` methods of the same names wrap them.
"""

import numpy as np
from numba import njit

from . import layout as L
from . import mm
from ._jit import kernel
from ._llvm import memcpy_bytes


@kernel(inline=True)
def alloc_page(state, device):
    """A fresh locked page as a driver's allocator hands it to migrate_vma().

    Args: state, device (bool). Returns the pfn, or -1 when none is free.
    Post: refcount 1 (2 for a device-private page, whose device holds one).
    """
    # The machine's first device: the contract's allocator takes no device index.
    return mm.alloc_locked_page(state, np.int64(0) if device else np.int64(L.RAM_POOL))


@kernel(inline=True)
def put_page(state, pfn):
    """put_page(): drop one reference (frees the page at its free count)."""
    mm.put_page(state, pfn)


@kernel(inline=True)
def unlock_page(state, pfn):
    mm.unlock_page(state, pfn)


@kernel(inline=True)
def copy_page(state, dst_pfn, src_pfn):
    """copy_highpage(): copy one frame's bytes (a no-op without stored data)."""
    ps = state.sys[L.SYS_PAGE_SIZE]
    if state.sys[L.SYS_STORE_DATA] != 0:
        memcpy_bytes(state.data, dst_pfn * ps, state.data, src_pfn * ps, ps)


@kernel(inline=True)
def migrate_pfn(state, pfn):
    """migrate_pfn(): ``(pfn << SHIFT) | VALID`` in the machine's layout."""
    return mm.make_mpfn(state.layout, pfn)


@kernel(inline=True)
def mpfn_to_pfn(state, mpfn):
    """The pfn of an mpfn, or -1 when VALID is not set."""
    return mm.mpfn_to_pfn(state.layout, np.uint64(mpfn))


@njit(cache=True, nogil=True)
def validate_dst(state, src, dst, npages):
    """Drop ``dst`` entries a driver must never hand back; index of the first, or -1.

    A valid destination is an allocated, locked, unmapped frame with no mapping,
    used once. Dropped entries become 0, so the slot is simply not migrated.
    """
    lay = state.layout
    nframes = state.page.shape[0]
    first_bad = -1
    seen = np.empty(npages, np.int64)
    nseen = 0
    for i in range(npages):
        if (dst[i] & lay[L.L_VALID]) == 0:
            continue
        pfn = np.int64(dst[i] >> lay[L.L_SHIFT])
        bad = pfn < 0 or pfn >= nframes
        if not bad:
            bad = (
                mm.has_flag(state, pfn, L.PG_FREE | L.PG_ZERO | L.PG_TAIL | L.PG_HEAD)
                or not mm.has_flag(state, pfn, L.PG_LOCKED)
                or state.page["mapcount"][pfn] != 0
                or state.page["mapping"][pfn] != L.MAPPING_NONE
                or pfn == mm.mpfn_to_pfn(lay, src[i])
            )
        if bad:
            dst[i] = 0
            if first_bad < 0:
                first_bad = i
        else:
            seen[nseen] = pfn
            nseen += 1
    order = np.sort(seen[:nseen])
    for k in range(1, nseen):
        if order[k] == order[k - 1]:
            for i in range(npages):
                if mm.mpfn_to_pfn(lay, dst[i]) == order[k]:
                    dst[i] = 0
                    first_bad = i if first_bad < 0 else min(first_bad, i)
    return first_bad


@kernel(inline=True)
def pin_page(state, pfn):
    """get_user_pages(): an extra reference that makes the page look pinned."""
    mm.get_page(state, pfn)
    state.page["pins"][pfn] += 1


@kernel(inline=True)
def unpin_page(state, pfn):
    state.page["pins"][pfn] -= 1
    mm.put_page(state, pfn)


@kernel
def isolate_by_other(state, pfn):
    """Another isolator takes the page off the LRU (draining the batch it may sit
    in first, as callers of isolate_lru_page() do). Returns 0 or -EBUSY."""
    if mm.has_flag(state, pfn, L.PG_PAGEVEC):
        for cpu in range(L.NR_CPUS):
            mm.drain_cpu(state, cpu)
    if mm.isolate_lru_page(state, pfn) != 0:
        return -L.EBUSY
    mm.set_flag(state, pfn, L.PG_EXT_ISOLATED)
    return 0


@kernel(inline=True)
def putback_by_other(state, pfn):
    mm.clear_flag(state, pfn, L.PG_EXT_ISOLATED)
    mm.putback_lru_page(state, pfn)


@kernel(inline=True)
def lru_add_drain_all(state):
    mm.lru_add_drain_all(state)
