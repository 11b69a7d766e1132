"""A sweep's runs: the grid expanded and checked up front, and one run turned into a record.

A grid maps names to lists of values and every combination is one run. A name
is a :class:`SimConfig` field, ``engine.<parameter>`` (a :class:`CopyEngine`
parameter, applied to the run's engine), or ``trace``. Every combination is
built into its SimConfig before anything runs, so an unknown name, a value of
the wrong type or an invalid combination raises ``ValueError`` naming the field.

:func:`run_one` is what a worker runs: it never raises, so one bad run cannot
stop a sweep; its record carries the error instead. Records are flat dicts of
plain scalars (the run's parameters, its stats, ``error``, and the host and
versions it ran with), one DataFrame row each.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import json
import os
import platform
import socket
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import llvmlite.binding as llvm
import numba
import numpy as np

from migengine._version import __version__
from migengine.copyengine import CopyEngine
from migengine.kernels import cache_marker
from migengine.sim import simulate
from migengine.sim_config import SimConfig
from migengine.trace import Trace

ENGINE_PREFIX = "engine."
# SimConfig.to_dict() and the stats both name the device size; the stats' copy is dropped.
_SHADOWED_STATS = frozenset({"device_pages"})


@dataclasses.dataclass(frozen=True)
class TraceSpec:
    """A trace a worker can build for itself: a file path, or a synthetic pattern.

    ``params`` are the pattern's extra parameters (``write_fraction`` ...), as
    :meth:`Trace.synthetic` takes them. ``name`` is the ``trace`` column.
    """

    path: str | None = None
    pattern: str | None = None
    pages: int = 0
    accesses: int = 0
    seed: int = 0
    params: tuple[tuple[str, Any], ...] = ()

    @property
    def name(self) -> str:
        if self.path is not None:
            return self.path
        extra = "".join(f",{k}={v}" for k, v in self.params)
        return (
            f"{self.pattern}(pages={self.pages},accesses={self.accesses},seed={self.seed}{extra})"
        )

    def load(self) -> Trace | str:
        """The trace: a path (simulate() reads it in chunks) or the generated Trace,
        generated once per process for the runs of one spec in a row."""
        if self.path is not None:
            return self.path
        return _generated(self)


@functools.lru_cache(maxsize=1)
def _generated(spec: TraceSpec) -> Trace:
    # A run only reads its trace, so the runs of one spec share one; a second
    # spec replaces it, which holds one trace's memory at a time. A spec's
    # parameters are scalars (trace_spec generates a prefix to check them), so
    # it hashes.
    return Trace.synthetic(
        str(spec.pattern), spec.pages, spec.accesses, spec.seed, **dict(spec.params)
    )


def trace_spec(value: Any, where: str = "trace") -> TraceSpec | Trace:
    """A sweep's trace argument, checked: a Trace, a path, or a pattern table.

    A pattern table is a mapping with ``pattern``, ``pages`` and ``accesses``
    (``seed`` and the pattern's own parameters optional); a short prefix of it
    is generated here to check it, and the whole of it once by each process
    that runs it (:meth:`TraceSpec.load`).
    """
    if isinstance(value, (Trace, TraceSpec)):
        return value
    if isinstance(value, (str, os.PathLike)):
        path = os.fspath(value)
        if not os.path.isfile(path):
            raise ValueError(f"{where}: no such trace file: {path}")
        return TraceSpec(path=path)
    if isinstance(value, Mapping):
        table = dict(value)
        missing = [k for k in ("pattern", "pages", "accesses") if k not in table]
        if missing:
            raise ValueError(f"{where}: a pattern table needs {', '.join(missing)}")
        spec = TraceSpec(
            pattern=table.pop("pattern"),
            pages=table.pop("pages"),
            accesses=table.pop("accesses"),
            seed=table.pop("seed", 0),
            params=tuple(sorted(table.items())),
        )
        try:
            Trace.synthetic(
                str(spec.pattern),
                spec.pages,
                min(spec.accesses, 16),
                spec.seed,
                **dict(spec.params),
            )
        except (TypeError, ValueError) as exc:
            raise ValueError(f"{where}: {exc}") from None
        return spec
    raise ValueError(
        f"{where} must be a Trace, a trace file's path or a pattern table, "
        f"not {type(value).__name__}"
    )


def trace_name(trace: TraceSpec | Trace, index: int) -> str:
    return trace.name if isinstance(trace, TraceSpec) else f"trace[{index}]"


@dataclasses.dataclass(frozen=True)
class Run:
    """One combination of a grid: its index in grid order and its settings."""

    index: int
    config: SimConfig
    trace: int  # index into the sweep's traces
    params: tuple[tuple[str, Any], ...]  # the grid's own names and values, in grid order


def _engine_with(base: SimConfig, changes: dict[str, Any]) -> CopyEngine:
    try:
        return base.copy_engine().replace(**changes)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"grid: engine parameters {changes}: {exc}") from None


def expand(grid: Mapping[str, Sequence[Any]], base: SimConfig, ntraces: int) -> list[Run]:
    """Every combination of ``grid`` over ``base``, each built and checked.

    Raises ValueError, naming the field, for an empty grid, a name that is
    neither a SimConfig field, ``engine.<parameter>`` nor ``trace``, a value
    list that is empty or not a list, and a value SimConfig or CopyEngine rejects.
    """
    if not isinstance(grid, Mapping) or not grid:
        raise ValueError("grid must be a non-empty mapping of field names to lists of values")
    fields = set(SimConfig.fields())
    for name, values in grid.items():
        if not isinstance(name, str):
            raise ValueError(f"grid: field names are strings, got {name!r}")
        known = (
            name in fields
            or name == "trace"
            or (name.startswith(ENGINE_PREFIX) and name[len(ENGINE_PREFIX) :] in CopyEngine.FIELDS)
        )
        if not known:
            raise ValueError(
                f"grid: {name!r} is not a SimConfig field, an engine.<parameter> "
                f"({', '.join(CopyEngine.FIELDS)}) or 'trace'"
            )
        if isinstance(values, (str, bytes, Mapping)) or not isinstance(values, Sequence):
            raise ValueError(f"grid: {name!r} must map to a list of values, got {values!r}")
        if not values:
            raise ValueError(f"grid: {name!r} has no values")
    names = list(grid)
    runs = []
    for index, combo in enumerate(itertools.product(*(grid[n] for n in names))):
        setting = dict(zip(names, combo, strict=True))
        trace = setting.pop("trace", 0)
        engine = {
            k[len(ENGINE_PREFIX) :]: setting.pop(k)
            for k in list(setting)
            if k.startswith(ENGINE_PREFIX)
        }
        try:
            cfg = base.replace(**setting)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"grid: {setting}: {exc}") from None
        if engine:
            cfg = cfg.replace(engine=_engine_with(cfg, engine))
        if not 0 <= trace < ntraces:  # pragma: no cover - sweep() maps traces to indices
            raise ValueError(f"grid: trace index {trace} out of range")
        runs.append(Run(index, cfg, trace, tuple(zip(names, combo, strict=True))))
    return runs


def _scalar(value: Any) -> Any:
    """A value a parquet column keeps as it is (None becomes -1: stream_min_bytes's 'never')."""
    if value is None:
        return -1
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, (bool, int, float, str)):
        return value
    return str(value)


def parameters(cfg: SimConfig, trace: str) -> dict[str, Any]:
    """The run's full parameters as columns: the trace, every field, every engine parameter."""
    out: dict[str, Any] = {"trace": trace}
    for key, value in cfg.to_dict().items():
        if key == "engine":
            out["engine"] = value["name"] if value["name"] is not None else "custom"
            for k in CopyEngine.FIELDS:
                out[ENGINE_PREFIX + k] = _scalar(value[k])
        else:
            out[key] = _scalar(value)
    return out


def run_key(row: Mapping[str, Any], names: Sequence[str]) -> str:
    """A run's identity for resuming: its parameters as one JSON string."""
    return json.dumps([_scalar(row[n]) for n in names])


def _provenance() -> dict[str, Any]:
    """Where and with what a run ran."""
    return {
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "python": platform.python_version(),
        "numba": numba.__version__,
        "numpy": np.__version__,
        "migengine": __version__,
    }


def run_record(run: Run, name: str, error: BaseException | None = None) -> dict[str, Any]:
    """A run's parameters and index, and ``error`` (its exception as a message, or None)."""
    record = parameters(run.config, name)
    record["run"] = run.index
    record["error"] = None if error is None else f"{type(error).__name__}: {error}"
    return record


def run_one(run: Run, trace: Trace | TraceSpec, name: str) -> dict[str, Any]:
    """Simulate one run; its record. Never raises: an exception becomes ``error``."""
    t0 = time.perf_counter()
    try:
        source = trace.load() if isinstance(trace, TraceSpec) else trace
        stats = simulate(source, run.config, name=name).stats
    except Exception as exc:  # noqa: BLE001 - a sweep records every failure and goes on
        record = run_record(run, name, exc)
        record["wall_s"] = time.perf_counter() - t0
        record.update(_provenance())
        return record
    record = run_record(run, name)
    for key, value in stats.items():
        if key not in _SHADOWED_STATS:
            record[key] = _scalar(value)
    record.update(_provenance())
    return record


def warm(base: SimConfig) -> float:
    """Load (or compile) the simulation's kernels in this process; seconds taken.

    A tiny run of ``base`` touches every kernel a run of it needs, so a worker
    pays the numba cache load once, before its first task, and never per task.
    Post: :func:`cached` is true for ``base`` if the cache is writable.
    """
    t0 = time.perf_counter()
    unit = base.migrate_pages
    cfg = base.replace(device_pages=max(unit, 2 * unit))
    tr = Trace.synthetic("random", pages=8 * unit, accesses=256, seed=0, write_fraction=0.5)
    simulate(tr, cfg)
    marker = _warm_marker(base)
    if marker is not None:
        try:
            marker.touch()
        except OSError:
            pass  # a read-only cache: numba compiled in memory, so nothing is known cached
    return time.perf_counter() - t0


def cached(base: SimConfig) -> bool:
    """Whether a :func:`warm` of ``base`` has filled numba's cache for these kernel
    sources, this numba and this CPU, so processes may load it side by side
    without compiling (and writing) it together."""
    marker = _warm_marker(base)
    return marker is not None and marker.exists()


def _warm_marker(base: SimConfig) -> Path | None:
    if not isinstance(base.evict, str):
        return None  # a user's policy: its own module's cache, which no marker covers
    return cache_marker(
        f"sweep-warm|{base!r}|numba {numba.__version__}|{llvm.get_host_cpu_name()}"
        f"|{platform.python_version()}"
    )


def resolve_path(path: str, root: Path) -> str:
    """A trace path from a grid file: relative paths are taken from the file's folder."""
    p = Path(path)
    return str(p if p.is_absolute() else root / p)
