"""Small migrations: the plain sweeps against the kernel's per-slot steps, per call size.

A fault-driven driver migrates one unit at a time (16 pages in ``bench_sim.py``),
so its moves are small. For each size, a user's ``@njit`` loop migrates
consecutive ranges of a populated metadata-only process to the device, then
back, with ``kernels.migrate_vma_to_device`` / ``_to_system``; once with the
default engine (the plain sweeps from ``plain_min_pages`` pages) and once with
``plain_min_pages`` out of reach (the per-slot steps), alternating, best of
``--repeat`` each. Both engines run on one thread. It prints us per call and the
ratio plain ÷ per-slot, measured in one process, and checks that both leave the
same state.

* ``python bench/bench_small.py [--sizes 1,2,4,8,16,128,512] [--repeat 5]``
* ``pytest bench/bench_small.py`` - a smoke run at two sizes.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np
from numba import njit

import migengine as me
from migengine import bench, kernels

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:  # the state comparison lives in tests/helpers
    sys.path.insert(0, ROOT)

from tests.helpers import assert_same_state, comparable_state  # noqa: E402

PER_SLOT = me.CopyEngine(threads=1, plain_min_pages=2**40)
PLAIN = me.CopyEngine(threads=1)
# What the two runs may leave differently besides the copy's wall time: the
# engine and the sweeps' scratch.
SCRATCH = ("engine", "copy_scratch", "sweep_info", "sweep_mig", "sweep_counters", "mig")


@njit(nogil=True)
def _loop(st, v, base, n, calls, page_size, src, dst, to_device):
    """``calls`` migrations of ``n`` consecutive pages from ``base``: the sum of the
    returns (0 each way there, the pages moved on the way back)."""
    moved = 0
    for i in range(calls):
        start = base + i * n * page_size
        end = start + n * page_size
        if to_device:
            moved += kernels.migrate_vma_to_device(st, v, start, end, src, dst, 0)
        else:
            moved += kernels.migrate_vma_to_system(st, v, start, end, src, dst, 0)
    return moved


def _machine(pages: int) -> tuple[me.Machine, me.Vma]:
    m = me.Machine(ram_pages=2 * pages + 1024, device_pages=pages, store_data=False)
    p = m.new_process()
    vma = p.mmap(pages)
    p.populate(vma.start, vma.end)
    m.lru_add_drain_all()
    return m, vma


def _round(m: me.Machine, vma: me.Vma, n: int, scratch: np.ndarray) -> tuple[float, float]:
    """One pass over the process there and back: seconds per call each way."""
    calls = vma.npages // n
    args = (m.state, vma.index, vma.start, n, calls, m.page_size, scratch[0], scratch[1])
    t0 = time.perf_counter()
    there = _loop(*args, True)
    t1 = time.perf_counter()
    back = _loop(*args, False)
    t2 = time.perf_counter()
    assert there == 0 and back == calls * n, (there, back)  # every page went and came back
    return (t1 - t0) / calls, (t2 - t1) / calls


def measure(sizes: list[int], pages: int, repeat: int) -> list[dict[str, float]]:
    """Per size: the best us per call each way with each engine, and plain ÷ per-slot."""
    machines = {}
    for name, engine in (("per-slot", PER_SLOT), ("plain", PLAIN)):
        m, vma = _machine(pages)
        m.device.engine = engine
        machines[name] = (m, vma)
    scratch = np.zeros((2, max(sizes)), np.uint64)
    rows = []
    for n in sizes:
        best = {(name, way): np.inf for name in machines for way in ("there", "back")}
        for _ in range(repeat):
            for name, (m, vma) in machines.items():
                there, back = _round(m, vma, n, scratch)
                best[name, "there"] = min(best[name, "there"], there)
                best[name, "back"] = min(best[name, "back"], back)
        row: dict[str, float] = {"pages": n}
        for way in ("there", "back"):
            row[f"per_slot_{way}_us"] = best["per-slot", way] * 1e6
            row[f"plain_{way}_us"] = best["plain", way] * 1e6
            row[f"ratio_{way}"] = best["plain", way] / best["per-slot", way]
        rows.append(row)
    (a, _), (b, _) = machines.values()
    a.check()
    b.check()
    assert_same_state(
        comparable_state(a.state, drop=SCRATCH), comparable_state(b.state, drop=SCRATCH)
    )
    return rows


def test_small_migrations_smoke():
    rows = measure([1, 16], pages=256, repeat=1)
    assert [r["pages"] for r in rows] == [1, 16]


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="1,2,4,8,16,128,512")
    ap.add_argument("--pages", type=int, default=65_536)
    ap.add_argument("--repeat", type=int, default=5)
    a = ap.parse_args(argv)
    sizes = [int(x) for x in a.sizes.split(",")]
    print(f"threading: {bench.threading_info()}; both engines threads=1, metadata only")
    print("pages | to the device: per-slot, plain us/call, ratio | back: per-slot, plain, ratio")
    for r in measure(sizes, a.pages, a.repeat):
        print(
            f"{r['pages']:5.0f} | {r['per_slot_there_us']:8.2f} {r['plain_there_us']:8.2f} "
            f"{r['ratio_there']:5.2f} | {r['per_slot_back_us']:8.2f} {r['plain_back_us']:8.2f} "
            f"{r['ratio_back']:5.2f}"
        )


if __name__ == "__main__":
    main()
