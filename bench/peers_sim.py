"""A pure-Python peer of ``me.simulate``: the same driver model doing the same work.

``me.simulate`` replays a trace through a UVM-style driver (fault batches,
coalescing, 2 MiB VA blocks, prefetch, eviction) and runs every move as a real
``migrate_vma()`` with the device's callbacks: collect, prepare, unmap,
alloc_and_copy, pages, finalize_and_map, finalize, over page tables, struct
pages, free stacks and (with ``store_data``) frame bytes. :class:`SimPeer` is
that run written in plain Python: the driver is the reference model
``tests/reference/uvm_model.py`` (written from docs/workloads.md), and its
move, CPU-access and device-store hooks run bench/peers.py's pure-Python
migrate_vma() over a flat copy of the machine (lists of ints, one bytearray of
frames): every page's bytes are copied when it moves, every write access
stores its byte (``(k + 1) & 0xFF``, kernels/sim/service.py's write_value) in
the frame the page table or the device's mirror names, and the copy engine's
model is charged for each call. Like the engine it keeps no per-batch or
per-copy records, and it checks nothing while it runs: :func:`agreement`
compares it with the engine's run afterwards.

Both sides start from the same machine, built the way ``me.simulate`` builds
its own (one process, the trace's VA blocks packed into one VMA, every page
written in RAM); the peer copies its state once into lists. Neither side's
clock covers that setup: ``SimPeer.run`` times the replay, as ``wall_s`` does.

It covers what the benchmark runs: ``host_init=True``, profile ``hmm-v25``,
every prefetcher and eviction order of the model, CPU and remote accesses.
Anything else raises ``OffCommonPath``. The module needs the repository root on
``sys.path`` (bench_sim.py puts it there) for the reference model.
"""

from __future__ import annotations

import math
import time
from typing import Any

import numpy as np
from peers import Flat, OffCommonPath, python_migrate_range

import migengine as me
from migengine.kernels import layout as L
from migengine.sim import SIM_VSTART
from tests.reference.uvm_model import (
    BLOCK_PAGES,
    BLOCK_SHIFT,
    COUNTERS,
    PAGE_SHIFT,
    USER_VA_END,
    UvmModel,
)

_KIND = int(L.PTE_KIND_MASK)
_PRESENT = int(L.PTE_PRESENT)
_DEVICE_PTE = int(L.PTE_DEVICE)
_PTE_WRITE = int(L.PTE_WRITE)
_PTE_DIRTY = int(L.PTE_DIRTY)
_PFN_SHIFT = int(L.PTE_PFN_SHIFT)
_DIRTY = int(L.PG_DIRTY)
_ANON = int(L.MAPPING_ANON)

#: The engine's statistics the peer keeps too, compared exactly by agreement().
COMPARED = (*COUNTERS, "bytes_to_device", "bytes_to_host")


