"""The device's own migrate_vma(): its callbacks called directly, so it stays cached.

run_driver() composes the generic passes (kernels.migrate.setup_range_flags, the
device's alloc_and_copy and finish) for one direction. When the setup sweep
took every slot as plain and the device can serve them all, it takes the
batch as a whole (kernels.device.reserve).
"""

import numpy as np

from .. import layout as L
from .. import mm
from .._jit import internal, kernel
from ..args import close_window, valid_device
from ..migrate import setup_range_flags
from .alloc import alloc_and_copy
from .common import dev_index
from .finish import finish_driver
from .reserve import try_reserved


@internal
def run_driver(state, to_device, vma_index, start, end, src, dst, private):
    """migrate_vma() with the device's own callbacks for one direction.

    Called directly rather than through callback arguments, so it stays cached.
    Returns -EINVAL, or the slots that kept VALID and MIGRATE with a destination
    after the pages pass (dmirror's cpages for MIGRATE_TO_SYS). Its scratch is
    in the state, so it runs without reference counting. A to-device batch
    the setup found all plain is taken as a whole (reserve.try_reserved).
    -EINVAL, nothing changed, also for a ``private`` naming no device.
    """
    d = dev_index(private)
    if not valid_device(state, d):
        return np.int64(-L.EINVAL)
    # dmirror_migrate_to_device() / _to_system(): the device's own owner, and
    # SELECT_SYSTEM one way, its own memory's kind the other (modern; 4.14
    # takes neither).
    # Both take whole folios (SELECT_COMPOUND, the device-THP series).
    flags = np.int64(L.MIGRATE_VMA_SELECT_SYSTEM | L.MIGRATE_VMA_SELECT_COMPOUND)
    if not to_device:
        flags = np.int64(L.MIGRATE_VMA_SELECT_DEVICE_PRIVATE | L.MIGRATE_VMA_SELECT_COMPOUND)
        if state.dev[d, L.DEV_KIND] == L.DEVICE_COHERENT:
            flags = np.int64(L.MIGRATE_VMA_SELECT_DEVICE_COHERENT | L.MIGRATE_VMA_SELECT_COMPOUND)
    owner = state.dev[d, L.DEV_OWNER]
    cpages = setup_range_flags(state, vma_index, start, end, src, dst, flags, owner, np.int64(-1))
    if cpages <= 0:
        return min(cpages, 0)
    start = mm.page_down(state, start)
    end = mm.page_down(state, end)
    moved = np.int64(-1)
    if to_device:
        moved = try_reserved(state, vma_index, start, end, src, dst, private)
    if moved < 0:
        alloc_and_copy(state, to_device, src, dst, start, end, private)
        moved = finish_driver(state, to_device, vma_index, start, end, src, dst)
    close_window(state.mig)  # the migration is done: no pages or finalize call follows
    return moved


@kernel(inline=True)
def migrate_vma_to_device(state, vma_index, start, end, src, dst, private):
    """migrate_vma() with the device's ops, all compiled and cached: 0 or -EINVAL."""
    v, s, e = np.int64(vma_index), np.int64(start), np.int64(end)
    return min(migrate_vma_driver(state, True, v, s, e, src, dst, np.int64(private)), 0)


@kernel(inline=True)
def migrate_vma_to_system(state, vma_index, start, end, src, dst, private):
    """migrate_vma() with the device-to-system routine; returns pages moved or -EINVAL."""
    v, s, e = np.int64(vma_index), np.int64(start), np.int64(end)
    return migrate_vma_driver(state, False, v, s, e, src, dst, np.int64(private))


@internal(inline=True)
def migrate_vma_driver(state, to_device, vma_index, start, end, src, dst, private):
    """The one compiled body of both directions' migrate_vma_to_*()."""
    # Typed, not literal, arguments: a literal True/False or 0 would compile
    # the whole pipeline once more for each value.
    v, s, e = np.int64(vma_index), np.int64(start), np.int64(end)
    return run_driver(state, np.bool_(to_device), v, s, e, src, dst, np.int64(private))
