"""The generators behind ``Trace.synthetic``: vectorized, seeded access patterns.

Every pattern returns the three columns of a :class:`migengine.Trace`
(``addr`` uint64, ``write`` bool, ``proc`` int8) for ``accesses`` accesses to a
buffer of ``pages`` pages of ``page_size`` bytes that starts at ``base``. No
Python loop runs per access, so millions of accesses take well under a second.

Reproducible: the same arguments and ``seed`` give the same trace. Three
independent streams, ``np.random.default_rng`` over ``SeedSequence(seed).spawn(3)``,
draw the addresses, the writes and the CPU accesses, so changing
``write_fraction`` or ``cpu_fraction`` does not move a single address.

Parameters every pattern takes:

- ``base`` (default :data:`DEFAULT_BASE`, ``0x7f0000000000``, 2 MiB- and
  1 GiB-aligned like a large anonymous mmap): the buffer's first byte; a multiple
  of ``page_size``.
- ``page_size`` (default 4096): a power of two, at least 8.
- ``write_fraction`` (default 0.0: the NVIDIA benchmark's kernels only read):
  each access is a write with this probability.
- ``cpu_fraction`` (default 0.0): each access is a CPU access (proc -1) rather
  than a device access (proc 0) with this probability.

The patterns (``PATTERNS``):

- ``sequential``: the pages in address order. With more accesses than pages each
  page gets ``accesses // pages`` consecutive accesses at increasing 8-byte
  aligned offsets, and the walk wraps to page 0 for the remainder.
- ``strided`` (``stride``, default 16): a column-major walk of a row-major
  matrix whose rows are ``stride`` pages long: pages 0, s, 2s, ..., then 1,
  1 + s, ...; accesses per page and wrap-around as ``sequential``.
- ``random``: a uniform page and a uniform 8-byte aligned offset per access.
- ``hotspot`` (``hot_pages``, default ``max(1, pages // 10)``; ``hot_fraction``,
  default 0.9): that fraction of the accesses go uniformly to the first
  ``hot_pages`` pages, the others uniformly to the whole buffer.

and the three access patterns of NVIDIA's unified-memory oversubscription
benchmark (``posts/unified-memory-oversubscription/uvm_oversubs.cu`` in
NVIDIA-developer-blog/code-samples). There every thread reads one element
(``elem_size``, default 4: the benchmark's ``float``) and a warp's 32 lanes read
32 consecutive elements, one 128-byte line; here each group of 32 consecutive
accesses is one warp's read, lanes in order, in the order a lock-step run of
the benchmark's ``*_blocksync`` kernels issues them. A pass of the kernel reads
every element once; when the trace has fewer warp reads than the buffer has
lines, it keeps evenly spaced warp reads of one pass (so it still spans the
whole buffer), and with more it runs further passes (the benchmark's loop count).

- ``streaming`` (``read_thread_blocksync``): a grid-stride loop; in lock step,
  step k of all threads covers the lines ``k * threads ... (k + 1) * threads - 1``,
  so the pass visits the lines in address order.
- ``block_streaming`` (``read_thread_blockCont_blocksync``; ``blocks``, default
  80, ``block_size``, default 128: the benchmark's default): the buffer is cut
  into ``blocks`` contiguous chunks (``ceil(lines / blocks)`` lines, the last one
  shorter; the kernel's one-element overlap is left out) and each block streams
  its own chunk, ``block_size`` elements per step. At every step all blocks read
  their next piece, so the chunks are interleaved in time: step r reads piece r
  of block 0, of block 1, ... .
- ``random_warp`` (``cta_random_warp_streaming_read``): each warp draws one
  random number R (the benchmark's 31-bit glibc LCG; here uniform in
  ``[0, max(2**31, pages))``), reads page ``R % pages`` from element
  ``R % (page_size / elem_size - 32)`` on (coalesced, not line-aligned, never
  past the page's end), lanes in order. The page size plays the role of the
  benchmark's ``-s`` (2M/64K/4K).
"""

from __future__ import annotations

from collections.abc import Callable
from numbers import Real
from typing import Any

import numpy as np

from migengine._validate import as_count, check_fits

DEFAULT_BASE = 0x7F0000000000
WARP = 32

