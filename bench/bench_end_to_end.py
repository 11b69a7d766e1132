"""End-to-end system -> device migration against np.copyto, and the chunk sweep.

* ``pytest bench/bench_end_to_end.py`` - pytest-benchmark: the whole
  migration of the fragmented workload (every pass plus the byte copy) per
  chunk size, and ``np.copyto`` of the same bytes between the same memory,
  in one group per size so the table compares them; then one
  ``migengine.bench.run_sweep`` (the ``migengine bench`` harness). 1 Ki
  pages as a smoke test; 64 Ki (256 MiB) with ``MIGENGINE_BENCH_FULL=1``.
* ``python bench/bench_end_to_end.py [--pages 65536] [--repeat 7]`` - the
  sweep with interleaved repetitions in one process, and the target of the
  issue: memcpy_ratio >= 0.90 at every chunk >= 16 pages.
"""

from __future__ import annotations

import math

import pytest
from _support import bench_full, bench_sizes, script_parser

from migengine import bench

PAGES = bench_sizes(full=[65_536], smoke=[1_024])
CHUNKS = bench_sizes(full=list(bench.DEFAULT_CHUNKS), smoke=[1, 16])
TARGET_RATIO = 0.90  # end to end / np.copyto, chunk >= 16 pages
TARGET_META_SHARE = 0.05  # metadata-only migration / np.copyto of the same bytes


class MigrationRunner:
    """pedantic() setup/target pair: restore the workload, then migrate it."""

    def __init__(self, work: bench.Workload) -> None:
        self.work = work

    def setup(self):
        self.work.reset()
        return (), {}

    def target(self) -> None:
        self.work.migrate()


@pytest.fixture(scope="module")
def workloads():
    """One data machine per size, shared by the chunk sizes (building and
    faulting in 2 x 256 MiB dominates otherwise); checked at module end."""
    built: dict[int, bench.Workload] = {}
    yield built
    for work in built.values():
        work.reset()
        work.machine.check()


def _workload(workloads, npages: int) -> bench.Workload:
    if npages not in workloads:
        work = bench.Workload(npages, store_data=True)
        work.set_engine(bench.SweepConfig().engine_for(CHUNKS[0]))
        work.migrate()  # compile or load, and fault the device frames in
        workloads[npages] = work
    return workloads[npages]


@pytest.mark.parametrize("npages", PAGES)
@pytest.mark.parametrize("chunk", CHUNKS)
def test_migration(benchmark, workloads, rounds, chunk, npages):
    """The whole system -> device migration of the workload, bytes included."""
    work = _workload(workloads, npages)
    work.set_engine(bench.SweepConfig().engine_for(chunk))
    runner = MigrationRunner(work)
    benchmark.group = f"end-to-end|npages={npages}"
    benchmark.pedantic(runner.target, setup=runner.setup, rounds=rounds, warmup_rounds=1)
    stats = work.machine.device.copy_stats
    benchmark.extra_info.update(pages=npages, chunk_pages=chunk, **stats, **bench.threading_info())
    assert stats["bytes"] == work.nbytes
    work.machine.check()


@pytest.mark.parametrize("npages", PAGES)
def test_copyto(benchmark, workloads, rounds, npages):
    """np.copyto of the same bytes between the same memory: the baseline."""
    work = _workload(workloads, npages)
    work.reset()  # the process back in RAM: the copy then writes only free frames
    copy = bench.copyto_baseline(work)
    benchmark.group = f"end-to-end|npages={npages}"
    benchmark.extra_info.update(pages=npages, bytes=work.nbytes)
    benchmark.pedantic(copy, rounds=rounds, warmup_rounds=1)


def test_chunk_sweep(benchmark):
    """The chunk-size sweep of `migengine bench`, once; its records land in the
    benchmark JSON's extra_info. Checks what holds on any machine: one record
    per chunk, descriptors never increase with the chunk, the modelled rate
    never decreases."""
    config = bench.SweepConfig(pages=PAGES[-1], chunks=CHUNKS, repeat=1 if not bench_full() else 3)
    result = benchmark.pedantic(bench.run_sweep, args=(config,), rounds=1, iterations=1)
    records = result["records"]
    assert [r["chunk_pages"] for r in records] == sorted(CHUNKS)
    descs = [r["descriptors"] for r in records]
    assert descs == sorted(descs, reverse=True)
    model = [r["model_gbps"] for r in records]
    assert model == sorted(model)
    benchmark.extra_info["records"] = [
        {k: v for k, v in r.items() if k != "samples"} for r in records
    ]
    benchmark.extra_info.update(bench.threading_info())


def main() -> None:
    args = script_parser(__doc__).parse_args()
    config = bench.SweepConfig(
        pages=args.pages, repeat=args.repeat, fragmentation=args.fragmentation, passes=True
    )
    with bench.compile_notice():
        result = bench.run_sweep(config)
    print(bench.format_table(result))
    big = [r for r in result["records"] if r["chunk_pages"] >= 16]
    worst = min(r["memcpy_ratio"] for r in big)
    verdict = "meets" if worst >= TARGET_RATIO else "misses"
    print(f"end to end / np.copyto at chunk >= 16: worst {worst:.3f} ({verdict} >= {TARGET_RATIO})")
    meta = min(result["records"], key=lambda r: r["meta_share"])
    verdict = "meets" if meta["meta_share"] <= TARGET_META_SHARE else "misses"
    print(
        f"metadata, best chunk: {meta['meta_ns_per_page']:.1f} ns/page = "
        f"{meta['meta_share']:.3f} of a 4 KiB memcpy ({verdict} <= {TARGET_META_SHARE})"
    )
    assert math.isfinite(worst)


if __name__ == "__main__":
    main()
