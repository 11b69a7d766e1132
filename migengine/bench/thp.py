"""``benchmark_thp_migration`` (hmm-tests.c case 38), replicated, profiles side by side.

The selftest times HMM_DMIRROR_MIGRATE_TO_DEV and _TO_SYS separately for
buffers of 1/4, 1/2, 1, 2, 4, 8 and 128 THPs (512 KiB to 256 MiB), each with
MADV_HUGEPAGE and with MADV_NOHUGEPAGE: fill ``ptr[i] = i & 0xFF``, one
round trip to warm up, then 5 timed iterations; throughput is the size in
GiB over the average seconds. Here the same runs on a machine per profile
and size (4 KiB pages; ``thp=True`` is MADV_HUGEPAGE), with ``np.copyto``
of the same bytes timed in the same process as the baseline, and the data
checked after the iterations. ``modern`` moves each THP as one device folio;
``hmm-v25`` and ``seed`` split it in collect.

Two ratios come with it (``ratios``):

* ``meta_thp_over_small``: a round trip of one 2 MiB THP as one COMPOUND
  folio over the same 512 pages as base pages, metadata only
  (``store_data=False``), timed inside one compiled loop (no Python per
  call), best of repetitions;
* ``e2e_thp_256m_to_dev`` / ``_to_sys``: ``np.copyto`` time over the
  migration time of 256 MiB of THPs (modern), each direction: 1.0 means
  migrating is as fast as copying the bytes once.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

import numba
import numpy as np

from migengine import kernels
from migengine.bench.environment import run_metadata
from migengine.machine import Machine

PAGE = 4096
THP_PAGES = 512
THP_SIZES = (128, 256, 512, 1024, 2048, 4096, 65_536)  # 512 KiB .. 256 MiB
ITERATIONS = 5  # the selftest's
PROFILES = ("modern", "hmm-v25", "seed")
META_ROUNDS = 200  # round trips per timed compiled loop
META_REPEAT = 7
GIB = float(1 << 30)


def _machine(profile: str, npages: int, store_data: bool) -> Machine:
    """RAM and device both 512-aligned, each with room for the buffer's THPs."""
    runs = -(-npages // THP_PAGES) * THP_PAGES
    return Machine(
        runs + 2 * THP_PAGES,
        runs + THP_PAGES,
        page_size=PAGE,
        profile=profile,
        store_data=store_data,
    )


def _fill(npages: int) -> bytes:
    """The selftest's ``ptr[i] = i & 0xFF`` over int32 values."""
    return (np.arange(npages * PAGE // 4, dtype=np.int32) & 0xFF).tobytes()


def _copyto_ns(nbytes: int, iterations: int) -> int:
    """Best ``np.copyto`` of ``nbytes`` between two arrays, in ns."""
    src = np.ones(nbytes, np.uint8)
    dst = np.zeros(nbytes, np.uint8)
    np.copyto(dst, src)
    best = None
    for _ in range(iterations):
        t = time.perf_counter_ns()
        np.copyto(dst, src)
        ns = time.perf_counter_ns() - t
        best = ns if best is None else min(best, ns)
    return int(best or 1)


def run_migration_benchmark(profile: str, npages: int, thp: bool, iterations: int) -> dict:
    """run_migration_benchmark(): one buffer size, THP or not, both directions."""
    m = _machine(profile, npages, store_data=True)
    p = m.new_process()
    vma = p.mmap(npages, thp=thp)
    data = _fill(npages)
    p.write(vma.start, data)
    dev = m.device
    dev.migrate_to_device(p, vma.start, vma.end)  # the warm-up round trip
    dev.migrate_to_system(p, vma.start, vma.end)
    to_dev: list[int] = []
    to_sys: list[int] = []
    huge_on_device = False
    for _ in range(iterations):
        t = time.perf_counter_ns()
        moved = dev.migrate_to_device(p, vma.start, vma.end)
        to_dev.append(time.perf_counter_ns() - t)
        huge_on_device = p.translate(vma.start).huge
        t = time.perf_counter_ns()
        dev.migrate_to_system(p, vma.start, vma.end)
        to_sys.append(time.perf_counter_ns() - t)
        if moved != npages:
            raise RuntimeError(f"{profile}: {moved} of {npages} pages moved")
    if p.read(vma.start, len(data)) != data:
        raise RuntimeError(f"{profile}: the buffer changed")
    m.check()
    nbytes = npages * PAGE
    copyto = _copyto_ns(nbytes, iterations)
    dev_s = sum(to_dev) / len(to_dev) * 1e-9
    sys_s = sum(to_sys) / len(to_sys) * 1e-9
    return {
        "profile": profile,
        "bytes": nbytes,
        "thp": thp,
        "huge_on_device": huge_on_device,
        "to_dev_ms": dev_s * 1e3,
        "to_sys_ms": sys_s * 1e3,
        "to_dev_gibs": nbytes / GIB / dev_s,
        "to_sys_gibs": nbytes / GIB / sys_s,
        "copyto_ms": copyto * 1e-6,
        "to_dev_vs_copyto": copyto * 1e-9 / dev_s,
        "to_sys_vs_copyto": copyto * 1e-9 / sys_s,
    }


# Cached functions here embed the kernels' code but are keyed on this file only
# (numba #1833): drop them when the kernels changed.
kernels.drop_stale_user_cache(__file__)


@numba.njit(cache=True, nogil=True)
def _round_trips(state, v, start, end, src, dst, rounds):
    for _ in range(rounds):
        kernels.migrate_vma_to_device(state, v, start, end, src, dst, 0)
        kernels.migrate_vma_to_system(state, v, start, end, src, dst, 0)


_Args = tuple[Any, Any, Any, Any, Any, Any]  # _round_trips' arguments before ``rounds``


def _meta_extent(thp: bool) -> tuple[Machine, Any, _Args]:
    """A metadata-only modern machine with one populated 2 MiB extent, its
    process, and the arguments of ``_round_trips`` over it (one round trip
    run: compiled)."""
    m = _machine("modern", THP_PAGES, store_data=False)
    p = m.new_process()
    vma = p.mmap(THP_PAGES, thp=thp)
    p.populate(vma.start, vma.end, write=True)
    src = np.zeros(THP_PAGES, np.uint64)
    dst = np.zeros(THP_PAGES, np.uint64)
    args = (m.state, vma.index, vma.start, vma.end, src, dst)
    _round_trips(*args, 1)
    if p.translate(vma.start).huge != thp:
        raise RuntimeError("the extent was not mapped as asked")
    return m, p, args


def meta_round_trip_ns(rounds: int = META_ROUNDS, repeat: int = META_REPEAT) -> tuple[float, float]:
    """One 2 MiB extent's round trip (system -> device -> system), metadata only,
    modern, as one COMPOUND folio and as 512 base pages: the best over
    ``repeat`` compiled loops of ``rounds`` round trips each, in ns, as
    ``(folio, base pages)``. The two kinds' loops alternate, so a slow spell of
    this shared machine lands on both instead of skewing their ratio."""
    kinds = [_meta_extent(True), _meta_extent(False)]
    best = [float("inf"), float("inf")]
    for _ in range(repeat):
        for k, (_, _, args) in enumerate(kinds):
            t = time.perf_counter_ns()
            _round_trips(*args, rounds)
            best[k] = min(best[k], (time.perf_counter_ns() - t) / rounds)
    for thp, (m, p, args) in zip((True, False), kinds, strict=True):
        if p.translate(int(args[2])).huge != thp:
            raise RuntimeError("the extent's mapping changed kind")
        m.check()
    return best[0], best[1]


def run_thp_benchmark(
    profiles: Sequence[str] = PROFILES,
    sizes: Sequence[int] = THP_SIZES,
    iterations: int = ITERATIONS,
    meta: bool = True,
    progress: Callable[[int], Any] | None = None,
) -> dict[str, Any]:
    """The replica over ``profiles`` x ``sizes`` x (THP, base pages); returns
    ``{"records", "ratios", "metadata"}``."""
    started = time.perf_counter()
    bar = progress(len(profiles) * len(sizes) * 2) if progress else None
    records = []
    for profile in profiles:
        for npages in sizes:
            for thp in (True, False):
                records.append(run_migration_benchmark(profile, npages, thp, iterations))
                if bar is not None:
                    bar.update(1)
    if bar is not None:
        bar.close()
    ratios: dict[str, float] = {}
    if meta:
        thp_ns, small_ns = meta_round_trip_ns()
        ratios["meta_thp_ns"] = thp_ns
        ratios["meta_small_ns"] = small_ns
        ratios["meta_thp_over_small"] = thp_ns / small_ns
    big = [r for r in records if r["profile"] == "modern" and r["thp"] and r["bytes"] == 1 << 28]
    if big:
        ratios["e2e_thp_256m_to_dev"] = big[0]["to_dev_vs_copyto"]
        ratios["e2e_thp_256m_to_sys"] = big[0]["to_sys_vs_copyto"]
    metadata = run_metadata()
    metadata["elapsed_s"] = time.perf_counter() - started
    metadata["parameters"] = {
        "sizes_pages": list(sizes),
        "iterations": iterations,
        "page_size": PAGE,
        "meta_rounds": META_ROUNDS,
        "meta_repeat": META_REPEAT,
    }
    return {"records": records, "ratios": ratios, "metadata": metadata}


def _size(nbytes: int) -> str:
    return f"{nbytes >> 20} MiB" if nbytes >= 1 << 20 else f"{nbytes >> 10} KiB"


def format_thp_markdown(result: dict[str, Any]) -> str:
    """The selftest's table, one row per profile, size and THP setting, then the ratios."""
    lines = [
        "| profile | size | THP | device PMD | to dev GiB/s | to sys GiB/s "
        "| to dev / copyto | to sys / copyto |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in result["records"]:
        lines.append(
            f"| {r['profile']} | {_size(r['bytes'])} | {'yes' if r['thp'] else 'no'} "
            f"| {'yes' if r['huge_on_device'] else 'no'} | {r['to_dev_gibs']:.2f} "
            f"| {r['to_sys_gibs']:.2f} | {r['to_dev_vs_copyto']:.2f} "
            f"| {r['to_sys_vs_copyto']:.2f} |"
        )
    ratios = result["ratios"]
    if "meta_thp_over_small" in ratios:
        lines.append("")
        lines.append(
            "Metadata, one 2 MiB round trip (modern): COMPOUND folio "
            f"{ratios['meta_thp_ns']:.0f} ns, 512 base pages "
            f"{ratios['meta_small_ns']:.0f} ns: ratio "
            f"{ratios['meta_thp_over_small']:.3f} (1/{1 / ratios['meta_thp_over_small']:.1f})."
        )
    if "e2e_thp_256m_to_dev" in ratios:
        lines.append(
            f"256 MiB of THPs (modern), np.copyto time / migration time: to device "
            f"{ratios['e2e_thp_256m_to_dev']:.2f}, to system {ratios['e2e_thp_256m_to_sys']:.2f}."
        )
    return "\n".join(lines) + "\n"
