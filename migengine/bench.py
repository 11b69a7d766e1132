"""The built-in benchmark workload behind ``migengine bench`` and ``bench/``.

The workload is one process with ``pages`` private anonymous pages, populated
(written) so every page is present, whose physical frames are fragmented as
on a long-running system, migrated system -> device with ``m.device``.

Fragmentation method (see :func:`fragmented_runs`): the virtual range is cut
into runs by breaking exactly ``round(fragmentation * (pages - 1))`` of the
``pages - 1`` boundaries between neighbouring pages, chosen at random; the
runs are then faulted in a random order. The allocator hands out the lowest
free frame first, so each run gets physically contiguous frames, and the runs
land in physical memory in shuffled order, as they do when a process faults
its memory in over time on a system whose free lists are scrambled. The
fraction of page boundaries that are physically broken is then
``fragmentation`` (up to the rare chance that two shuffled runs land next to
each other in order; the measured value is reported as ``break_fraction``).
Source runs are therefore ``1 / fragmentation`` pages long on average, and
the device side (a fresh free list) is contiguous.

Measurement protocol (performance-anchors section 6):

* The machine is built once per kind (with bytes, and metadata only with
  ``store_data=False``); its page-table, struct-page, free-list and counter
  arrays are snapshotted right after populating and ``m.lru_add_drain_all()``
  (steady state: every page on the LRU, no per-CPU batch to drain, so the
  timed migration never pays ``lru_add_drain_all``).
* Each repetition restores that snapshot (untimed), so every timed migration
  starts from the identical workload: same frames, same free lists. The
  frame bytes need no restoring: a migration only reads the process's RAM
  frames, so after a reset the process sees its own bytes again.
* A warm-up migration per machine compiles the kernels and faults in the
  device frames (``np.zeros`` memory is mapped lazily by the OS), so first
  touches are never timed.
* Repetitions interleave the chunk sizes. Within each one, ``META_PAIRS``
  alternating pairs of the ``np.copyto`` baseline and the metadata-only
  migration come first, then the migration, so the noise of this VM spreads
  evenly over both sides of each ratio. Each figure is the best of its
  samples: ``repeat`` migrations, ``repeat * META_PAIRS`` baselines and
  metadata-only migrations.
* ``np.copyto`` baseline: the same number of bytes, copied between the same
  memory the migration copies between (the frames of the RAM pool holding
  the process, into the device frames it migrates to), in one call.

Metadata cost is reported three ways: ``meta_ns_per_page`` is the wall time
of the whole migration on the ``store_data=False`` machine (every pass,
allocation, descriptors and the engine model, no byte copy) divided by the
pages; ``meta_share`` is that wall time over the ``np.copyto`` time of the
same bytes in the same run, i.e. per page the metadata's share of a 4 KiB
memcpy; ``noncopy_ns_per_page`` is the end-to-end wall time minus the copy
engine's own copy wall time (``m.device.copy_stats["wall_s"]``), divided by
the pages.
"""

from __future__ import annotations

import json
import os
import platform
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, TextIO

import numba
import numpy as np
from numba.core import event as nb_event

import migengine
from migengine.copyengine import CopyEngine
from migengine.kernels import layout as L
from migengine.machine import Machine

__all__ = [
    "DEFAULT_CHUNKS",
    "DEFAULT_FRAGMENTATION",
    "DEFAULT_PAGES",
    "PASSES",
    "SweepConfig",
    "Workload",
    "bench_full",
    "bench_sizes",
    "compile_notice",
    "copyto_baseline",
    "format_table",
    "fragmented_runs",
    "pass_steps",
    "plot_sweep",
    "run_metadata",
    "run_sweep",
    "threading_info",
    "time_passes",
    "write_results",
]

