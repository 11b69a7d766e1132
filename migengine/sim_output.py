"""What a fault-driven simulation leaves on disk: results.json, run.png, timeline.json.

``results.json`` holds the run's counters and configuration for scripts,
``run.png`` shows how the run went at a glance (pages moved by cause and device
residency over modelled time), and ``timeline.json`` is a Chrome trace-event
file that ui.perfetto.dev and chrome://tracing open as is, to zoom into single
fault batches and DMA copies. Every time here is the cost model's clock
(modelled microseconds since the start of the run), never wall time.

The inputs are the simulation's record arrays (``BATCH_DTYPE`` and
``COPY_DTYPE`` rows, see :mod:`migengine.kernels.sim.records`) and plain dicts,
so the writers work on any run, including one loaded back from disk.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from migengine._version import __version__
from migengine.kernels.sim.records import COPY_KIND_NAMES

__all__ = [
    "MAX_POINTS",
    "batch_summary",
    "plot_run",
    "sample_index",
    "save_run",
    "write_results_json",
    "write_timeline",
]

PathLike = str | os.PathLike[str]

#: Most points drawn per line: more are invisible at the figure's size and only
#: make the PNG slow to render for runs with millions of batches.
MAX_POINTS = 5_000

#: Chrome trace ids: one process; thread 1 carries the fault batches and the
#: residency counter, thread ``_CHANNEL_TID0 + c`` the copies of DMA channel c.
_PID = 1
_BATCH_TID = 1
_CHANNEL_TID0 = 2


def _json_safe(value: Any) -> Any:
    """``value`` as plain JSON types: numpy scalars and arrays become Python
    numbers and lists, tuples become lists, mapping keys strings, and
    non-finite floats null (strict JSON, which Perfetto parses, has no NaN)."""
    if isinstance(value, np.ndarray):
        return _json_safe(value.tolist())
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, Mapping):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    return value


def _dump(doc: Any, path: PathLike, indent: int | None) -> None:
    """Write ``doc`` (plain JSON types) as strict JSON: a NaN left in raises
    rather than corrupting the file. ``json.dumps`` with no indent runs the C
    encoder, several times faster than ``json.dump`` on a 200,000-event trace."""
    text = json.dumps(doc, indent=indent, allow_nan=False)
    Path(path).write_text(text + "\n", encoding="utf-8")


def _column(values: np.ndarray) -> list[Any]:
    """A record column as Python values, non-finite floats as None (JSON null)."""
    out = values.tolist()
    if values.dtype.kind == "f" and not np.isfinite(values).all():
        out = [v if math.isfinite(v) else None for v in out]
    return out


def batch_summary(batches: np.ndarray) -> dict[str, Any]:
    """Per-batch statistics for results.json: how many batches, how full they
    were (faults per batch) and how long they took in modelled time.

    With no batch the totals are 0 and every other statistic is None.
    """
    n = len(batches)
    faults = batches["faults"]
    dur = batches["t_end_us"] - batches["t_start_us"]
    summary: dict[str, Any] = {
        "count": n,
        "faults_total": int(faults.sum()),
        "coalesced_total": int(batches["coalesced"].sum()),
        "bytes_total": int(batches["bytes"].sum()),
    }
    empty = n == 0
    summary.update(
        {
            "faults_mean": None if empty else float(faults.mean()),
            "faults_median": None if empty else float(np.median(faults)),
            "faults_max": None if empty else int(faults.max()),
            "faults_min": None if empty else int(faults.min()),
            "vablocks_mean": None if empty else float(batches["vablocks"].mean()),
            "duration_us_mean": None if empty else float(dur.mean()),
            "duration_us_max": None if empty else float(dur.max()),
            "first_start_us": None if empty else float(batches["t_start_us"][0]),
            "last_end_us": None if empty else float(batches["t_end_us"][-1]),
        }
    )
    return summary


def write_results_json(
    path: PathLike,
    stats: Mapping[str, Any],
    config: Mapping[str, Any],
    extra: Mapping[str, Any] | None = None,
    *,
    batches: np.ndarray | None = None,
) -> None:
    """Write results.json: ``stats``, ``config``, a summary of ``batches`` (when
    given), the migengine version and the creation time (UTC, ISO 8601).

    ``extra`` adds top-level keys (the trace's name, copy counts); it may not
    replace one of the keys above, so a reader always finds them where expected.
    """
    doc: dict[str, Any] = {
        "stats": dict(stats),
        "config": dict(config),
        "batches": None if batches is None else batch_summary(batches),
        "migengine_version": __version__,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    clash = sorted(set(doc) & set(extra or {}))
    if clash:
        raise ValueError(f"extra may not replace results.json keys {clash}")
    doc.update(extra or {})
    _dump(_json_safe(doc), path, indent=2)


def sample_index(n: int, limit: int = MAX_POINTS) -> np.ndarray:
    """Indices of at most ``limit`` + 1 evenly spaced rows of ``n``, always
    including the last row, so a downsampled cumulative curve ends at its total."""
    if n <= limit:
        return np.arange(n)
    step = math.ceil(n / limit)
    idx = np.arange(0, n, step)
    return idx if idx[-1] == n - 1 else np.append(idx, n - 1)


def _time_scale(t_max_us: float) -> tuple[float, str]:
    """Divisor and unit that keep the time axis' numbers readable."""
    if t_max_us >= 1e6:
        return 1e6, "s"
    if t_max_us >= 1e3:
        return 1e3, "ms"
    return 1.0, "µs"


def plot_run(
    path: PathLike,
    batches: np.ndarray,
    copies: np.ndarray,
    stats: Mapping[str, Any],
    title: str,
) -> None:
    """Draw the run as a PNG with three panels over modelled time (the end of
    each batch): pages moved by cause, cumulative; bytes copied, cumulative;
    device residency, with the device's capacity dashed.

    The per-cause curves come from ``batches``, which every run records in
    full; ``copies`` may be truncated, so only its row count is shown. A run
    without batches gets empty panels with a note. Every line is downsampled
    to at most :data:`MAX_POINTS` points (keeping the last), so runs of any
    length plot in about the same time.
    """
    # Imported here, not at module level: matplotlib takes ~0.3 s to import and
    # only the plot needs it. The object API with the Agg canvas needs no display,
    # switches no global backend and never registers the figure with pyplot,
    # so nothing stays open once the function returns.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    n = len(batches)
    idx = sample_index(n)
    t_end = batches["t_end_us"]
    scale, unit = _time_scale(float(t_end[-1]) if n else 0.0)
    t = t_end[idx] / scale

    fig = Figure(figsize=(8, 9), layout="constrained")
    FigureCanvasAgg(fig)
    ax_pages, ax_bytes, ax_res = fig.subplots(3, 1, sharex=True)
    causes = (
        ("faults", "device fault entries serviced"),
        ("pages_to_device", "device faults: pages to device"),
        ("pages_prefetched", "prefetch: pages to device"),
        ("pages_evicted", "eviction: pages to host"),
        ("cpu_faults", "CPU faults: pages to host"),
    )
    if n:
        for field, label in causes:
            ax_pages.plot(t, np.cumsum(batches[field])[idx], label=label)
        ax_bytes.plot(t, np.cumsum(batches["bytes"])[idx] / 2**20, label="both directions")
        ax_res.plot(t, batches["resident_pages"][idx], drawstyle="steps-post", label="resident")
    if stats.get("device_pages") is not None:
        ax_res.axhline(float(stats["device_pages"]), ls="--", color="grey", label="device capacity")
    ax_pages.set_ylabel("cumulative count (pages)")
    ax_bytes.set_ylabel("cumulative copied (MiB)")
    ax_res.set_ylabel("device-resident (pages)")
    ax_res.set_xlabel(f"modelled time ({unit})")
    # Cumulative curves climb from the lower left: their legend fits the upper
    # left; residency plateaus near capacity, so let matplotlib place its legend.
    for ax, where in ((ax_pages, "upper left"), (ax_bytes, "upper left"), (ax_res, "best")):
        if n == 0:
            ax.text(0.5, 0.5, "no fault batches", ha="center", va="center", transform=ax.transAxes)
        ax.set_ylim(bottom=0)
        ax.grid(True, alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8, loc=where)
    ax_bytes.set_title(f"{n:,} fault batches, {len(copies):,} copy records", fontsize=9)
    fig.suptitle(title, fontsize=11)
    fig.savefig(path, dpi=100)


def _channel_tid(channel: int) -> int:
    return _CHANNEL_TID0 + channel


def _batch_events(batches: np.ndarray, rows: np.ndarray) -> list[dict[str, Any]]:
    """One complete ("X") event per batch row, its fields as args."""
    sel = batches[rows]
    cols = {f: _column(sel[f]) for f in batches.dtype.names or ()}
    events = []
    for k, row in enumerate(rows.tolist()):
        args = {f: col[k] for f, col in cols.items()}
        start, end = args["t_start_us"], args["t_end_us"]
        events.append(
            {
                "name": f"batch {row}: {args['faults']} faults",
                "cat": "batch",
                "ph": "X",
                "ts": start,
                "dur": max(end - start, 0.0),
                "pid": _PID,
                "tid": _BATCH_TID,
                "args": args,
            }
        )
    return events


def _copy_events(copies: np.ndarray, rows: np.ndarray) -> list[dict[str, Any]]:
    """One complete ("X") event per copy row, on its DMA channel's thread."""
    sel = copies[rows]
    return [
        {
            "name": COPY_KIND_NAMES[kind] if 0 <= kind < len(COPY_KIND_NAMES) else f"kind {kind}",
            "cat": "copy",
            "ph": "X",
            "ts": ts,
            "dur": max(dur, 0.0),
            "pid": _PID,
            "tid": _channel_tid(channel),
            "args": {"bytes": nbytes, "batch": batch},
        }
        for ts, dur, channel, kind, nbytes, batch in zip(
            sel["t_start_us"].tolist(),
            sel["dur_us"].tolist(),
            sel["channel"].tolist(),
            sel["kind"].tolist(),
            sel["bytes"].tolist(),
            sel["batch"].tolist(),
            strict=True,
        )
    ]


def _counter_events(batches: np.ndarray, rows: np.ndarray) -> list[dict[str, Any]]:
    """Device residency after each batch, as a counter ("C") track."""
    sel = batches[rows]
    return [
        {
            "name": "device resident",
            "ph": "C",
            "ts": ts,
            "pid": _PID,
            "tid": _BATCH_TID,
            "args": {"pages": pages},
        }
        for ts, pages in zip(sel["t_end_us"].tolist(), sel["resident_pages"].tolist(), strict=True)
    ]


def _metadata_events(channels: list[int]) -> list[dict[str, Any]]:
    """Name the process and its threads, so the viewer labels every track."""

    def meta(name: str, tid: int, value: str) -> dict[str, Any]:
        return {"name": name, "ph": "M", "ts": 0, "pid": _PID, "tid": tid, "args": {"name": value}}

    return [
        meta("process_name", _BATCH_TID, "migengine sim"),
        meta("thread_name", _BATCH_TID, "fault batches"),
        *(meta("thread_name", _channel_tid(c), f"DMA channel {c}") for c in channels),
    ]


def write_timeline(
    path: PathLike,
    batches: np.ndarray,
    copies: np.ndarray,
    stats: Mapping[str, Any],
    max_events: int = 200_000,
    extra: Mapping[str, Any] | None = None,
) -> dict[str, int]:
    """Write the run as a Chrome trace-event JSON file for ui.perfetto.dev or
    chrome://tracing: a complete event per fault batch and per copy record, a
    counter of device-resident pages, and metadata naming the tracks.

    ``ts`` and ``dur`` are modelled microseconds. Beyond ``max_events`` (batch,
    copy and counter events together; the few metadata events are extra) the
    earliest ones are kept, since viewers slow down badly on huge JSON traces;
    ``otherData`` reports how many were left out, as well as events skipped for
    a non-finite time. ``extra`` adds entries to ``otherData``. Returns the
    counts written to ``otherData``.
    """
    if max_events < 0:
        raise ValueError(f"max_events must be >= 0, got {max_events}")
    n_b, n_c = len(batches), len(copies)
    b_start, b_end = batches["t_start_us"], batches["t_end_us"]
    # Every candidate event as (source, row, ts): 0 batch, 1 copy, 2 counter.
    source = np.repeat(np.arange(3), (n_b, n_c, n_b))
    row = np.concatenate([np.arange(n_b), np.arange(n_c), np.arange(n_b)])
    ts = np.concatenate([b_start, copies["t_start_us"], b_end])
    dur = np.concatenate([b_end - b_start, copies["dur_us"], np.zeros(n_b)])
    finite = np.isfinite(ts) & np.isfinite(dur)
    candidates = np.flatnonzero(finite)
    keep = candidates[np.argsort(ts[candidates], kind="stable")[:max_events]]
    kept_source, kept_row = source[keep], row[keep]

    events = [
        *_batch_events(batches, np.sort(kept_row[kept_source == 0])),
        *_copy_events(copies, np.sort(kept_row[kept_source == 1])),
        *_counter_events(batches, np.sort(kept_row[kept_source == 2])),
    ]
    # Stable: equal times keep batch, copy, counter order; sorted overall means
    # sorted within each thread, which the viewers expect.
    events.sort(key=lambda e: e["ts"])
    channels = np.unique(copies["channel"]).tolist()
    counts = {
        "events": len(events),
        "events_left_out": len(candidates) - len(events),
        "events_nonfinite_time": int((~finite).sum()),
    }
    # The events hold plain Python values already (tolist() and _column()).
    doc = {
        "traceEvents": [*_metadata_events(channels), *events],
        "displayTimeUnit": "ms",
        "otherData": _json_safe(
            {
                "clock": "modelled microseconds since the start of the run (not wall time)",
                **counts,
                "max_events": max_events,
                "migengine_version": __version__,
                "stats": dict(stats),
                **(extra or {}),
            }
        ),
    }
    _dump(doc, path, indent=None)
    return counts


def save_run(directory: PathLike, result: Any) -> dict[str, Path]:
    """Write a finished run's results.json, run.png and timeline.json into
    ``directory`` (created with its parents) and return their paths by name
    (``results``, ``plot``, ``timeline``).

    ``result`` is anything with ``stats``, ``config``, ``batches``, ``copies``,
    ``copies_dropped`` and ``trace_name`` attributes (a ``SimResult``).
    """
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    paths = {
        "results": out / "results.json",
        "plot": out / "run.png",
        "timeline": out / "timeline.json",
    }
    about = {
        "trace_name": result.trace_name,
        "copies": {"recorded": len(result.copies), "dropped": int(result.copies_dropped)},
    }
    write_results_json(paths["results"], result.stats, result.config, about, batches=result.batches)
    config = result.config
    title = (
        f"migengine sim: {result.trace_name}, {config.get('device_pages')} device pages, "
        f"prefetch {config.get('prefetch')}, evict {config.get('evict')}"
    )
    plot_run(paths["plot"], result.batches, result.copies, result.stats, title)
    write_timeline(paths["timeline"], result.batches, result.copies, result.stats, extra=about)
    return paths
