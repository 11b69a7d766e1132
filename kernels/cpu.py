"""CPU loads, stores and page-table lookups, callable from users' ``@njit`` code.

They take ``m.state`` first and return plain scalars or ``FAULT_*`` codes; the
Python ``Process`` methods of the same names wrap them.
"""

import numpy as np

from . import layout as L
from . import mm
from ._jit import internal, kernel
from .memory import access_vm

# translate() kinds, in Pte.kind order.
TR_NONE, TR_PRESENT, TR_ZERO, TR_SWAP, TR_MIGRATION, TR_DEVICE, TR_ERROR, TR_EXCLUSIVE = range(8)

TRANSLATE_KINDS = ("none", "present", "zero", "swap", "migration", "device", "error", "exclusive")


@kernel(inline=True)
def cpu_read(state, mm_id, addr, buf):
    """A CPU load of ``buf.size`` bytes at ``addr`` in process ``mm_id``, with the
    fault path (device pages fault back). Returns FAULT_* (0 = ok; FAULT_SEGV
    outside the process's VMAs, also for an ``mm_id`` no process has), or -22
    (-EINVAL, nothing done) when the machine keeps no bytes (``store_data=False``)
    or ``buf`` is not contiguous."""
    return _access_checked(state, mm_id, addr, buf, np.bool_(False))


@kernel(inline=True)
def cpu_write(state, mm_id, addr, buf):
    """A CPU store of ``buf`` at ``addr`` (faults in, breaks COW). Returns FAULT_*,
    or -22 as cpu_read()."""
    return _access_checked(state, mm_id, addr, buf, np.bool_(True))


@internal(hot=True)
def _access_checked(state, mm_id, addr, buf, write):
    """access_vm() over all of ``buf``, or -EINVAL unless the machine has bytes
    to copy and ``buf``'s are one contiguous run (the copy is a raw memcpy of
    ``buf.size`` bytes from its first). A hot body, not inlined checks: see
    kernels.driver."""
    if state.sys[L.SYS_STORE_DATA] == 0 or (buf.shape[0] > 1 and buf.strides[0] != 1):
        return np.int64(-L.EINVAL)
    status, _ = access_vm(state, mm_id, addr, buf, buf.shape[0], write)
    return status


@kernel
def translate(state, mm_id, addr):
    """Walk the page table: (TR_* kind, pfn or -1, writable, huge); TR_NONE
    outside the process's VMAs, also for an ``mm_id`` no process has."""
    v = mm.find_vma(state, mm_id, addr)
    if v < 0:
        return TR_NONE, -1, False, False
    pword = state.pmd[mm.pmd_slot(state, v, addr)]
    pk = mm.pmd_kind(pword)
    if pk == L.PMD_NONE:
        return TR_NONE, -1, False, False
    if pk == L.PMD_HUGE_ZERO:
        return TR_ZERO, state.sys[L.SYS_ZERO_PFN], False, True
    if pk == L.PMD_THP or pk == L.PMD_DEVICE or pk == L.PMD_MIGRATION:
        pfn = mm.pte_pfn(pword) + (addr % mm.pmd_extent(state)) // mm.page_size(state)
        tr = TR_PRESENT if pk == L.PMD_THP else TR_DEVICE if pk == L.PMD_DEVICE else TR_MIGRATION
        return tr, pfn, (pword & L.PMD_WRITE) != 0, True
    pte = state.pte[mm.pte_slot(state, v, addr)]
    kind = mm.pte_kind(pte)
    pfn = mm.pte_pfn(pte)
    write = mm.pte_write(pte)
    if kind == L.PTE_NONE:
        return TR_NONE, -1, False, False
    if kind == L.PTE_PRESENT:
        if mm.is_zero_pfn(state, pfn):
            return TR_ZERO, pfn, False, False
        return TR_PRESENT, pfn, write, False
    if kind == L.PTE_SWAP:
        return TR_SWAP, -1, False, False
    if kind == L.PTE_MIGRATION:
        return TR_MIGRATION, pfn, write, False
    if kind == L.PTE_DEVICE:
        return TR_DEVICE, pfn, write, False
    if kind == L.PTE_EXCLUSIVE:
        return TR_EXCLUSIVE, pfn, write, False
    return TR_ERROR, -1, False, False
