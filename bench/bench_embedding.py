"""Embedding costs: the engine called from users' @njit loops and from Python.

What it measures:

* ``loop16``: a 16-page migration to the device from a user's ``@njit`` loop,
  timed inside the loop with ``now_ns`` around the call, minus the copy's own
  wall time (``state.copy_stats``). Target: at most 2 us plus the copy. Also
  with ``kernels.migrate_vma`` and the device's callbacks (the callback
  path against the same passes and callbacks called by hand), and on a
  metadata-only machine (``store_data=False``: no copy at all).
* ``python1``: ``me.migrate_vma(m.device.ops, ...)`` on one page from Python:
  a loop of one-page calls over a process's pages, against an empty ``@njit``
  call in a loop of the same shape. On a metadata-only machine there is no
  copy, which gives the cost "minus the copy". Target: at most 20x. Also
  reported with data (the 4 KiB copy included).
  Also reported: an empty ``@njit`` call that takes ``m.state``, the floor of
  any compiled call that passes the machine (unboxing every one of its arrays).
* ``warm``: a second process, from ``import migengine`` to the first migration
  done, against ``import numba`` alone; best of several runs. Target: at most
  3x. The child also reports that nothing compiled at import, that every
  engine kernel it ran came from numba's cache and that the cache files exist.
* ``callbacks`` (script mode): the first ``kernels.migrate_vma`` call with new
  ``@njit`` callbacks in a fresh process, i.e. the per-process compile cost of
  the callback path.

Two modes:

* ``pytest bench/bench_embedding.py`` - pytest-benchmark; tiny sizes and one
  round unless ``MIGENGINE_BENCH_FULL=1``. The cache checks are asserted.
* ``python bench/bench_embedding.py [--pairs 9] [--iters 20000] [--starts 5]``
  - interleaved A/B repetitions in one process, best of each, ratios against
  the targets, the spread and numba's threading layer.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

import numba
import numpy as np
import pytest
from _support import bench_full
from numba import njit

import migengine as me
from migengine import bench as mb
from migengine import kernels
from migengine.kernels import layout as L
from migengine.kernels import mm
from migengine.kernels._llvm import now_ns
from migengine.kernels.copy import STAT_WALL_S
from migengine.kernels.device import DEV_KEEP_STATS

PS = 4096
BLOCK = 16
TARGET_LOOP_US = 2.0  # per 16-page migration, plus the copy
TARGET_PY_RATIO = 20.0  # me.migrate_vma(1 page) minus copy / empty @njit call
TARGET_WARM_RATIO = 3.0  # import migengine -> first migration / import numba

VIA_DEVICE, VIA_CALLBACKS, VIA_SPLIT, VIA_HAND = 0, 1, 2, 3


# Cached functions here embed the kernels' code but are keyed on this file only
# (numba #1833): drop them when the kernels changed.
kernels.drop_stale_user_cache(__file__)


# ----------------------------------------------------------------------------- compiled loops
@njit(cache=True)
def empty():
    pass


@njit(cache=True)
def empty_with_state(state):
    pass


@njit(cache=True)
def split_to_device(state, v, start, end, src, dst):
    """A user's own driver on the split form: one device page per collected page,
    copied with copy_page (see docs/embedding.md for the full version)."""
    cpages = kernels.migrate_vma_setup(state, v, start, end, src, dst)
    if cpages <= 0:
        return cpages
    lay = state.layout
    npages = (end - start) // state.sys[L.SYS_PAGE_SIZE]
    for i in range(npages):
        dst[i] = 0
        spfn = kernels.mpfn_to_pfn(state, src[i])
        if (src[i] & lay[L.L_MIGRATE]) == 0 or spfn < 0:
            continue
        dpfn = kernels.alloc_page(state, True)
        if dpfn < 0:
            break
        kernels.copy_page(state, dpfn, spfn)
        dst[i] = kernels.migrate_pfn(state, dpfn) | lay[L.L_LOCKED] | (src[i] & lay[L.L_WRITE])
    kernels.migrate_vma_pages(state, v, start, end, src, dst)
    kernels.migrate_vma_finalize(state, v, start, end, src, dst)
    return 0


@njit(cache=True)
def hand_to_device(state, v, start, end, src, dst, private):
    """kernels.migrate_vma's body with the device's two callbacks written in by
    hand: the baseline for the callback path (the same code, no callbacks)."""
    if kernels.migrate_vma_setup(state, v, start, end, src, dst) <= 0:
        return
    kernels.device_alloc_and_copy(state, v, src, dst, start, end, private)
    kernels.migrate_vma_pages(state, v, start, end, src, dst)
    kernels.device_finalize_and_map(state, v, src, dst, start, end, private)
    kernels.migrate_vma_finalize(state, v, start, end, src, dst)


@njit
def migrate_loop(state, v, start, iters, via, out):
    """A user's loop: migrate [start, start + 16 pages) to the device and back,
    ``iters`` times. out = [ns to device, copy ns to device, ns back, calls].
    The copy ns is the engine's (state.copy_stats); VIA_SPLIT copies with
    copy_page, which the engine does not time, so its copy stays in the total."""
    end = start + BLOCK * state.sys[L.SYS_PAGE_SIZE]
    src = np.zeros(BLOCK, np.uint64)
    dst = np.zeros(BLOCK, np.uint64)
    for _ in range(iters):
        copy0 = state.copy_stats[STAT_WALL_S]
        t0 = now_ns()
        if via == VIA_DEVICE:
            kernels.migrate_vma_to_device(state, v, start, end, src, dst, DEV_KEEP_STATS)
        elif via == VIA_CALLBACKS:
            kernels.migrate_vma(
                state,
                kernels.device_alloc_and_copy,
                kernels.device_finalize_and_map,
                v,
                start,
                end,
                src,
                dst,
                DEV_KEEP_STATS,
            )
        elif via == VIA_HAND:
            hand_to_device(state, v, start, end, src, dst, DEV_KEEP_STATS)
        else:
            split_to_device(state, v, start, end, src, dst)
        t1 = now_ns()
        copy1 = state.copy_stats[STAT_WALL_S]
        kernels.migrate_vma_to_system(state, v, start, end, src, dst, DEV_KEEP_STATS)
        out[0] += t1 - t0
        out[1] += (copy1 - copy0) * 1e9
        out[2] += now_ns() - t1
        out[3] += 1


@njit(cache=True)
def helper_cycle(state, iters):
    """Diagnostic: the public helpers a driver calls per page."""
    for _ in range(iters):
        pfn = kernels.alloc_page(state, False)
        kernels.unlock_page(state, pfn)
        kernels.put_page(state, pfn)


@njit(cache=True)
def get_put_loop(state, pfn, iters):
    """Diagnostic: get_page + put_page on a mapped page, ``iters`` times."""
    for _ in range(iters):
        mm.get_page(state, pfn)
        mm.put_page(state, pfn)


# ----------------------------------------------------------------------------- fixtures
class Block16:
    """A process with one populated 16-page range and a device to migrate it to."""

    def __init__(self, store_data: bool = True) -> None:
        self.m = me.Machine(BLOCK + 64, 2 * BLOCK, store_data=store_data)
        self.m.device.engine = me.CopyEngine(threads=1)  # the serial entry point
        self.p = self.m.new_process()
        self.vma = self.p.mmap(BLOCK)
        self.p.populate(self.vma.start, self.vma.end)

    def loop(self, iters: int, via: int = VIA_DEVICE) -> dict[str, float]:
        """Run migrate_loop; per-call microseconds of each leg and of the copy."""
        out = np.zeros(4, np.float64)
        migrate_loop(self.m.state, self.vma.index, self.vma.start, iters, via, out)
        n = max(out[3], 1.0)
        return {
            "to_device_us": out[0] / n / 1e3,
            "copy_us": out[1] / n / 1e3,
            "overhead_us": (out[0] - out[1]) / n / 1e3,
            "back_us": out[2] / n / 1e3,
        }


class OnePage:
    """me.migrate_vma(m.device.ops, ...) on one page from Python, many times.

    A process of ``pages`` pages; one round migrates each page to the device
    with its own call, in a plain Python loop (the same shape as the empty
    @njit loop it is compared with: no timer call inside), then brings them
    all back untimed. On a metadata-only machine (``store_data=False``) there
    is no copy, so the per-call time *is* the cost "minus the copy"; with data
    the copy is included.
    """

    def __init__(self, pages: int, store_data: bool) -> None:
        self.m = me.Machine(pages + 64, pages + 8, store_data=store_data)
        self.m.device.engine = me.CopyEngine(threads=1)
        self.p = self.m.new_process()
        self.vma = self.p.mmap(pages)
        self.p.populate(self.vma.start, self.vma.end)
        self.src = np.zeros(1, np.uint64)
        self.dst = np.zeros(1, np.uint64)
        starts = range(self.vma.start, self.vma.end, self.m.page_size)
        self.ranges = [(a, a + self.m.page_size) for a in starts]

    def round_ns(self) -> float:
        """Mean ns per one-page me.migrate_vma over one round."""
        ops, vma, src, dst, migrate_vma = (
            self.m.device.ops,
            self.vma,
            self.src,
            self.dst,
            me.migrate_vma,
        )
        t0 = time.perf_counter_ns()
        for start, end in self.ranges:
            migrate_vma(ops, vma, start, end, src, dst)
        per_call = (time.perf_counter_ns() - t0) / len(self.ranges)
        moved = self.m.device.migrate_to_system(self.p, self.vma.start, self.vma.end)
        if moved != len(self.ranges):
            raise RuntimeError(f"{moved} of {len(self.ranges)} pages were on the device")
        return per_call


def empty_call_ns(fn, n: int) -> float:
    """Mean ns of n back-to-back calls of ``fn()`` from a Python loop."""
    t0 = time.perf_counter_ns()
    for _ in range(n):
        fn()
    return (time.perf_counter_ns() - t0) / n


def empty_state_call_ns(fn, state, n: int) -> float:
    """Mean ns of n back-to-back calls of ``fn(state)`` from a Python loop."""
    t0 = time.perf_counter_ns()
    for _ in range(n):
        fn(state)
    return (time.perf_counter_ns() - t0) / n


# ----------------------------------------------------------------------------- the second process
_CHILD_WARM = """
import time
t0 = time.perf_counter()
import migengine as me
t_import = time.perf_counter() - t0
if LAUNCH_THREADS:
    import numba
    numba.get_num_threads()
