"""The device's own accesses: hmm_range_fault() and dmirror's READ, WRITE and SNAPSHOT.

A device that mirrors a process (lib/test_hmm.c, dmirror) reaches its memory
through its *mirror page table* (``state.mirror[d]``, one entry per PTE slot:
``pfn << 1 | write``). A load or store of the device looks the page up there;
a miss makes the driver fault the rest of the range in with hmm_range_fault()
(mm/hmm.c) and record what it returns, then try again. SNAPSHOT walks the CPU
page table without faulting and encodes each page in the uapi's
``HMM_DMIRROR_PROT_*`` byte.

**Which kernel.** ``seed`` and ``hmm-v25`` are Linux 4.14, whose
mm/hmm.c had hmm_vma_fault() and hmm_vma_get_pfns() in place of today's
hmm_range_fault(). The walk (:func:`_walk_page`) follows 4.14's
hmm_vma_walk_pmd():

* a device-private entry (hmm-v25; seed has none) is reported as a device pfn
  (4.14's ``HMM_PFN_DEVICE_UNADDRESSABLE``), *whichever device owns it*, and is
  never migrated back for a read. 4.14 had no owner: "mm/hmm: check the device
  private page owner in hmm_range_fault()" (Linux 5.7) made a fault migrate
  another owner's page back to RAM through the CPU fault path and a snapshot
  report it as empty; neither 4.14 profile does, the modern one does
  (:func:`_device_entry`), and reports its own pages in place, never faulting
  them;
* a *write* fault on a read-only device-private entry goes to the fault path
  (handle_mm_fault(), which calls the device's fault handler: the page comes
  back to RAM, then COW is broken as for a CPU store), as 4.14 did;
* a migration entry makes a faulting walk wait for the migration and start
  again (-EAGAIN). From Python no migration is ever in flight, so the model
  returns FAULT_RETRY instead of waiting; a snapshot reports the page empty;
* a VMA without VM_READ: 4.14 reported its entries without ``HMM_PFN_READ``
  (an empty entry stays empty: ``HMM_DMIRROR_PROT_NONE``) and faulted them
  through handle_mm_fault() regardless. The fault is refused here
  (FAULT_SEGV), as dmirror's -EFAULT after "mm/hmm: remove HMM_PFN_READ flag
  and ignore peculiar architecture" (Linux 4.17) made hmm_vma_fault() refuse
  such VMAs; the snapshot keeps 4.14's empty entries. Later kernels report
  those pages, and pages outside every VMA, as ``HMM_DMIRROR_PROT_ERROR``
  ("mm/hmm: return error for non-vma snapshots", 9cee0e8c6f1e, Linux 5.7);
  here a page outside every VMA is ERROR too: 4.14's hmm_vma_get_pfns()
  refused a range outside its VMA with -EINVAL, so a driver could only report
  it as an error.

Seed's device frames are CPU-addressable device memory mapped by present PTEs:
the walk reports them as any present page and the snapshot codes them
``HMM_DMIRROR_PROT_DEV_COHERENT_LOCAL`` (``_REMOTE`` for another device's),
the uapi's code for device memory the CPU maps.

4.14's ``hmm_pfn_t`` carried no mapping order; the ``HMM_PFN_PMD`` bit here
(the snapshot's ``HMM_DMIRROR_PROT_PMD``) is what modern kernels report with
the map order ("mm/hmm: provide the page mapping order in hmm_range_fault()",
Linux 5.10). Every profile reports it, as the uapi defines it.

The mirror stays coherent with the CPU page table because every path that
takes a mapping away from a slot invalidates every device's entry there (zap,
COW, fork, the THP copy paths, migration's remove_migration_pte(), insert over
the zero page), as dmirror's mmu-interval notifier does; ``m.check()`` verifies
that each mirror entry maps what the page table maps at its slot.
"""

import numpy as np

from .. import layout as L
from .. import mm
from .._jit import internal, kernel
from .._llvm import memcpy_bytes
from ..args import range_in_vma, valid_device
from ..memory import handle_mm_fault

