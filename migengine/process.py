"""Processes, their VMAs, and the CPU's view of their address spaces."""

from __future__ import annotations

from collections import namedtuple
from typing import TYPE_CHECKING

import numpy as np

from migengine._validate import as_bool, as_count, as_int
from migengine.errors import MigengineError, OutOfMemory, SegFault, SigBus
from migengine.kernels import cpu as kcpu
from migengine.kernels import fork as kfork
from migengine.kernels import layout as L
from migengine.kernels import memory as kmemory
from migengine.kernels import state as kstate
from migengine.kernels import swap as kswap

if TYPE_CHECKING:
    from migengine._core import MachineCore
    from migengine.machine import Machine

Pte = namedtuple("Pte", "kind pfn writable huge")
Pte.__doc__ = "A page-table lookup: kind, pfn (-1 if none), writable, huge (PMD mapping)."

PROTS = {"rw": L.VM_READ | L.VM_WRITE, "r": L.VM_READ, "none": 0}
_GAP = 2 * 1024 * 1024  # a guard gap between automatically placed mappings
_MMAP_BASE = 0x7F00_0000_0000
_ADDR_LIMIT = 2**63 - 1  # the largest end address an int64 VMA record holds


class Vma:
    """One VMA: ``start``, ``end``, ``npages``, ``flags``, ``process``, ``index``."""

    def __init__(self, process: Process, index: int) -> None:
        self.process = process
        self.index = index
        rec = process.machine.state.vma[index]
        self.start = int(rec["start"])
        self.end = int(rec["end"])
        self.flags = int(rec["flags"])
        self.kind = {v: k for k, v in L.VMA_KINDS.items()}[int(rec["kind"])]
        self.npages = (self.end - self.start) // process.machine.page_size

    def __repr__(self) -> str:
        return (
            f"Vma(index={self.index}, start={self.start:#x}, end={self.end:#x}, "
            f"kind={self.kind!r}, flags={self.flags:#x})"
        )


def _raise_fault(status: int, addr: int, what: str) -> None:
    if status == L.FAULT_OK:
        return
    if status == L.FAULT_SEGV:
        raise SegFault(f"{what} at {addr:#x}: no VMA allows it")
    if status == L.FAULT_SIGBUS:
        raise SigBus(f"{what} at {addr:#x}: the page cannot be made present")
    if status == L.FAULT_OOM:
        raise OutOfMemory(f"{what} at {addr:#x}: no free frame for the fault")
    raise MigengineError(f"{what} at {addr:#x} would block: the page is locked or under migration")


