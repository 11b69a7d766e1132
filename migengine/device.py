"""m.device: the machine's device driver model, after lib/test_hmm.c (dmirror)."""

from __future__ import annotations

from collections import namedtuple
from typing import TYPE_CHECKING, Any

import numpy as np

from migengine._numba_env import log_threading_layer
from migengine._ops import MigrateOps
from migengine._validate import as_count
from migengine.copyengine import CopyEngine
from migengine.errors import MigengineError, MigrateError, SegFault
from migengine.kernels import copy as kcopy
from migengine.kernels import device as kdevice
from migengine.kernels import exclusive as kexclusive
from migengine.kernels import handle as khandle
from migengine.kernels import layout as L
from migengine.kernels.device import range_fault as krange
from migengine.process import Process, raise_fault

if TYPE_CHECKING:
    from migengine._core import MachineCore
    from migengine.machine import Machine
    from migengine.process import Vma


DeviceSpec = namedtuple("DeviceSpec", "pages kind owner", defaults=("private", None))
DeviceSpec.__doc__ = """One device of ``Machine(devices=[...])``: ``pages`` frames of ``kind``
``"private"`` (device-private ZONE_DEVICE memory, reached by the CPU through the device's
fault handler) or ``"coherent"`` (MEMORY_DEVICE_COHERENT, mapped by present PTEs; modern
profile only), and ``owner``, its
``pgmap->owner`` cookie (any hashable value; None gives the device one of its own)."""


def device_specs(devices: object, device_pages: int) -> list[DeviceSpec]:
    """The machine's devices, validated: ``devices`` as given, or one device of
    ``device_pages`` frames. ValueError or TypeError before anything is built."""
    if devices is None:
        return [DeviceSpec(device_pages)]
    if device_pages:
        raise ValueError("give device_pages or devices, not both")
    if isinstance(devices, (str, bytes)) or not hasattr(devices, "__iter__"):
        raise TypeError(f"devices must be a sequence of DeviceSpec, not {type(devices).__name__}")
    specs = []
    for i, spec in enumerate(devices):
        if not isinstance(spec, DeviceSpec):
            raise TypeError(f"devices[{i}] must be a DeviceSpec, not {type(spec).__name__}")
        pages = as_count(spec.pages, f"devices[{i}].pages")
        if spec.kind not in ("private", "coherent"):
            raise ValueError(
                f"devices[{i}]: unknown kind {spec.kind!r}; choose 'private' or 'coherent'"
            )
        try:
            hash(spec.owner)
        except TypeError:
            raise TypeError(f"devices[{i}].owner must be hashable") from None
        specs.append(DeviceSpec(pages, spec.kind, spec.owner))
    if not specs:
        raise ValueError("devices must name at least one device")
    return specs


