"""The simulation's files: results.json, run.png and timeline.json, written from
synthetic batch and copy records with the real dtypes (no simulation runs)."""

from __future__ import annotations

import json
from collections import defaultdict
from datetime import datetime
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest

import migengine as me
from migengine import sim_output
from migengine.kernels.sim.records import (
    BATCH_DTYPE,
    COPY_CPU_FAULT,
    COPY_DTYPE,
    COPY_EVICT,
    COPY_KIND_NAMES,
    COPY_TO_DEVICE,
)

DEVICE_PAGES = 1024
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
CHANNELS = (0, 1, 2)


def make_batches(n: int, seed: int = 0) -> np.ndarray:
    """``n`` batches 100 µs apart, each 60 µs long, residency capped at the device."""
    rng = np.random.default_rng(seed)
    b = np.zeros(n, BATCH_DTYPE)
    b["t_start_us"] = np.arange(n) * 100.0
    b["t_end_us"] = b["t_start_us"] + 60.0
    b["access"] = np.arange(n) * 7
    b["faults"] = rng.integers(1, 257, n)
    b["coalesced"] = b["faults"] // 4
    b["vablocks"] = rng.integers(1, 4, n)
    b["pages_to_device"] = b["faults"] - b["coalesced"]
    b["pages_prefetched"] = rng.integers(0, 32, n)
    b["pages_evicted"] = rng.integers(0, 16, n)
    b["cpu_faults"] = rng.integers(0, 3, n)
    b["bytes"] = (b["pages_to_device"] + b["pages_prefetched"] + b["pages_evicted"]) * 4096
    b["copy_us"] = b["bytes"] / 12e3
    moved_in = b["pages_to_device"] + b["pages_prefetched"] - b["pages_evicted"]
    b["resident_pages"] = np.minimum(np.cumsum(moved_in), DEVICE_PAGES)
    return b


def make_copies(batches: np.ndarray, seed: int = 0) -> np.ndarray:
    """One copy per batch and channel, stored shuffled so the writer must sort them."""
    rng = np.random.default_rng(seed)
    n = len(batches)
    c = np.zeros(n * len(CHANNELS), COPY_DTYPE)
    c["batch"] = np.repeat(np.arange(n), len(CHANNELS))
    c["channel"] = np.tile(CHANNELS, n)
    c["t_start_us"] = batches["t_start_us"][c["batch"]] + 10.0 + 3.0 * c["channel"]
    c["dur_us"] = rng.uniform(1.0, 40.0, len(c))
    c["kind"] = rng.integers(0, len(COPY_KIND_NAMES), len(c))
    c["bytes"] = rng.integers(1, 64, len(c)) * 4096
    return c[rng.permutation(len(c))]


def make_stats(batches: np.ndarray) -> dict[str, Any]:
    return {
        "accesses": 12_345,
        "device_faults": int(batches["faults"].sum()),
        "fault_batches": len(batches),
        "pages_to_device": int(batches["pages_to_device"].sum()),
        "modelled_s": 0.0123,
        "wall_s": 1.5,
        "data_ok": True,
        "resident_pages": int(batches["resident_pages"][-1]) if len(batches) else 0,
        "device_pages": DEVICE_PAGES,
    }


CONFIG = {
    "device_pages": DEVICE_PAGES,
    "profile": "hmm-v25",
    "migrate_pages": 16,
    "batch_faults": 256,
    "prefetch": "tree",
    "evict": "lru",
    "engine": {"channels": 3, "gbps": 12.0},
    "fault_us": 45.0,
    "batch_us": 0.0,
    "store_data": True,
    "seed": 0,
}


def _no_constant(name: str) -> None:
    raise AssertionError(f"non-standard JSON constant {name}")


def load_strict(path: Path) -> Any:
    """Parse as strict JSON, as Perfetto does: NaN or Infinity fail the test."""
    return json.loads(path.read_text(encoding="utf-8"), parse_constant=_no_constant)


