"""Each migration pass alone (metadata-only machine: no byte copy).

* ``pytest bench/bench_passes.py`` - one pytest-benchmark per pass
  (collect, prepare, unmap, alloc_and_copy, pages, finalize_and_map,
  finalize). Before each round the workload is restored and the passes
  before the timed one are run untimed. 1 Ki pages as a smoke test,
  64 Ki with ``MIGENGINE_BENCH_FULL=1``.
* ``python bench/bench_passes.py [--pages 65536] [--repeat 7]`` - the whole
  breakdown in one process: best of ``repeat`` interleaved runs, ns/page
  per pass, next to the whole migration timed in one call.
"""

from __future__ import annotations

import numpy as np
import pytest
from _support import bench_sizes, script_parser

from migengine import bench

PAGES = bench_sizes(full=[65_536], smoke=[1_024])


class PassRunner:
    """pedantic() setup/target pair that times one pass of a fresh migration."""

    def __init__(self, work: bench.Workload, name: str) -> None:
        self.work = work
        self.index = bench.PASSES.index(name)

    def setup(self):
        self.work.reset()
        steps = bench.pass_steps(self.work)
        for _, step in steps[: self.index]:
            step()
        return (steps[self.index][1],), {}

    @staticmethod
    def target(step) -> None:
        step()


@pytest.mark.parametrize("npages", PAGES)
@pytest.mark.parametrize("name", bench.PASSES)
def test_pass(benchmark, make_workload, rounds, name, npages):
    """One pass of migrate_vma (system -> device), timed alone."""
    work = make_workload(npages, store_data=False)
    work.set_engine(bench.SweepConfig().engine_for(16))
    runner = PassRunner(work, name)
    benchmark.group = f"pass|npages={npages}"
    benchmark.extra_info.update(pages=npages, **bench.threading_info())
    benchmark.pedantic(runner.target, setup=runner.setup, rounds=rounds, warmup_rounds=1)


def test_passes_one_by_one_equal_the_whole_migration(make_workload):
    """The pass-by-pass run the breakdown times is the same migration as
    m.device.migrate_to_device: identical page tables, struct pages,
    free lists, mirror and counters afterwards."""
    a = make_workload(700, store_data=False, fragmentation=0.3, seed=5)
    b = make_workload(700, store_data=False, fragmentation=0.3, seed=5)
    for work in (a, b):
        work.set_engine(bench.SweepConfig().engine_for(16))
    a.migrate()
    bench.time_passes(b)
    sa, sb = a.machine.state, b.machine.state
    for name in ("page", "pte", "pte_next", "mirror", "free_stack", "sys"):
        np.testing.assert_array_equal(getattr(sa, name), getattr(sb, name), err_msg=name)
    assert a.machine.counters == b.machine.counters
    assert a.machine.device.copy_stats["descriptors"] == b.machine.device.copy_stats["descriptors"]
    b.machine.check()


def breakdown(pages: int, repeat: int, fragmentation: float) -> dict[str, float]:
    """ns/page of each pass and of the whole migration, best of ``repeat``."""
    work = bench.Workload(pages, store_data=False, fragmentation=fragmentation)
    work.set_engine(bench.SweepConfig().engine_for(16))
    bench.time_passes(work)  # compile or load every kernel before timing
    work.reset()
    work.migrate()
    best: dict[str, float] = {}
    for _ in range(repeat):
        work.reset()
        times = bench.time_passes(work)
        work.reset()
        times["whole migration"] = work.migrate()
        for name, ns in times.items():
            best[name] = min(best.get(name, ns), ns)
    return {name: ns / pages for name, ns in best.items()}


def main() -> None:
    args = script_parser(__doc__).parse_args()
    result = breakdown(args.pages, args.repeat, args.fragmentation)
    info = bench.threading_info()
    print(f"{args.pages:,} pages, best of {args.repeat}, metadata only; {info}")
    passes = sum(result[name] for name in bench.PASSES)
    for name, ns in result.items():
        share = f"{100 * ns / passes:5.1f}%" if name in bench.PASSES else ""
        print(f"  {name:18s} {ns:10.1f} ns/page {share}")
    print(f"  {'sum of passes':18s} {passes:10.1f} ns/page")


if __name__ == "__main__":
    main()
