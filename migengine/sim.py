"""``me.simulate``: a fault-driven driver model in the style of NVIDIA's UVM driver.

The trace runs on a real :class:`~migengine.Machine`: one process maps the
trace's 2 MiB VA blocks, packed next to each other, and every migration is the
engine's compiled ``migrate_vma()`` with the device's own callbacks. The
replay (``migengine.kernels.sim``) runs in compiled code: no Python per
access, per fault or per batch. This module validates, builds the machine and
the replay's arrays, and turns the counters into a :class:`SimResult`.
docs/workloads.md describes the model, its sources and what it leaves out.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import numpy as np
from numba import carray, cfunc
from numba.core.errors import NumbaError

from migengine._validate import as_count
from migengine.errors import (
    InvariantError,
    MigengineError,
    MigrateError,
    OutOfMemory,
    SegFault,
    SigBus,
)
from migengine.kernels import layout as L
from migengine.kernels.sim import (
    BATCH_DTYPE,
    COPY_DTYPE,
    EVICT_IDS,
    POLICY_SIG,
    PREFETCH_IDS,
    STAT_NAMES,
    VA_BLOCK_SHIFT,
    SimState,
    expect_writes,
    replay,
    verify_replay,
)
from migengine.kernels.sim import layout as S
from migengine.machine import Machine
from migengine.sim_config import SimConfig
from migengine.sim_output import save_run
from migengine.trace import Trace

__all__ = ["SimConfig", "SimResult", "simulate"]

#: Highest user address + 1 on x86-64 with 4-level page tables (47 bits).
USER_VA_END = 1 << 47
#: Where the simulated process maps the trace's VA blocks (2 MiB aligned).
SIM_VSTART = 1 << 32
#: Rows of per-copy records kept; later copies are counted, not recorded.
MAX_COPY_ROWS = 1 << 20
_FIRST_BATCH_ROWS = 1024
#: Copy descriptors a fault batch gathers before its bytes must move (at least a
#: VA block's pages, the most one call copies): 4,096 of 16 pages is 256 MiB.
QUEUE_DESCRIPTORS = 4096
#: A fault batch's bytes move in one engine copy (kernels.sim.copies); False moves
#: each migrate_vma() call's own, as the tests and bench/bench_sim.py compare.
GATHER_COPIES = True
_CHUNK = 1 << 20


@cfunc(POLICY_SIG, cache=True)
def _builtin_policy(units, last_use, first_use, uses, n, now):  # pragma: no cover - compiled
    """Stands in for the policy argument when a built-in policy runs."""
    return -1


class SimResult:
    """What :func:`simulate` returns.

    Attributes:
        stats: dict of counters and times (docs/workloads.md lists them).
        config: the SimConfig as JSON values.
        batches: one ``BATCH_DTYPE`` row per fault batch.
        copies: one ``COPY_DTYPE`` row per migrate_vma() call and busy DMA channel,
            at most ``MAX_COPY_ROWS``; ``copies_dropped`` counts the rest.
        machine: the Machine the run used (``machine.check()`` holds).
        process: its one process; ``sim_address(addr)`` maps a trace address
            to where the process maps it.
        trace_name: the trace's file name or pattern.
    """

    def __init__(self, stats, config, batches, copies, copies_dropped, machine, trace_name):
        self.process: Any = None
        self.vblocks = np.zeros(0, np.uint64)
        self.stats = stats
        self.config = config
        self.batches = batches
        self.copies = copies
        self.copies_dropped = copies_dropped
        self.machine = machine
        self.trace_name = trace_name

    def sim_address(self, addr: int) -> int:
        """Where the simulated process maps trace address ``addr`` (ValueError if
        the trace never touched its 2 MiB block)."""
        a = int(addr)
        vb = a >> VA_BLOCK_SHIFT
        r = int(np.searchsorted(self.vblocks, np.uint64(vb)))
        if r >= len(self.vblocks) or int(self.vblocks[r]) != vb:
            raise ValueError(f"address {a:#x} is in no VA block of the trace")
        return SIM_VSTART + (r << VA_BLOCK_SHIFT) + (a & ((1 << VA_BLOCK_SHIFT) - 1))

    def save(self, directory: str | os.PathLike[str]) -> dict[str, Any]:
        """Write results.json, run.png and timeline.json (Chrome trace events) to ``directory``."""
        return save_run(directory, self)

    def __repr__(self) -> str:
        s = self.stats
        return (
            f"SimResult({s['accesses']:,} accesses: {s['device_faults']:,} device faults in "
            f"{s['fault_batches']:,} batches, {s['pages_to_device']:,} pages in, "
            f"{s['pages_prefetched']:,} prefetched, {s['pages_evicted']:,} evicted; "
            f"modelled {s['modelled_s']:.6f} s, wall {s['wall_s']:.3f} s)"
        )


def _policy(evict: Any) -> Any:
    """The POLICY_SIG function the replay calls: a built-in stand-in or the user's, wrapped."""
    if isinstance(evict, str):
        return _builtin_policy
    sig = "policy(units, last_use, first_use, uses, now) -> int (int64 arrays, int64 now)"
    try:
        user = evict

        @cfunc(POLICY_SIG)
        def call(u, last, first, uses, n, now):  # pragma: no cover - compiled
            return user(carray(u, n), carray(last, n), carray(first, n), carray(uses, n), now)

    except NumbaError as e:
        first_line = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ValueError(f"SimConfig.evict: the policy must be {sig}; {first_line}") from None
    ret = [s.return_type for s in evict.nopython_signatures]
    if not ret or not all(str(t).startswith(("int", "uint")) for t in ret):
        raise ValueError(f"SimConfig.evict: the policy must return an int: {sig}; got {ret}")
    return call


