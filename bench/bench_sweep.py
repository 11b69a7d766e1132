"""me.sweep's throughput on a 2-worker LocalCluster against the serial sweep.

A grid of 16 short simulations (prefetch x eviction x migration unit on one
hotspot trace) runs twice, each in a fresh Python process started by this
script: once with ``client="serial"`` and once with ``client=None`` (a
LocalCluster of one single-threaded worker process per core). Each time is
measured inside its process around the ``me.sweep`` call, so it includes what
a user waits for: loading the kernels from the numba cache (serial), or
starting the cluster and loading the kernels in every worker (local). The
figure is the serial time over the cluster time, with both results checked
equal (``wall_s``, ``host`` and ``pid`` aside).

``python bench/bench_sweep.py [--accesses N] [--repeat K]`` prints both times
and the ratio; ``--timeline`` instead times the steps of one metadata-only
cluster sweep (:func:`timeline`). ``pytest bench/bench_sweep.py`` runs a
smoke-sized grid.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile

GRID = {
    "prefetch": ["none", "tree"],
    "evict": ["lru", "fifo"],
    "migrate_pages": [1, 4, 16, 64],
}

_CHILD = r"""
import json, sys, time
import migengine as me
args = json.loads(sys.argv[1])
trace = {"pattern": "hotspot", "pages": args["pages"], "accesses": args["accesses"], "seed": 3,
         "write_fraction": 0.2}
base = me.SimConfig(device_pages=args["pages"] // 2, batch_faults=256,
                    store_data=args["store_data"])
t0 = time.perf_counter()
df = me.sweep(args["grid"], trace=trace, base=base, client=args["client"])
wall = time.perf_counter() - t0
df.drop(columns=["wall_s", "host", "pid"]).to_parquet(args["out"])
print(json.dumps({"wall_s": wall, "runs": len(df), "failed": int(df["error"].notna().sum()),
                  "workers": int(df["pid"].nunique())}))
"""

# The steps of me.sweep's local-cluster path (sweep_cluster.execute), each timed,
# and every run's start and end on its worker: where the cluster's time goes.
_TIMELINE_CHILD = r"""
import json, os, sys, time
import migengine as me
from migengine import sweep_cluster, sweeps
from migengine.sweep_grid import cached, run_one, warm

def timed(run, trace, name):
    start = time.time()
    record = run_one(run, trace, name)
    return start, time.time(), os.getpid(), record["error"]

args = json.loads(sys.argv[1])
trace = {"pattern": "hotspot", "pages": args["pages"], "accesses": args["accesses"], "seed": 3,
         "write_fraction": 0.2}
