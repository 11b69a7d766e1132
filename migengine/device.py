"""m.device: the machine's device driver model, after lib/test_hmm.c (dmirror)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from migengine._numba_env import log_threading_layer
from migengine._ops import MigrateOps
from migengine._validate import as_count
from migengine.copyengine import CopyEngine
from migengine.errors import MigrateError
from migengine.kernels import copy as kcopy
from migengine.kernels import device as kdevice
from migengine.kernels import handle as khandle
from migengine.kernels import layout as L
from migengine.process import Process

if TYPE_CHECKING:
    from migengine._core import MachineCore
    from migengine.machine import Machine
    from migengine.process import Vma


class Device:
    """The device: free-list allocator, mirror page table, copy engine, fault handler.

    ``ops`` migrates system pages to the device; ``migrate_to_device`` and
    ``migrate_to_system`` run it over ranges spanning several VMAs; a CPU access
    to a device-private page (hmm-v25) faults it back through ``migrate_vma``.
    """

    def __init__(
        self, machine: Machine, core: MachineCore, engine: CopyEngine, index: int = 0
    ) -> None:
        self._machine = machine
        self._core = core
        self._engine = engine
        self.index = index  # its row in the device table (state.dev) and its mirror
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

    @property
    def free_pages(self) -> int:
        return int(self._core.state.dev[self.index, L.DEV_FREE])

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
        return value >> 1 if value >= 0 else -1

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
        ret = int(khandle.migrate_to_device_at(self._core.handle, process.pid, s, e))
        log_threading_layer()
        if ret < 0:
            raise MigrateError(f"[{s:#x}, {e:#x}) is not covered by readable VMAs")
        return ret

    def migrate_to_system(self, process: Process, start: int, end: int) -> int:
        """Move the range's device pages back to system memory; returns how many."""
        s, e = self._range(process, start, end)
        ret = int(khandle.migrate_to_system_at(self._core.handle, process.pid, s, e))
        log_threading_layer()
        if ret < 0:
            raise MigrateError(f"[{s:#x}, {e:#x}) is not covered by VMAs")
        return ret

    def evict(self) -> int:
        """Move every device page of every process back to RAM; returns how many."""
        return int(kdevice.evict(self._core.state))

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