import json, os
import numpy as np
import numba
from numba.core.dispatcher import Dispatcher
from migengine import kernels

def dispatchers():
    seen = {}
    for name, mod in list(__import__("sys").modules.items()):
        if name.startswith("migengine.kernels"):
            for obj in vars(mod).values():
                if isinstance(obj, Dispatcher):
                    seen[id(obj)] = obj
    return list(seen.values())

compiled_at_import = sum(len(d.signatures) for d in dispatchers())
m = me.Machine(64, 8)
p = m.new_process()
vma = p.mmap(1)
p.write(vma.start, b"x" * 4096)
src = np.zeros(1, np.uint64)
dst = np.zeros(1, np.uint64)
me.migrate_vma(m.device.ops, vma, vma.start, vma.end, src, dst)
assert p.translate(vma.start).kind == "device"
elapsed = time.perf_counter() - t0
used = [d for d in dispatchers() if d.signatures]
hits = sum(sum(d.stats.cache_hits.values()) for d in used)
misses = {d.py_func.__qualname__: sum(d.stats.cache_misses.values()) for d in used}
# numba keeps one index file (.nbi) per cached function, next to its .nbc data files
missing = [d.py_func.__qualname__ for d in used
           if not os.path.exists(d._cache._cache_file._index_path)]