@pytest.fixture
def run() -> SimpleNamespace:
    batches = make_batches(300)
    return SimpleNamespace(
        batches=batches,
        copies=make_copies(batches),
        stats=make_stats(batches),
        config=CONFIG,
        copies_dropped=0,
        trace_name="sequential",
    )


# results.json


def test_results_json_round_trips_stats_and_config(tmp_path, run):
    path = tmp_path / "results.json"
    sim_output.write_results_json(path, run.stats, run.config, {"note": "x"}, batches=run.batches)
    doc = load_strict(path)
    assert doc["stats"] == run.stats
    assert doc["config"] == run.config
    assert doc["note"] == "x"
    assert doc["migengine_version"] == me.__version__
    assert datetime.fromisoformat(doc["created"]).tzinfo is not None
    summary = doc["batches"]
    faults = run.batches["faults"]
    assert summary["count"] == len(run.batches)
    assert summary["faults_total"] == faults.sum()
    assert summary["faults_max"] == faults.max()
    assert summary["faults_median"] == pytest.approx(np.median(faults))
    assert summary["faults_mean"] == pytest.approx(faults.mean())
    assert summary["duration_us_max"] == pytest.approx(60.0)


def test_results_json_serialises_numpy_values(tmp_path):
    stats = {
        "accesses": np.int64(7),
        "modelled_s": np.float32(0.5),
        "data_ok": np.bool_(True),
        "copy_s": np.float64("nan"),
        "per_channel": np.array([1, 2, 3], dtype=np.int32),
        "pair": (np.int8(1), np.uint64(2)),
    }
    path = tmp_path / "results.json"
    sim_output.write_results_json(path, stats, {"engine": {"gbps": np.float64(12.0)}})
    doc = load_strict(path)
    assert doc["stats"] == {
        "accesses": 7,
        "modelled_s": 0.5,
        "data_ok": True,
        "copy_s": None,
        "per_channel": [1, 2, 3],
        "pair": [1, 2],
    }
    assert doc["config"] == {"engine": {"gbps": 12.0}}
    assert doc["batches"] is None


def test_results_json_summary_of_no_batches(tmp_path):
    path = tmp_path / "results.json"
    sim_output.write_results_json(path, {}, {}, batches=make_batches(0))
    summary = load_strict(path)["batches"]
    assert summary["count"] == 0
    assert summary["faults_total"] == 0
    assert summary["faults_mean"] is None
    assert summary["last_end_us"] is None


def test_results_json_extra_cannot_replace_a_key(tmp_path):
    with pytest.raises(ValueError, match="stats"):
        sim_output.write_results_json(tmp_path / "r.json", {}, {}, {"stats": {}})
    assert not (tmp_path / "r.json").exists()


# run.png


def _assert_png(path: Path) -> None:
    data = path.read_bytes()
    assert len(data) > len(PNG_MAGIC)
    assert data.startswith(PNG_MAGIC)


def test_plot_writes_a_png_and_leaves_no_figure_open(tmp_path, run):
    import matplotlib.image as mpimg
    import matplotlib.pyplot as plt

    before = plt.get_fignums()
    path = tmp_path / "run.png"
    sim_output.plot_run(path, run.batches, run.copies, run.stats, "a run")
    _assert_png(path)
    assert plt.get_fignums() == before
    assert mpimg.imread(path).std() > 0  # something was drawn, not a blank canvas


def test_plot_of_an_empty_run(tmp_path):
    path = tmp_path / "run.png"
    sim_output.plot_run(path, make_batches(0), np.zeros(0, COPY_DTYPE), {}, "empty")
    _assert_png(path)


