"""Scaling: migration cost per page from 1 Ki to 1 Mi pages.

* ``pytest bench/bench_scaling.py`` - pytest-benchmark of the whole
  system -> device migration of the fragmented workload at each size:
  metadata only (``store_data=False``) from 1 Ki to 1 Mi pages, and with
  bytes up to 256 Ki pages (1 GiB; a 1 Mi-page machine with bytes would need
  8 GiB). Smoke: 1 Ki pages only; real sizes with ``MIGENGINE_BENCH_FULL=1``.
* ``python bench/bench_scaling.py [--max-pages 1048576] [--repeat 5]`` -
  ns/page per size, best of ``repeat``, metadata only.
"""

from __future__ import annotations

import argparse

import pytest
from _support import bench_sizes

from migengine import bench

KI = 1024
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


def main() -> None:
    import time

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--max-pages", type=int, default=KI * KI)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    print(f"metadata-only migration, best of {args.repeat}; {bench.threading_info()}")
    print("  first: the first migration after building (state arrays first touched);")
    print("  best: after reset, the state's memory touched and the caches as warm as they get")
    npages = KI
    while npages <= args.max_pages:
        t0 = time.perf_counter()
        work = bench.Workload(npages, store_data=False)
        work.set_engine(bench.SweepConfig().engine_for(16))
        build = time.perf_counter() - t0
        first = work.migrate()
        best = float("inf")
        for _ in range(args.repeat):
            work.reset()
            best = min(best, work.migrate())
        state_bytes = sum(a.nbytes for a in work.machine.state)
        frames = work.machine.ram_pages + npages
        print(
            f"  {npages:>11,} pages  first {first / npages:7.1f} ns/page  best "
            f"{best / npages:6.1f} ns/page  state {state_bytes / frames:5.1f} B/frame  "
            f"(build {build:.1f} s)"
        )
        npages *= 4


if __name__ == "__main__":
    main()