print(json.dumps({
    "elapsed_s": elapsed, "import_s": t_import, "compiled_at_import": compiled_at_import,
    "kernels_used": len(used), "cache_hits": hits,
    "cache_misses": {k: v for k, v in misses.items() if v},
    "missing_cache_files": missing,
}))
"""

_CHILD_NUMBA = """
import time
t0 = time.perf_counter()
import numba
print(time.perf_counter() - t0)
"""

_CALLBACKS_MODULE = """
from numba import njit
from migengine import kernels

@njit(cache=True)
def alloc_and_copy(state, vma_index, src, dst, start, end, private):
    kernels.device_alloc_and_copy(state, vma_index, src, dst, start, end, private)

@njit(cache=True)
def finalize_and_map(state, vma_index, src, dst, start, end, private):
    kernels.device_finalize_and_map(state, vma_index, src, dst, start, end, private)
"""

_CHILD_CALLBACKS = """
import json, sys, time
sys.path.insert(0, sys.argv[1])
import numpy as np, migengine as me
import numba
numba.get_num_threads()  # see warm_start(): cached kernels need the layer launched
from migengine import kernels
import user_callbacks as cb
out = {}
for label, ops in (("device callbacks", (kernels.device_alloc_and_copy,
                                         kernels.device_finalize_and_map)),
                   ("user callbacks", (cb.alloc_and_copy, cb.finalize_and_map))):
    m = me.Machine(64, 8); p = m.new_process(); v = p.mmap(1); p.populate(v.start, v.end)
    src = np.zeros(1, np.uint64); dst = np.zeros(1, np.uint64)
    times = []
    for _ in range(2):
        t0 = time.perf_counter()
        kernels.migrate_vma(m.state, *ops, v.index, v.start, v.end, src, dst, 0)
        times.append(time.perf_counter() - t0)
        m.device.migrate_to_system(p, v.start, v.end)
    out[label] = times
