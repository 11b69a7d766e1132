"""make_device_exclusive() and dmirror's EXCLUSIVE / CHECK_EXCLUSIVE (modern).

A device gets temporary exclusive (atomic) access to an anonymous page that
stays in system memory (mm/rmap.c make_device_exclusive(), v5.14 as
make_device_exclusive_range(); the single-address rework of 2025 keeps the
entry's rmap and mapcount): the page is faulted in writable (a PMD mapping
split first: FOLL_SPLIT_PMD), locked, every mirror of the address forgets it
(an MMU_NOTIFY_EXCLUSIVE range, which dmirror's notifier does not skip), and
its PTE becomes a device-exclusive entry. dmirror then maps it tagged ATOMIC.
Any CPU access restores an ordinary PTE (kernels.memory, do_swap_page()'s
remove_device_exclusive_entry()), which fires the notifier again, so the tag
goes; CHECK_EXCLUSIVE reports whether any tag survives.
"""

import numpy as np

from . import layout as L
from . import mm
from ._jit import internal, kernel
from .args import in_vma, valid_device
from .memory import handle_mm_fault
from .zap import split_extent

EOPNOTSUPP = 95


@internal
def make_device_exclusive(st, d, v, addr):
    """make_device_exclusive() + dmirror_atomic_map() for the page at ``addr``.

    Returns 0, or a negative errno with the page as the fault left it:
    -EFAULT when the write fault failed, -EOPNOTSUPP for a page that is not
    anonymous, -EBUSY for a THP or page locked by someone else.
    """
    if split_extent(st, v, addr) != 0:
        return np.int64(-L.EBUSY)
    if handle_mm_fault(st, v, addr, np.bool_(True)) != L.FAULT_OK:
        return np.int64(-L.EFAULT)
    slot = mm.pte_slot(st, v, addr)
    pte = st.pte[slot]
    if mm.pte_kind(pte) != L.PTE_PRESENT or not mm.pte_write(pte):
        return np.int64(-L.EBUSY)
    pfn = mm.pte_pfn(pte)
    if st.page["mapping"][pfn] != L.MAPPING_ANON or mm.is_zone_device(st, pfn):
        return np.int64(-EOPNOTSUPP)
    if not mm.trylock_page(st, pfn):
        return np.int64(-L.EBUSY)
    mm.unmirror_all(st, slot)  # MMU_NOTIFY_EXCLUSIVE: no mirror skips it
    st.pte[slot] = mm.make_pte(L.PTE_EXCLUSIVE, pfn, True)
    st.counters[L.C_TLB_FLUSH] += 1  # ptep_clear_flush()
    st.mirror[d, slot] = (np.int64(pfn) << 1) | 1 | L.MIRROR_ATOMIC
    mm.unlock_page(st, pfn)
    return np.int64(0)


@kernel
def device_exclusive(state, d, v, start, end):
    """dmirror_exclusive() - HMM_DMIRROR_EXCLUSIVE over ``[start, end)`` of VMA ``v``.

    Args: state, d (the device), v (a live anonymous VMA), start and end (page
    aligned, inside it). Returns the pages made exclusive (all of them), or the
    first failure's negative errno (the pages before it stay exclusive), or
    -EINVAL with nothing changed for a bad device, VMA or range.
    """
    ps = state.sys[L.SYS_PAGE_SIZE]
    if not valid_device(state, d) or not in_vma(state, v, start):
        return np.int64(-L.EINVAL)
    if end <= start or end > state.vma["end"][v] or start % ps != 0 or end % ps != 0:
        return np.int64(-L.EINVAL)
    done = 0
    for addr in range(start, end, ps):
        ret = make_device_exclusive(state, d, v, addr)
        if ret < 0:
            return ret
        done += 1
    return np.int64(done)


@kernel
def check_exclusive(state, d, v, start, end):
    """dmirror_check_atomic() - HMM_DMIRROR_CHECK_EXCLUSIVE: 1 when some page of
    ``[start, end)`` of VMA ``v`` is still mapped ATOMIC in device ``d``'s
    mirror, 0 when none is, -EINVAL for a bad device, VMA or range."""
    ps = state.sys[L.SYS_PAGE_SIZE]
    if not valid_device(state, d) or not in_vma(state, v, start):
        return np.int64(-L.EINVAL)
    if end <= start or end > state.vma["end"][v]:
        return np.int64(-L.EINVAL)
    first = mm.pte_slot(state, v, start)
    for k in range((end - start + ps - 1) // ps):
        m = state.mirror[d, first + k]
        if m >= 0 and (m & L.MIRROR_ATOMIC) != 0:
            return np.int64(1)
    return np.int64(0)