def test_plot_downsamples_long_runs_keeping_the_totals(tmp_path, monkeypatch):
    from matplotlib.axes import Axes

    drawn: dict[str, tuple[int, float]] = {}
    real_plot = Axes.plot

    def spy(self, x, y, *args, **kwargs):
        drawn[kwargs["label"]] = (len(x), float(np.asarray(y)[-1]))
        return real_plot(self, x, y, *args, **kwargs)

    monkeypatch.setattr(Axes, "plot", spy)
    batches = make_batches(3 * sim_output.MAX_POINTS + 17)
    sim_output.plot_run(tmp_path / "run.png", batches, np.zeros(0, COPY_DTYPE), {}, "long")
    assert len(drawn) >= 7  # five causes, bytes, residency
    assert all(n <= sim_output.MAX_POINTS + 1 for n, _ in drawn.values())
    assert drawn["device faults: pages to device"][1] == batches["pages_to_device"].sum()
    assert drawn["resident"][1] == batches["resident_pages"][-1]


@pytest.mark.parametrize("n", [0, 1, 5_000, 5_001, 10_000, 1_000_003])
def test_sample_index_is_bounded_and_keeps_the_ends(n):
    idx = sim_output.sample_index(n, limit=5_000)
    assert len(idx) <= 5_001
    assert np.all(np.diff(idx) > 0)
    if n:
        assert idx[0] == 0
        assert idx[-1] == n - 1
    if n <= 5_000:
        assert len(idx) == n


# timeline.json


def _data_events(doc: dict[str, Any]) -> list[dict[str, Any]]:
    return [e for e in doc["traceEvents"] if e["ph"] != "M"]


def _thread_names(doc: dict[str, Any]) -> dict[int, str]:
    return {
        e["tid"]: e["args"]["name"]
        for e in doc["traceEvents"]
        if e["ph"] == "M" and e["name"] == "thread_name"
    }


def _assert_valid_trace(doc: dict[str, Any]) -> None:
    """Keys and types every viewer needs, durations >= 0, ts sorted per thread."""
    assert doc["displayTimeUnit"] == "ms"
    last_ts: dict[int, float] = defaultdict(lambda: -np.inf)
    for e in doc["traceEvents"]:
        assert {"name", "ph", "ts", "pid", "tid"} <= e.keys(), e
        assert type(e["pid"]) is int and type(e["tid"]) is int, e
        assert isinstance(e["ts"], (int, float)), e
        if e["ph"] == "X":
            assert e["dur"] >= 0, e
        if e["ph"] != "M":
            assert e["ts"] >= last_ts[e["tid"]], e
            last_ts[e["tid"]] = e["ts"]
    process = [e for e in doc["traceEvents"] if e["name"] == "process_name"]
    assert [e["args"]["name"] for e in process] == ["migengine sim"]


def test_timeline_has_every_batch_copy_and_counter(tmp_path, run):
    path = tmp_path / "timeline.json"
    counts = sim_output.write_timeline(path, run.batches, run.copies, run.stats)
    doc = load_strict(path)
    _assert_valid_trace(doc)
    events = _data_events(doc)
    names = _thread_names(doc)
    assert "fault batches" in names.values()
    assert {f"DMA channel {c}" for c in CHANNELS} <= set(names.values())
    assert all(e["tid"] in names for e in events)  # every track is named

    batch_tid = next(t for t, name in names.items() if name == "fault batches")
    batch_events = [e for e in events if e["ph"] == "X" and e["tid"] == batch_tid]
    copy_events = [e for e in events if e["ph"] == "X" and e["tid"] != batch_tid]
    counters = [e for e in events if e["ph"] == "C"]
    assert len(batch_events) == len(run.batches)
    assert len(copy_events) == len(run.copies)
    assert len(counters) == len(run.batches)
    assert counts["events"] == len(events) and counts["events_left_out"] == 0

    first = run.batches[0]
    assert batch_events[0]["name"] == f"batch 0: {first['faults']} faults"
    assert batch_events[0]["args"]["pages_evicted"] == first["pages_evicted"]
    assert batch_events[0]["dur"] == pytest.approx(60.0)
    assert [c["args"]["pages"] for c in counters] == run.batches["resident_pages"].tolist()
    assert {e["name"] for e in copy_events} <= set(COPY_KIND_NAMES)
    assert sum(e["args"]["bytes"] for e in copy_events) == run.copies["bytes"].sum()
    channel_of = {t: int(n.rsplit(" ", 1)[1]) for t, n in names.items() if n != "fault batches"}
    per_channel = np.bincount([channel_of[e["tid"]] for e in copy_events])
    assert per_channel.tolist() == np.bincount(run.copies["channel"]).tolist()
    assert doc["otherData"]["stats"] == run.stats