def _chunks(trace: Trace, size: int) -> Iterator[Trace]:
    for lo in range(0, len(trace), size):
        yield trace[lo : lo + size]


def _blocks_of(chunks: Iterable[Trace]) -> tuple[np.ndarray, int]:
    """The sorted 2 MiB block numbers the accesses touch, and how many accesses;
    ValueError for an address outside the simulated user address space."""
    blocks: list[np.ndarray] = []
    total = 0
    for tr in chunks:
        if len(tr):
            bad = np.flatnonzero(tr.addr >= USER_VA_END)
            if bad.size:
                i = int(bad[0])
                raise ValueError(
                    f"trace access {total + i}: address {int(tr.addr[i]):#x} is outside the "
                    f"simulated user address space [0, {USER_VA_END:#x})"
                )
            blocks.append(np.unique(tr.addr >> np.uint64(VA_BLOCK_SHIFT)))
        total += len(tr)
    if not blocks:
        return np.zeros(0, np.uint64), total
    return np.unique(np.concatenate(blocks)).astype(np.uint64), total


def _new_sim(cfg: SimConfig, m: Machine, pid: int, vma_index: int, vblocks: np.ndarray) -> Any:
    ps = m.page_size
    bp = max((1 << VA_BLOCK_SHIFT) // ps, 1)
    nblk = len(vblocks)
    pages = nblk * bp
    unit = cfg.migrate_pages
    nunits = pages // unit
    c = np.zeros(S.C_FIELDS, np.int64)
    c[S.C_PAGES] = pages
    c[S.C_BLOCK_PAGES] = bp
    c[S.C_UNIT] = unit
    c[S.C_BATCH] = cfg.batch_faults
    c[S.C_PREFETCH] = PREFETCH_IDS[cfg.prefetch]
    c[S.C_EVICT] = EVICT_IDS[cfg.evict] if isinstance(cfg.evict, str) else S.EV_USER
    c[S.C_STORE] = int(cfg.store_data)
    c[S.C_THRESHOLD] = 51  # uvm_perf_prefetch_threshold
    c[S.C_SEQ_PAGES] = max((64 << 10) // ps, 1)
    c[S.C_PID] = pid
    c[S.C_VMA] = vma_index
    c[S.C_VSTART] = SIM_VSTART
    c[S.C_PAGE_SHIFT] = ps.bit_length() - 1
    # Both powers of two: the per-page paths shift where a division by a
    # run-time value costs tens of cycles.
    c[S.C_UNIT_SHIFT] = unit.bit_length() - 1
    c[S.C_BLOCK_SHIFT] = bp.bit_length() - 1
    c[S.C_GATHER] = int(GATHER_COPIES)
    f = np.zeros(S.F_FIELDS, np.float64)
    f[S.F_FAULT_US] = cfg.fault_us
    f[S.F_BATCH_US] = cfg.batch_us
    ctr = np.zeros(S.S_FIELDS, np.int64)
    for i in (S.S_FIFO_HEAD, S.S_FIFO_TAIL, S.S_LRU_HEAD, S.S_LRU_TAIL, S.S_LAST_RANK):
        ctr[i] = -1
    ctr[S.S_RNG] = (cfg.seed * 0x9E3779B97F4A7C15 + 0x2545F4914F6CDD1D) % (1 << 63) or 1

    def full(n: int, v: int = -1, dt: Any = np.int64) -> np.ndarray:
        return np.full(n, v, dt)

    batch = cfg.batch_faults
    return SimState(
        cfg=c,
        fcfg=f,
        ctr=ctr,
        clock=np.zeros(S.T_FIELDS, np.float64),
        vblocks=vblocks,
        resident=np.zeros(pages, np.uint8),
        dev_pfn=full(pages),
        pend=full(pages),
        unit_res=np.zeros(nunits, np.int64),
        unit_mark=full(nunits),
        last_use=np.zeros(nunits, np.int64),
        first_use=np.zeros(nunits, np.int64),
        uses=np.zeros(nunits, np.int64),
        fifo_prev=full(nunits),
        fifo_next=full(nunits),
        rand_units=np.zeros(nunits, np.int64),
        rand_pos=full(nunits),
        blk_res=np.zeros(nblk, np.int64),
        blk_mark=full(nblk),
        lru_prev=full(nblk),
        lru_next=full(nblk),
        blk_head=full(nblk),
        b_page=np.zeros(batch, np.int64),
        b_access=np.zeros(batch, np.int64),
        b_info=np.zeros(batch, np.int64),
        b_next=full(batch),
        touched=np.zeros(batch, np.int64),
        want=np.zeros(bp, np.uint8),
        req=np.zeros(bp, np.uint8),
        occ=np.zeros(bp + 1, np.int64),
        src=np.zeros(bp, np.uint64),
        dst=np.zeros(bp, np.uint64),
        pol_units=np.zeros(nunits, np.int64),
        pol_last=np.zeros(nunits, np.int64),
        pol_first=np.zeros(nunits, np.int64),
        pol_uses=np.zeros(nunits, np.int64),
        expected=np.zeros(pages * ps if cfg.store_data else 0, np.uint8),
        iobuf=np.zeros(8, np.uint8),
        queue=np.zeros((S.Q_ROWS, max(QUEUE_DESCRIPTORS, bp)), np.int64),
        batches=np.zeros(_FIRST_BATCH_ROWS, BATCH_DTYPE),
        copies=np.zeros(MAX_COPY_ROWS, COPY_DTYPE),
    )


def _grow_batches(sim: Any) -> Any:
    rows = np.zeros(2 * len(sim.batches), BATCH_DTYPE)
    rows[: len(sim.batches)] = sim.batches
    return sim._replace(batches=rows)


_FAULTS = {L.FAULT_SEGV: SegFault, L.FAULT_SIGBUS: SigBus, L.FAULT_OOM: OutOfMemory}


def _raise_error(sim: Any, where: int) -> None:
    code = int(sim.ctr[S.S_ERROR])
    arg = int(sim.ctr[S.S_ERROR_ARG])
    if code == S.ERR_POLICY:
        raise ValueError(
            f"SimConfig.evict: the policy returned {arg} at access {where}, "
            "not a position in its units array"
        )
    if code == S.ERR_CPU_FAULT:
        raise _FAULTS.get(arg, MigengineError)(f"access {where}: the CPU path failed (fault {arg})")
    raise MigrateError(f"access {where}: migrate_vma() refused the range ({arg})", -arg)


def simulate(
    trace: Trace | str | os.PathLike[str],
    config: SimConfig | None = None,
    *,
    chunk_accesses: int = _CHUNK,
    name: str | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> SimResult:
    """Replay ``trace`` on a fresh machine with ``config``'s driver model.

    ``trace`` is a :class:`Trace`, or a trace file's path, which is then read
    in chunks of ``chunk_accesses`` (once for its VA blocks, once to replay,
    and with ``store_data`` once more for the check), so a trace larger than
    memory runs. Raises ValueError, before anything runs, for an address
    outside the user address space (2**47) or a bad policy. ``progress(done,
    total)`` is called after each chunk (the command line's progress bar). The
    run checks its own residency bookkeeping and, with ``store_data``, every
    byte against the last value the trace wrote there, worked out from the
    trace alone (``stats["data_ok"]``; a mismatch raises InvariantError).
    """
    cfg = SimConfig() if config is None else config
    if not isinstance(cfg, SimConfig):
        raise TypeError(f"config must be a SimConfig, not {type(cfg).__name__}")
    chunk_accesses = as_count(chunk_accesses, "chunk_accesses", 1)
    if isinstance(trace, Trace):

        def chunks() -> Iterator[Trace]:
            return _chunks(trace, chunk_accesses)

        trace_name = name or "trace"
    elif isinstance(trace, (str, os.PathLike)):
        path = trace

        def chunks() -> Iterator[Trace]:
            return Trace.iter_read(path, chunk_accesses)

        trace_name = name or os.path.basename(os.fspath(path))
    else:
        raise TypeError(f"trace must be a Trace or a path, not {type(trace).__name__}")
    policy = _policy(cfg.evict)
    vblocks, total = _blocks_of(chunks())
    ps = 4096
    bp = (1 << VA_BLOCK_SHIFT) // ps
    pages = max(len(vblocks), 1) * bp
    m = Machine(
        pages + 64,
        cfg.device_pages,
        store_data=cfg.store_data,
        profile=cfg.profile,
        swap_pages=0,
    )
    # Commit the device frames' memory now (they are zeros either way): the
    # host OS's first-touch faults on them are no part of the model and would
    # otherwise land in the replay's wall time. populate() below touches RAM's.
    m.state.data[m.ram_pages * m.page_size :].fill(0)
    m.device.engine = cfg.copy_engine()
    p = m.new_process()
    vma = p.mmap(pages, addr=SIM_VSTART)
    if cfg.host_init:
        p.populate(vma.start, vma.end, write=True)
    if not len(vblocks):
        vblocks = np.zeros(1, np.uint64)
    sim = _new_sim(cfg, m, p.pid, vma.index, vblocks)
    st = m.state
    empty = Trace(np.zeros(0, np.uint64), np.zeros(0, bool))
    # Load (or compile) the replay before the clock starts.
    replay(sim, st, policy, empty.addr, empty.write, empty.proc, 0, 0, False)
    wall = 0.0
    base = 0
    for tr in chunks():
        i = 0
        while i < len(tr):
            t0 = time.perf_counter()
            i = replay(sim, st, policy, tr.addr, tr.write, tr.proc, i, base, False)
            wall += time.perf_counter() - t0
            if sim.ctr[S.S_ERROR]:
                _raise_error(sim, base + i)
            if i < len(tr):
                sim = _grow_batches(sim)
        base += len(tr)
        if progress is not None:
            progress(base, total)
    # The end of the trace: an empty last chunk services the batch still open.
    while True:
        t0 = time.perf_counter()
        replay(sim, st, policy, empty.addr, empty.write, empty.proc, 0, total, True)
        wall += time.perf_counter() - t0
        if sim.ctr[S.S_ERROR]:
            _raise_error(sim, total)
        if sim.ctr[S.S_NB] == 0:
            break
        sim = _grow_batches(sim)
    if cfg.store_data:
        base = 0
        for tr in chunks():
            expect_writes(sim, tr.addr, tr.write, base)
            base += len(tr)
    bad_data, bad_res = verify_replay(sim, st)
    res = _result(cfg, sim, m, trace_name, wall, bad_data, bad_res)
    res.process = p
    res.vblocks = sim.vblocks
    return res


def _result(cfg, sim, m, trace_name, wall, bad_data, bad_res) -> SimResult:
    if bad_res:
        raise InvariantError(
            f"simulation residency differs from the page tables on {bad_res} pages"
        )
    if bad_data:
        raise InvariantError(f"{bad_data} simulated pages read back different bytes")
    ctr = sim.ctr
    stats: dict[str, Any] = {name: int(ctr[i]) for i, name in enumerate(STAT_NAMES)}
    stats.update(
        modelled_s=float(sim.clock[S.T_NOW]) * 1e-6,
        fault_s=float(sim.clock[S.T_FIXED]) * 1e-6,
        copy_s=float(sim.clock[S.T_COPY]) * 1e-6,
        wall_s=wall,
        data_ok=True if cfg.store_data else None,
        resident_pages=int(ctr[S.S_RESIDENT]),
        device_pages=cfg.device_pages,
        simulated_pages=int(sim.cfg[S.C_PAGES]),
        vablocks=len(sim.vblocks),
    )
    nb = int(ctr[S.S_BATCHES])
    nc = int(ctr[S.S_COPIES])
    return SimResult(
        stats,
        cfg.to_dict(),
        sim.batches[:nb].copy(),
        sim.copies[:nc].copy(),
        int(ctr[S.S_COPIES_DROPPED]),
        m,
        trace_name,
    )
