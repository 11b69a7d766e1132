"""What every part of the device model shares: its ``private`` bits, the
one-shot allocation failure and the hand-over of a new device page to a slot."""

import numpy as np

from .. import layout as L
from .. import mm
from .._jit import internal

DEV_KEEP_STATS = 1  # add to copy_stats instead of starting a new record
DEV_NOFAIL = 2  # ignore fail_alloc (eviction uses __GFP_NOFAIL)
# Model the copy and leave its descriptors in the copy scratch, but move no bytes:
# the caller moves them later (the simulation gathers a fault batch's copies into
# one engine copy, kernels.sim.copies). Nothing may read or reuse the frames first.
DEV_DEFER_BYTES = 4
# ``private`` carries the device too, from this bit up: its row in ``state.dev``
# (the dmirror instance a real driver's callbacks would find in ``private``).
DEV_INDEX_SHIFT = 8


@internal(inline=True)
def dev_index(private):
    """The device whose callbacks run, from their ``private`` argument."""
    return np.int64(private) >> DEV_INDEX_SHIFT


@internal(inline=True)
def dev_private(d, bits):
    """The ``private`` of device ``d``'s callbacks with the DEV_* ``bits``."""
    return (np.int64(d) << DEV_INDEX_SHIFT) | np.int64(bits)


@internal(inline=True)
def moves_bytes(sysv, private):
    """Whether this call's copy moves bytes now: the machine stores them and
    the caller did not defer them (DEV_DEFER_BYTES)."""
    return sysv[L.SYS_STORE_DATA] != 0 and (private & DEV_DEFER_BYTES) == 0


@internal(inline=True)
def allocation_fails(st, private):
    """One-shot failure injection (m.device.fail_alloc / HMM_DMIRROR_FLAG_FAIL_ALLOC)."""
    d = dev_index(private)
    if (private & DEV_NOFAIL) == 0 and st.dev[d, L.DEV_FAIL_ALLOC] > 0:
        st.dev[d, L.DEV_FAIL_ALLOC] -= 1
        return True
    return False


@internal(inline=True)
def wants_device_page(state, mpfn):
    """A MIGRATE slot that is not device memory already (device to device
    would need a device-side copy)."""
    lay = state.layout
    if (mpfn & lay[L.L_MIGRATE]) == 0:
        return False
    spfn = mm.mpfn_to_pfn(lay, mpfn)
    return spfn < 0 or not mm.is_device_pfn(state, spfn)


@internal
def hand_over(state, dst, i, mpfn, dpfn, sp, dp, n):
    """Give slot ``i`` its new device page: queue the copy (or zero-fill a
    hole) and write ``dst``. Returns the new number of copy pairs."""
    lay = state.layout
    spfn = mm.mpfn_to_pfn(lay, mpfn)
    if spfn >= 0:
        sp[n] = spfn
        dp[n] = dpfn
        n += 1
    else:
        mm.zero_frame(state, dpfn)
    dst[i] = mm.make_mpfn(lay, dpfn) | lay[L.L_LOCKED] | (mpfn & lay[L.L_WRITE])
    return n


@internal(inline=True)
def take_device_frame(state, pos):
    """device_alloc_page() of the frame at free-stack position ``pos``, which
    the caller ranked: the stack's depth is settled afterwards, for all pops."""
    dpfn = np.int64(state.free_stack[pos])
    mm.unplace_free(state, dpfn, pos)
    mm.init_allocated(state, dpfn)
    mm.trylock_page(state, dpfn)
    return dpfn
