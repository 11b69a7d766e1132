"""Processes, their VMAs, and the CPU's view of their address spaces."""

from __future__ import annotations

from collections import namedtuple
from typing import TYPE_CHECKING

import numpy as np

from migengine import vma_ops
from migengine._validate import as_bool, as_count, as_int
from migengine.errors import MigengineError, OutOfMemory, SegFault, SigBus
from migengine.kernels import cpu as kcpu
from migengine.kernels import fork as kfork
from migengine.kernels import layout as L
from migengine.kernels import memory as kmemory
from migengine.kernels import migrate_device as kmigrate_device
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


_KIND_NAMES = {v: k for k, v in L.VMA_KINDS.items()}


class Vma:
    """One VMA: ``start``, ``end``, ``npages``, ``flags``, ``kind``, ``process``,
    ``index`` (its record in the flat state), ``live``.

    A view of its record: after munmap(), mprotect() or mremap() split, shrink
    or merge it, the attributes say what it is now, and ``live`` is False once
    it is gone (``p.vmas()`` lists the live ones).
    """

    def __init__(self, process: Process, index: int) -> None:
        self.process = process
        self.index = index

    def _field(self, name: str) -> int:
        return int(self.process.machine.state.vma[self.index][name])

    @property
    def start(self) -> int:
        return self._field("start")

    @property
    def end(self) -> int:
        return self._field("end")

    @property
    def flags(self) -> int:
        return self._field("flags")

    @property
    def kind(self) -> str:
        return _KIND_NAMES[self._field("kind")]

    @property
    def npages(self) -> int:
        return (self.end - self.start) // self.process.machine.page_size

    @property
    def live(self) -> bool:
        return self._field("live") != 0

    def __repr__(self) -> str:
        return (
            f"Vma(index={self.index}, start={self.start:#x}, end={self.end:#x}, "
            f"kind={self.kind!r}, flags={self.flags:#x}, live={self.live})"
        )


