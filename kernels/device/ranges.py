"""dmirror's range operations: migrate to the device, back to the system, and evict.

Each walks the VMAs that cover a process's range (mm.find_vma()) and runs the
device's own pipeline over each piece, one window of at most the range
scratch's slots (``RANGE_WINDOW``) per migrate_vma() call, as dmirror does
with its 64-entry arrays. A window ends on a 2 MiB boundary unless the piece
ends first, so no window splits a folio's extent.
"""

import numpy as np

from .. import layout as L
from .. import mm
from .._jit import internal, kernel
from ..args import valid_device
from .common import DEV_KEEP_STATS, DEV_NOFAIL, dev_index, dev_private
from .evict import evict_device
from .mirror import mirrored_pages
from .pipeline import migrate_vma_driver, migrate_vma_to_system


@kernel(inline=True)
def migrate_to_device(state, mm_id, start, end):
    """dmirror_migrate_to_device() of the machine's first device (``m.device``).

    Returns the number of pages of the range the device now maps, or -EINVAL
    when a piece is not covered by a readable VMA (the driver's own check), or
    the range is reversed. All pieces are checked first: on -EINVAL nothing
    has changed (where dmirror may have migrated the pieces before a gap).
    """
    s, e = np.int64(start), np.int64(end)
    return migrate_range_to_device(state, np.int64(0), np.int64(mm_id), s, e)


@internal(hot=True)
def _covered(state, mm_id, start, end, need):
    """Every address of ``[start, end)`` lies in a VMA of process ``mm_id`` with
    the VM_* flags ``need``; a reversed range is not covered, an empty one is."""
    if end < start:
        return False
    addr = start
    while addr < end:
        v = mm.find_vma(state, mm_id, addr)
        if v < 0 or (state.vma["flags"][v] & need) != need:
            return False
        addr = state.vma["end"][v]
    return True


@internal(inline=True)
def window_end(state, addr, stop):
    """Where the window of a range operation that starts at ``addr`` ends:
    ``stop`` when the range scratch holds every page up to it, else the last
    2 MiB boundary the scratch reaches (it holds a multiple of HPAGE_PMD_NR
    slots, so that boundary lies past ``addr``)."""
    reach = addr + state.range_src.shape[0] * mm.page_size(state)
    if reach >= stop:
        return stop
    return reach - reach % mm.pmd_extent(state)


@internal(inline=True)
def migrate_range_to_device(state, d, mm_id, start, end):
    """dmirror_migrate_to_device() of device ``d``: migrate every VMA piece of
    ``[start, end)``; returns the pages of the range device ``d`` now maps, or
    -EINVAL (nothing changed). One call from users' code, checks included."""
    if not valid_device(state, d) or not _covered(state, mm_id, start, end, L.VM_READ):
        return np.int64(-L.EINVAL)
    private = dev_private(d, DEV_KEEP_STATS)
    state.copy_stats[:] = 0.0
    addr = start
    mapped = 0
    while addr < end:
        v = mm.find_vma(state, mm_id, addr)
        stop = window_end(state, addr, min(end, state.vma["end"][v]))
        n = mm.pages_in(state, stop - addr)
        src = state.range_src[:n]
        dst = state.range_dst[:n]
        moved = migrate_vma_driver(state, True, v, addr, stop, src, dst, private)
        if moved == n:
            mapped += n  # every slot moved, so every slot is mirrored: no need to count
        else:
            mapped += mirrored_pages(state, d, v, addr, stop)
        addr = stop
    return mapped


@kernel(inline=True)
def migrate_to_system(state, mm_id, start, end, private):
    """dmirror_migrate_to_system(): move the range's device pages back to RAM.

    Returns the number of pages moved, or -EINVAL, nothing changed, for a
    range not covered by VMAs or reversed, or a ``private`` naming no device."""
    s, e = np.int64(start), np.int64(end)
    return migrate_range_to_system(state, np.int64(mm_id), s, e, np.int64(private))


@internal(inline=True)
def migrate_range_to_system(state, mm_id, start, end, private):
    """migrate_to_system()'s body (and migrate_to_system_at()'s): the checks,
    then each VMA piece through the device-to-system pipeline."""
    if not valid_device(state, dev_index(private)) or not _covered(state, mm_id, start, end, 0):
        return np.int64(-L.EINVAL)
    if (private & DEV_KEEP_STATS) == 0:
        state.copy_stats[:] = 0.0
    addr = start
    moved = 0
    while addr < end:
        v = mm.find_vma(state, mm_id, addr)
        stop = window_end(state, addr, min(end, state.vma["end"][v]))
        n = mm.pages_in(state, stop - addr)
        src = state.range_src[:n]
        dst = state.range_dst[:n]
        moved += max(
            migrate_vma_to_system(state, v, addr, stop, src, dst, private | DEV_KEEP_STATS), 0
        )
        addr = stop
    return moved


@kernel
def evict_one(state, d):
    """Device ``d``'s removal: evict() in 4.14 (every VMA, every device's pages),
    evict_device() of ``d`` alone in modern. -EINVAL for no such device."""
    if not valid_device(state, np.int64(d)):
        return np.int64(-L.EINVAL)
    if mm.behaves(state, L.B_DEVICE_REF0):
        state.copy_stats[:] = 0.0
        return evict_device(state, np.int64(d))
    return evict(state)


@kernel
def evict(state):
    """Move every device page of every process back to RAM (driver removal).

    Allocations cannot fail here (__GFP_NOFAIL). Returns the pages moved.
    4.14 walks every VMA with migrate_vma(); modern (v6.1) migrates each
    device's frames by pfn (kernels.device.evict), pages mapped nowhere too.
    """
    state.copy_stats[:] = 0.0
    moved = 0
    if mm.behaves(state, L.B_DEVICE_REF0):
        for d in range(state.dev.shape[0]):
            moved += evict_device(state, d)
        return moved
    for v in range(state.sys[L.SYS_NR_VMAS]):
        if state.vma["live"][v] == 0:
            continue
        if (state.vma["flags"][v] & (L.VM_HUGETLB | L.VM_SPECIAL)) != 0:
            continue
        moved += migrate_to_system(
            state,
            state.vma["mm"][v],
            state.vma["start"][v],
            state.vma["end"][v],
            DEV_NOFAIL | DEV_KEEP_STATS,
        )
    return moved