# The walk's per-page result, an hmm_pfn: flags in the low byte, the pfn above.
HMM_PFN_VALID = np.uint64(1 << 0)  # a page is mapped there
HMM_PFN_READ = np.uint64(1 << 1)  # 4.14: the VMA has VM_READ
HMM_PFN_WRITE = np.uint64(1 << 2)  # mapped writable
HMM_PFN_ERROR = np.uint64(1 << 3)  # an entry no access can use (hwpoison-style)
HMM_PFN_DEVICE_PRIVATE = np.uint64(1 << 4)  # 4.14's HMM_PFN_DEVICE_UNADDRESSABLE
HMM_PFN_PMD = np.uint64(1 << 5)  # mapped by a PMD (the map order of later kernels)
HMM_PFN_SHIFT = np.uint64(8)
HMM_PFN_NONE = np.uint64(0)

# What the walk asks of its caller for one page.
_WALK_DONE = 0  # the entry is final
_WALK_FAULT = 1  # handle_mm_fault() first, then walk the page again
_WALK_WAIT = 2  # a migration entry: wait for the migration (-EAGAIN)

_RETRIES = 4  # faults per page before giving up (FAULT_RETRY), as the CPU path


@internal(inline=True)
def _hmm_pfn(pfn, flags):
    return (np.uint64(pfn) << HMM_PFN_SHIFT) | flags


@internal(inline=True)
def hmm_pfn_to_pfn(entry):
    """The frame of an hmm_pfn (meaningful with HMM_PFN_VALID)."""
    return np.int64(entry >> HMM_PFN_SHIFT)


@internal(hot=True)
def _walk_page(st, v, addr, fault, write, owner):
    """4.14's hmm_vma_walk_pmd() for one page: (hmm_pfn, _WALK_*).

    ``fault``: the access must be possible afterwards (hmm_vma_fault());
    without it nothing is asked for (hmm_vma_get_pfns()). ``owner``: the
    walker's ``dev_private_owner`` (modern only, see _device_entry()).
    """
    read = HMM_PFN_READ if (st.vma["flags"][v] & L.VM_READ) != 0 else HMM_PFN_NONE
    pword = st.pmd[mm.pmd_slot(st, v, addr)]
    pk = mm.pmd_kind(pword)
    if pk == L.PMD_NONE:
        return HMM_PFN_NONE, _WALK_FAULT if fault else _WALK_DONE
    if pk == L.PMD_HUGE_ZERO:
        entry = _hmm_pfn(st.sys[L.SYS_ZERO_PFN], HMM_PFN_VALID | HMM_PFN_PMD | read)
        return entry, _WALK_FAULT if fault and write else _WALK_DONE
    if pk == L.PMD_THP:
        pfn = mm.pte_pfn(pword) + mm.pages_in(st, addr % mm.pmd_extent(st))
        writable = (pword & L.PMD_WRITE) != 0
        flags = HMM_PFN_VALID | HMM_PFN_PMD | read
        if writable:
            flags |= HMM_PFN_WRITE
        return _hmm_pfn(pfn, flags), _WALK_FAULT if write and not writable else _WALK_DONE
    if pk == L.PMD_DEVICE:
        # hmm_vma_handle_absent_pmd() (modern, B_DEVICE_THP): the owner's own
        # folio is reported in place at PMD order; another's is faulted back
        pfn = mm.pte_pfn(pword) + mm.pages_in(st, addr % mm.pmd_extent(st))
        if st.dev[mm.device_of(st, pfn), L.DEV_OWNER] == owner:
            flags = HMM_PFN_VALID | HMM_PFN_DEVICE_PRIVATE | HMM_PFN_PMD | read
            if (pword & L.PMD_WRITE) != 0:
                flags |= HMM_PFN_WRITE
            return _hmm_pfn(pfn, flags), _WALK_DONE
        return HMM_PFN_NONE, _WALK_FAULT if fault else _WALK_DONE
    if pk == L.PMD_MIGRATION:
        return HMM_PFN_NONE, _WALK_WAIT if fault else _WALK_DONE
    pte = st.pte[mm.pte_slot(st, v, addr)]
    kind = mm.pte_kind(pte)
    writable = mm.pte_write(pte)
    wflag = HMM_PFN_WRITE if writable else HMM_PFN_NONE
    if kind == L.PTE_PRESENT:
        entry = _hmm_pfn(mm.pte_pfn(pte), HMM_PFN_VALID | wflag | read)
        return entry, _WALK_FAULT if write and not writable else _WALK_DONE
    if kind == L.PTE_DEVICE:
        return _device_entry(st, pte, fault, write, owner, wflag | read)
    if kind == L.PTE_MIGRATION:
        return HMM_PFN_NONE, _WALK_WAIT if fault else _WALK_DONE
    if kind == L.PTE_ERROR:
        return HMM_PFN_ERROR, _WALK_DONE
    # pte_none() or a swap entry: fault it in (do_anonymous_page, do_swap_page...).
    return HMM_PFN_NONE, _WALK_FAULT if fault else _WALK_DONE