def raise_fault(status: int, addr: int, what: str) -> None:
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
        self._vma_views: dict[int, Vma] = {}

    # ------------------------------------------------------------------ layout
    def _view(self, index: int) -> Vma:
        """The one Vma object of record ``index``."""
        view = self._vma_views.get(index)
        if view is None:
            view = self._vma_views[index] = Vma(self, index)
        return view

    def vmas(self) -> list[Vma]:
        """The process's VMAs, in address order."""
        return [self._view(i) for i in vma_ops.live_vmas(self._core, self.pid)]

    def _next_free_addr(self, nbytes: int) -> int:
        top = max([v.end for v in self.vmas()], default=_MMAP_BASE)
        return (top + _GAP + _GAP - 1) // _GAP * _GAP

    def _overlaps(self, start: int, end: int) -> bool:
        return any(v.start < end and start < v.end for v in self.vmas())

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
        limit = vma_ops.ADDR_LIMIT  # the VMA's end is an int64 in the flat state
        if start + nbytes > limit:
            raise ValueError(
                f"[{start:#x}, {start + nbytes:#x}) ends past the address space ({limit:#x})"
            )
        if self._overlaps(start, start + nbytes):
            raise ValueError(f"[{start:#x}, {start + nbytes:#x}) overlaps an existing mapping")
        vm_flags = PROTS[prot] | user | (L.VM_HUGEPAGE if thp else 0)
        if kind in ("shmem", "file"):
            vm_flags |= L.VM_SHARED
        index = self._core.add_vma(self.pid, start, n, vm_flags, L.VMA_KINDS[kind], -1)
        return self._view(index)

    def vma_at(self, addr: int) -> Vma | None:
        for v in self.vmas():
            if v.start <= addr < v.end:
                return v
        return None

    def munmap(self, start: int, end: int) -> None:
        """munmap(): remove the mappings of ``[start, end)`` (``end`` rounded up to
        a page), splitting the VMAs it cuts. Each page loses these mappings and
        is freed with its last reference; a device page goes back to its device.
        ValueError for an unaligned start or an empty range; MigengineError
        while a migration is open."""
        for index in vma_ops.munmap(self._core, self.pid, start, end):
            self._view(index)

    def mprotect(self, start: int, end: int, prot: str) -> None:
        """mprotect(): ``prot`` (``"rw"``, ``"r"`` or ``"none"``) for ``[start, end)``,
        which VMAs must cover without a hole (SegFault otherwise). Taking write
        away write-protects the range's PTEs; VMAs split and merge as needed."""
        if prot not in PROTS:
            raise ValueError(f"unknown prot {prot!r}; choose one of {sorted(PROTS)}")
        for index in vma_ops.mprotect(self._core, self.pid, start, end, PROTS[prot]):
            self._view(index)

    def mremap(self, start: int, end: int, new_addr: int) -> Vma:
        """mremap(MREMAP_MAYMOVE | MREMAP_FIXED): move the mapping of ``[start,
        end)``, which one VMA must hold (SegFault otherwise), to ``new_addr``,
        unmapping what was there; every entry moves, device-private ones too.
        Returns the new Vma. ValueError for unaligned or overlapping ranges."""
        return self._view(vma_ops.mremap(self._core, self.pid, start, end, new_addr))

    def madvise(self, start: int, end: int, advice: str) -> None:
        """madvise() with ``"dontneed"`` (zap the range: the next access faults a
        zero page or the page-cache page in) or ``"free"`` (MADV_FREE: clean
        private anonymous pages may be discarded by ``m.reclaim()``)."""
        vma_ops.madvise(self._core, self.pid, start, end, advice)

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
        raise_fault(int(status), a + int(done), "read")
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
        raise_fault(int(status), a + int(done), "write")

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
            raise_fault(int(status), int(reached), "populate")
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
        """A child sharing private anonymous pages copy-on-write, shmem/file shared.
        MigengineError while a migration is open (fork takes mmap_sem for writing,
        and would copy its migration entries)."""
        m = self.machine
        self._core.refuse_during_migration("fork()")
        # All the child's page tables must fit, or no child at all.
        vmas = self.vmas()
        kstate.check_pte_slots(int(m.state.sys[L.SYS_PTE_USED]) + sum(v.npages for v in vmas))
        child = m.new_process()
        for vma in vmas:
            rec = m.state.vma[vma.index]
            flags = int(rec["flags"]) & ~L.VM_LOCKED  # mlock is not inherited
            index = self._core.add_vma(
                child.pid,
                vma.start,
                vma.npages,
                flags,
                int(rec["kind"]),
                int(rec["pcache_base"]),
                int(rec["pgoff"]),
            )
            kfork.fork_vma(m.state, vma.index, index)
            child._view(index)
        return child

    def pin(self, addr: int, write: bool = False, longterm: bool = False) -> int:
        """get_user_pages() of the page at ``addr``: fault it in as a load (or a
        store, breaking COW, with ``write=True``) the way GUP's faultin_page()
        does (a device-private page comes back to system memory first), then
        take a pin on it. Returns the pfn pinned (a THP's subpage: the head holds
        the reference); release it with ``m.unpin(pfn)``. ``longterm`` is
        FOLL_LONGTERM, which matters only for device-coherent memory (modern).
        SegFault for an address outside every VMA or a pin the VMA's protection
        forbids, as GUP's -EFAULT."""
        a = as_count(addr, "addr")
        write = as_bool(write, "write")
        longterm = as_bool(longterm, "longterm")
        vma = self.vma_at(a)
        if vma is None:
            raise SegFault(f"pin at {a:#x}: no VMA")
        ps = self.machine.page_size
        page = a - a % ps
        status, reached = kmemory.populate(self.machine.state, vma.index, page, page + ps, write)
        raise_fault(int(status), int(reached), "pin")
        pte = self.translate(a)
        m = self.machine
        if longterm and pte.kind == "present" and m.profile == "modern" and m.page(pte.pfn).device:
            # FOLL_LONGTERM on device-coherent memory (modern): the page moves to RAM
            # first (migrate_device_coherent_folio()), -EBUSY if it cannot.
            if int(kmigrate_device.migrate_device_coherent_folio(m.state, pte.pfn)):
                raise MigengineError(f"pin at {a:#x}: the device-coherent page cannot move (EBUSY)")
            pte = self.translate(a)
        if pte.kind not in ("present", "zero"):  # populate() made it present: never
            raise MigengineError(f"pin at {a:#x}: the page is {pte.kind} after the fault")
        if pte.kind == "zero":  # GUP pins the zero page too; nothing ever frees it
            self.machine.state.page["pins"][pte.pfn] += 1
        else:
            self.machine.pin(pte.pfn)
        return pte.pfn

    def translate(self, addr: int) -> Pte:
        """Walk the page table at ``addr``."""
        a = as_count(addr, "addr")
        kind, pfn, writable, huge = kcpu.translate(self.machine.state, self.pid, a)
        return Pte(kcpu.TRANSLATE_KINDS[kind], int(pfn), bool(writable), bool(huge))

    def __repr__(self) -> str:
        return f"Process(pid={self.pid}, vmas={len(self.vmas())})"
