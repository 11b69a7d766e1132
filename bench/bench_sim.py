"""me.simulate's speed, each figure a ratio to a baseline timed in the same process.

* **Hits:** a trace whose pages all fit on the device (after the first touches,
  every access hits), against ``np.take`` over the trace's page numbers: the
  replay's accesses per second over ``np.take``'s elements per second.
* **Faults:** 64 KiB units with bytes stored, a hotspot trace at 2x
  oversubscription: pages migrated per second (in, prefetched, evicted and
  faulted back), and the bytes they move per second over ``np.copyto``'s on a
  buffer of the same size.
* **Peer:** the pure-Python reference model of the same driver
  (tests/reference/uvm_model.py, one Python step per access) on the same
  trace, against me.simulate with ``store_data=False`` (the peer keeps no bytes).
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

import migengine as me
from migengine import bench

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


def hits(pages: int, accesses: int, repeat: int = 3) -> dict[str, float]:
    """Accesses per second when every page is resident, and the ratio to np.take."""
    tr = me.Trace.synthetic("random", pages=pages, accesses=accesses, seed=0, write_fraction=0.2)
    cfg = me.SimConfig(device_pages=pages + 512, migrate_pages=512)
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


def faults(pages: int, accesses: int, repeat: int = 3) -> dict[str, float]:
    """Pages migrated per second under faults (64 KiB units, bytes stored)."""
    tr = me.Trace.synthetic("hotspot", pages=pages, accesses=accesses, seed=0, write_fraction=0.2)
    cfg = me.SimConfig(device_pages=pages // 2, migrate_pages=16)
    runs = [me.simulate(tr, cfg).stats for _ in range(repeat)]
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
        "ratio_to_copyto": (nbytes / s["wall_s"]) / (buf.nbytes / copy),
    }


def peer(pages: int, accesses: int) -> dict[str, float]:
    """me.simulate against the pure-Python reference model on one trace."""
    from tests.reference.uvm_model import simulate_reference

    tr = me.Trace.synthetic("hotspot", pages=pages, accesses=accesses, seed=1, write_fraction=0.2)
    kw = dict(device_pages=pages // 2, migrate_pages=16, batch_faults=256, prefetch="tree")
    cfg = me.SimConfig(evict="lru", store_data=False, **kw)  # type: ignore[arg-type]
    me.simulate(tr, cfg)
    s = me.simulate(tr, cfg).stats
    t0 = time.perf_counter()
    ref = simulate_reference(tr.addr, tr.write, tr.proc, evict="lru", **kw)
    py = time.perf_counter() - t0
    assert ref["device_faults"] == s["device_faults"], (ref, s)
    return {"engine_s": s["wall_s"], "python_s": py, "speedup": py / s["wall_s"]}


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
    assert peer(1024, 5_000)["speedup"] > 0


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="smaller sizes")
    a = ap.parse_args(argv)
    q = a.quick
    print(f"threading: {bench.threading_info()}")
    h = hits(4096, 2_000_000 if q else 20_000_000)
    print(
        f"hits: {h['accesses']:,} accesses, {h['hit_share']:.4f} hits: "
        f"{h['accesses_per_s'] / 1e6:.1f} M accesses/s; np.take {h['take_per_s'] / 1e6:.1f} M/s; "
        f"ratio {h['ratio_to_take']:.2f} (target >= 50 M accesses/s)"
    )
    f = faults(16384, 500_000 if q else 2_000_000)
    print(
        f"faults (64 KiB units, data): {f['pages_moved']:,} pages in {f['wall_s']:.3f} s = "
        f"{f['pages_per_s'] / 1e6:.2f} M pages/s; {f['bytes_per_s'] / 1e9:.2f} GB/s against "
        f"np.copyto {f['copyto_per_s'] / 1e9:.2f} GB/s: ratio {f['ratio_to_copyto']:.2f} "
        "(targets >= 3 M pages/s, >= 0.5)"
    )
    p = peer(8192, 50_000 if q else 300_000)
    print(
        f"peer: me.simulate {p['engine_s']:.3f} s, pure Python {p['python_s']:.1f} s: "
        f"x{p['speedup']:.0f} (target >= 100)"
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