class Process:
    """A process: an mm with VMAs, accessed through the simulated CPU.

    Made by ``Machine.new_process`` (or ``fork``), which hands it the machine
    and the machine's core (the live state and its VMA layout).
    """

    def __init__(self, machine: Machine, core: MachineCore, pid: int) -> None:
        self.machine = machine
        self._core = core
        self.pid = pid
        self.vmas: list[Vma] = []

    # ------------------------------------------------------------------ layout
    def _next_free_addr(self, nbytes: int) -> int:
        top = max([v.end for v in self.vmas], default=_MMAP_BASE)
        return (top + _GAP + _GAP - 1) // _GAP * _GAP

    def _overlaps(self, start: int, end: int) -> bool:
        return any(v.start < end and start < v.end for v in self.vmas)

    def mmap(
        self,
        npages: int,
        *,
        prot: str = "rw",
        kind: str = "anon",
        flags: int = 0,
        addr: int | None = None,
        thp: bool = False,
    ) -> Vma:
        """Map ``npages`` pages; returns the Vma.

        ``prot`` is ``"rw"``, ``"r"`` or ``"none"``; ``kind`` is ``"anon"`` or a
        shared kind (``"shmem"``, ``"file"``); ``flags`` adds the ``VM_*`` flags
        that migengine exports (``VM_LOCKED``, ``VM_HUGETLB``, ``VM_UFFD_MISSING``
        and the ``VM_SPECIAL`` ones); ``addr`` places the mapping (page
        aligned, default: after the last one); ``thp`` marks it VM_HUGEPAGE.
        """
        m = self.machine
        n = as_count(npages, "npages", minimum=1)
        if prot not in PROTS:
            raise ValueError(f"unknown prot {prot!r}; choose one of {sorted(PROTS)}")
        if kind not in L.VMA_KINDS:
            raise ValueError(f"unknown kind {kind!r}; choose one of {sorted(L.VMA_KINDS)}")
        user = as_int(flags, "flags")
        if user & ~L.USER_VM_FLAGS:
            raise ValueError(
                f"flags {user & ~L.USER_VM_FLAGS:#x} are not VM_* flags migengine exports"
            )
        if not isinstance(thp, bool):
            raise TypeError("thp must be a bool")
        nbytes = n * m.page_size
        if addr is None:
            start = self._next_free_addr(nbytes)
        else:
            start = as_count(addr, "addr")
            if start % m.page_size:
                raise ValueError(f"addr {start:#x} is not page aligned")
        if start + nbytes > _ADDR_LIMIT:  # the VMA's end is an int64 in the flat state
            raise ValueError(
                f"[{start:#x}, {start + nbytes:#x}) ends past the address space ({_ADDR_LIMIT:#x})"
            )
        if self._overlaps(start, start + nbytes):
            raise ValueError(f"[{start:#x}, {start + nbytes:#x}) overlaps an existing mapping")
        vm_flags = PROTS[prot] | user | (L.VM_HUGEPAGE if thp else 0)
        if kind != "anon":
            vm_flags |= L.VM_SHARED
        index = self._core.add_vma(self.pid, start, n, vm_flags, L.VMA_KINDS[kind], -1)
        vma = Vma(self, index)
        self.vmas.append(vma)
        return vma

    def vma_at(self, addr: int) -> Vma | None:
        for v in self.vmas:
            if v.start <= addr < v.end:
                return v
        return None

    # ------------------------------------------------------------------ CPU accesses
    def _data_range(self, addr: object, n: object) -> tuple[int, int]:
        self._core.need_data()
        return as_count(addr, "addr"), as_count(n, "n")

    def _mapped_run(self, addr: int, limit: int) -> int:
        """How many bytes from ``addr`` (at most ``limit``) lie in back-to-back VMAs."""
        run = 0
        while run < limit:
            vma = self.vma_at(addr + run)
            if vma is None:
                break
            run = vma.end - addr
        return min(run, limit)

    def read(self, addr: int, n: int) -> bytes:
        """A CPU load of ``n`` bytes (faults in, device pages fault back)."""
        a, count = self._data_range(addr, n)
        # The load stops where the mapping does; a buffer for the whole of a huge
        # ``n`` would be allocated before the fault that ends it.
        mapped = self._mapped_run(a, count)
        buf = np.empty(mapped, np.uint8)
        status, done = kmemory.access_vm(self.machine.state, self.pid, a, buf, mapped, False)
        _raise_fault(int(status), a + int(done), "read")
        if mapped < count:
            raise SegFault(f"read at {a + mapped:#x}: no VMA")
        return buf.tobytes()

    def write(self, addr: int, data: bytes) -> None:
        """A CPU store (faults in, breaks COW, device pages fault back first)."""
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise TypeError(f"data must be bytes-like, not {type(data).__name__}")
        a, _ = self._data_range(addr, 0)
        buf = np.frombuffer(bytes(data), np.uint8).copy()
        status, done = kmemory.access_vm(self.machine.state, self.pid, a, buf, buf.size, True)
        _raise_fault(int(status), a + int(done), "write")

    def populate(self, start: int, end: int, write: bool = True) -> None:
        """Touch every page of ``[start, end)``, as MAP_POPULATE would."""
        s, e = as_count(start, "start"), as_count(end, "end")
        write = as_bool(write, "write")
        ps = self.machine.page_size
        s -= s % ps
        addr = s
        while addr < e:
            vma = self.vma_at(addr)
            if vma is None:
                raise SegFault(f"populate at {addr:#x}: no VMA")
            stop = min(e, vma.end)
            status, reached = kmemory.populate(self.machine.state, vma.index, addr, stop, write)
            _raise_fault(int(status), int(reached), "populate")
            addr = stop

    def swap_out(self, addr: int) -> None:
        """Reclaim the anonymous page at ``addr``: its PTEs become swap entries."""
        a = as_count(addr, "addr")
        vma = self.vma_at(a)
        if vma is None:
            raise SegFault(f"swap_out at {a:#x}: no VMA")
        ret = int(kswap.swap_out(self.machine.state, vma.index, a))
        if ret == -L.EFAULT:
            raise MigengineError(
                f"swap_out at {a:#x}: a device-private page cannot be swapped; "
                "migrate it back to system memory first"
            )
        if ret == -L.EINVAL:
            raise ValueError(f"swap_out at {a:#x}: no present anonymous page there")
        if ret == -L.EBUSY:
            raise ValueError(f"swap_out at {a:#x}: the page is pinned or locked")
        if ret == -L.ENOMEM:
            raise OutOfMemory("swap is full")

    def fork(self) -> Process:
        """A child sharing private anonymous pages copy-on-write, shmem/file shared."""
        m = self.machine
        # All the child's page tables must fit, or no child at all.
        kstate.check_pte_slots(int(m.state.sys[L.SYS_PTE_USED]) + sum(v.npages for v in self.vmas))
        child = m.new_process()
        for vma in self.vmas:
            rec = m.state.vma[vma.index]
            flags = int(rec["flags"]) & ~L.VM_LOCKED  # mlock is not inherited
            index = self._core.add_vma(
                child.pid, vma.start, vma.npages, flags, int(rec["kind"]), int(rec["pcache_base"])
            )
            kfork.fork_vma(m.state, vma.index, index)
            child.vmas.append(Vma(child, index))
        return child

    def translate(self, addr: int) -> Pte:
        """Walk the page table at ``addr``."""
        a = as_count(addr, "addr")
        kind, pfn, writable, huge = kcpu.translate(self.machine.state, self.pid, a)
        return Pte(kcpu.TRANSLATE_KINDS[kind], int(pfn), bool(writable), bool(huge))

    def __repr__(self) -> str:
        return f"Process(pid={self.pid}, vmas={len(self.vmas)})"
