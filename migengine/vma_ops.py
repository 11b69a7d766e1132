"""munmap(), mprotect() and madvise(): validated here, VMA records split and
merged here, the page tables changed by compiled passes (kernels.zap,
kernels.mprotect, kernels.madvise).

Each operation checks its whole range before it changes anything, then splits
the VMAs at the range's ends as mm/mmap.c does (``__split_vma``), so a VMA is
always wholly inside or outside the range it works on. Functions here take the
machine's core and a process id and return VMA record indices; the
:class:`~migengine.process.Process` methods wrap them.
"""

from __future__ import annotations

from migengine._core import MachineCore
from migengine._validate import as_count
from migengine.errors import MigengineError, SegFault
from migengine.kernels import layout as L
from migengine.kernels import madvise as kmadvise
from migengine.kernels import mprotect as kmprotect
from migengine.kernels import mremap as kmremap
from migengine.kernels import zap as kzap

__all__ = ["ADDR_LIMIT", "ADVICE", "live_vmas", "madvise", "mprotect", "mremap", "munmap"]

#: The largest end address an int64 VMA record holds.
ADDR_LIMIT = 2**63 - 1
#: madvise() advice this model takes.
ADVICE = ("dontneed", "free")
# can_madv_dontneed_vma() (4.14): these VMAs refuse MADV_DONTNEED and MADV_FREE.
_NO_DONTNEED = L.VM_LOCKED | L.VM_HUGETLB | L.VM_PFNMAP


def live_vmas(core: MachineCore, pid: int) -> list[int]:
    """The live VMA records of process ``pid``, in address order."""
    vma = core.state.vma[: int(core.state.sys[L.SYS_NR_VMAS])]
    idx = [i for i in range(vma.shape[0]) if vma[i]["live"] and vma[i]["mm"] == pid]
    return sorted(idx, key=lambda i: int(vma[i]["start"]))


def vma_bounds(core: MachineCore, v: int) -> tuple[int, int]:
    rec = core.state.vma[v]
    return int(rec["start"]), int(rec["end"])


