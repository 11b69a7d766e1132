"""GPU memory oversubscription, simulated entirely inside one ``@njit`` loop.

A device with less memory than the working set runs a trace of accesses. The
first access to a non-resident 64 KiB block is a device page fault: the
driver evicts least-recently-used blocks back to system memory until the
block fits, then migrates it to the device, both with the engine's compiled
``migrate_vma`` (``kernels.migrate_vma_to_device`` / ``migrate_vma_to_system``).
Device writes land in device memory directly; eviction must carry them back.

Every page starts with a known pattern and a 32-bit write counter in its
first 4 bytes; after the run every page is read back through the CPU fault
path (``kernels.cpu_read``, which faults device-private pages back) and
checked byte for byte. No Python runs per access or per migration.

Reports pages migrated per second of wall time and the copy engine's modelled
DMA time (``state.copy_stats``), plus the modelled far-fault cost.

    python examples/gpu_oversubscription.py --pages 4096 --device-pages 2048 \\
        --accesses 2000000
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from typing import Any

import numpy as np
from numba import njit

import migengine as me
from migengine import kernels
from migengine.kernels import layout as L
from migengine.kernels.copy import STAT_BYTES, STAT_DESCRIPTORS, STAT_MODEL_S, STAT_WALL_S
from migengine.kernels.device import DEV_KEEP_STATS

PATTERNS = {"hotspot": 0, "strided": 1, "random": 2}
PAT_HOTSPOT, PAT_STRIDED, PAT_RANDOM = 0, 1, 2

# UVM-Smart's far-fault handling latency: 66,645 cycles at 1481 MHz
# . Charged once per device fault.
FAULT_US = 45.0
COUNTER_BYTES = 4  # a little-endian uint32 write counter at the start of each page

# Result fields, in the order of the int64 array simulate() fills.
STATS = ("accesses", "hits", "faults", "evictions", "pages_in", "pages_out", "remote_writes")
(S_ACCESSES, S_HITS, S_FAULTS, S_EVICTIONS, S_PAGES_IN, S_PAGES_OUT, S_REMOTE) = range(len(STATS))


# ----------------------------------------------------------------------------- trace
@njit(cache=True)
def make_trace(pattern, naccesses, npages, stride, hot_pages, hot_fraction, write_fraction, seed):
    """The page index and write flag of every access.

    hotspot: ``hot_fraction`` of the accesses hit the first ``hot_pages``
    pages, the rest are uniform. strided: a column-major walk of a row-major
    matrix whose rows are ``stride`` pages long (page 0, s, 2s, ..., then 1,
    1 + s, ...), repeated. random: uniform over the working set.
    """
    np.random.seed(seed)
    pages = np.empty(naccesses, np.int64)
    writes = np.empty(naccesses, np.bool_)
    rows = (npages + stride - 1) // stride
    for k in range(naccesses):
        if pattern == PAT_STRIDED:
            j = k % (rows * stride)
            page = (j % rows) * stride + j // rows
            pages[k] = page % npages
        elif pattern == PAT_HOTSPOT and np.random.random() < hot_fraction:
            pages[k] = np.random.randint(0, hot_pages)
        else:
            pages[k] = np.random.randint(0, npages)
        writes[k] = np.random.random() < write_fraction
    return pages, writes


# ----------------------------------------------------------------------------- page contents
@njit(cache=True)
def _pattern_byte(page, j):
    return (page * 31 + j * 7 + 1) & 0xFF


@njit(cache=True)
def fill_pages(state, pid, vstart, npages):
    """CPU-write every page: the pattern, with the write counter at 0. Returns
    the first fault status that is not FAULT_OK, or 0."""
    ps = state.sys[L.SYS_PAGE_SIZE]
    buf = np.empty(ps, np.uint8)
    for page in range(npages):
        for j in range(ps):
            buf[j] = 0 if j < COUNTER_BYTES else _pattern_byte(page, j)
        status = kernels.cpu_write(state, pid, vstart + page * ps, buf)
        if status != 0:
            return status
    return 0


@njit(cache=True)
def _bump_counter(data, off):
    """Add one to the little-endian uint32 at ``data[off:off + 4]``."""
    carry = 1
    for j in range(COUNTER_BYTES):
        v = np.int64(data[off + j]) + carry
        data[off + j] = v & 0xFF
        carry = v >> 8


@njit(cache=True)
def verify_pages(state, pid, vstart, npages, expected_writes):
    """Read every page back through the CPU (faulting device pages home) and
    count the pages whose bytes differ from pattern + expected counter."""
    ps = state.sys[L.SYS_PAGE_SIZE]
    buf = np.empty(ps, np.uint8)
    bad = 0
    for page in range(npages):
        if kernels.cpu_read(state, pid, vstart + page * ps, buf) != 0:
            bad += 1
            continue
        count = 0
        for j in range(COUNTER_BYTES):
            count |= np.int64(buf[j]) << (8 * j)
        ok = count == (expected_writes[page] & 0xFFFFFFFF)
        for j in range(COUNTER_BYTES, ps):
            ok = ok and buf[j] == _pattern_byte(page, j)
        bad += 0 if ok else 1
    return bad


# ----------------------------------------------------------------------------- the device
@njit(cache=True)
def _device_write(state, pid, addr, scratch):
    """A device store to ``addr``: straight into device memory when the page is
    resident there, else a remote write through the CPU path. Returns 1 when
    it had to go remote."""
    ps = state.sys[L.SYS_PAGE_SIZE]
    _, pfn, _, _ = kernels.translate(state, pid, addr)
    if pfn >= state.sys[L.SYS_NR_RAM]:
        _bump_counter(state.data, pfn * ps + addr % ps)
        return 0
    kernels.cpu_read(state, pid, addr, scratch)
    _bump_counter(scratch, 0)
    kernels.cpu_write(state, pid, addr, scratch)
    return 1


@njit(cache=True)
def _unlink(b, prev, nxt, ends):
    """Take block ``b`` out of the LRU list (``ends`` = [most recent, least])."""
    if prev[b] >= 0:
        nxt[prev[b]] = nxt[b]
    else:
        ends[0] = nxt[b]
    if nxt[b] >= 0:
        prev[nxt[b]] = prev[b]
    else:
        ends[1] = prev[b]
    prev[b] = -1
    nxt[b] = -1


@njit(cache=True)
def _push_front(b, prev, nxt, ends):
    prev[b] = -1
    nxt[b] = ends[0]
    if ends[0] >= 0:
        prev[ends[0]] = b
    ends[0] = b
    if ends[1] < 0:
        ends[1] = b


@njit(cache=True)
def simulate(state, pid, vma_index, vstart, npages, block_pages, trace_pages, trace_writes, out):
    """Run the trace; fills ``out`` (int64[len(STATS)]).

    The device holds whole blocks: on a miss it evicts the least recently
    used blocks until ``block_pages`` device pages are free, then migrates
    the block in. ``state.copy_stats`` accumulates every copy of the run.
    """
    ps = state.sys[L.SYS_PAGE_SIZE]
    nblocks = (npages + block_pages - 1) // block_pages
    prev = np.full(nblocks, -1, np.int64)
    nxt = np.full(nblocks, -1, np.int64)
    ends = np.full(2, -1, np.int64)
    resident = np.zeros(nblocks, np.bool_)
    src = np.zeros(block_pages, np.uint64)
    dst = np.zeros(block_pages, np.uint64)
    scratch = np.empty(COUNTER_BYTES, np.uint8)
    for k in range(trace_pages.shape[0]):
        page = trace_pages[k]
        b = page // block_pages
        if resident[b]:
            out[S_HITS] += 1
            _unlink(b, prev, nxt, ends)
        else:
            out[S_FAULTS] += 1
            start = vstart + b * block_pages * ps
            end = vstart + min((b + 1) * block_pages, npages) * ps
            while state.dev[0, L.DEV_FREE] < (end - start) // ps and ends[1] >= 0:
                victim = ends[1]
                _unlink(victim, prev, nxt, ends)
                resident[victim] = False
                vs = vstart + victim * block_pages * ps
                ve = vstart + min((victim + 1) * block_pages, npages) * ps
                moved = kernels.migrate_vma_to_system(
                    state, vma_index, vs, ve, src, dst, DEV_KEEP_STATS
                )
                out[S_PAGES_OUT] += max(moved, 0)
                out[S_EVICTIONS] += 1
            free_before = state.dev[0, L.DEV_FREE]
            kernels.migrate_vma_to_device(state, vma_index, start, end, src, dst, DEV_KEEP_STATS)
            out[S_PAGES_IN] += free_before - state.dev[0, L.DEV_FREE]
            resident[b] = True
        _push_front(b, prev, nxt, ends)
        if trace_writes[k]:
            out[S_REMOTE] += _device_write(state, pid, vstart + page * ps, scratch)
        out[S_ACCESSES] += 1


# ----------------------------------------------------------------------------- driver
def run(
    pages: int = 4096,
    device_pages: int = 2048,
    accesses: int = 2_000_000,
    block_pages: int = 16,
    pattern: str = "hotspot",
    stride: int = 16,
    hot_fraction: float = 0.9,
    write_fraction: float = 0.2,
    engine: str = "pcie3-uvm",
    threads: int = 1,
    profile: str = "hmm-v25",
    seed: int = 0,
    make_machine: Callable[..., me.Machine] = me.Machine,
) -> dict[str, Any]:
    """Build the machine, run the trace, verify every page; returns the results.

    The returned dict holds the STATS counters, ``wall_s`` (the simulate()
    call only), ``pages_per_s``, the copy engine's ``dma_model_s``,
    ``dma_bytes``, ``dma_descriptors`` and ``copy_wall_s``, the modelled
    ``fault_model_s``, ``bad_pages`` (0 when every byte survived) and the
    ``machine``, ``process`` and ``vma`` objects.
    """
    if block_pages < 1 or device_pages < block_pages:
        raise ValueError("need 1 <= block_pages <= device_pages")
    hot_pages = max(1, min(pages, device_pages // 2))
    trace_pages, trace_writes = make_trace(
        PATTERNS[pattern], accesses, pages, stride, hot_pages, hot_fraction, write_fraction, seed
    )
    m = make_machine(pages + 64, device_pages, profile=profile)
    # One descriptor per block when its frames are contiguous. threads=1: the serial
    # copy, since a parallel region per migration costs more than a block's copy
    # here, and an embedding caller may itself run inside prange.
    m.device.engine = me.CopyEngine.preset(engine, chunk_pages=block_pages, threads=threads)
    p = m.new_process()
    vma = p.mmap(pages)
    st = m.state  # after mmap: the page tables may have been reallocated
    if fill_pages(st, p.pid, vma.start, pages) != 0:
        raise me.MigengineError("could not populate the working set")
    out = np.zeros(len(STATS), np.int64)
    args = (st, p.pid, vma.index, vma.start, pages, block_pages)
    simulate(*args, trace_pages[:0], trace_writes[:0], out)  # load (or compile) it first
    st.copy_stats[:] = 0.0  # the run accumulates into it (DEV_KEEP_STATS)
    t0 = time.perf_counter()
    simulate(*args, trace_pages, trace_writes, out)
    wall = time.perf_counter() - t0
    result: dict[str, Any] = {name: int(v) for name, v in zip(STATS, out, strict=True)}
    moved = result["pages_in"] + result["pages_out"]
    result.update(
        wall_s=wall,
        pages_per_s=moved / wall if wall > 0 else 0.0,
        dma_model_s=float(st.copy_stats[STAT_MODEL_S]),
        dma_bytes=int(st.copy_stats[STAT_BYTES]),
        dma_descriptors=int(st.copy_stats[STAT_DESCRIPTORS]),
        copy_wall_s=float(st.copy_stats[STAT_WALL_S]),
        fault_model_s=result["faults"] * FAULT_US * 1e-6,
        resident_pages=m.device_pages - m.free_pages(device=True),
        counters=m.counters,
    )
    expected = np.bincount(trace_pages[trace_writes], minlength=pages).astype(np.int64)
    result["bad_pages"] = int(verify_pages(st, p.pid, vma.start, pages, expected))
    result.update(machine=m, process=p, vma=vma, expected_writes=expected)
    return result


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--pages", type=int, default=4096, help="working set, pages (default 4096)")
    ap.add_argument("--device-pages", type=int, default=2048, help="device memory, pages")
    ap.add_argument("--accesses", type=int, default=2_000_000, help="trace length")
    ap.add_argument("--block-pages", type=int, default=16, help="migration block (16 = 64 KiB)")
    ap.add_argument("--pattern", choices=sorted(PATTERNS), default="hotspot")
    ap.add_argument("--stride", type=int, default=16, help="row length of the strided pattern")
    ap.add_argument("--hot-fraction", type=float, default=0.9, help="hotspot: share of hot hits")
    ap.add_argument("--write-fraction", type=float, default=0.2, help="share of device writes")
    ap.add_argument("--engine", choices=me.CopyEngine.presets(), default="pcie3-uvm")
    ap.add_argument("--threads", type=int, default=1, help="copy threads (1 = serial copy)")
    ap.add_argument("--profile", choices=("hmm-v25", "seed"), default="hmm-v25")
    ap.add_argument("--seed", type=int, default=0)
    return ap


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = _parser().parse_args(argv)
    r = run(**{k.replace("-", "_"): v for k, v in vars(args).items()})
    ps = r["machine"].page_size
    print(
        f"{r['accesses']:,} accesses over {args.pages} pages ({args.pages * ps >> 20} MiB), "
        f"device {args.device_pages} pages, {args.block_pages * ps >> 10} KiB blocks, "
        f"{args.pattern}, profile {args.profile}"
    )
    print(
        f"  hits {r['hits']:,}  faults {r['faults']:,}  evictions {r['evictions']:,}  "
        f"pages in {r['pages_in']:,}  out {r['pages_out']:,}"
    )
    print(
        f"  wall {r['wall_s']:.3f} s: {r['pages_per_s']:,.0f} pages migrated/s "
        f"({r['accesses'] / r['wall_s']:,.0f} accesses/s)"
    )
    print(
        f"  modelled DMA {r['dma_model_s'] * 1e3:.2f} ms for {r['dma_bytes'] >> 20} MiB in "
        f"{r['dma_descriptors']:,} descriptors ({args.engine}); modelled far faults "
        f"{r['fault_model_s'] * 1e3:.2f} ms at {FAULT_US:.0f} us each"
    )
    print(f"  data check: {args.pages - r['bad_pages']}/{args.pages} pages intact")
    if r["bad_pages"]:
        raise SystemExit(f"{r['bad_pages']} pages lost data")
    return r


if __name__ == "__main__":
    main()
