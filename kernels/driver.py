"""Helpers a driver needs, callable from users' ``@njit`` code.

They take ``m.state`` first and return plain scalars; negative values are
``-errno``. Each checks its pfns at entry (kernels.args) and refuses one out
of the machine, or a frame it must not touch, having changed nothing. The
Python ``Machine`` methods of the same names wrap them.
"""

import numpy as np

from . import layout as L
from . import mm
from ._jit import internal, kernel
from ._llvm import memcpy_bytes
from .args import held_refs, valid_pfn

# The helpers below are inlined into users' code, which numba compiles with
# reference counting: there a check that reads the state under a branch
# increfs and decrefs every array of it (~300 ns a call). So each keeps its
# checks in one ``hot`` body, compiled without, or reads the arrays it needs
# first and branches on them alone (unlock_page()).
_NO_UNLOCK = L.PG_FREE | L.PG_ZERO | L.PG_EXT_LOCKED
_UNLOCKED = np.uint32(0xFFFFFFFF) ^ L.PG_LOCKED  # the mask that clears PG_locked
_NO_COPY_ONTO = L.PG_FREE | L.PG_ZERO
_ENGINE_LOCK = L.PG_LOCKED | L.PG_EXT_LOCKED  # PG_LOCKED alone: the engine holds it


@kernel(inline=True)
def alloc_page(state, device):
    """A fresh locked page as a driver's allocator hands it to migrate_vma().

    Args: state, device (bool). Returns the pfn, or -1 when none is free.
    Post: refcount 1 (2 for a device-private page, whose device holds one).
    """
    # The machine's first device: the contract's allocator takes no device index.
    return mm.alloc_locked_page(state, np.int64(0) if device else np.int64(L.RAM_POOL))


@kernel(inline=True)
def alloc_folio(state, device):
    """A fresh locked 2 MiB folio (modern's device THP, B_DEVICE_THP): the head
    pfn of an aligned run of HPAGE_PMD_NR frames of RAM or of the first
    device, refcount 1 on the head; ``dst`` names it with COMPOUND. -1 when no
    aligned run is wholly free, or outside the modern profile."""
    if not mm.behaves(state, L.B_DEVICE_THP):
        return np.int64(-1)
    return mm.alloc_locked_folio(state, np.int64(0) if device else np.int64(L.RAM_POOL))


@kernel(inline=True)
def put_page(state, pfn):
    """put_page(): drop one reference (frees the page at its free count).

    Returns 0, or -22 (-EINVAL, nothing changed) for a pfn outside the machine,
    a free frame, the zero page, or a page (its compound head) whose references
    are all held by its mappings, pins, LRU batch, page cache or device
    (kernels.args.held_refs): a put that is not the caller's to make; -16
    (-EBUSY) for a page a migration in flight holds (a collected source, or a
    destination the pages pass filled).
    """
    return _put_checked(state, pfn)


@internal(hot=True)
def _put_checked(state, pfn):
    """put_page()'s check and put."""
    if not valid_pfn(state, pfn):
        return np.int64(-L.EINVAL)
    head = mm.compound_head(state, pfn)
    if (mm.frame_flags(state, head) & (L.PG_FREE | L.PG_ZERO)) != 0:
        return np.int64(-L.EINVAL)
    if _under_migration(state.page["flags"][head], state.page["mapping"][head]):
        return np.int64(-L.EBUSY)
    if state.page["refcount"][head] <= held_refs(state, head):
        return np.int64(-L.EINVAL)
    mm.put_page(state, head)
    return np.int64(0)


@internal(inline=True)
def _under_migration(flags, mapping):
    """A page a migration in flight holds: locked by the engine (not by
    ``Machine.lock_page``) while it belongs to a mapping, as a collected source
    and a filled destination are until migrate_vma_finalize(). Its references
    and its lock are the migration's, not a driver's to drop."""
    return (flags & _ENGINE_LOCK) == L.PG_LOCKED and mapping != L.MAPPING_NONE


@kernel(inline=True)
def unlock_page(state, pfn):
    """unlock_page(): clear the page lock. Returns 0, or -22 (nothing changed)
    for a pfn outside the machine, a free frame or the zero page, or a page
    locked by someone else (``Machine.lock_page``); -16 (-EBUSY) for a page a
    migration in flight holds locked until migrate_vma_finalize()."""
    # Inlined, on the flags array taken first: no call (measured ~130 ns more
    # between an alloc_page() and a put_page() in users' code) and no read of
    # the state under a branch.
    flags = state.page["flags"]
    mapping = state.page["mapping"]
    if pfn < 0 or pfn >= flags.shape[0] or (flags[pfn] & _NO_UNLOCK) != 0:
        return np.int64(-L.EINVAL)
    if flags[pfn] == 0 and mm.is_fresh(state, pfn):
        return np.int64(-L.EINVAL)  # an untouched frame: free (kernels.page_alloc)
    if (flags[pfn] & _ENGINE_LOCK) == L.PG_LOCKED and mapping[pfn] != L.MAPPING_NONE:
        return np.int64(-L.EBUSY)  # a migration in flight holds it (_under_migration())
    flags[pfn] &= _UNLOCKED
    return np.int64(0)


@kernel(inline=True)
def copy_page(state, dst_pfn, src_pfn):
    """copy_highpage(): copy one frame's bytes (a no-op without stored data).

    Returns 0, or -22 (nothing copied) for a pfn outside the machine or a
    ``dst_pfn`` that is the zero page or a free frame.
    """
    return _copy_checked(state, dst_pfn, src_pfn)


@internal(hot=True)
def _copy_checked(state, dst_pfn, src_pfn):
    if not (valid_pfn(state, src_pfn) and valid_pfn(state, dst_pfn)):
        return np.int64(-L.EINVAL)
    if (mm.frame_flags(state, dst_pfn) & _NO_COPY_ONTO) != 0:
        return np.int64(-L.EINVAL)
    ps = state.sys[L.SYS_PAGE_SIZE]
    if state.sys[L.SYS_STORE_DATA] != 0 and dst_pfn != src_pfn:
        memcpy_bytes(state.data, dst_pfn * ps, state.data, src_pfn * ps, ps)
    return np.int64(0)


@kernel(inline=True)
def migrate_pfn(state, pfn):
    """migrate_pfn(): ``(pfn << SHIFT) | VALID`` in the machine's layout; 0 (no
    VALID bit) for a pfn outside the machine."""
    return _migrate_pfn_checked(state, pfn)


@internal(hot=True)
def _migrate_pfn_checked(state, pfn):
    if not valid_pfn(state, pfn):
        return np.uint64(0)
    return mm.make_mpfn(state.layout, pfn)


@kernel(inline=True)
def mpfn_to_pfn(state, mpfn):
    """The pfn of an mpfn, or -1 when VALID is not set or the pfn is outside the machine."""
    return _pfn_checked(state, np.uint64(mpfn))


@internal(hot=True)
def _pfn_checked(state, mpfn):
    pfn = mm.mpfn_to_pfn(state.layout, mpfn)
    if not valid_pfn(state, pfn):
        return np.int64(-1)
    return pfn


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