class SimPeer(UvmModel):
    """``me.simulate(trace, cfg)`` in pure Python: build it (untimed), then :meth:`run`.

    Simulated page ``p`` (VA block rank ``p // 512``) is the VMA's page ``p``,
    PTE slot ``flat.slot0 + p``.
    """

    def __init__(self, trace: me.Trace, cfg: me.SimConfig) -> None:
        if not cfg.host_init:
            raise OffCommonPath("the peer starts from host-initialised pages (host_init=True)")
        self.addr: list[int] = trace.addr.tolist()
        self.write: list[bool] = trace.write.tolist()
        self.proc: list[int] = trace.proc.tolist()
        blocks = sorted({a >> BLOCK_SHIFT for a in self.addr})
        if blocks and blocks[-1] >= USER_VA_END >> BLOCK_SHIFT:
            raise ValueError("an address is outside the user address space (2**47)")
        self.rank = {b: r for r, b in enumerate(blocks)}
        nblocks = max(len(blocks), 1)
        policy = None if isinstance(cfg.evict, str) else cfg.evict
        super().__init__(
            nblocks,
            device_pages=cfg.device_pages,
            migrate_pages=cfg.migrate_pages,
            batch_faults=cfg.batch_faults,
            prefetch=cfg.prefetch,
            evict="user" if policy is not None else cfg.evict,
            seed=cfg.seed,
            policy=policy,
        )
        self.flat = _initial_state(nblocks * BLOCK_PAGES, cfg)
        self.page_size = self.flat.page_size
        self.fault_us = cfg.fault_us
        self.batch_us = cfg.batch_us
        self.fixed_us = 0.0
        self.copy_us = 0.0
        self.bytes_to_device = 0
        self.bytes_to_host = 0

    def run(self) -> float:
        """Replay the trace; returns its wall seconds."""
        t0 = time.perf_counter()
        step = self.access
        rank = self.rank
        in_block = BLOCK_PAGES - 1
        for k, (a, proc, write) in enumerate(zip(self.addr, self.proc, self.write, strict=True)):
            page = rank[a >> BLOCK_SHIFT] * BLOCK_PAGES + ((a >> PAGE_SHIFT) & in_block)
            step(k, page, proc, write)
        self.service(len(self.addr))
        return time.perf_counter() - t0

    # ------------------------------------------------------------ the model's hooks
    def service(self, now: int) -> None:
        """Service the open batch, charged ``batch_us`` plus ``fault_us`` per entry."""
        if self.entries:
            self.fixed_us += self.batch_us + self.fault_us * len(self.entries)
        super().service(now)

    def _migrate(self, first: int, end: int, to_device: bool, cpu: int = L.CPU_DRIVER) -> list[int]:
        """One migrate_vma() of pages ``[first, end)`` on ``cpu``; returns the pages that moved."""
        done = python_migrate_range(self.flat, first, end - first, to_device, cpu)
        self.copy_us += done.model_ns * 1e-3
        if to_device:
            self.bytes_to_device += done.nbytes
        else:
            self.bytes_to_host += done.nbytes
        return [first + k for k in done.moved]

    def _move_to_device(self, first: int, end: int, now: int) -> None:
        for p in self._migrate(first, end, True):
            self._page_in(p, now)

    def _move_to_host(self, first: int, end: int) -> int:
        moved = self._migrate(first, end, False)
        for p in moved:
            self._page_out(p)
        return len(moved)

    def _fault_back(self, p: int) -> None:
        """hmm_devmem_ops.fault: a one-page migrate_vma() back, ``fault_us`` plus its copy."""
        self.flat.counters["device_faults"] += 1
        self.fixed_us += self.fault_us
        for q in self._migrate(p, p + 1, False, L.CPU_USER):  # on the faulting CPU
            self._page_out(q)

    def _device_write(self, k: int, p: int) -> None:
        """The byte of access ``k`` into the device frame the device's mirror maps."""
        f = self.flat
        if f.data is not None:
            ps = self.page_size
            frame = f.mirror[f.slot0 + p] >> 1
            f.data[frame * ps + (self.addr[k] & (ps - 1))] = (k + 1) & 0xFF

    def _cpu_access(self, k: int, p: int, write: bool) -> None:
        """The CPU path: a device page faults back (read-only: 4.14's migration
        entry of a device page is), then a store's write fault reuses the page
        (do_wp_page(): mapped once) and the store lands in its RAM frame."""
        super()._cpu_access(k, p, write)
        f = self.flat
        if not write:
            return
        slot = f.slot0 + p
        pte = f.pte[slot]
        if pte & _KIND != _PRESENT:
            raise OffCommonPath("CPU store: no present PTE (a fault to handle)")
        pfn = pte >> _PFN_SHIFT
        if not pte & _PTE_WRITE:
            if f.mapcount[pfn] != 1 or f.mapping[pfn] != _ANON:
                raise OffCommonPath("CPU store: a shared read-only page (copy on write)")
            f.pte[slot] = pte | _PTE_WRITE | _PTE_DIRTY
            f.flags[pfn] |= _DIRTY
        if f.data is not None:
            ps = self.page_size
            f.data[pfn * ps + (self.addr[k] & (ps - 1))] = (k + 1) & 0xFF
            f.flags[pfn] |= _DIRTY

    # -------------------------------------------------------------------- results
    def stats(self) -> dict[str, Any]:
        """The model's counters, the bytes moved and the modelled times (s)."""
        out: dict[str, Any] = super().stats()
        out.update(
            bytes_to_device=self.bytes_to_device,
            bytes_to_host=self.bytes_to_host,
            fault_s=self.fixed_us * 1e-6,
            copy_s=self.copy_us * 1e-6,
            modelled_s=(self.fixed_us + self.copy_us) * 1e-6,
        )
        return out

    def page_bytes(self) -> np.ndarray:
        """Every simulated page's bytes read through the peer's page table, (pages, page size)."""
        f = self.flat
        ptes = f.pte[f.slot0 : f.slot0 + len(self.res)]
        return _frames_of(np.frombuffer(f.data, np.uint8), ptes)