print(json.dumps(out))
"""


def _run_child(code: str, *args: str) -> str:
    proc = subprocess.run(
        [sys.executable, "-c", code, *args],
        capture_output=True,
        text=True,
        env=os.environ,
        timeout=900,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"child failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return proc.stdout.strip().splitlines()[-1]


def warm_start(launch_threads: bool = False) -> dict:
    """One child from ``import migengine`` to its first migration.

    ``launch_threads`` starts numba's threading layer right after the import
    (inside the timed span): the workaround for cached kernels that reach the
    copy engine's by-name ``get_num_threads`` call and crash when loaded into a
    process that has not launched the layer yet.
    """
    code = _CHILD_WARM.replace("LAUNCH_THREADS", str(launch_threads))
    return json.loads(_run_child(code))


def numba_import_s() -> float:
    return float(_run_child(_CHILD_NUMBA))


def callback_compile(tmpdir: str) -> dict[str, list[float]]:
    """First and second kernels.migrate_vma call with new callbacks, fresh process."""
    with open(os.path.join(tmpdir, "user_callbacks.py"), "w", encoding="utf-8") as f:
        f.write(_CALLBACKS_MODULE)
    return json.loads(_run_child(_CHILD_CALLBACKS, tmpdir))


# ----------------------------------------------------------------------------- pytest mode
ITERS = 20_000 if bench_full() else 200


@pytest.fixture(scope="module")
def block16() -> Block16:
    work = Block16()
    for via in (VIA_DEVICE, VIA_CALLBACKS, VIA_HAND, VIA_SPLIT):
        work.loop(2, via)  # load or compile every kernel before timing
    return work


@pytest.mark.parametrize(
    "via",
    [VIA_DEVICE, VIA_CALLBACKS, VIA_HAND, VIA_SPLIT],
    ids=["cached", "callbacks", "by-hand", "split"],
)
def test_njit_loop_16_pages(benchmark, block16, rounds, via):
    result = benchmark.pedantic(block16.loop, args=(ITERS, via), rounds=rounds, warmup_rounds=0)
    benchmark.group = "embedding: 16-page migration from an @njit loop"
    benchmark.extra_info.update(result, iters=ITERS, target_us=TARGET_LOOP_US)
    assert result["to_device_us"] >= result["copy_us"] >= 0.0
    assert block16.p.translate(block16.vma.start).kind == "present"  # each trip came back
    block16.m.check()


def test_njit_loop_16_pages_metadata_only(benchmark, rounds):
    work = Block16(store_data=False)
    work.loop(2)
    result = benchmark.pedantic(work.loop, args=(ITERS,), rounds=rounds, warmup_rounds=0)
    benchmark.group = "embedding: 16-page migration from an @njit loop"
    benchmark.extra_info.update(result, iters=ITERS)
    assert result["copy_us"] == 0.0
    work.m.check()


def test_python_migrate_vma_one_page(benchmark, rounds):
    work = OnePage(pages=64 if not bench_full() else 2000, store_data=False)
    work.round_ns()
    benchmark.group = "embedding: calls from Python"
    benchmark.pedantic(work.round_ns, rounds=rounds, warmup_rounds=1)
    assert work.p.translate(work.vma.start).kind == "present"
    work.m.check()


@pytest.mark.parametrize("with_state", [False, True], ids=["empty", "empty(state)"])
def test_empty_njit_call(benchmark, rounds, with_state):
    m = me.Machine(16)
    args = (m.state,) if with_state else ()
    fn = empty_with_state if with_state else empty
    fn(*args)
    benchmark.pedantic(fn, args=args, rounds=rounds, iterations=1000, warmup_rounds=1)
    benchmark.group = "embedding: calls from Python"


def test_warm_start_loads_every_kernel_from_cache():
    """A second process compiles nothing: not at import, not for its first
    migration; every kernel it ran was a cache hit and has its cache files."""
    warm_start(launch_threads=True)  # make sure the cache is populated (a cold run writes it)
    child = warm_start()
    assert child["compiled_at_import"] == 0
    assert child["cache_misses"] == {}
    assert child["missing_cache_files"] == []
    assert child["cache_hits"] >= child["kernels_used"] > 0


# ----------------------------------------------------------------------------- script mode
def _fmt(values: list[float]) -> str:
    v = sorted(values)
    return f"best {v[0]:.3f}  median {float(np.median(v)):.3f}  [{v[0]:.3f}-{v[-1]:.3f}]"


def _verdict(value: float, target: float) -> str:
    return "PASS" if value <= target else "MISS"


def measure_loop(pairs: int, iters: int) -> None:
    dev, meta = Block16(), Block16(store_data=False)
    variants = {
        "cached": (dev, VIA_DEVICE),
        "callbacks": (dev, VIA_CALLBACKS),
        "by hand": (dev, VIA_HAND),
        "split": (dev, VIA_SPLIT),
        "cached, no data": (meta, VIA_DEVICE),
        "split, no data": (meta, VIA_SPLIT),
    }
    for work, via in variants.values():
        work.loop(2, via)  # load or compile before timing
    rows: dict[str, list[dict[str, float]]] = {name: [] for name in variants}
    names = list(variants)
    for rep in range(pairs):  # ABC.., ..CBA so that no variant always runs first
        for name in names if rep % 2 == 0 else names[::-1]:
            work, via = variants[name]
            rows[name].append(work.loop(iters, via))
    print(f"16-page migration from an @njit loop ({iters} per repetition, {pairs} repetitions)")
    for name, samples in rows.items():
        for key, label in (
            ("overhead_us", "to device - copy"),
            ("copy_us", "copy"),
            ("back_us", "back"),
        ):
            print(f"  {name:>15} {label:>16}, us/call: {_fmt([s[key] for s in samples])}")
    print("  (split copies with copy_page, outside copy_stats: its copy is in 'to device')")
    best = min(s["overhead_us"] for s in rows["cached"])
    verdict = _verdict(best, TARGET_LOOP_US)
    print(f"  target <= {TARGET_LOOP_US} us + copy: {best:.2f} us  {verdict}")
    g8 = min(s["to_device_us"] for s in rows["callbacks"]) / min(
        s["to_device_us"] for s in rows["by hand"]
    )
    print(f"  callbacks / the same passes by hand: {g8:.3f} (target <= 1.10)  {_verdict(g8, 1.10)}")
    for work in (dev, meta):
        work.m.check()


def measure_python(pairs: int, calls: int) -> None:
    meta = OnePage(calls, store_data=False)
    data = OnePage(calls, store_data=True)
    m16 = me.Machine(16)
    meta.round_ns()
    data.round_ns()
    empty()
    empty_with_state(m16.state)
    no_copy, with_copy, emp, emp_state = [], [], [], []
    for _ in range(pairs):
        no_copy.append(meta.round_ns())
        with_copy.append(data.round_ns())
        emp.append(empty_call_ns(empty, 20 * calls))
        emp_state.append(empty_state_call_ns(empty_with_state, m16.state, calls))
    print(f"me.migrate_vma on one page from Python ({calls} calls x {pairs} repetitions), us")
    print(f"  metadata only (no copy): {_fmt([x / 1e3 for x in no_copy])}")
    print(f"  with its 4 KiB copy:     {_fmt([x / 1e3 for x in with_copy])}")
    print(f"  empty @njit call:        {_fmt([x / 1e3 for x in emp])}")
    print(f"  empty @njit(state):      {_fmt([x / 1e3 for x in emp_state])}")
    ratio = min(no_copy) / min(emp)
    ratio_copy = min(with_copy) / min(emp)
    floor = min(emp_state) / min(emp)
    print(
        f"  ratio {ratio:.1f}x without the copy (target <= {TARGET_PY_RATIO:.0f}x)"
        f"  {_verdict(ratio, TARGET_PY_RATIO)}; {ratio_copy:.1f}x with it"
        f"; passing m.state to a compiled call costs {floor:.0f}x an empty call"
    )
    for work in (meta, data):
        work.m.check()


def measure_warm(starts: int) -> None:
    warm_start(launch_threads=True)  # populate the cache if a kernel changed
    launch = False
    try:
        warm_start()
    except RuntimeError as exc:
        print(f"warm start CRASHED without launching the threading layer first: {exc}")
        print("  measuring with numba.get_num_threads() right after the import instead")
        launch = True
    warm, base, children = [], [], []
    for _ in range(starts):
        child = warm_start(launch)
        children.append(child)
        warm.append(child["elapsed_s"])
        base.append(numba_import_s())
    ratio = min(warm) / min(base)
    last = children[-1]
    print(f"warm start of a second process ({starts} runs each), s")
    print(f"  import migengine -> first migration: {_fmt(warm)}")
    print(f"  import migengine alone:             {_fmt([c['import_s'] for c in children])}")
    print(f"  import numba alone:                 {_fmt(base)}")
    print(f"  ratio {ratio:.2f}x (target <= {TARGET_WARM_RATIO:.0f}x)  {_verdict(ratio, 3.0)}")
    print(
        f"  child: compiled at import {last['compiled_at_import']}, kernels run "
        f"{last['kernels_used']}, cache hits {last['cache_hits']}, misses "
        f"{last['cache_misses'] or 0}, missing cache files {last['missing_cache_files'] or 0}"
    )


def measure_callbacks(tmpdir: str) -> None:
    out = callback_compile(tmpdir)
    print("kernels.migrate_vma with callbacks, fresh process (compiles once per process), s")
    for label, (first, second) in out.items():
        print(f"  {label:>16}: first call {first:.2f}, second call {second * 1e3:.3f} ms")


def diagnose(iters: int) -> None:
    """Compiled per-call costs that explain the loop figures."""
    m = me.Machine(64)
    p = m.new_process()
    vma = p.mmap(1)
    p.populate(vma.start, vma.end)
    pfn = p.translate(vma.start).pfn
    for label, fn, args in (
        ("kernels.alloc_page + unlock_page + put_page", helper_cycle, ()),
        ("mm.get_page + mm.put_page (inlined into NRT code)", get_put_loop, (pfn,)),
    ):
        fn(m.state, *args, 10)
        t0 = time.perf_counter_ns()
        fn(m.state, *args, iters)
        ns = (time.perf_counter_ns() - t0) / iters
        print(f"diagnosis: {label} from a user @njit loop: {ns:.1f} ns")
    m.check()


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--pairs", type=int, default=9, help="interleaved repetitions (>= 7)")
    ap.add_argument("--iters", type=int, default=20_000, help="migrations per loop repetition")
    ap.add_argument("--calls", type=int, default=2_000, help="Python calls per repetition")
    ap.add_argument("--starts", type=int, default=5, help="second-process runs per side")
    ap.add_argument("--skip-callbacks", action="store_true", help="skip the compile-cost run")
    args = ap.parse_args(argv)
    if args.pairs < 7:
        ap.error("--pairs must be >= 7")
    info = mb.threading_info()
    print(
        f"numba {numba.__version__}, threading layer {info['threading_layer']}, "
        f"{info['threads']} threads, {os.cpu_count()} cpus"
    )
    measure_loop(args.pairs, args.iters)
    measure_python(args.pairs, args.calls)
    measure_warm(args.starts)
    if not args.skip_callbacks:
        import tempfile

        with tempfile.TemporaryDirectory() as tmpdir:
            measure_callbacks(tmpdir)
    diagnose(args.iters * 10)


if __name__ == "__main__":
    main()
