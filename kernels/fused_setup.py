"""migrate_vma_setup()'s fused sweep: collect, prepare and unmap, slot by slot.

Each collected page goes through prepare and unmap as soon as it is collected.
That ends in the state three separate loops reach, because each page's steps
touch only that page, its own mappings and commuting LRU-batch drains;
``migrate.setup_by_passes`` is the unfused form, and
tests/properties/test_fused.py holds the two equal. The walk is collect's
(``collect_extent`` for the PMD level); only the PTE loop adds the two steps.
"""

from . import layout as L
from . import mm
from ._jit import internal
from .collect import collect_extent, collect_pte_slot, prefetch_ahead
from .prepare import prepare_slot, restore_remapped_slot
from .unmap import restore_slot, unmap_slot


@internal(hot=True)
def _prepare_and_unmap_slot(st, slot, src, k, mig):
    """prepare and unmap for a slot just collected. prepare's local
    lru_add_drain() (modern: unmap's) runs before its first page, as in the
    separate pass."""
    if mm.mpfn_to_pfn(st.layout, src[k]) < 0:
        return
    if mig[L.MIG_DRAINED] == 0:
        mm.lru_add_drain(st, mm.this_cpu(st))
        mig[L.MIG_DRAINED] = 1
    if not mm.behaves(st, L.B_LOCK_IN_COLLECT) and prepare_slot(st, src, k, mig):
        restore_remapped_slot(st, slot, src, k)
    elif unmap_slot(st, src, k, mig):
        restore_slot(st, src, k, mig[L.MIG_FAULT_PFN])


@internal(hot=True)
def _setup_ptes(st, v, addr, end, src, dst, mig, unmapped):
    """collect's PTE loop over ``[addr, end)`` with prepare and unmap per slot;
    ``unmapped`` is nonzero when PTEs of this PMD were already cleared (a sweep
    resumed mid-PMD, kernels.parallel)."""
    slot = mm.pte_slot(st, v, addr)
    n = mig[L.MIG_NPAGES]
    count = mm.pages_in(st, end - addr)
    for k in range(count):
        prefetch_ahead(st, slot, k, count)
        unmapped += collect_pte_slot(st, v, slot + k, src, dst, n + k, mig)
        _prepare_and_unmap_slot(st, slot + k, src, n + k, mig)
    mig[L.MIG_NPAGES] = n + count
    if unmapped:
        st.counters[L.C_TLB_FLUSH] += 1  # one flush_tlb_range() per PMD


@internal(hot=True)
def setup_sweep(st, v, start, end, src, dst, mig, unmapped0):
    """collect + prepare + unmap of ``[start, end)`` in one walk.

    Args: st; v: VMA index; start, end: page-aligned range in v; src, dst: the
    range's slots from ``mig[MIG_NPAGES]`` on; mig: the call's scalars;
    unmapped0: the first PMD already had PTEs cleared (kernels.parallel).
    Pre: arguments checked. Post: as migrate_vma_collect(), migrate_vma_prepare()
    and migrate_vma_unmap() one after the other over the range (modern:
    collect, then migrate_device_unmap()).
    """
    ext = mm.pmd_extent(st)
    addr = start
    while addr < end:
        stop = min((addr | (ext - 1)) + 1, end)  # the end of addr's PMD extent
        n = mig[L.MIG_NPAGES]
        if not collect_extent(st, v, addr, stop, src, dst, mig):
            _setup_ptes(st, v, addr, stop, src, dst, mig, unmapped0)
        elif (src[n] & st.layout[L.L_COMPOUND]) != 0:
            _prepare_and_unmap_slot(st, -1, src, n, mig)  # a folio collected whole (modern)
        unmapped0 = 0
        addr = stop
    mig[L.MIG_END] = start + mig[L.MIG_NPAGES] * st.sys[L.SYS_PAGE_SIZE]