DEFAULT_PAGES = 65_536  # 256 MiB of 4 KiB pages
DEFAULT_CHUNKS = (1, 4, 16, 64, 512)  # 4 KiB .. 2 MiB descriptors
DEFAULT_FRAGMENTATION = 0.1  # one broken boundary in ten: runs of 10 pages on average
DEFAULT_REPEAT = 3
# np.copyto / metadata-only pairs per repetition: both take under 20 ms, so
# taking more of them costs little and reaches the protocol's >= 7 pairs at
# the default repeat. Both sides get the same number of samples.
META_PAIRS = 3
DEFAULT_ENGINE = "ptdma"
# RAM beyond the process: the shared zero page and a little free memory.
EXTRA_RAM_PAGES = 64
# Arrays a reset leaves alone: the frame bytes (their contents do not change
# the timing, and restoring 2 x 256 MiB per repetition would dominate) and the
# engine parameters (each chunk size sets its own).
_NOT_SNAPSHOTTED = ("data", "swap_data", "engine")
PASSES = ("collect", "prepare", "unmap", "alloc_and_copy", "pages", "finalize_and_map", "finalize")
_GB = 1e9
# CopyEngine attributes recorded in the metadata (chunk_pages varies per record).
_ENGINE_PARAMS = tuple(f for f in CopyEngine._FIELDS if f != "chunk_pages")


# --------------------------------------------------------------------- workload
def fragmented_runs(pages: int, fragmentation: float, rng: np.random.Generator) -> np.ndarray:
    """Cut ``pages`` virtual pages into runs and return them in fault order.

    Exactly ``round(fragmentation * (pages - 1))`` of the boundaries between
    neighbouring pages become run boundaries. Returns an int64 array of shape
    ``(nruns, 2)`` holding ``[first_page, end_page)`` per run, rows in a random
    order: the order in which the runs are faulted in.
    """
    if not 0.0 <= fragmentation <= 1.0:
        raise ValueError(f"fragmentation must be in [0, 1], got {fragmentation}")
    nbreaks = int(round(fragmentation * max(pages - 1, 0)))
    cuts = np.sort(rng.choice(np.arange(1, pages), size=nbreaks, replace=False))
    starts = np.concatenate(([0], cuts)).astype(np.int64)
    ends = np.concatenate((cuts, [pages])).astype(np.int64)
    runs = np.stack((starts, ends), axis=1)
    return runs[rng.permutation(len(runs))]


class Workload:
    """A machine holding the benchmark process, resettable to its built state.

    Arguments:
        pages: pages of the process (and of device memory).
        fragmentation: fraction of page boundaries physically broken.
        store_data: False builds a metadata-only machine.
        seed: seeds the layout; machines with equal arguments are identical.
        profile: the machine's kernel profile.
        machine_factory: builds the Machine (tests pass one that checks it).
    """

    def __init__(
        self,
        pages: int,
        *,
        fragmentation: float = DEFAULT_FRAGMENTATION,
        store_data: bool = True,
        seed: int = 0,
        profile: str = "hmm-v25",
        machine_factory: Callable[..., Machine] = Machine,
    ) -> None:
        self.pages = pages
        self.fragmentation = fragmentation
        self.machine = machine_factory(
            pages + EXTRA_RAM_PAGES, pages, store_data=store_data, profile=profile, seed=seed
        )
        self.process = self.machine.new_process()
        self.vma = self.process.mmap(pages)
        self.runs = fragmented_runs(pages, fragmentation, np.random.default_rng(seed))
        ps = self.machine.page_size
        for first, end in self.runs:
            self.process.populate(self.vma.start + int(first) * ps, self.vma.start + int(end) * ps)
        # Steady state: nothing left in a per-CPU LRU-add batch, so prepare never
        # has to call lru_add_drain_all() inside the timed migration.
        self.machine.lru_add_drain_all()
        self.built_break_fraction = self.break_fraction()
        self._state = self.machine.state
        self._snapshot = {
            name: arr.copy()
            for name, arr in zip(self._state._fields, self._state, strict=True)
            if name not in _NOT_SNAPSHOTTED
        }

    @property
    def nbytes(self) -> int:
        return self.pages * self.machine.page_size

    def reset(self) -> None:
        """Restore the state the workload had right after it was built."""
        st = self.machine.state
        if st is not self._state:
            raise RuntimeError("the machine's tables were reallocated; rebuild the workload")
        for name, saved in self._snapshot.items():
            np.copyto(getattr(st, name), saved)

    def set_engine(self, engine: CopyEngine) -> None:
        self.machine.device.engine = engine

    def migrate(self) -> int:
        """Migrate the whole process to the device; returns the wall time in ns."""
        p, vma = self.process, self.vma
        t0 = time.perf_counter_ns()
        mapped = self.machine.device.migrate_to_device(p, vma.start, vma.end)
        elapsed = time.perf_counter_ns() - t0
        if mapped != self.pages:
            raise RuntimeError(f"the device maps {mapped} of {self.pages} pages after migrating")
        return elapsed

    def source_pfns(self) -> np.ndarray:
        """The frames behind the process's pages, in virtual order (-1: not present)."""
        st = self.machine.state
        base = int(st.vma[self.vma.index]["pte_base"])
        ptes = st.pte[base : base + self.pages]
        present = (ptes & L.PTE_KIND_MASK) == L.PTE_PRESENT
        pfns = (ptes >> L.PTE_PFN_SHIFT).astype(np.int64)
        return np.where(present, pfns, -1)

    def break_fraction(self) -> float:
        """Fraction of neighbouring virtual pages whose frames are not adjacent."""
        pfns = self.source_pfns()
        if pfns.size < 2:
            return 0.0
        return float(np.mean(np.diff(pfns) != 1))


