"""The engine against a pure-Python and a vectorised-numpy peer (bench/peers.py).

All three run the same system -> device migration of the fragmented workload
(collect, prepare, unmap, alloc + descriptors + engine model, pages,
finalize_and_map, finalize) with no byte copy: the engine on a
``store_data=False`` machine, the peers on copies of its flat arrays. The
peers follow the common path only; see peers.py.

* ``pytest bench/bench_peers.py`` - first checks that both peers end in
  exactly the engine's state; then pytest-benchmark of the three at each
  size, one group per size. Smoke: 1 Ki pages; ``MIGENGINE_BENCH_FULL=1``:
  512, 16 Ki and 64 Ki pages.
* ``python bench/bench_peers.py [--pages 512,16384,65536] [--repeat 7]`` -
  interleaved repetitions in one process and the speed-ups, against the
  targets of the issue (>= 100x the Python peer and >= 5x the numpy peer at
  64 Ki pages).
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import pytest
from _support import bench_sizes
from peers import Flat, OffCommonPath, numpy_migrate, python_migrate

from migengine import bench

PAGES = bench_sizes(full=[512, 16_384, 65_536], smoke=[1_024])
PEERS = {"python": python_migrate, "numpy": numpy_migrate}


def _peer_input(work: bench.Workload, peer: str) -> Flat:
    flat = Flat.from_workload(work)
    return flat.as_lists() if peer == "python" else flat


def _workload(make_workload, npages: int, chunk: int = 16, **kwargs) -> bench.Workload:
    work = make_workload(npages, store_data=False, **kwargs)
    work.set_engine(bench.SweepConfig().engine_for(chunk))
    return work


@pytest.mark.parametrize("chunk", [1, 16])
@pytest.mark.parametrize("peer", sorted(PEERS))
def test_peer_ends_in_the_engines_state(make_workload, peer, chunk):
    """The peers are the same migration: after it, every PTE word, reverse-map
    link, mirror entry, struct-page field, free-stack slot and counter equals
    the engine's, and descriptors and modelled time agree."""
    work = _workload(make_workload, 1500, chunk, fragmentation=0.3, seed=11)
    flat = _peer_input(work, peer)
    ndesc, model_ns = PEERS[peer](flat)
    work.migrate()
    assert flat.mismatches(work.machine) == []
    stats = work.machine.device.copy_stats
    assert ndesc == stats["descriptors"]
    assert model_ns * 1e-9 == pytest.approx(stats["model_s"], rel=1e-12)


@pytest.mark.parametrize("peer", sorted(PEERS))
def test_peer_refuses_a_pinned_page(make_workload, peer):
    """Off the common path (a pinned page: prepare's migrate_vma_check_page
    fails) a peer raises rather than compute something else."""
    work = _workload(make_workload, 64)
    pfn = int(work.source_pfns()[10])
    work.machine.pin(pfn)
    with pytest.raises(OffCommonPath, match="pinned"):
        PEERS[peer](_peer_input(work, peer))
    work.machine.unpin(pfn)


@pytest.mark.parametrize("npages", PAGES)
@pytest.mark.parametrize("impl", ["engine", "numpy", "python"])
def test_peers(benchmark, make_workload, rounds, impl, npages):
    """One whole metadata-only migration by the engine or a peer."""
    work = _workload(make_workload, npages)
    benchmark.group = f"peers|npages={npages}"
    benchmark.extra_info.update(pages=npages, impl=impl)
    if impl == "engine":
        work.migrate()  # compile or load before timing

        def setup():
            work.reset()
            return (), {}

        benchmark.pedantic(work.migrate, setup=setup, rounds=rounds, warmup_rounds=0)
        return
    flat = Flat.from_workload(work)

    def peer_setup():
        return (flat.as_lists() if impl == "python" else flat.copy(),), {}

    benchmark.pedantic(PEERS[impl], setup=peer_setup, rounds=rounds, warmup_rounds=0)


def compare(pages: int, repeat: int) -> dict[str, float]:
    """Best-of-``repeat`` ns/page of each implementation, interleaved."""
    work = bench.Workload(pages, store_data=False)
    work.set_engine(bench.SweepConfig().engine_for(16))
    work.migrate()
    work.reset()
    flat = Flat.from_workload(work)
    best = {"engine": np.inf, "numpy": np.inf, "python": np.inf}
    for _ in range(repeat):
        work.reset()
        best["engine"] = min(best["engine"], work.migrate())
        for name in ("numpy", "python"):
            inp = flat.as_lists() if name == "python" else flat.copy()
            t0 = time.perf_counter_ns()
            PEERS[name](inp)
            best[name] = min(best[name], time.perf_counter_ns() - t0)
    work.reset()
    return {name: ns / pages for name, ns in best.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pages", default="512,16384,65536")
    parser.add_argument("--repeat", type=int, default=7)
    args = parser.parse_args()
    print(f"metadata-only migration, ns/page, best of {args.repeat}; {bench.threading_info()}")
    print(f"{'pages':>8} {'engine':>9} {'numpy':>9} {'python':>9} {'x numpy':>8} {'x python':>9}")
    for pages in (int(p) for p in args.pages.split(",")):
        r = compare(pages, args.repeat)
        print(
            f"{pages:>8,} {r['engine']:9.1f} {r['numpy']:9.1f} {r['python']:9.1f} "
            f"{r['numpy'] / r['engine']:8.1f} {r['python'] / r['engine']:9.1f}"
        )
    print("targets at 64 Ki pages: x python >= 100, x numpy >= 5")


if __name__ == "__main__":
    main()
