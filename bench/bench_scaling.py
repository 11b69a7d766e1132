"""Scaling: migration cost per page, and state per frame, from 2**16 to 2**28 pages.

* ``pytest bench/bench_scaling.py`` - pytest-benchmark of the whole
  system -> device migration of the fragmented workload at each size:
  metadata only (``store_data=False``) from 1 Ki to 1 Mi pages, and with
  bytes up to 256 Ki pages (1 GiB; a 1 Mi-page machine with bytes would need
  8 GiB). Smoke: 1 Ki pages only; real sizes with ``MIGENGINE_BENCH_FULL=1``.
* ``python bench/bench_scaling.py [--min-exp 16] [--max-exp 28] [--out FILE]`` -
  machines of 2**16 to 2**28 RAM frames with a quarter as many device frames,
  metadata only, each in its own process: a process maps and populates half
  the RAM, and all of device memory's worth of its pages goes to the device and
  back in one call each; ns/page, state bytes per frame, resident memory.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import pytest
from _support import bench_sizes

from migengine import bench

KI = 1024
ROUNDS = 4  # round trips per machine size: the first, then the best of three
META_PAGES = bench_sizes(full=[KI, 4 * KI, 16 * KI, 64 * KI, 256 * KI, KI * KI], smoke=[KI])
DATA_PAGES = bench_sizes(full=[KI, 16 * KI, 256 * KI], smoke=[KI])


def _bench_migration(benchmark, work: bench.Workload, rounds: int, kind: str) -> None:
    work.set_engine(bench.SweepConfig().engine_for(16))
    work.migrate()  # compile or load, fault the device frames in
    n = work.pages
    benchmark.group = f"scaling|{kind}"
    benchmark.extra_info.update(pages=n, **bench.threading_info())

    def setup():
        work.reset()
        return (), {}

    benchmark.pedantic(work.migrate, setup=setup, rounds=rounds, warmup_rounds=0)
    if benchmark.stats is not None:  # None when benchmarks are disabled
        benchmark.extra_info["ns_per_page"] = benchmark.stats.stats.min * 1e9 / n


@pytest.mark.parametrize("npages", META_PAGES)
def test_scaling_metadata(benchmark, make_workload, rounds, npages):
    """Whole migration, metadata-only machine: every pass, no byte copy."""
    _bench_migration(benchmark, make_workload(npages, store_data=False), rounds, "metadata")


@pytest.mark.parametrize("npages", DATA_PAGES)
def test_scaling_end_to_end(benchmark, make_workload, rounds, npages):
    """Whole migration with bytes."""
    _bench_migration(benchmark, make_workload(npages, store_data=True), rounds, "end-to-end")


def _rss_gib() -> tuple[float, float]:
    """This process's resident set now and at its peak (VmRSS, VmHWM), in GiB."""
    fields = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        key, _, value = line.partition(":")
        fields[key] = value
    return tuple(int(fields[k].split()[0]) / 2**20 for k in ("VmRSS", "VmHWM"))  # type: ignore[return-value]


def measure_machine(exp: int) -> dict:
    """One machine size, in this process: ``2**exp`` RAM frames and a quarter
    as many device frames, metadata only (the issue's 2**28 machine at exp 28);
    a process maps and populates half the RAM, and a quarter of RAM (all of
    device memory) goes to the device and back in one call each, ROUNDS times:
    the first round in a fresh process (the kernels loaded from numba's cache,
    the scratch first touched), then the best of the others."""
    import time

    import migengine as me

    ram, dev = 1 << exp, 1 << (exp - 2)
    t0 = time.perf_counter()
    m = me.Machine(ram_pages=ram, device_pages=dev, store_data=False)
    p = m.new_process()
    vma = p.mmap(ram // 2)
    build = time.perf_counter() - t0
    rss_built, _ = _rss_gib()
    t0 = time.perf_counter()
    m.check()  # nothing in use yet: it costs the frames in use, not the machine's size
    check_built = time.perf_counter() - t0
    t0 = time.perf_counter()
    p.populate(vma.start, vma.end)
    m.lru_add_drain_all()
    populate = time.perf_counter() - t0
    end = vma.start + dev * m.page_size
    times = []
    for _ in range(ROUNDS):
        t0 = time.perf_counter()
        to_dev = m.device.migrate_to_device(p, vma.start, end)
        t1 = time.perf_counter()
        back = m.device.migrate_to_system(p, vma.start, end)
        t2 = time.perf_counter()
        assert to_dev == dev and back == dev, (to_dev, back)
        times.append(((t1 - t0) * 1e9 / dev, (t2 - t1) * 1e9 / dev))
    t0 = time.perf_counter()
    m.check()
    check = time.perf_counter() - t0
    rss, peak = _rss_gib()
    state_bytes = sum(a.nbytes for a in m.state)
    return {
        "ram_pages": ram,
        "device_pages": dev,
        "mapped_pages": ram // 2,
        "migrated_pages": dev,
        "to_device_ns": times[0][0],
        "to_system_ns": times[0][1],
        "to_device_best_ns": min(t[0] for t in times[1:]),
        "to_system_best_ns": min(t[1] for t in times[1:]),
        "state_bytes_per_frame": state_bytes / (ram + dev),
        "rss_gib_built": rss_built,
        "rss_gib": rss,
        "peak_rss_gib": peak,
        "build_s": build,
        "check_s_built": check_built,
        "populate_ns": populate * 1e9 / (ram // 2),
        "check_s": check,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--min-exp", type=int, default=16)
    parser.add_argument("--max-exp", type=int, default=28)
    parser.add_argument("--one", type=int, help=argparse.SUPPRESS)  # a child's size
    parser.add_argument("--out", type=Path, help="write the rows as JSON here")
    args = parser.parse_args()
    if args.one is not None:
        print(json.dumps(measure_machine(args.one)))
        return
    print(
        f"metadata-only machines, 2**e RAM frames and 2**(e-2) device frames, each in its "
        f"own process; {bench.threading_info()}"
    )
    head = (
        "RAM pages",
        "migrated",
        "first: to dev",
        "back",
        "best: to dev",
        "back",
        "best / smallest's",
        "B/frame",
        "RSS GiB built",
        "at end",
        "peak",
        "populate ns/pg",
        "check s built",
        "at end",
    )
    print(" | ".join(head))
    rows = []
    for exp in range(args.min_exp, args.max_exp + 1, 2):
        out = subprocess.run(
            [sys.executable, __file__, "--one", str(exp)],
            check=True,
            capture_output=True,
            text=True,
        )
        r = json.loads(out.stdout.splitlines()[-1])
        rows.append(r)
        base = rows[0]["to_device_best_ns"]
        cells = (
            f"{r['ram_pages']:,}",
            f"{r['migrated_pages']:,}",
            f"{r['to_device_ns']:.1f}",
            f"{r['to_system_ns']:.1f}",
            f"{r['to_device_best_ns']:.1f}",
            f"{r['to_system_best_ns']:.1f}",
            f"{r['to_device_best_ns'] / base:.2f}",
            f"{r['state_bytes_per_frame']:.1f}",
            f"{r['rss_gib_built']:.2f}",
            f"{r['rss_gib']:.2f}",
            f"{r['peak_rss_gib']:.2f}",
            f"{r['populate_ns']:.0f}",
            f"{r['check_s_built']:.3f}",
            f"{r['check_s']:.2f}",
        )
        print(" | ".join(cells), flush=True)
    if args.out:
        args.out.write_text(
            json.dumps({"threading": bench.threading_info(), "rows": rows}, indent=1)
        )


if __name__ == "__main__":
    main()