_COMMON = {"base": DEFAULT_BASE, "page_size": 4096, "write_fraction": 0.0, "cpu_fraction": 0.0}
_EXTRA: dict[str, dict[str, Any]] = {
    "sequential": {},
    "strided": {"stride": 16},
    "random": {},
    "hotspot": {"hot_pages": None, "hot_fraction": 0.9},
    "streaming": {"elem_size": 4},
    "block_streaming": {"elem_size": 4, "blocks": 80, "block_size": 128},
    "random_warp": {"elem_size": 4},
}
PATTERNS = tuple(_EXTRA)

Columns = tuple[np.ndarray, np.ndarray, np.ndarray]


def _fraction(value: object, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, Real) or not 0.0 <= float(value) <= 1.0:
        raise ValueError(f"{name} must be a number in [0, 1], got {value!r}")
    return float(value)


def _power_of_two(value: object, name: str, minimum: int) -> int:
    n = as_count(value, name, minimum)
    if n & (n - 1):
        raise ValueError(f"{name} must be a power of two, got {n}")
    return n


def _bernoulli(rng: np.random.Generator, n: int, p: float) -> np.ndarray:
    if p == 0.0:
        return np.zeros(n, dtype=np.bool_)
    if p == 1.0:
        return np.ones(n, dtype=np.bool_)
    return rng.random(n) < p