def copyto_baseline(workload: Workload) -> Callable[[], int]:
    """A timed ``np.copyto`` of the migration's bytes between the same memory.

    Source: the RAM frames right after the zero page, where the process's
    pages live; destination: the first device frames, where the migration
    puts them (the device free list hands out the lowest frame first). Call
    it while the process is in RAM (after building or :meth:`Workload.reset`):
    then it only reads the process's frames and writes free device frames,
    so the machine is untouched. Returns a function that copies once and
    returns the wall time in ns.
    """
    m = workload.machine
    if not m.store_data:
        raise ValueError("the copyto baseline needs a machine that stores data")
    ps = m.page_size
    n = workload.nbytes
    src_lo = (m.zero_pfn + 1) * ps
    dst_lo = m.ram_pages * ps
    data = m.state.data
    src = data[src_lo : src_lo + n]
    dst = data[dst_lo : dst_lo + n]

    def run() -> int:
        t0 = time.perf_counter_ns()
        np.copyto(dst, src)
        return time.perf_counter_ns() - t0

    return run


# --------------------------------------------------------------------- passes
def pass_steps(workload: Workload) -> list[tuple[str, Callable[[], object]]]:
    """The passes of one system -> device migration, as separate calls.

    Returns ``(name, call)`` pairs in the order ``migrate_vma_to_device``
    runs them (``PASSES``), sharing fresh ``src``/``dst``/``migrate_vma``
    arrays; calling them all in order is one whole migration, ending in the
    same state as ``m.device.migrate_to_device`` (the collect step also bumps
    migrate_vma_setup's two counters, from Python). Uses the pass modules of
    ``migengine.kernels`` (collect, prepare, unmap, pages, finalize).
    """
    from migengine.kernels import collect, device, finalize, pages, prepare, unmap

    # Workaround: a cache-loaded device_alloc_and_copy called before numba's
    # threading layer is up crashes (its copy engine names the layer's
    # get_num_threads symbol); launching the layer first avoids it.
    numba.get_num_threads()
    st = workload.machine.state
    v, start, end, n = workload.vma.index, workload.vma.start, workload.vma.end, workload.pages
    src = np.zeros(n, np.uint64)
    dst = np.zeros(n, np.uint64)
    mig = np.zeros(L.MIG_FIELDS, np.int64)
    mig[L.MIG_START], mig[L.MIG_END], mig[L.MIG_VMA] = start, end, v

    def collect_pass() -> None:
        st.counters[L.C_MIGRATE_VMA_CALLS] += 1
        collect.migrate_vma_collect(st, v, start, end, src, dst, mig)
        st.counters[L.C_MIGRATE_VMA_COLLECTED] += mig[L.MIG_CPAGES]

    def unmap_pass() -> None:
        unmap.migrate_vma_unmap(st, src, mig)
        if mig[L.MIG_CPAGES] != n:
            raise RuntimeError(f"only {mig[L.MIG_CPAGES]} of {n} pages survived setup")

    return [
        ("collect", collect_pass),
        ("prepare", lambda: prepare.migrate_vma_prepare(st, v, src, mig)),
        ("unmap", unmap_pass),
        ("alloc_and_copy", lambda: device.device_alloc_and_copy(st, v, src, dst, start, end, 0)),
        ("pages", lambda: pages.migrate_vma_pages(st, v, start, n, src, dst)),
        (
            "finalize_and_map",
            lambda: device.device_finalize_and_map(st, v, src, dst, start, end, 0),
        ),
        ("finalize", lambda: finalize.migrate_vma_finalize(st, n, src, dst)),
    ]