@internal(inline=True)
def _device_entry(st, pte, fault, write, owner, flags):
    """A device-private entry in the walk.

    4.14: reported in place, whoever owns it; only a write to a read-only entry
    faults (and so migrates the page back). modern ("mm/hmm: check the device
    private page owner in hmm_range_fault()", v5.7; "mm/hmm: fault non-owner
    device private entries", v6.1): a page of the walker's own owner is
    reported as it is, never faulted; another owner's page is faulted back to
    RAM when the walk faults, and not reported (not VALID) when it does not.
    """
    pfn = mm.pte_pfn(pte)
    if mm.behaves(st, L.B_SELECT):
        if st.dev[mm.device_of(st, pfn), L.DEV_OWNER] == owner:
            return _hmm_pfn(pfn, HMM_PFN_VALID | HMM_PFN_DEVICE_PRIVATE | flags), _WALK_DONE
        return HMM_PFN_NONE, _WALK_FAULT if fault else _WALK_DONE
    entry = _hmm_pfn(pfn, HMM_PFN_VALID | HMM_PFN_DEVICE_PRIVATE | flags)
    return entry, _WALK_FAULT if write and not mm.pte_write(pte) else _WALK_DONE


@kernel
def hmm_range_fault(state, vma_index, start, end, fault, write, pfns):
    """hmm_range_fault() with no ``dev_private_owner`` (see hmm_range_fault_owner())."""
    o = np.int64(L.OWNER_NONE)
    return hmm_range_fault_owner(state, vma_index, start, end, fault, write, pfns, o)


@internal
def hmm_range_fault_owner(state, vma_index, start, end, fault, write, pfns, owner):
    """hmm_range_fault() - snapshot, and optionally fault in, a range of one VMA.

    4.14's hmm_vma_fault() (``fault`` True) or hmm_vma_get_pfns() (False); the
    branches that differ from later kernels are listed in the module docstring.

    Args:
        state: the machine. vma_index: a live VMA. start, end: a page-aligned
        range inside it. fault: fault every page in so the access can proceed
        (HMM_PFN_REQ_FAULT). write: the access is a store (HMM_PFN_REQ_WRITE).
        pfns: uint64, at least ``(end - start) / page_size`` entries, written
        with one hmm_pfn per page (``HMM_PFN_*`` flags, pfn << HMM_PFN_SHIFT).
    Pre: no migration in progress on the range; with ``fault``, the VMA allows
    the access (VM_READ, and VM_WRITE for a store).
    Post: FAULT_OK and ``pfns`` filled: with ``fault`` every entry is VALID
    (WRITE for a store) or ERROR, the page tables changed exactly as the CPU
    fault path would have changed them. Otherwise the first failing fault's
    FAULT_* code (SEGV for a forbidden access, SIGBUS when a device page cannot
    come back, OOM, RETRY behind a migration entry); the pages before it stay
    faulted in. FAULT_SEGV, nothing done, on a bad VMA, range or ``pfns``.
    """
    v, s, e = np.int64(vma_index), np.int64(start), np.int64(end)
    if not range_in_vma(state, v, s, e) or s != mm.page_down(state, s):
        return L.FAULT_SEGV
    n = mm.pages_in(state, e - s)
    if e != s + n * mm.page_size(state) or pfns.shape[0] < n:
        return L.FAULT_SEGV
    vflags = state.vma["flags"][v]
    if fault and ((vflags & L.VM_READ) == 0 or (write and (vflags & L.VM_WRITE) == 0)):
        return L.FAULT_SEGV
    ps = mm.page_size(state)
    for i in range(n):
        addr = s + i * ps
        status = L.FAULT_RETRY
        for _ in range(_RETRIES):
            entry, action = _walk_page(state, v, addr, fault, write, owner)
            pfns[i] = entry
            if action == _WALK_DONE:
                status = L.FAULT_OK
                break
            if action == _WALK_WAIT:
                break  # nothing can finish a migration from here: FAULT_RETRY
            ret = handle_mm_fault(state, v, np.int64(addr), np.bool_(write))
            if ret != L.FAULT_OK:
                status = ret
                break
        if status != L.FAULT_OK:
            return status
    return L.FAULT_OK