def _walk(order: Callable[[np.ndarray], np.ndarray], pages: int, n: int, ps: int) -> np.ndarray:
    """Byte offsets of a walk over ``order(k)``, the k-th page visited: ``n // pages``
    consecutive accesses per page at increasing offsets, wrapping past the last."""
    per = max(1, n // pages)
    i = np.arange(n, dtype=np.uint64)
    page = order((i // np.uint64(per)) % np.uint64(pages))
    off = ((i % np.uint64(per)) * np.uint64(ps) // np.uint64(per)) & ~np.uint64(7)
    return page * np.uint64(ps) + off


def _column_major(pages: int, stride: int) -> Callable[[np.ndarray], np.ndarray]:
    """k -> the k-th page of a column-major walk of rows ``stride`` pages long."""
    full, rem = divmod(pages, stride)  # columns < rem have full + 1 rows, the others full

    def order(k: np.ndarray) -> np.ndarray:
        k = k.astype(np.int64)
        head = rem * (full + 1)
        in_head = k < head
        tail = np.maximum(k - head, 0)
        col = np.where(in_head, k // (full + 1), rem + tail // max(full, 1))
        row = np.where(in_head, k % (full + 1), tail % max(full, 1))
        return (row * stride + col).astype(np.uint64)

    return order


def _uniform(rng: np.random.Generator, n: int, pages: int, ps: int, hot: tuple[int, float] | None):
    page = rng.integers(0, pages, n, dtype=np.uint64)
    if hot is not None:
        is_hot = rng.random(n) < hot[1]
        page = np.where(is_hot, rng.integers(0, hot[0], n, dtype=np.uint64), page)
    return page * np.uint64(ps) + rng.integers(0, ps // 8, n, dtype=np.uint64) * np.uint64(8)


def _pass_lines(groups: int, lines: int) -> np.ndarray:
    """Positions in the kernel's pass order of ``groups`` warp reads: evenly spread
    over one pass when there are fewer than ``lines``, further passes otherwise."""
    g = np.arange(groups, dtype=np.uint64)
    if groups > lines:
        return g % np.uint64(lines)
    if groups * lines < 2**63:
        return g * np.uint64(lines) // np.uint64(groups)
    return np.floor(g * (lines / groups)).astype(np.uint64)


def _block_order(rank: np.ndarray, lines: int, blocks: int, wpb: int) -> np.ndarray:
    """Rank in lock-step (step, block, warp) order -> line, ``blocks`` chunks of
    ``chunk`` lines each streamed ``wpb`` lines (one block's warps) per step."""
    chunk = -(-lines // blocks)
    nb = -(-lines // chunk)  # non-empty blocks; the last holds last_len lines
    last_len = lines - (nb - 1) * chunk
    start = np.arange(-(-chunk // wpb), dtype=np.int64) * wpb
    a_full = np.clip(chunk - start, 0, wpb)
    a_last = np.clip(last_len - start, 0, wpb)
    per_step = (nb - 1) * a_full + a_last
    ends = np.cumsum(per_step)
    r = np.searchsorted(ends, rank.astype(np.int64), side="right")
    q = rank.astype(np.int64) - (ends[r] - per_step[r])
    af = a_full[r]
    full_part = (nb - 1) * af
    in_full = q < full_part
    b = np.where(in_full, q // np.maximum(af, 1), nb - 1)
    w = np.where(in_full, q % np.maximum(af, 1), q - full_part)
    return (b * chunk + start[r] + w).astype(np.uint64)


def _nvidia(pattern: str, rng: np.random.Generator, n: int, pages: int, ps: int, p: dict):
    es = _power_of_two(p["elem_size"], "elem_size", 1)
    if WARP * es > ps:
        raise ValueError(f"a warp's read ({WARP} x elem_size {es}) must fit in page_size {ps}")
    groups = -(-n // WARP)
    lane = np.arange(n, dtype=np.uint64) % np.uint64(WARP)
    if pattern == "random_warp":
        per_page = ps // es
        r = rng.integers(0, max(2**31, pages), groups, dtype=np.uint64)
        first = (r % np.uint64(pages)) * np.uint64(per_page) + r % np.uint64(
            max(per_page - WARP, 1)
        )
    else:
        lines = pages * ps // (WARP * es)
        rank = _pass_lines(groups, lines)
        if pattern == "block_streaming":
            blocks = as_count(p["blocks"], "blocks", 1)
            bs = as_count(p["block_size"], "block_size", WARP)
            if bs % WARP:
                raise ValueError(f"block_size must be a multiple of {WARP}, got {bs}")
            rank = _block_order(rank, lines, blocks, bs // WARP)
        first = rank * np.uint64(WARP)
    return (np.repeat(first, WARP)[:n] + lane) * np.uint64(es)


def generate(pattern: str, pages: int, accesses: int, seed: int, params: dict) -> Columns:
    """The (addr, write, proc) columns of ``Trace.synthetic``; see the module doc."""
    if pattern not in _EXTRA:
        raise ValueError(f"unknown pattern {pattern!r}; known patterns: {', '.join(PATTERNS)}")
    unknown = sorted(set(params) - set(_COMMON) - set(_EXTRA[pattern]))
    if unknown:
        raise TypeError(f"pattern {pattern!r} takes no parameter {', '.join(unknown)}")
    p = {**_COMMON, **_EXTRA[pattern], **params}
    pages = as_count(pages, "pages", 1)
    n = as_count(accesses, "accesses", 0)
    check_fits(n * 24, f"a trace of {n:,} accesses")  # addr, write and proc, and a temporary
    seed = as_count(seed, "seed", 0)
    ps = _power_of_two(p["page_size"], "page_size", 8)
    base = as_count(p["base"], "base", 0)
    if base % ps or base + pages * ps > 2**64:
        raise ValueError(f"base {base:#x} must be page-aligned with the buffer below 2**64")
    wf = _fraction(p["write_fraction"], "write_fraction")
    cf = _fraction(p["cpu_fraction"], "cpu_fraction")
    r_addr, r_write, r_proc = (
        np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(3)
    )

    if pattern == "sequential":
        off = _walk(lambda k: k, pages, n, ps)
    elif pattern == "strided":
        off = _walk(_column_major(pages, as_count(p["stride"], "stride", 1)), pages, n, ps)
    elif pattern == "random":
        off = _uniform(r_addr, n, pages, ps, None)
    elif pattern == "hotspot":
        hot_pages = max(1, pages // 10) if p["hot_pages"] is None else p["hot_pages"]
        hot_pages = as_count(hot_pages, "hot_pages", 1)
        if hot_pages > pages:
            raise ValueError(f"hot_pages {hot_pages} must be at most pages {pages}")
        off = _uniform(
            r_addr, n, pages, ps, (hot_pages, _fraction(p["hot_fraction"], "hot_fraction"))
        )
    else:
        off = _nvidia(pattern, r_addr, n, pages, ps, p)
    addr = off.astype(np.uint64, copy=False) + np.uint64(base)
    write = _bernoulli(r_write, n, wf)
    proc = np.where(_bernoulli(r_proc, n, cf), np.int8(-1), np.int8(0)).astype(np.int8)
    return addr, write, proc


__all__ = ["DEFAULT_BASE", "PATTERNS", "generate"]