def time_passes(workload: Workload) -> dict[str, int]:
    """Run one migration pass by pass (:func:`pass_steps`); wall ns of each pass.

    Each pass is one Python call into a compiled kernel; the call overhead
    (~a microsecond) is negligible at benchmark sizes. Reset the workload
    afterwards, as after any migration.
    """
    out: dict[str, int] = {}
    for name, step in pass_steps(workload):
        t0 = time.perf_counter_ns()
        step()
        out[name] = time.perf_counter_ns() - t0
    return out


def bench_full() -> bool:
    """True when ``MIGENGINE_BENCH_FULL=1``: bench/ runs at its real sizes."""
    return os.environ.get("MIGENGINE_BENCH_FULL", "") == "1"


def bench_sizes(full: Sequence[int], smoke: Sequence[int]) -> list[int]:
    """The page counts a bench/ suite runs: ``full`` or the tiny smoke ones."""
    return list(full if bench_full() else smoke)


# --------------------------------------------------------------------- environment
def threading_info() -> dict[str, Any]:
    """numba's threading layer and thread count (launching the layer if needed)."""
    threads = numba.get_num_threads()  # launches the thread pool, so the layer is known
    layer: str
    try:
        layer = numba.threading_layer()
    except ValueError:
        layer = "unknown"
    return {"threading_layer": layer, "threads": threads}


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def run_metadata() -> dict[str, Any]:
    """Facts about the machine and software the results were measured with."""
    return {
        "machine": {
            "cpu": _cpu_model(),
            "arch": platform.machine(),
            "cpus": os.cpu_count(),
            "system": platform.platform(),
            "python": platform.python_version(),
        },
        "numba": numba.__version__,
        "numpy": np.__version__,
        "migengine": migengine.__version__,
        **threading_info(),
    }


class _CompileListener(nb_event.Listener):
    """Says once, on the first real compile (cache loads send no event)."""

    def __init__(self, say: Callable[[], None]) -> None:
        self._say = say
        self.fired = False

    def on_start(self, event: nb_event.Event) -> None:
        if not self.fired:
            self.fired = True
            self._say()

    def on_end(self, event: nb_event.Event) -> None:
        pass


@contextmanager
def compile_notice(stream: TextIO | None = None) -> Iterator[_CompileListener]:
    """Within the block, print one line when numba first compiles something.

    numba sends a ``numba:compile`` event only when it really compiles, not
    when it loads a function from its on-disk cache, so the line appears on a
    first run (or after the sources changed) and not otherwise.
    """

    def say() -> None:
        out = sys.stderr if stream is None else stream
        print(
            "migengine: compiling numba kernels (first run only, cached afterwards; "
            "this can take a few minutes)...",
            file=out,
        )
        out.flush()

    listener = _CompileListener(say)
    with nb_event.install_listener("numba:compile", listener):
        yield listener


# --------------------------------------------------------------------- the sweep
@dataclass
class SweepConfig:
    """Parameters of one ``migengine bench`` run."""

    pages: int = DEFAULT_PAGES
    chunks: Sequence[int] = DEFAULT_CHUNKS
    repeat: int = DEFAULT_REPEAT
    fragmentation: float = DEFAULT_FRAGMENTATION
    engine: str = DEFAULT_ENGINE
    threads: int | None = None
    stream: bool = True
    seed: int = 0
    profile: str = "hmm-v25"
    passes: bool = False

    def engine_for(self, chunk: int) -> CopyEngine:
        engine = CopyEngine.preset(self.engine, chunk_pages=chunk, threads=self.threads)
        if not self.stream:
            engine.stream_min_bytes = None
        return engine