class Device:
    """The device: free-list allocator, mirror page table, copy engine, fault handler.

    ``ops`` migrates system pages to the device; ``migrate_to_device`` and
    ``migrate_to_system`` run it over ranges spanning several VMAs; a CPU access
    to a device-private page (hmm-v25) faults it back through ``migrate_vma``.
    """

    def __init__(
        self,
        machine: Machine,
        core: MachineCore,
        engine: CopyEngine,
        index: int = 0,
        kind: str = "private",
        owner: object = None,
    ) -> None:
        self._machine = machine
        self._core = core
        self._engine = engine
        self.index = index  # its row in the device table (state.dev) and its mirror
        self.kind = kind  # "private": MEMORY_DEVICE_PRIVATE
        self.owner = owner  # its pgmap->owner cookie
        self.last_faults = 0  # range faults of the last read or write (cmd.faults)
        self.ops = MigrateOps(kdevice.device_alloc_and_copy, kdevice.device_finalize_and_map)

    @property
    def first_pfn(self) -> int:
        """Its first frame: device frames follow RAM, each device's after the one before."""
        return int(self._core.state.dev[self.index, L.DEV_FIRST_PFN])

    @property
    def npages(self) -> int:
        return int(self._core.state.dev[self.index, L.DEV_NPAGES])

    # ------------------------------------------------------------------ engine
    @property
    def engine(self) -> CopyEngine:
        """The CopyEngine the device's ops copy with (settable)."""
        return self._engine

    @engine.setter
    def engine(self, engine: CopyEngine) -> None:
        if not isinstance(engine, CopyEngine):
            raise TypeError(f"engine must be a CopyEngine, not {type(engine).__name__}")
        self._engine = engine
        self._core.state.engine[:] = engine.to_array()

    @property
    def copy_stats(self) -> dict[str, float]:
        """The copy of the last migration: descriptors, bytes, wall_s, model_s."""
        s = self._core.state.copy_stats
        return {
            "descriptors": int(s[kcopy.STAT_DESCRIPTORS]),
            "bytes": int(s[kcopy.STAT_BYTES]),
            "wall_s": float(s[kcopy.STAT_WALL_S]),
            "model_s": float(s[kcopy.STAT_MODEL_S]),
        }

    # ------------------------------------------------------------------ state
    @property
    def counters(self) -> dict[str, int]:
        """calloc (pages handed out), cfree (returned), faults (CPU faults served)."""
        row = self._core.state.dev[self.index]
        return {
            "calloc": int(row[L.DEV_CALLOC]),
            "cfree": int(row[L.DEV_CFREE]),
            "faults": int(row[L.DEV_FAULTS]),
            "sigbus": int(row[L.DEV_SIGBUS]),
        }

    def free_pages(self) -> int:
        """Its free frames."""
        row = self._core.state.dev[self.index]
        return int(row[L.DEV_FREE] + L.HPAGE_PMD_NR * row[L.DEV_FOLIOS])  # with free folios

    def fail_alloc(self, n: int) -> None:
        """The next ``n`` device-side and fault-back allocations fail."""
        self._core.state.dev[self.index, L.DEV_FAIL_ALLOC] = as_count(n, "n")

    def mirrored(self, process: Process, addr: int) -> int:
        """The device pfn the mirror maps at ``addr``, or -1."""
        vma = self._process(process).vma_at(as_count(addr, "addr"))
        if vma is None:
            return -1
        st = self._core.state
        rec = st.vma[vma.index]
        slot = int(rec["pte_base"]) + (addr - vma.start) // self._core.page_size
        value = int(st.mirror[self.index, slot])
        return (value & ~int(L.MIRROR_ATOMIC)) >> 1 if value >= 0 else -1

    # ------------------------------------------------------------------ migration
    def _process(self, process: object) -> Process:
        """``process``, if it is a Process of this machine: TypeError for anything
        else (None included, which once escaped as an AttributeError), ValueError
        for another machine's."""
        if not isinstance(process, Process):
            raise TypeError(f"process must be a Process, not {type(process).__name__}")
        if process.machine is not self._machine:
            raise ValueError("the process belongs to another machine")
        return process

    def _range(self, process: Process, start: int, end: int) -> tuple[int, int]:
        self._process(process)
        s, e = as_count(start, "start"), as_count(end, "end")
        ps = self._core.page_size
        if s % ps or e % ps or s >= e:
            raise MigrateError(f"range [{s:#x}, {e:#x}) must be page aligned and non-empty")
        return s, e

    def migrate_to_device(self, process: Process, start: int, end: int) -> int:
        """Migrate every VMA piece of the range; returns the pages the device maps."""
        s, e = self._range(process, start, end)
        # Through the handle: typing and unboxing every array of m.state costs
        # the dispatcher 2-40 us a call (kernels.handle).
        ret = int(khandle.migrate_to_device_at(self._core.handle, process.pid, s, e, self.index))
        log_threading_layer()
        if ret < 0:
            raise MigrateError(f"[{s:#x}, {e:#x}) is not covered by readable VMAs")
        return ret

    def migrate_to_system(self, process: Process, start: int, end: int) -> int:
        """Move the range's device pages back to system memory; returns how many."""
        s, e = self._range(process, start, end)
        ret = int(khandle.migrate_to_system_at(self._core.handle, process.pid, s, e, self.index))
        log_threading_layer()
        if ret < 0:
            raise MigrateError(f"[{s:#x}, {e:#x}) is not covered by VMAs")
        return ret

    def evict(self) -> int:
        """Move every device page of every process back to RAM; returns how many.
        4.14 walks every VMA and so moves every device's pages (no owner filter);
        modern evicts this device's frames by pfn (dmirror_device_evict_chunk())."""
        self._core.refuse_during_migration("evict()")
        return int(kdevice.evict_one(self._core.state, self.index))

    def run_ops(
        self, vma: Vma, start: int, end: int, src: np.ndarray, dst: np.ndarray, private: Any
    ) -> int:
        """``me.migrate_vma(m.device.ops, ...)`` on validated arguments: the
        device's whole pipeline in one cached compiled call."""
        flags = 0 if private is None else int(private)
        ret = kdevice.migrate_vma_to_device(
            self._core.state, vma.index, start, end, src, dst, flags
        )
        log_threading_layer()
        return int(ret)

    # ------------------------------------------------------------------ device accesses
    def _accessible(self, process: Process, start: int, end: int, write: bool, what: str) -> None:
        """SegFault, before anything changes, unless every page of ``[start, end)``
        lies in a VMA that lets the device fault it in: VM_READ (dmirror's
        -EFAULT on a PROT_NONE VMA) and, for a store, VM_WRITE (its -EPERM)."""
        st = self._core.state
        addr = start
        while addr < end:
            vma = process.vma_at(addr)
            if vma is None:
                raise SegFault(f"device {what} at {addr:#x}: no VMA")
            flags = int(st.vma["flags"][vma.index])
            if not flags & L.VM_READ:
                raise SegFault(f"device {what} at {addr:#x}: the VMA is PROT_NONE")
            if write and not flags & L.VM_WRITE:
                raise SegFault(f"device {what} at {addr:#x}: the VMA is read-only")
            addr = vma.end

    def _access(self, process: object, addr: object, n: int, data: np.ndarray | None) -> bytes:
        """Validate, then run device_access() over ``n`` bytes at ``addr``: a
        load into a new buffer (``data`` None) or a store of ``data``."""
        p = self._process(process)
        self._core.need_data()
        a = as_count(addr, "addr")
        write = data is not None
        if n == 0:
            return b""
        ps = self._core.page_size
        first, last = a - a % ps, (a + n + ps - 1) // ps * ps
        what = "write" if write else "read"
        self._accessible(p, first, last, write, what)
        buf = data if data is not None else np.empty(n, np.uint8)
        pfns = np.empty((last - first) // ps, np.uint64)
        status, done, faults = krange.device_access(
            self._core.state, self.index, p.pid, a, buf, n, write, pfns
        )
        self.last_faults = int(faults)
        raise_fault(int(status), a + int(done), f"device {what}")
        return b"" if write else buf.tobytes()

    def read(self, process: Process, addr: int, n: int) -> bytes:
        """HMM_DMIRROR_READ: the device loads ``n`` bytes at ``addr`` through its
        mirror, faulting the pages in with hmm_range_fault() (read faults: an
        untouched anonymous page maps the zero page) and mirroring them. Its own
        device-private pages are read in place. ``last_faults`` counts the range
        faults it took (dmirror's ``cmd.faults``)."""
        return self._access(process, addr, as_count(n, "n"), None)

    def write(self, process: Process, addr: int, data: bytes) -> None:
        """HMM_DMIRROR_WRITE: the device stores ``data`` at ``addr`` through its
        mirror, after write faults as a CPU store takes them (COW broken, the zero
        page replaced, a read-only device-private page faulted back)."""
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise TypeError(f"data must be bytes-like, not {type(data).__name__}")
        buf = np.frombuffer(bytes(data), np.uint8).copy()
        self._access(process, addr, int(buf.size), buf)

    def _exclusive_range(self, process: Process, start: int, end: int, what: str) -> list:
        """The (VMA index, start, end) pieces of a page-aligned range, checked:
        modern only, every page in a VMA (SegFault otherwise)."""
        if self._machine.profile != "modern":
            raise ValueError(f"{what}: device-exclusive access is the modern profile's (v5.14)")
        p = self._process(process)
        s, e = as_count(start, "start"), as_count(end, "end")
        ps = self._core.page_size
        if s % ps or e % ps or s >= e:
            raise ValueError(f"range [{s:#x}, {e:#x}) must be page aligned and non-empty")
        pieces, addr = [], s
        while addr < e:
            vma = p.vma_at(addr)
            if vma is None:
                raise SegFault(f"{what} at {addr:#x}: no VMA")
            pieces.append((vma, addr, min(e, vma.end)))
            addr = vma.end
        return pieces

    def make_exclusive(self, process: Process, start: int, end: int) -> None:
        """HMM_DMIRROR_EXCLUSIVE (modern): make_device_exclusive() on each page of
        ``[start, end)``: faulted in writable (a PMD mapping split first), locked,
        replaced by a device-exclusive entry (``translate`` kind ``"exclusive"``;
        its rmap and mapcount stay) and mapped ATOMIC in this device's mirror,
        until a CPU access restores the PTE. SegFault for a page outside every
        VMA or in one that is not readable and writable (GUP's -EFAULT),
        ValueError for a VMA that is not anonymous (-EOPNOTSUPP), both before
        anything changes; MigengineError (-EBUSY) for a page locked by someone
        else, the pages before it already exclusive."""
        pieces = self._exclusive_range(process, start, end, "make_exclusive")
        for vma, _, _ in pieces:
            if vma.kind != "anon":
                raise ValueError(f"make_exclusive: a {vma.kind} VMA is not anonymous (EOPNOTSUPP)")
            if vma.flags & (L.VM_READ | L.VM_WRITE) != L.VM_READ | L.VM_WRITE:
                raise SegFault(f"make_exclusive at {vma.start:#x}: the VMA is not read-write")
        for vma, s, e in pieces:
            ret = int(kexclusive.device_exclusive(self._core.state, self.index, vma.index, s, e))
            if ret < 0:
                raise MigengineError(f"make_exclusive in [{s:#x}, {e:#x}): errno {-ret}")

    def check_exclusive(self, process: Process, start: int, end: int) -> bool:
        """HMM_DMIRROR_CHECK_EXCLUSIVE: whether some page of ``[start, end)`` is
        still mapped ATOMIC by this device (dmirror's -EPERM)."""
        pieces = self._exclusive_range(process, start, end, "check_exclusive")
        st = self._core.state
        return any(
            kexclusive.check_exclusive(st, self.index, v.index, s, e) > 0 for v, s, e in pieces
        )

    def snapshot(self, process: Process, start: int, end: int) -> np.ndarray:
        """HMM_DMIRROR_SNAPSHOT: one ``HMM_DMIRROR_PROT_*`` byte per page of
        ``[start, end)`` (page aligned), from hmm_range_fault() without faulting:
        nothing changes. A page outside every VMA is ``HMM_DMIRROR_PROT_ERROR``;
        a range outside every VMA raises SegFault."""
        p = self._process(process)
        s, e = as_count(start, "start"), as_count(end, "end")
        ps = self._core.page_size
        if s % ps or e % ps or s >= e:
            raise ValueError(f"range [{s:#x}, {e:#x}) must be page aligned and non-empty")
        if not any(v.start < e and s < v.end for v in p.vmas()):
            raise SegFault(f"device snapshot of [{s:#x}, {e:#x}): no VMA")
        npages = (e - s) // ps
        out = np.empty(npages, np.uint8)
        pfns = np.empty(npages, np.uint64)
        status = krange.device_snapshot(self._core.state, self.index, p.pid, s, e, out, pfns)
        raise_fault(int(status), s, "device snapshot")
        return out