def _range(core: MachineCore, start: object, end: object, what: str) -> tuple[int, int]:
    """The page-aligned ``[start, end)`` of an operation: ValueError (EINVAL) for
    an unaligned start or an empty range; ``end`` is rounded up to a page."""
    s, e = as_count(start, "start"), as_count(end, "end")
    ps = core.page_size
    if s % ps:
        raise ValueError(f"{what}: start {s:#x} is not page aligned")
    e = -(-e // ps) * ps
    if e <= s:
        raise ValueError(f"{what}: [{s:#x}, {e:#x}) is empty")
    return s, e


def _overlapping(core: MachineCore, pid: int, s: int, e: int) -> list[int]:
    bounds = [(v, *vma_bounds(core, v)) for v in live_vmas(core, pid)]
    return [v for v, lo, hi in bounds if lo < e and s < hi]


def _covered(core: MachineCore, pid: int, s: int, e: int, what: str) -> list[int]:
    """The VMAs over ``[s, e)``, which they must cover without a hole (mprotect()
    and madvise() fail with ENOMEM otherwise: SegFault here)."""
    vmas = _overlapping(core, pid, s, e)
    at = s
    for v in vmas:
        lo, hi = vma_bounds(core, v)
        if lo > at:
            break
        at = hi
    if at < e:
        raise SegFault(f"{what}: [{s:#x}, {e:#x}) is not wholly mapped (no VMA at {at:#x})")
    return vmas


def _split_huge(core: MachineCore, vmas: list[int], s: int, e: int, what: str) -> None:
    """Split the huge mappings the range's ends cut (vma_adjust_trans_huge()),
    before any VMA record changes. MigengineError for a THP that cannot split."""
    extent = core.page_size * L.HPAGE_PMD_NR
    for v in vmas:
        lo, hi = vma_bounds(core, v)
        for edge in (s, e):
            if edge % extent == 0 or not lo < edge < hi:
                continue  # no huge mapping straddles it
            if int(kzap.split_huge_at(core.state, v, edge)) != 0:
                raise MigengineError(
                    f"{what}: the transparent huge page at {edge:#x} is pinned or locked "
                    "and cannot be split (this model maps THPs by PMD only)"
                )


def _split_at_ends(core: MachineCore, vmas: list[int], s: int, e: int) -> list[int]:
    """mprotect_fixup()'s split_vma() calls: each VMA keeps its record for its
    part inside ``[s, e)``; returns the new records (the parts outside)."""
    new = []
    for v in vmas:
        if vma_bounds(core, v)[0] < s:
            new.append(core.split_vma(v, s, new_below=True))
        if e < vma_bounds(core, v)[1]:
            new.append(core.split_vma(v, e, new_below=False))
    return new


def munmap(core: MachineCore, pid: int, start: object, end: object) -> list[int]:
    """do_munmap(): unmap ``[start, end)``; returns the VMA records splitting
    made (the unmapped middle of a VMA among them, dead). As in the kernel, a
    VMA cut by the range keeps its record for its part below the range (or,
    cut at the range's end only, above it), and a range with no mapping in it
    is no error."""
    s, e = _range(core, start, end, "munmap")
    core.refuse_during_migration("munmap()")
    vmas = _overlapping(core, pid, s, e)
    _split_huge(core, vmas, s, e, "munmap")
    new = []
    for v in vmas:
        gone = v
        if vma_bounds(core, v)[0] < s:
            gone = core.split_vma(v, s, new_below=False)
            new.append(gone)
        if e < vma_bounds(core, gone)[1]:
            gone = core.split_vma(gone, e, new_below=True)
            new.append(gone)
        lo, hi = vma_bounds(core, gone)
        if int(kzap.zap_page_range(core.state, gone, lo, hi)) != 0:  # split above: never
            raise MigengineError(f"munmap: zap_page_range refused [{lo:#x}, {hi:#x})")
        core.state.vma[gone]["live"] = 0
    return new


def mprotect(core: MachineCore, pid: int, start: object, end: object, prot_flags: int) -> list[int]:
    """mprotect(): give ``[start, end)`` the VM_READ/VM_WRITE bits ``prot_flags``;
    returns the VMA records made by splitting (merged ones are dead again)."""
    s, e = _range(core, start, end, "mprotect")
    core.refuse_during_migration("mprotect()")
    vmas = _covered(core, pid, s, e, "mprotect")
    _split_huge(core, vmas, s, e, "mprotect")
    new = _split_at_ends(core, vmas, s, e)
    st = core.state
    for v in vmas:
        flags = int(st.vma[v]["flags"]) & ~(L.VM_READ | L.VM_WRITE)
        st.vma[v]["flags"] = flags | prot_flags
        lo, hi = vma_bounds(core, v)
        if int(kmprotect.change_protection(core.state, v, lo, hi)) != 0:  # checked above
            raise MigengineError(f"mprotect: change_protection refused [{lo:#x}, {hi:#x})")
    _merge_around(core, pid)
    return new


def _merge_around(core: MachineCore, pid: int) -> None:
    """vma_merge() of every pair of neighbours that can merge again."""
    vmas = live_vmas(core, pid)
    i = 0
    while i + 1 < len(vmas):
        if core.can_merge(vmas[i], vmas[i + 1]):
            core.merge_vmas(vmas[i], vmas[i + 1])
            del vmas[i + 1]
        else:
            i += 1


def madvise(core: MachineCore, pid: int, start: object, end: object, advice: object) -> None:
    """madvise() with MADV_DONTNEED or MADV_FREE over ``[start, end)``."""
    if advice not in ADVICE:
        raise ValueError(f"unknown advice {advice!r}; choose one of {list(ADVICE)}")
    s, e = _range(core, start, end, "madvise")
    core.refuse_during_migration("madvise()")
    vmas = _covered(core, pid, s, e, "madvise")
    for v in vmas:
        rec = core.state.vma[v]
        at = int(rec["start"])
        if int(rec["flags"]) & _NO_DONTNEED:
            raise ValueError(f"madvise({advice}): the VMA at {at:#x} is mlocked, hugetlb or PFNMAP")
        if advice == "free" and int(rec["kind"]) != L.VMA_ANON:
            raise ValueError(f"madvise(free): the VMA at {at:#x} is not private anonymous memory")
    _split_huge(core, vmas, s, e, "madvise")
    pass_ = kzap.zap_page_range if advice == "dontneed" else kmadvise.madvise_free
    for v in vmas:
        lo, hi = vma_bounds(core, v)
        ret = int(pass_(core.state, v, max(lo, s), min(hi, e)))
        if ret != 0:
            raise MigengineError(
                f"madvise({advice}): a transparent huge page in [{max(lo, s):#x}, "
                f"{min(hi, e):#x}) is pinned or locked and cannot be split"
            )


def mremap(core: MachineCore, pid: int, start: object, end: object, new_addr: object) -> int:
    """mremap(MREMAP_MAYMOVE | MREMAP_FIXED) of ``[start, end)``, which one VMA
    must hold, to ``new_addr``; returns the new VMA's record. What was mapped at
    the destination is unmapped first; the entries (device-private ones
    included) move into a freshly laid out VMA, and the old range is unmapped."""
    s, e = _range(core, start, end, "mremap")
    dst = as_count(new_addr, "new_addr")
    if dst % core.page_size:
        raise ValueError(f"mremap: new_addr {dst:#x} is not page aligned")
    length = e - s
    if dst < e and s < dst + length:
        raise ValueError("mremap: the old and new ranges overlap")
    if dst + length > ADDR_LIMIT:
        raise ValueError(f"mremap: [{dst:#x}, {dst + length:#x}) ends past the address space")
    core.refuse_during_migration("mremap()")
    vmas = _overlapping(core, pid, s, e)
    lo, hi = vma_bounds(core, vmas[0]) if len(vmas) == 1 else (e, s)
    if not lo <= s < e <= hi:
        raise SegFault(f"mremap: [{s:#x}, {e:#x}) is not inside one VMA (EFAULT)")
    old = vmas[0]
    _split_huge(core, vmas, s, e, "mremap")
    extent = core.page_size * L.HPAGE_PMD_NR
    if (dst - s) % extent:  # move_huge_pmd() needs the extents to line up: split
        for a in range(s - s % extent, e, extent):
            if a >= s and int(kzap.split_huge_at(core.state, old, a)) != 0:
                raise MigengineError(
                    f"mremap: the transparent huge page at {a:#x} is pinned or locked and "
                    "cannot be split to move to an address that does not line up"
                )
    munmap(core, pid, dst, dst + length)
    old = _overlapping(core, pid, s, e)[0]  # the unmap may have split its VMA
    _split_at_ends(core, [old], s, e)
    rec = core.state.vma[old]
    new = core.add_vma(
        pid,
        dst,
        length // core.page_size,
        int(rec["flags"]),
        int(rec["kind"]),
        int(rec["pcache_base"]),
        int(rec["pgoff"]),
    )
    if int(kmremap.move_page_tables(core.state, old, new)) != 0:  # same size: never
        raise MigengineError("mremap: move_page_tables refused the move")
    core.state.vma[old]["live"] = 0
    return new