@dataclass
class _Samples:
    wall_ns: list[int] = field(default_factory=list)
    copy_wall_s: list[float] = field(default_factory=list)
    copyto_ns: list[int] = field(default_factory=list)
    meta_ns: list[int] = field(default_factory=list)
    descriptors: set[int] = field(default_factory=set)
    model_s: float = 0.0


@contextmanager
def _numba_threads(threads: int | None) -> Iterator[None]:
    """Run the block with numba's thread count set to ``threads`` (None: unchanged)."""
    if threads is None:
        yield
        return
    previous = numba.get_num_threads()
    numba.set_num_threads(threads)
    try:
        yield
    finally:
        numba.set_num_threads(previous)


def _warm_up(work: Workload, engine: CopyEngine) -> None:
    """Compile (or load) the kernels and fault in the device frames, untimed."""
    work.set_engine(engine)
    work.migrate()
    work.reset()


def _measure_once(
    data: Workload, meta: Workload, copyto: Callable[[], int], engine: CopyEngine, s: _Samples
) -> None:
    data.set_engine(engine)
    data.reset()
    meta.set_engine(engine)
    for _ in range(META_PAIRS):
        s.copyto_ns.append(copyto())  # before migrating: the device frames are free
        meta.reset()
        s.meta_ns.append(meta.migrate())
    s.wall_ns.append(data.migrate())
    stats = data.machine.device.copy_stats
    s.copy_wall_s.append(stats["wall_s"])
    s.model_s = stats["model_s"]
    s.descriptors.add(int(stats["descriptors"]))