base = me.SimConfig(device_pages=args["pages"] // 2, batch_faults=256, store_data=False)
t0 = time.time()
marks = []
plan = sweeps.plan(args["grid"], trace=trace, base=base)
if not cached(base):
    warm(base)
marks.append(("the parent's checks (and warm, unless the cache is marked filled)", time.time()))
from dask.distributed import Client
marks.append(("dask.distributed imported", time.time()))
cluster = sweep_cluster.local_cluster()
marks.append(("cluster up", time.time()))
with Client(cluster) as client:
    sweep_cluster.warm_workers(client, base, own=True)
    marks.append(("kernels loaded on every worker", time.time()))
    futures = [client.submit(timed, r, plan.traces[r.trace], plan.names[r.trace], pure=False)
               for r in plan.runs]
    tasks = client.gather(futures)
    marks.append(("every run done", time.time()))
cluster.close()
marks.append(("cluster closed", time.time()))
print(json.dumps({"marks": [(m, t - t0) for m, t in marks],
                  "tasks": [(s - t0, e - t0, pid, err) for s, e, pid, err in tasks]}))
"""


def timeline(pages: int, accesses: int) -> dict:
    """One metadata-only sweep of GRID on a local cluster, in a fresh process:
    seconds from the sweep's start to each step of its path, and each run's
    start, end and worker. Derived: the task time per worker, and the tail
    (how long the first worker to finish idled before the last one did)."""
    arg = {"pages": pages, "accesses": accesses, "grid": GRID}
    done = subprocess.run(
        [sys.executable, "-c", _TIMELINE_CHILD, json.dumps(arg)],
        check=True,
        capture_output=True,
        text=True,
    )
    out = json.loads(done.stdout.strip().splitlines()[-1])
    busy: dict[int, float] = {}
    last: dict[int, float] = {}
    for start, end, pid, err in out["tasks"]:
        assert err is None, err
        busy[pid] = busy.get(pid, 0.0) + end - start
        last[pid] = max(last.get(pid, 0.0), end)
    out["busy_s"] = sorted(busy.values())
    out["tail_s"] = max(last.values()) - min(last.values())
    return out


def _run(
    client: str | None, pages: int, accesses: int, store_data: bool, out: str
) -> dict[str, float]:
    arg = {
        "client": client,
        "pages": pages,
        "accesses": accesses,
        "grid": GRID,
        "out": out,
        "store_data": store_data,
    }
    done = subprocess.run(
        [sys.executable, "-c", _CHILD, json.dumps(arg)],
        check=True,
        capture_output=True,
        text=True,
    )
    return json.loads(done.stdout.strip().splitlines()[-1])


def compare(pages: int, accesses: int, store_data: bool = True) -> dict[str, float]:
    """Serial and 2-worker local-cluster sweeps of GRID; their times and the ratio."""
    import pandas as pd

    with tempfile.TemporaryDirectory() as tmp:
        serial = _run("serial", pages, accesses, store_data, os.path.join(tmp, "serial.parquet"))
        local = _run(None, pages, accesses, store_data, os.path.join(tmp, "local.parquet"))
        pd.testing.assert_frame_equal(
            pd.read_parquet(os.path.join(tmp, "serial.parquet")),
            pd.read_parquet(os.path.join(tmp, "local.parquet")),
        )
    assert serial["failed"] == local["failed"] == 0
    return {
        "runs": serial["runs"],
        "serial_s": serial["wall_s"],
        "local_s": local["wall_s"],
        "workers": local["workers"],
        "speedup": serial["wall_s"] / local["wall_s"],
    }


def test_sweep_smoke() -> None:
    r = compare(pages=512, accesses=2_000)
    assert r["runs"] == 16 and r["speedup"] > 0


def test_timeline_smoke() -> None:
    t = timeline(pages=512, accesses=2_000)
    assert len(t["tasks"]) == 16 and len(t["marks"]) == 6
    times = [seconds for _, seconds in t["marks"]]
    assert times == sorted(times) and sum(t["busy_s"]) > 0


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pages", type=int, default=16384)
    ap.add_argument("--accesses", type=int, default=1_000_000)
    ap.add_argument("--repeat", type=int, default=1)
    ap.add_argument("--timeline", action="store_true", help="time the steps of one cluster sweep")
    a = ap.parse_args(argv)
    print(f"cores: {os.cpu_count()}; workers: one process per core, NUMBA_NUM_THREADS=1 each")
    if a.timeline:
        t = timeline(a.pages, 4 * a.accesses)
        print(
            f"one metadata-only LocalCluster sweep, {4 * a.accesses:,} accesses a run; "
            "seconds from its start:"
        )
        for mark, seconds in t["marks"]:
            print(f"  {seconds:6.2f}  {mark}")
        busy = ", ".join(f"{b:.2f}" for b in t["busy_s"])
        print(
            f"  runs: {sum(t['busy_s']):.2f} s of task time ({busy} s per worker); "
            f"tail {t['tail_s']:.2f} s (the first worker done idled that long)"
        )
        return
    # Metadata-only runs are ~4x faster per access, so they replay 4x the accesses.
    for store_data, accesses in ((False, 4 * a.accesses), (True, a.accesses)):
        for _ in range(a.repeat):
            r = compare(a.pages, accesses, store_data)
            print(
                f"{'bytes' if store_data else 'metadata only'}: "
                f"{r['runs']} runs ({a.pages} pages, {accesses:,} accesses each): serial "
                f"{r['serial_s']:.2f} s, LocalCluster ({r['workers']} workers) "
                f"{r['local_s']:.2f} s, "
                f"startup and cache loading included: x{r['speedup']:.2f} (target >= 1.6)"
            )


if __name__ == "__main__":
    main()