@internal
def dmirror_range_fault(st, d, v, start, end, write, pfns):
    """dmirror_range_fault() + dmirror_do_fault(): fault ``[start, end)`` of VMA
    ``v`` in and record every page in device ``d``'s mirror, tagged writable
    when the walk saw it writable. Returns FAULT_*; an ERROR entry after a
    successful fault is FAULT_SIGBUS (dmirror warns and fails the access)."""
    owner = st.dev[d, L.DEV_OWNER]
    status = hmm_range_fault_owner(st, v, start, end, np.bool_(True), np.bool_(write), pfns, owner)
    if status != L.FAULT_OK:
        return status
    slot0 = mm.pte_slot(st, v, start)
    for i in range(mm.pages_in(st, end - start)):
        entry = pfns[i]
        if (entry & HMM_PFN_ERROR) != 0:
            return L.FAULT_SIGBUS
        if (entry & HMM_PFN_VALID) == 0:
            return L.FAULT_RETRY
        w = 1 if (entry & HMM_PFN_WRITE) != 0 else 0
        st.mirror[d, slot0 + i] = (hmm_pfn_to_pfn(entry) << 1) | w
    return L.FAULT_OK


@kernel
def device_access(state, d, mm_id, addr, buf, nbytes, write, pfns):
    """dmirror_read() / dmirror_write() - the device loads or stores through its mirror.

    Args:
        state, d (the device's row in ``state.dev``), mm_id (the process),
        addr and nbytes (any byte range), buf (uint8, ``nbytes``: filled by a
        load, copied from by a store), write, pfns (uint64 scratch for the
        range faults, one entry per page the range spans).
    Pre: the range lies in VMAs that allow the access; the machine keeps bytes.
    Post: (FAULT_OK, nbytes, faults): every page of the range is in the
    device's mirror (writable for a store) and the bytes were copied through
    it: a device-private page of the device's in place, from its frame.
    ``faults`` counts the range faults (dmirror's ``cmd.faults``). Otherwise
    the first failure's FAULT_* code and the bytes done before it. FAULT_SEGV,
    nothing done, for a bad device, a short ``buf`` or a machine without bytes.
    """
    faults = 0
    if not valid_device(state, d) or buf.shape[0] < nbytes or state.sys[L.SYS_STORE_DATA] == 0:
        return L.FAULT_SEGV, 0, faults
    ps = mm.page_size(state)
    last = mm.page_down(state, addr + nbytes - 1) + ps if nbytes > 0 else addr
    done = 0
    while done < nbytes:
        a = addr + done
        v = mm.find_vma(state, mm_id, a)
        if v < 0:
            return L.FAULT_SEGV, done, faults
        slot = mm.pte_slot(state, v, a)
        m = state.mirror[d, slot]
        if m < 0 or (write and (m & 1) == 0):
            # A miss: fault the rest of the range (this VMA's part) in, then retry.
            fstart = mm.page_down(state, a)
            fend = min(last, state.vma["end"][v], fstart + pfns.shape[0] * ps)
            if fend <= fstart:
                return L.FAULT_RETRY, done, faults
            status = dmirror_range_fault(state, d, v, fstart, fend, write, pfns)
            faults += 1
            if status != L.FAULT_OK:
                return status, done, faults
            m = state.mirror[d, slot]
            if m < 0 or (write and (m & 1) == 0):
                return L.FAULT_RETRY, done, faults
        pfn = mm.mirror_pfn(m)
        off = a % ps
        n = min(ps - off, nbytes - done)
        if write:
            memcpy_bytes(state.data, pfn * ps + off, buf, done, n)
            if not mm.is_device_pfn(state, pfn):
                mm.set_flag(state, pfn, L.PG_DIRTY)
        else:
            memcpy_bytes(buf, done, state.data, pfn * ps + off, n)
        done += n
    return L.FAULT_OK, nbytes, faults