def _record(chunk: int, s: _Samples, pages: int, nbytes: int) -> dict[str, Any]:
    if len(s.descriptors) != 1:
        raise RuntimeError(f"chunk {chunk}: descriptor counts differ between repetitions")
    wall = min(s.wall_ns) * 1e-9
    copyto = min(s.copyto_ns) * 1e-9
    meta = min(s.meta_ns) * 1e-9
    copy_wall = min(s.copy_wall_s)
    noncopy = min(w * 1e-9 - c for w, c in zip(s.wall_ns, s.copy_wall_s, strict=True))
    return {
        "chunk_pages": chunk,
        "chunk_bytes": chunk * (nbytes // pages),
        "descriptors": s.descriptors.pop(),
        "bytes": nbytes,
        "wall_gbps": nbytes / wall / _GB,
        "model_gbps": nbytes / s.model_s / _GB if s.model_s > 0 else float("inf"),
        "copy_gbps": nbytes / copy_wall / _GB if copy_wall > 0 else float("inf"),
        "copyto_gbps": nbytes / copyto / _GB,
        "memcpy_ratio": copyto / wall,
        "meta_ns_per_page": meta / pages * 1e9,
        "meta_share": meta / copyto,
        "noncopy_ns_per_page": noncopy / pages * 1e9,
        "wall_s": wall,
        "wall_s_median": float(np.median(s.wall_ns)) * 1e-9,
        "wall_spread": max(s.wall_ns) / min(s.wall_ns),
        "copy_wall_s": copy_wall,
        "model_s": s.model_s,
        "copyto_s": copyto,
        "meta_wall_s": meta,
        "samples": {
            "wall_s": [w * 1e-9 for w in s.wall_ns],
            "copy_wall_s": list(s.copy_wall_s),
            "copyto_s": [c * 1e-9 for c in s.copyto_ns],
            "meta_wall_s": [x * 1e-9 for x in s.meta_ns],
        },
    }


def _pass_profile(meta: Workload, config: SweepConfig, tick: Callable[[], None]) -> dict:
    """Best-of-repeat wall time of each pass on the metadata-only machine, ns/page."""
    meta.set_engine(config.engine_for(16 if 16 in config.chunks else config.chunks[0]))
    best: dict[str, int] = {}
    for _ in range(config.repeat):
        meta.reset()
        for name, ns in time_passes(meta).items():
            best[name] = min(best.get(name, ns), ns)
        tick()
    meta.reset()
    per_page = {name: best[name] / meta.pages for name in PASSES}
    per_page["total"] = sum(per_page[name] for name in PASSES)
    return per_page


def run_sweep(config: SweepConfig, progress: Callable[[int], Any] | None = None) -> dict[str, Any]:
    """Sweep the chunk sizes of ``config``; returns ``{"records": [...], "metadata": {...}}``.

    ``progress(total)`` may return an object with ``update(n)`` and
    ``close()`` (a tqdm bar); it is told about each finished repetition.
    """
    started = time.perf_counter()
    chunks = list(config.chunks)
    steps = config.repeat * (len(chunks) + (1 if config.passes else 0))
    bar = progress(steps) if progress is not None else None

    def tick() -> None:
        if bar is not None:
            bar.update(1)

    def build(store_data: bool) -> Workload:
        return Workload(
            config.pages,
            fragmentation=config.fragmentation,
            store_data=store_data,
            seed=config.seed,
            profile=config.profile,
        )

    try:
        with _numba_threads(config.threads):
            data = build(store_data=True)
            meta = build(store_data=False)
            _warm_up(data, config.engine_for(chunks[0]))
            _warm_up(meta, config.engine_for(chunks[0]))
            copyto = copyto_baseline(data)
            copyto()  # both sides are faulted in now; this one just warms up
            samples = {c: _Samples() for c in chunks}
            for _ in range(config.repeat):
                for chunk in chunks:
                    _measure_once(data, meta, copyto, config.engine_for(chunk), samples[chunk])
                    tick()
            passes = _pass_profile(meta, config, tick) if config.passes else None
            metadata = run_metadata()
    finally:
        if bar is not None:
            bar.close()
    records = [_record(c, samples[c], config.pages, data.nbytes) for c in chunks]
    engine = config.engine_for(chunks[0])
    metadata["parameters"] = {
        "pages": config.pages,
        "page_size": data.machine.page_size,
        "bytes": data.nbytes,
        "chunk_pages": chunks,
        "repeat": config.repeat,
        "meta_pairs": META_PAIRS,
        "fragmentation": config.fragmentation,
        "engine": config.engine,
        "engine_params": {name: getattr(engine, name) for name in _ENGINE_PARAMS},
        "threads": config.threads,
        "stream": config.stream,
        "seed": config.seed,
        "profile": config.profile,
    }
    metadata["workload"] = {
        "runs": int(len(data.runs)),
        "mean_run_pages": config.pages / len(data.runs),
        "break_fraction": data.built_break_fraction,
        "method": "runs faulted in shuffled order (fragmented_runs); snapshot reset per repetition",
        "meta_ns_per_page": "metadata-only (store_data=False) migration wall / pages",
        "meta_share": "metadata-only migration wall / np.copyto wall of the same bytes "
        "(so per page: metadata / a 4 KiB memcpy)",
        "noncopy_ns_per_page": "(end-to-end wall - copy_stats wall_s) / pages",
        "memcpy_ratio": "best np.copyto time / best migration time, same bytes and memory",
    }
    metadata["elapsed_s"] = time.perf_counter() - started
    result: dict[str, Any] = {"records": records, "metadata": metadata}
    if passes is not None:
        result["passes_ns_per_page"] = passes
    return result


# --------------------------------------------------------------------- output
# (header, record key, format spec); each column is as wide as its header.
_COLUMNS = (
    ("chunk", "chunk_pages", "d"),
    ("KiB", "kib", "g"),
    ("descs", "descriptors", "d"),
    ("wall GB/s", "wall_gbps", ".2f"),
    ("model GB/s", "model_gbps", ".2f"),
    ("copy GB/s", "copy_gbps", ".2f"),
    ("x copyto", "memcpy_ratio", ".3f"),
    ("meta ns/pg", "meta_ns_per_page", ".1f"),
    ("meta/copyto", "meta_share", ".3f"),
    ("non-copy ns/pg", "noncopy_ns_per_page", ".1f"),
)
_MIN_WIDTH = 6


def format_table(result: dict[str, Any]) -> str:
    """The sweep as a fixed-width text table with a header and footer lines."""
    meta = result["metadata"]
    par = meta["parameters"]
    work = meta["workload"]
    widths = [max(len(name), _MIN_WIDTH) for name, _, _ in _COLUMNS]
    lines = [
        f"migengine bench: {par['pages']:,} pages ({par['bytes'] / 2**20:g} MiB), "
        f"fragmentation {par['fragmentation']:g} (measured {work['break_fraction']:.3f}, "
        f"{work['runs']:,} runs), engine {par['engine']}, profile {par['profile']}, "
        f"best of {par['repeat']} (copyto and metadata: of {par['repeat'] * par['meta_pairs']})",
        "  ".join(f"{name:>{w}}" for (name, _, _), w in zip(_COLUMNS, widths, strict=True)),
    ]
    for rec in result["records"]:
        row = dict(rec, kib=rec["chunk_bytes"] / 1024)
        cells = (
            f"{row[key]:>{w}{spec}}" for (_, key, spec), w in zip(_COLUMNS, widths, strict=True)
        )
        lines.append("  ".join(cells))
    copyto = max(r["copyto_gbps"] for r in result["records"])
    lines.append(
        f"np.copyto of the same bytes: {copyto:.2f} GB/s (best); numba {meta['numba']}, "
        f"threading layer {meta['threading_layer']}, threads {meta['threads']}; "
        f"{meta['elapsed_s']:.1f} s"
    )
    passes = result.get("passes_ns_per_page")
    if passes:
        body = ", ".join(f"{k} {v:.1f}" for k, v in passes.items())
        lines.append(f"passes (metadata-only machine, ns/page): {body}")
    return "\n".join(lines)


def _json_safe(value: Any) -> Any:
    """JSON has no infinity: write non-finite floats as null."""
    if isinstance(value, float) and not np.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    return value


def write_results(result: dict[str, Any], path: str | os.PathLike[str]) -> None:
    with open(path, "w", encoding="utf-8") as f:
        json.dump(_json_safe(result), f, indent=2)
        f.write("\n")


def plot_sweep(result: dict[str, Any], path: str | os.PathLike[str]) -> None:
    """GB/s against chunk size (wall, modelled, copy only, np.copyto) as a PNG.

    Uses matplotlib's object API with the Agg canvas, so no global backend is
    switched and no display is needed.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    recs = result["records"]
    meta = result["metadata"]
    kib = [r["chunk_bytes"] / 1024 for r in recs]
    fig = Figure(figsize=(7, 4.5), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    series: Iterable[tuple[str, str, str]] = (
        ("wall_gbps", "migration, wall (end to end)", "o-"),
        ("model_gbps", f"modelled engine ({meta['parameters']['engine']})", "s--"),
        ("copy_gbps", "engine copy only, wall", "^:"),
    )
    for key, label, style in series:
        ys = [r[key] if np.isfinite(r[key]) else np.nan for r in recs]
        ax.plot(kib, ys, style, label=label)
    ax.axhline(
        max(r["copyto_gbps"] for r in recs), color="grey", lw=1, label="np.copyto, same bytes"
    )
    ax.set_xscale("log", base=2)
    ax.set_xticks(kib, [f"{k:g}" for k in kib])
    ax.set_xlabel("chunk size (KiB)")
    ax.set_ylabel("GB/s")
    par = meta["parameters"]
    ax.set_title(
        f"{par['pages']:,} pages, fragmentation {par['fragmentation']:g}, "
        f"{meta['threading_layer']} x{meta['threads']}",
        fontsize=10,
    )
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.savefig(path, dpi=110)


def script_parser(doc: str) -> Any:
    """The command line shared by the bench/ scripts that run the built-in workload."""
    import argparse

    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--pages", type=int, default=DEFAULT_PAGES)
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--fragmentation", type=float, default=DEFAULT_FRAGMENTATION)
    return parser
