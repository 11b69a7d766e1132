"""dmirror's mirror page table and its ``finalize_and_map`` callbacks.

``state.mirror[d]`` is device ``d``'s: per PTE slot, the frame of its own the
device maps there (``pfn << 1 | write``, mirror_entry()) or -1. A page is
recorded in the mirror of the device that owns it.
"""

import numpy as np

from .. import layout as L
from .. import mm
from .._jit import internal, kernel
from ..args import continue_args, valid_device
from .common import dev_index


@internal(hot=True)
def callback_args(state, vma_index, src, dst, start, end, private):
    """The checks of the four device callbacks: those of migrate_vma_pages()
    (the range setup collected, in a live VMA, arrays that hold it) and a
    ``private`` naming a device. Returns npages, or -EINVAL."""
    npages = continue_args(state, vma_index, start, end, src, dst)
    if npages >= 0 and not valid_device(state, dev_index(private)):
        return np.int64(-L.EINVAL)
    return npages


@internal(inline=True)
def mirror_entry(lay, dpfn, dst_mpfn):
    """dmirror's mirror page-table entry for device frame ``dpfn``: the frame and,
    in bit 0, whether the destination was handed over writable."""
    return (dpfn << 1) | (1 if (dst_mpfn & lay[L.L_WRITE]) != 0 else 0)


@internal(hot=True)
def mirror_slot(state, slot, src, dst, i):
    """dmirror_migrate_finalize_and_map() for slot ``i``: map a page that moved
    to the device in the mirror page table."""
    lay = state.layout
    if (src[i] & lay[L.L_MIGRATE]) == 0:
        return
    dpfn = mm.mpfn_to_pfn(lay, dst[i])
    d = mm.device_of(state, dpfn)  # RAM_POOL for RAM, no page, or a pfn past every device
    if d < 0:
        return
    state.mirror[d, slot] = mirror_entry(lay, dpfn, dst[i])
    if (dst[i] & lay[L.L_COMPOUND]) != 0:
        entry = dst[i]
        for j in range(1, L.HPAGE_PMD_NR):  # a folio: one entry per page (modern)
            state.mirror[mm.ix(d), mm.ix(slot + j)] = mirror_entry(lay, dpfn + j, entry)


@internal(hot=True)
def unmirror_slot(state, slot, src, dst, i):
    """The device-to-system finalize_and_map for slot ``i``: forget a page that
    left the device."""
    lay = state.layout
    moved = (src[i] & lay[L.L_MIGRATE]) != 0 and mm.mpfn_to_pfn(lay, dst[i]) >= 0
    if not moved:
        return
    d = mm.device_of(state, mm.mpfn_to_pfn(lay, src[i]))
    if d >= 0:
        state.mirror[d, slot] = -1
        if (src[i] & lay[L.L_COMPOUND]) != 0:
            state.mirror[d, slot : slot + L.HPAGE_PMD_NR] = -1


@kernel(inline=True)
def device_finalize_and_map(state, vma_index, src, dst, start, end, private):
    """dmirror_migrate_finalize_and_map() - record migrated pages in the mirror.

    Post: every slot that kept MIGRATE with a device destination is mapped in
    the device's mirror page table, writable when ``dst`` has WRITE.
    Does nothing on a bad argument (callback_args()).
    """
    v, s, e = np.int64(vma_index), np.int64(start), np.int64(end)
    finalize_and_map(state, True, v, src, dst, s, e, np.int64(private))


@internal(hot=True)
def finalize_and_map(state, to_device, vma_index, src, dst, start, end, private):
    """Both directions' finalize_and_map: map (or forget) each moved page in the mirror."""
    npages = callback_args(state, vma_index, src, dst, start, end, private)
    if npages < 0:
        return
    slot0 = mm.pte_slot(state, vma_index, mm.page_down(state, start))
    for i in range(npages):
        if to_device:
            mirror_slot(state, slot0 + i, src, dst, i)
        else:
            unmirror_slot(state, slot0 + i, src, dst, i)


@kernel(inline=True)
def system_finalize_and_map(state, vma_index, src, dst, start, end, private):
    """Erase the mirror entries of pages that left the device (nothing on a bad
    argument, as device_finalize_and_map())."""
    v, s, e = np.int64(vma_index), np.int64(start), np.int64(end)
    finalize_and_map(state, False, v, src, dst, s, e, np.int64(private))


@internal(inline=True)
def moved_count(lay, src, dst, i):
    """The pages slot ``i`` moved: a slot with VALID and MIGRATE and a
    destination after the pages pass, 512 for a folio (COMPOUND). dmirror's
    cpages for MIGRATE_TO_SYS counts a folio once; the contract counts pages."""
    if mm.mpfn_to_pfn(lay, src[i]) < 0 or (src[i] & lay[L.L_MIGRATE]) == 0:
        return 0
    if mm.mpfn_to_pfn(lay, dst[i]) < 0:
        return 0
    return L.HPAGE_PMD_NR if (src[i] & lay[L.L_COMPOUND]) != 0 else 1


@internal
def mirrored_pages(st, d, v, start, end):
    """How many pages of ``[start, end)`` device ``d``'s mirror maps."""
    slot0 = mm.pte_slot(st, v, start)
    count = 0
    for k in range(mm.pages_in(st, end - start)):
        if st.mirror[d, slot0 + k] >= 0:
            count += 1
    return count
