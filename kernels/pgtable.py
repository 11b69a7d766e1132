"""Page-table words, migrate pfns, struct-page flags and address arithmetic.

The leaf helpers every pass uses: PTE/PMD encodings (see :mod:`kernels.layout`),
``MIGRATE_PFN_*`` encoding in the active profile's layout, page and PMD-extent
arithmetic, struct-page flag tests, and the unsigned index the hot loops use.
Re-exported by :mod:`kernels.mm`, the primitives' one namespace.
"""

import numpy as np

from . import layout as L
from ._jit import internal
from ._llvm import prefetch_for_write

_NOT = np.uint32(0xFFFFFFFF)


# --------------------------------------------------------------------- encodings
@internal(inline=True)
def pte_kind(pte):
    return pte & L.PTE_KIND_MASK


@internal(inline=True)
def pte_pfn(pte):
    return np.int64(pte >> L.PTE_PFN_SHIFT)


@internal(inline=True)
def make_pte(kind, pfn, write):
    word = (np.uint64(pfn) << L.PTE_PFN_SHIFT) | kind
    if write:
        word |= L.PTE_WRITE
    return word


@internal(inline=True)
def pte_write(pte):
    return (pte & L.PTE_WRITE) != 0


@internal(inline=True)
def pmd_kind(pmd):
    return pmd & L.PMD_KIND_MASK


@internal(inline=True)
def pmd_maps_folio(kind):
    """A PMD that maps a 2 MiB folio: a THP, or (modern) a device-private PMD entry."""
    return kind == L.PMD_THP or kind == L.PMD_DEVICE


@internal(inline=True)
def make_pmd(kind, pfn, write):
    word = (np.uint64(pfn) << L.PTE_PFN_SHIFT) | kind
    if write:
        word |= L.PMD_WRITE
    return word


@internal(inline=True)
def make_mpfn(lay, pfn):
    """migrate_pfn(): ``(pfn << SHIFT) | VALID`` in the active layout."""
    return (np.uint64(pfn) << lay[L.L_SHIFT]) | lay[L.L_VALID]


@internal(inline=True)
def mpfn_to_pfn(lay, mpfn):
    """migrate_pfn_to_page() as a pfn: -1 unless VALID is set."""
    if (mpfn & lay[L.L_VALID]) == 0:
        return np.int64(-1)
    return np.int64(mpfn >> lay[L.L_SHIFT])


@internal(inline=True)
def page_size(st):
    return st.sys[L.SYS_PAGE_SIZE]


@internal(inline=True)
def pages_in(st, nbytes):
    """``nbytes // page_size``: page sizes are powers of two, so a shift."""
    return nbytes >> st.sys[L.SYS_PAGE_SHIFT]


@internal(inline=True)
def page_down(st, addr):
    """``addr - addr % page_size`` (round down to a page)."""
    return addr & -st.sys[L.SYS_PAGE_SIZE]


@internal(inline=True)
def pte_slot(st, v, addr):
    """PTE slot of ``addr`` inside VMA ``v``."""
    return st.vma["pte_base"][v] + pages_in(st, addr - st.vma["start"][v])


@internal(inline=True)
def pmd_extent(st):
    return st.sys[L.SYS_PAGE_SIZE] * L.HPAGE_PMD_NR


@internal(inline=True)
def pmd_slot(st, v, addr):
    """PMD slot of the 2 MiB extent holding ``addr`` inside VMA ``v``."""
    shift = st.sys[L.SYS_PAGE_SHIFT] + L.HPAGE_PMD_ORDER
    return st.vma["pmd_base"][v] + (addr >> shift) - (st.vma["start"][v] >> shift)


@internal(inline=True)
def is_device_pfn(st, pfn):
    return pfn >= st.sys[L.SYS_NR_RAM]


@internal(inline=True)
def device_of(st, pfn):
    """The device (its row in ``state.dev``) whose frame ``pfn`` is, or RAM_POOL (-1)."""
    if pfn < st.sys[L.SYS_NR_RAM]:
        return np.int64(L.RAM_POOL)
    for d in range(st.dev.shape[0]):
        if pfn < st.dev[d, L.DEV_FIRST_PFN] + st.dev[d, L.DEV_NPAGES]:
            return np.int64(d)
    return np.int64(L.RAM_POOL)


@internal(inline=True)
def is_zone_device(st, pfn):
    """is_zone_device_page(): device frames are ZONE_DEVICE in hmm-v25 and modern
    (the seed's device memory is CPU-addressable, like RAM)."""
    return (st.page["flags"][pfn] & L.PG_ZONE_DEVICE) != 0


@internal(inline=True)
def is_device_private(st, pfn):
    """is_device_private_page(): a ZONE_DEVICE frame that is not device-coherent
    (MEMORY_DEVICE_COHERENT frames are mapped by present PTEs)."""
    return (st.page["flags"][pfn] & L.PG_DEVICE_KIND) == L.PG_ZONE_DEVICE


@internal(inline=True)
def mirror_pfn(m):
    """The frame a mirror entry (``state.mirror[d, slot]`` >= 0) maps."""
    return (m & ~L.MIRROR_ATOMIC) >> 1


@internal(inline=True)
def behaves(st, bit):
    """The profile carries the kernel change ``bit`` (a ``layout.B_*``)."""
    return (st.sys[L.SYS_BEHAVIOUR] & bit) != 0


@internal(inline=True)
def device_base_ref(st, pfn):
    """The reference a ZONE_DEVICE page holds for its device while allocated or
    free: 1 in 4.14 (page_free when a put brings it back to 1), 0 since v6.1
    (free device pages have refcount 0, B_DEVICE_REF0); 0 for other frames."""
    if (st.page["flags"][pfn] & L.PG_ZONE_DEVICE) == 0 or behaves(st, L.B_DEVICE_REF0):
        return 0
    return 1


@internal(inline=True)
def is_zero_pfn(st, pfn):
    return pfn == st.sys[L.SYS_ZERO_PFN]


@internal(inline=True)
def has_flag(st, pfn, flag):
    return (st.page["flags"][pfn] & flag) != 0


@internal(inline=True)
def set_flag(st, pfn, flag):
    st.page["flags"][pfn] |= flag


@internal(inline=True)
def clear_flag(st, pfn, flag):
    st.page["flags"][pfn] &= _NOT ^ flag


@internal(inline=True)
def compound_head(st, pfn):
    if has_flag(st, pfn, L.PG_TAIL):
        return pfn - pfn % L.HPAGE_PMD_NR
    return pfn


@internal(inline=True)
def ix(i):
    """``i`` as an index numba uses as is: an unsigned one. Only for ``i >= 0``.

    numba wraps every signed index (``a[-1]`` is the last element), which
    costs a shift, an and and an add per access. In the sweeps' hot loops,
    whose indices are never negative, that was measured at 15-30% of a loop's
    time (a stripped-down finish loop, int64 against uint64 indices)."""
    return np.uint64(i)


@internal(inline=True)
def prefetch_page(st, pfn):
    """Prefetch a struct page (one cache line: records are 32 bytes, aligned)."""
    prefetch_for_write(st.page["refcount"], pfn)
