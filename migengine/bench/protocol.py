"""The measurement protocol of ``migengine bench``: the chunk-size sweep.

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

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from migengine._numba_env import numba_threads
from migengine.bench.environment import run_metadata
from migengine.bench.passes import PASSES, time_passes
from migengine.bench.workload import (
    DEFAULT_FRAGMENTATION,
    DEFAULT_PAGES,
    Workload,
    copyto_baseline,
)
from migengine.copyengine import CopyEngine

__all__ = [
    "DEFAULT_CHUNKS",
    "DEFAULT_ENGINE",
    "DEFAULT_REPEAT",
    "META_PAIRS",
    "SweepConfig",
    "run_profiles",
    "run_sweep",
]

DEFAULT_CHUNKS = (1, 4, 16, 64, 512)  # 4 KiB .. 2 MiB descriptors
DEFAULT_REPEAT = 3
# np.copyto / metadata-only pairs per repetition: both take under 20 ms, so
# taking more of them costs little and reaches the protocol's >= 7 pairs at
# the default repeat. Both sides get the same number of samples.
META_PAIRS = 3
DEFAULT_ENGINE = "ptdma"
_GB = 1e9
# CopyEngine attributes recorded in the metadata (chunk_pages varies per record).
_ENGINE_PARAMS = tuple(f for f in CopyEngine.FIELDS if f != "chunk_pages")


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


def _parameters(config: SweepConfig, data: Workload) -> dict[str, Any]:
    chunks = list(config.chunks)
    engine = config.engine_for(chunks[0])
    return {
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
        with numba_threads(config.threads):
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
    metadata["parameters"] = _parameters(config, data)
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


def run_profiles(
    config: SweepConfig, profiles: Sequence[str], progress: Callable[[int], Any] | None = None
) -> dict[str, Any]:
    """``migengine bench --profile A,B``: one :func:`run_sweep` per profile, one after
    the other in this process on the same workload (pages, layout seed, chunks,
    engine, repetitions); ``{"runs": [their results, in order]}``."""
    return {"runs": [run_sweep(replace(config, profile=p), progress) for p in profiles]}