@internal(inline=True)
def dmirror_mkentry(st, d, entry):
    """dmirror_mkentry(): one hmm_pfn as its HMM_DMIRROR_PROT_* byte for device ``d``."""
    if (entry & HMM_PFN_ERROR) != 0:
        return L.HMM_DMIRROR_PROT_ERROR
    if (entry & HMM_PFN_VALID) == 0:
        return L.HMM_DMIRROR_PROT_NONE
    pfn = hmm_pfn_to_pfn(entry)
    owner = mm.device_of(st, pfn)
    perm = L.HMM_DMIRROR_PROT_NONE
    if owner >= 0 and (entry & HMM_PFN_DEVICE_PRIVATE) != 0:
        perm = L.HMM_DMIRROR_PROT_DEV_PRIVATE_LOCAL
        if owner != d:
            perm = L.HMM_DMIRROR_PROT_DEV_PRIVATE_REMOTE
    elif owner >= 0:
        # seed: CPU-addressable device memory, mapped by a present PTE.
        perm = L.HMM_DMIRROR_PROT_DEV_COHERENT_LOCAL
        if owner != d:
            perm = L.HMM_DMIRROR_PROT_DEV_COHERENT_REMOTE
    elif mm.is_zero_pfn(st, pfn):
        perm = L.HMM_DMIRROR_PROT_ZERO
    if (entry & HMM_PFN_WRITE) != 0:
        perm |= L.HMM_DMIRROR_PROT_WRITE
    elif (entry & HMM_PFN_READ) != 0:
        perm |= L.HMM_DMIRROR_PROT_READ
    if (entry & HMM_PFN_PMD) != 0:
        perm |= L.HMM_DMIRROR_PROT_PMD
    return perm


@kernel
def device_snapshot(state, d, mm_id, start, end, out, pfns):
    """dmirror_snapshot() - what device ``d`` would see of ``[start, end)``, faulting nothing.

    Args: state, d, mm_id, start and end (page aligned), out (uint8, one byte
    per page), pfns (uint64 scratch, one entry per page).
    Pre: none beyond the argument bounds. Post: FAULT_OK and ``out[i]`` the
    ``HMM_DMIRROR_PROT_*`` code of page ``i`` (ERROR for a page outside every
    VMA); the machine unchanged. FAULT_SEGV, nothing done, on a bad device, an
    unaligned or reversed range or short arrays.
    """
    ps = mm.page_size(state)
    n = mm.pages_in(state, end - start)
    bad = not valid_device(state, d) or start != mm.page_down(state, start) or end < start
    if bad or end != start + n * ps or out.shape[0] < n or pfns.shape[0] < n:
        return L.FAULT_SEGV
    i = 0
    while i < n:
        a = start + i * ps
        v = mm.find_vma(state, mm_id, a)
        if v < 0:
            out[i] = L.HMM_DMIRROR_PROT_ERROR
            i += 1
            continue
        stop = min(end, state.vma["end"][v])
        k = mm.pages_in(state, stop - a)
        owner = state.dev[d, L.DEV_OWNER]
        no = np.bool_(False)
        hmm_range_fault_owner(state, v, a, stop, no, no, pfns[i : i + k], owner)
        for j in range(k):
            out[i + j] = dmirror_mkentry(state, d, pfns[i + j])
        i += k
    return L.FAULT_OK
