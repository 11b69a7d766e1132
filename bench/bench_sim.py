"""me.simulate's speed, each figure a ratio to a baseline timed in the same process.

* **Hits:** a random trace (20% writes) whose pages all fit on the device
  (after the first touches, every access hits), against ``np.take`` over the
  trace's page numbers: the replay's accesses per second over ``np.take``'s
  elements per second. With bytes stored (every write lands in its device
  frame, at random across 16 MiB) and without.
* **Faults:** 64 KiB units with bytes stored, a hotspot trace at 2x
  oversubscription: pages migrated per second (in, prefetched, evicted and
  faulted back), and the bytes they move per second over ``np.copyto``'s on a
  buffer of the same size. ``np.copyto``'s rate in 4 KiB pages is printed
  beside it: a migration that copied at memcpy speed and did nothing else
  would reach it, so it bounds the pages per second on this machine. Runs
  alternate with runs whose migrate_vma() calls each copy their own bytes
  (``migengine.sim.GATHER_COPIES = False``) instead of each fault batch's
  moving in one engine copy (kernels.sim.copies), and their ratio is printed;
  and with runs of the engine on one thread (``CopyEngine(threads=1)``), whose
  copies, unlike the two-thread ones, never fell into the VM's slow phases.
* **Peer:** me.simulate against its pure-Python peer (bench/peers_sim.py) doing
  the same work on the same trace in the same process: the reference driver
  model (tests/reference/uvm_model.py) with every move a pure-Python
  migrate_vma() over a flat copy of the machine, bytes included
  (``store_data=True`` on both sides), and both without bytes. The peer must
  agree with the engine on every counter, every page's bytes and the final
  machine state. With bytes both sides copy at memcpy speed (the peer's
  bytearray slices are C copies), which bounds that ratio.
* **Scale:** a 1 GiB working set at 150% oversubscription, wall time, beside
  UVM-Smart's published 2-14 hours for 9-16 MB working sets.

``python bench/bench_sim.py [--quick]`` prints the figures with the threading
layer and thread count. ``pytest bench/bench_sim.py`` runs each at smoke size.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from typing import Any

import numpy as np
import pytest

import migengine as me
from migengine import bench
from migengine import sim as msim
from migengine.copyengine import CopyEngine

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:  # the reference model lives in tests/reference
    sys.path.insert(0, ROOT)


def _best(fn: Any, repeat: int) -> float:
    best = np.inf
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def hits(pages: int, accesses: int, repeat: int = 3, store_data: bool = True) -> dict[str, float]:
    """Accesses per second when every page is resident, and the ratio to np.take."""
    tr = me.Trace.synthetic("random", pages=pages, accesses=accesses, seed=0, write_fraction=0.2)
    cfg = me.SimConfig(device_pages=pages + 512, migrate_pages=512, store_data=store_data)
    walls = [me.simulate(tr, cfg).stats for _ in range(repeat)]
    s = min(walls, key=lambda st: st["wall_s"])
    idx = (tr.addr >> np.uint64(12)).astype(np.int64) - int(tr.addr.min() >> np.uint64(12))
    table = np.zeros(int(idx.max()) + 1, np.uint8)
    take = _best(lambda: np.take(table, idx), repeat)
    rate = s["accesses"] / s["wall_s"]
    return {
        "accesses": s["accesses"],
        "hit_share": s["device_hits"] / s["device_accesses"],
        "accesses_per_s": rate,
        "take_per_s": accesses / take,
        "ratio_to_take": rate / (accesses / take),
    }


def faults(pages: int, accesses: int, repeat: int = 5) -> dict[str, float]:
    """Pages migrated per second under faults (64 KiB units, bytes stored).

    Best of ``repeat``: on the 2-vCPU VM, the engine's two-thread copies slow down
    up to 3.5x for seconds at a time, while the same runs with the engine on one thread
    never do (docs/performance.md, "Slow phases of the copies"), and several runs
    in a row can fall in one. So the engine on one thread is timed too.
    """
    tr = me.Trace.synthetic("hotspot", pages=pages, accesses=accesses, seed=0, write_fraction=0.2)
    cfg = me.SimConfig(device_pages=pages // 2, migrate_pages=16)
    one = cfg.replace(engine=CopyEngine.preset(cfg.engine, threads=1))
    runs, per_call, one_thread = [], [], []
    for _ in range(repeat):  # alternately: batches' bytes in one copy, per call, one thread
        runs.append(me.simulate(tr, cfg).stats)
        msim.GATHER_COPIES = False
        try:
            per_call.append(me.simulate(tr, cfg).stats["wall_s"])
        finally:
            msim.GATHER_COPIES = True
        one_thread.append(me.simulate(tr, one).stats["wall_s"])
    s = min(runs, key=lambda st: st["wall_s"])
    moved = s["pages_to_device"] + s["pages_prefetched"] + s["pages_evicted"] + s["cpu_faults"]
    nbytes = s["bytes_to_device"] + s["bytes_to_host"]
    buf = np.ones(min(nbytes, 256 << 20), np.uint8)
    out = np.empty_like(buf)
    np.copyto(out, buf)
    copy = _best(lambda: np.copyto(out, buf), repeat)
    return {
        "faults": s["device_faults"],
        "pages_moved": moved,
        "wall_s": s["wall_s"],
        "pages_per_s": moved / s["wall_s"],
        "bytes_per_s": nbytes / s["wall_s"],
        "copyto_per_s": buf.nbytes / copy,
        "copyto_pages_per_s": buf.nbytes / copy / 4096,
        "ratio_to_copyto": (nbytes / s["wall_s"]) / (buf.nbytes / copy),
        "per_call_wall_s": min(per_call),
        "gathered_over_per_call": s["wall_s"] / min(per_call),
        # The thread count changes no counter of a run, so both move the same pages.
        "one_thread_pages_per_s": moved / min(one_thread),
        "one_thread_ratio_to_copyto": (nbytes / min(one_thread)) / (buf.nbytes / copy),
    }


def peer(
    pages: int, accesses: int, repeat: int = 3, store_data: bool = True, engine_repeat: int = 5
) -> dict[str, float]:
    """me.simulate against its pure-Python peer on one trace, both storing bytes or neither.

    The peer's best of ``repeat`` replays and the engine's best of
    ``engine_repeat`` (its runs take a fraction of a second, and with bytes can
    fall in one of the VM's slow phases, see faults()), each timed without its
    setup (building the machine), after one untimed engine run that loads its
    kernels. Raises AssertionError when a peer run's counters, bytes or machine
    state differ from the engine's.
    """
    from peers_sim import SimPeer, agreement

    tr = me.Trace.synthetic("hotspot", pages=pages, accesses=accesses, seed=1, write_fraction=0.2)
    cfg = me.SimConfig(
        device_pages=pages // 2,
        migrate_pages=16,
        batch_faults=256,
        prefetch="tree",
        evict="lru",
        store_data=store_data,
    )
    me.simulate(tr, cfg)
    runs = [me.simulate(tr, cfg) for _ in range(engine_repeat)]
    engine = min(res.stats["wall_s"] for res in runs)
    py = np.inf
    for _ in range(repeat):
        sim = SimPeer(tr, cfg)
        py = min(py, sim.run())
        diff = agreement(runs[-1], sim)
        assert not diff, diff
    return {"engine_s": engine, "python_s": py, "speedup": py / engine}


def scale(pages: int, accesses: int) -> dict[str, float]:
    """A GB-scale oversubscribed run: wall seconds and the modelled seconds."""
    tr = me.Trace.synthetic("hotspot", pages=pages, accesses=accesses, seed=2, write_fraction=0.1)
    cfg = me.SimConfig(device_pages=pages * 2 // 3, migrate_pages=16, prefetch="tree")
    t0 = time.perf_counter()
    s = me.simulate(tr, cfg).stats
    total = time.perf_counter() - t0
    return {
        "working_set_mib": pages * 4096 / 2**20,
        "accesses": accesses,
        "wall_s": s["wall_s"],
        "total_s": total,
        "modelled_s": s["modelled_s"],
        "faults": s["device_faults"],
    }


# ----------------------------------------------------------------------------- smoke
def test_hits_smoke():
    r = hits(1024, 50_000, repeat=1)
    assert r["hit_share"] > 0.9 and r["accesses_per_s"] > 0


def test_faults_smoke():
    r = faults(2048, 20_000, repeat=1)
    assert r["pages_moved"] > 0 and r["ratio_to_copyto"] > 0


def test_peer_smoke():
    assert peer(1024, 5_000, repeat=1, engine_repeat=1)["speedup"] > 0


@pytest.mark.parametrize("store_data", [True, False])
@pytest.mark.parametrize(
    ("prefetch", "evict", "device_pages"),
    [("tree", "lru", 300), ("sequential", "fifo", 300), ("none", "random", 96)],
)
def test_peer_agrees(store_data: bool, prefetch: str, evict: str, device_pages: int) -> None:
    """The peer runs what the engine runs: on a small trace with CPU accesses
    (faulting device pages back), remote accesses and evictions, every counter,
    every page's bytes and the final machine state agree (peers_sim.agreement)."""
    from peers_sim import SimPeer, agreement

    tr = me.Trace.synthetic(
        "random", pages=2048, accesses=3_000, seed=3, write_fraction=0.5, cpu_fraction=0.05
    )
    cfg = me.SimConfig(
        device_pages=device_pages,
        migrate_pages=4,
        batch_faults=64,
        prefetch=prefetch,
        evict=evict,
        store_data=store_data,
    )
    res = me.simulate(tr, cfg)
    s = res.stats
    assert s["evictions"] and s["cpu_faults"] and s["remote_accesses"]  # every path runs
    sim = SimPeer(tr, cfg)
    sim.run()
    assert agreement(res, sim) == []


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="smaller sizes")
    a = ap.parse_args(argv)
    q = a.quick
    print(f"threading: {bench.threading_info()}")
    for store in (True, False):
        h = hits(4096, 2_000_000 if q else 20_000_000, store_data=store)
        print(
            f"hits ({'bytes' if store else 'no bytes'}): {h['accesses']:,} accesses, "
            f"{h['hit_share']:.4f} hits: {h['accesses_per_s'] / 1e6:.1f} M accesses/s; "
            f"np.take {h['take_per_s'] / 1e6:.1f} M/s; ratio {h['ratio_to_take']:.3f} "
            "(target >= 50 M accesses/s)"
        )
    f = faults(16384, 500_000 if q else 2_000_000)
    print(
        f"faults (64 KiB units, data): {f['pages_moved']:,} pages in {f['wall_s']:.3f} s = "
        f"{f['pages_per_s'] / 1e6:.2f} M pages/s; {f['bytes_per_s'] / 1e9:.2f} GB/s against "
        f"np.copyto {f['copyto_per_s'] / 1e9:.2f} GB/s "
        f"({f['copyto_pages_per_s'] / 1e6:.2f} M pages/s): ratio {f['ratio_to_copyto']:.2f} "
        "(targets >= 3 M pages/s, >= 0.5); each call copying its own bytes "
        f"{f['per_call_wall_s']:.3f} s (gathered / per call {f['gathered_over_per_call']:.2f})"
    )
    print(
        f"faults, the engine on one thread: {f['one_thread_pages_per_s'] / 1e6:.2f} M pages/s, "
        f"ratio {f['one_thread_ratio_to_copyto']:.2f}"
    )
    for store in (True, False):
        p = peer(8192, 50_000 if q else 300_000, store_data=store)
        print(
            f"peer ({'bytes' if store else 'no bytes'}): me.simulate {p['engine_s']:.3f} s, "
            f"pure Python {p['python_s']:.1f} s: x{p['speedup']:.0f} (target >= 100)"
        )
    g = scale(1 << 16 if q else 1 << 18, 2_000_000 if q else 20_000_000)
    print(
        f"scale: {g['working_set_mib']:.0f} MiB working set at 150% of the device, "
        f"{g['accesses']:,} accesses: replay {g['wall_s']:.1f} s ({g['total_s']:.1f} s with "
        f"setup), modelled {g['modelled_s']:.2f} s, {g['faults']:,} faults. UVM-Smart: "
        "2-14 h per benchmark at 9-16 MB of device memory"
    )


if __name__ == "__main__":
    main()
