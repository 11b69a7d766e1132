"""MachineCore: what a Machine's parts share, without knowing the Machine.

A :class:`~migengine.machine.Machine` owns one core and hands it to its
processes and its device. The core holds the live flat ``State``, the handle
table the Python fast paths pass to compiled code, the page size, whether
frame bytes are stored, and the one operation that reallocates the state:
laying out a new VMA. Processes and the device reach the machine's state only
through it, so neither imports ``machine.py`` and no module reaches into
another's private attributes. It also knows when a migrate_vma() callback is
running (:class:`InFlight`), which the operations a driver must not make then
refuse.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from migengine.errors import MigengineError
from migengine.kernels import handle as khandle
from migengine.kernels import layout as L
from migengine.kernels import state as kstate

__all__ = ["InFlight", "MachineCore"]


class InFlight(NamedTuple):
    """The migration whose driver callback is running: its ``src`` and page count."""

    src: np.ndarray
    npages: int
    valid: np.uint64
    migrate: np.uint64
    shift: np.uint64

    def holds(self, pfn: int) -> bool:
        """Whether ``pfn`` is a source this migration collected (locked, isolated,
        unmapped: its references belong to migrate_vma until finalize)."""
        src = self.src[: self.npages]
        mine = ((src & self.valid) != 0) & ((src & self.migrate) != 0)
        return bool(np.any(mine & ((src >> self.shift) == np.uint64(pfn))))


class MachineCore:
    """The live state of one machine and the internal interface to it.

    Not part of the public API: users hold the Machine, ``m.state`` and the
    objects it returns.
    """

    # Plain attributes, not properties: migrate_vma's fast path reads the
    # handle on every call, and each property hop would cost it ~50 ns.
    state: kstate.State
    """The live flat state; :meth:`add_vma` may replace it (take it again after)."""
    handle: int
    """The address of the current state's handle table (kernels.handle)."""

    migrating: InFlight | None
    """The migration whose ``alloc_and_copy`` or ``finalize_and_map`` is running, else None."""
    device_range: np.ndarray | None
    """``src`` as the core left it in an open device-range migration (modern), else None."""

    def __init__(self, st: kstate.State) -> None:
        self.set_state(st)
        self.migrating = None
        self.device_range = None

    def refuse_during_callback(self, what: str) -> None:
        """Raise MigengineError, before anything changes, when a migrate_vma()
        callback is running: the driver holds the mm's mmap_sem, which mmap and
        fork take for writing, and laying out a VMA may reallocate the page
        tables the migration in flight is holding."""
        if self.migrating is not None:
            raise MigengineError(
                f"{what} while a migrate_vma() callback runs: the driver holds mmap_sem "
                "and the migration in flight holds the page tables; do it after "
                "migrate_vma() returns"
            )

    def set_state(self, st: kstate.State) -> None:
        """Install a state, and the handle table the Python fast paths pass
        (kernels.handle): it names the arrays by address, so it is rebuilt with
        every new state and keeps that state's arrays alive with it."""
        self.state = st
        self._handle_table = khandle.make_handle(st)
        self.handle = int(self._handle_table.ctypes.data)

    @property
    def page_size(self) -> int:
        return int(self.state.sys[L.SYS_PAGE_SIZE])

    @property
    def store_data(self) -> bool:
        return bool(self.state.sys[L.SYS_STORE_DATA])

    def need_data(self) -> None:
        """Raise unless the machine keeps frame bytes (``store_data=True``)."""
        if not self.store_data:
            raise MigengineError("this machine keeps metadata only (store_data=False)")

    def refuse_during_migration(self, what: str) -> None:
        """MigengineError, before anything changes, while a migrate_vma() callback
        runs or a split-API migration is open (setup done, finalize not): the
        operation takes mmap_sem for writing, which the migration holds for
        reading, and would tear down the page tables it holds."""
        self.refuse_during_callback(what)
        mig = self.state.mig
        if mig[L.MIG_END] > mig[L.MIG_START] or mig[L.MIG_VMA] >= 1 << 32:
            raise MigengineError(
                f"{what} while a migration is open (migrate_vma_setup() without its "
                "migrate_vma_finalize()): finish it first"
            )
        if self.device_range is not None:
            raise MigengineError(
                f"{what} while a device-range migration is open (migrate_device_range() "
                "without its migrate_device_finalize()): finish it first"
            )

    def add_vma(
        self,
        mm: int,
        start: int,
        npages: int,
        flags: int,
        kind: int,
        pcache_base: int,
        pgoff: int = 0,
    ) -> int:
        """Lay out a VMA's page tables; returns its index.

        May reallocate the VMA and page-table arrays, so the state (and its
        handle) is replaced; callers take ``state`` again afterwards. Refused
        (MigengineError) while a migrate_vma() callback runs.
        """
        self.refuse_during_callback("mmap() or fork()")
        st = self.state
        ps = self.page_size
        ext = ps * L.HPAGE_PMD_NR
        end = start + npages * ps
        nlevel = (end - 1) // ext - start // ext + 1
        v = int(st.sys[L.SYS_NR_VMAS])
        pte_base = int(st.sys[L.SYS_PTE_USED])
        pmd_base = int(st.sys[L.SYS_PMD_USED])
        new_file = kind != L.VMA_ANON and pcache_base < 0
        need_pc = int(st.sys[L.SYS_PCACHE_USED]) + (npages if new_file else 0)
        st = kstate.reserve(st, v + 1, pte_base + npages, pmd_base + nlevel, need_pc)
        if new_file:
            pcache_base = int(st.sys[L.SYS_PCACHE_USED])
            st.sys[L.SYS_PCACHE_USED] += npages
        rec = st.vma[v]
        rec["start"], rec["end"], rec["flags"], rec["kind"] = start, end, flags, kind
        rec["mm"], rec["pte_base"], rec["pmd_base"] = mm, pte_base, pmd_base
        rec["pcache_base"], rec["pgoff"], rec["live"] = pcache_base, pgoff, 1
        st.sys[L.SYS_NR_VMAS] = v + 1
        st.sys[L.SYS_PTE_USED] = pte_base + npages
        st.sys[L.SYS_PMD_USED] = pmd_base + nlevel
        self.set_state(st)
        return v

    def split_vma(self, v: int, addr: int, new_below: bool) -> int:
        """__split_vma(): VMA ``v`` becomes two at ``addr`` (page aligned, strictly
        inside it); returns the new record's index. The new record takes the
        part below ``addr`` when ``new_below``, else the part above; ``v`` keeps
        the other. Both keep their page-table slots: the upper part's PTE, PMD
        and file-offset bases move up by the pages below it, so an extent the
        boundary cuts has one PMD slot that both parts share, as two VMAs share
        a page table in the kernel. May replace the state (a VMA record more).
        """
        st = self.state
        n = int(st.sys[L.SYS_NR_VMAS])
        st = kstate.reserve(
            st,
            n + 1,
            int(st.sys[L.SYS_PTE_USED]),
            int(st.sys[L.SYS_PMD_USED]),
            int(st.sys[L.SYS_PCACHE_USED]),
        )
        st.vma[n] = st.vma[v]
        lower, upper = (n, v) if new_below else (v, n)
        start = int(st.vma[v]["start"])
        below = (addr - start) // self.page_size
        shift = self.page_size.bit_length() - 1 + L.HPAGE_PMD_ORDER
        up = st.vma[upper]
        up["pte_base"] += below
        up["pmd_base"] += (addr >> shift) - (start >> shift)
        up["pgoff"] += below
        up["start"] = addr
        st.vma[lower]["end"] = addr
        st.sys[L.SYS_NR_VMAS] = n + 1
        self.set_state(st)
        return n

    def can_merge(self, lo: int, hi: int) -> bool:
        """vma_merge()'s test for two VMAs that touch (``lo`` ends where ``hi``
        starts): same process, flags, kind and file, and page-table slots, PMD
        slots and file offsets that continue each other (two parts of one
        mapping, split earlier)."""
        a, b = self.state.vma[lo], self.state.vma[hi]
        if not (a["live"] and b["live"] and a["end"] == b["start"]):
            return False
        for f in ("mm", "flags", "kind", "pcache_base"):
            if a[f] != b[f]:
                return False
        pages = (int(a["end"]) - int(a["start"])) // self.page_size
        shift = self.page_size.bit_length() - 1 + L.HPAGE_PMD_ORDER
        pmd_step = (int(b["start"]) >> shift) - (int(a["start"]) >> shift)
        return (
            b["pte_base"] == a["pte_base"] + pages
            and b["pgoff"] == a["pgoff"] + pages
            and b["pmd_base"] == a["pmd_base"] + pmd_step
        )

    def merge_vmas(self, lo: int, hi: int) -> None:
        """vma_merge(): ``lo`` grows over ``hi``, whose record dies."""
        st = self.state
        st.vma[lo]["end"] = st.vma[hi]["end"]
        st.vma[hi]["live"] = 0