def test_timeline_keeps_the_earliest_events_and_reports_the_rest(tmp_path, run):
    path = tmp_path / "timeline.json"
    cap = 50
    sim_output.write_timeline(path, run.batches, run.copies, run.stats, max_events=cap)
    doc = load_strict(path)
    _assert_valid_trace(doc)
    events = _data_events(doc)
    total = 2 * len(run.batches) + len(run.copies)
    assert len(events) == cap
    assert doc["otherData"]["events_left_out"] == total - cap
    all_ts = np.sort(
        np.concatenate(
            [run.batches["t_start_us"], run.batches["t_end_us"], run.copies["t_start_us"]]
        )
    )
    assert sorted(e["ts"] for e in events) == pytest.approx(all_ts[:cap].tolist())


def test_timeline_of_an_empty_run(tmp_path):
    path = tmp_path / "timeline.json"
    sim_output.write_timeline(path, make_batches(0), np.zeros(0, COPY_DTYPE), {"data_ok": None})
    doc = load_strict(path)
    _assert_valid_trace(doc)
    assert _data_events(doc) == []
    assert list(_thread_names(doc).values()) == ["fault batches"]
    assert doc["otherData"]["events"] == 0
    assert doc["otherData"]["events_left_out"] == 0


def test_timeline_clamps_negative_durations_and_skips_nonfinite_times(tmp_path):
    batches = make_batches(3)
    batches["t_end_us"][1] = batches["t_start_us"][1] - 5.0  # rounding gone wrong
    batches["copy_us"][2] = np.inf
    copies = np.zeros(3, COPY_DTYPE)
    copies["kind"] = (COPY_TO_DEVICE, COPY_EVICT, COPY_CPU_FAULT)
    copies["dur_us"] = (np.nan, 4.0, -1e-9)
    copies["t_start_us"] = (5.0, 5.0, 7.0)
    path = tmp_path / "timeline.json"
    sim_output.write_timeline(path, batches, copies, {"modelled_s": np.float64("inf")})
    doc = load_strict(path)
    _assert_valid_trace(doc)
    copy_events = [e for e in _data_events(doc) if e.get("cat") == "copy"]
    assert [(e["name"], e["dur"]) for e in copy_events] == [("evict", 4.0), ("cpu_fault", 0)]
    assert doc["otherData"]["events_nonfinite_time"] == 1
    batch_events = [e for e in _data_events(doc) if e.get("cat") == "batch"]
    assert batch_events[1]["dur"] == 0
    assert batch_events[2]["args"]["copy_us"] is None
    assert doc["otherData"]["stats"] == {"modelled_s": None}


# save_run


def test_save_run_writes_the_three_files(tmp_path, run):
    run.copies_dropped = np.int64(9)
    out = tmp_path / "nested" / "run1"
    paths = sim_output.save_run(out, run)
    assert set(paths) == {"results", "plot", "timeline"}
    assert all(p.parent == out and p.stat().st_size > 0 for p in paths.values())
    results = load_strict(paths["results"])
    assert results["trace_name"] == "sequential"
    assert results["copies"] == {"recorded": len(run.copies), "dropped": 9}
    assert results["batches"]["count"] == len(run.batches)
    _assert_png(paths["plot"])
    timeline = load_strict(paths["timeline"])
    _assert_valid_trace(timeline)
    assert timeline["otherData"]["trace_name"] == "sequential"