def _initial_state(pages: int, cfg: me.SimConfig) -> Flat:
    """The machine ``me.simulate`` builds for ``pages`` simulated pages, as lists."""
    m = me.Machine(
        pages + 64,
        cfg.device_pages,
        store_data=cfg.store_data,
        profile=cfg.profile,
        swap_pages=0,
    )
    m.device.engine = cfg.copy_engine()
    proc = m.new_process()
    vma = proc.mmap(pages, addr=SIM_VSTART)
    proc.populate(vma.start, vma.end, write=True)
    return Flat.from_machine(m, vma).as_lists()


def _frames_of(data: np.ndarray, ptes: Any) -> np.ndarray:
    """The frames that PTE words ``ptes`` (present or device entries) map, one row each."""
    words = np.asarray(ptes, dtype=np.uint64)
    kinds = words & np.uint64(_KIND)
    if not np.all((kinds == _PRESENT) | (kinds == _DEVICE_PTE)):
        raise AssertionError("a simulated page is neither present nor on the device")
    pfns = (words >> np.uint64(_PFN_SHIFT)).astype(np.int64)
    ps = 1 << PAGE_SHIFT
    return data.reshape(-1, ps)[pfns]


def engine_page_bytes(res: me.SimResult) -> np.ndarray:
    """Every simulated page's bytes in the engine's machine, read through its page
    table without faulting anything, (pages, page size)."""
    st = res.machine.state
    vma = res.process.vma_at(SIM_VSTART)
    slot0 = int(st.vma["pte_base"][vma.index])
    return _frames_of(st.data, st.pte[slot0 : slot0 + vma.npages])


def agreement(res: me.SimResult, peer: SimPeer) -> list[str]:
    """How the peer's run differs from the engine's ``res`` (empty: none).

    Every statistic both keep (the model's counters and the bytes moved, exactly;
    the modelled times to 1e-9), every simulated page's bytes when the run kept
    them, and the machine itself: every PTE word, reverse-map link, mirror entry,
    struct-page field, free-stack slot, LRU-add batch, frame byte and
    migration counter of the peer's flat state must equal the engine's.
    """
    mine = peer.stats()
    theirs = res.stats
    out = [f"{k}: engine {theirs[k]}, peer {mine[k]}" for k in COMPARED if theirs[k] != mine[k]]
    for k in ("modelled_s", "fault_s", "copy_s"):
        if not math.isclose(theirs[k], mine[k], rel_tol=1e-9, abs_tol=1e-12):
            out.append(f"{k}: engine {theirs[k]!r}, peer {mine[k]!r}")
    if peer.flat.data is not None:
        differ = np.flatnonzero(np.any(engine_page_bytes(res) != peer.page_bytes(), axis=1))
        if differ.size:
            out.append(f"bytes of {differ.size} pages differ, the first simulated page {differ[0]}")
    out += [f"machine state: {name}" for name in peer.flat.mismatches(res.machine)]
    return out
