"""me.sweep and ``migengine sweep``: grids on a real 2-worker Dask LocalCluster and serially.

The cluster tests start real worker processes (dask.distributed.LocalCluster,
processes=True), so the kernels load from the numba cache in other processes.
"""

from __future__ import annotations

import os
from pathlib import Path

import numba
import pandas as pd
import pytest

import migengine as me
from migengine import cli, sweep_cluster, sweep_grid
from migengine.sweep_output import RESULTS, read_results

TRACE = {"pattern": "hotspot", "pages": 1024, "accesses": 6000, "seed": 1, "write_fraction": 0.3}
BASE = me.SimConfig(device_pages=512, migrate_pages=4, batch_faults=64)
GRID = {"prefetch": ["none", "tree"], "evict": ["lru", "fifo"], "engine.chunk_pages": [4, 64]}
# What a run computes: everything but where and how long it ran.
WHERE = ["wall_s", "host", "pid"]


def _same_results(a: pd.DataFrame, b: pd.DataFrame) -> None:
    pd.testing.assert_frame_equal(a.drop(columns=WHERE), b.drop(columns=WHERE))


@pytest.fixture(scope="module")
def serial() -> pd.DataFrame:
    return me.sweep(GRID, trace=TRACE, base=BASE, client="serial")


def test_serial_sweep_runs_every_combination(serial: pd.DataFrame) -> None:
    assert list(serial["run"]) == list(range(8))
    assert serial["error"].isna().all()
    # the grid's names come first, in grid order, each combination once
    assert list(serial.columns[1:4]) == list(GRID)
    combos = set(
        zip(serial["prefetch"], serial["evict"], serial["engine.chunk_pages"], strict=True)
    )
    assert len(combos) == 8
    # each row is the run simulate() gives for those settings
    row = serial.iloc[5]
    cfg = BASE.replace(prefetch=row["prefetch"], evict=row["evict"])
    cfg = cfg.replace(engine=cfg.copy_engine().replace(chunk_pages=int(row["engine.chunk_pages"])))
    tr = me.Trace.synthetic("hotspot", pages=1024, accesses=6000, seed=1, write_fraction=0.3)
    stats = me.simulate(tr, cfg).stats
    for key in ("device_faults", "pages_prefetched", "pages_evicted", "modelled_s"):
        assert row[key] == stats[key], key
    assert row["data_ok"] and row["engine"] == "custom" and row["device_pages"] == 512
    assert row["migengine"] == me.__version__ and row["numba"]


def test_local_cluster_equals_serial(serial: pd.DataFrame, monkeypatch) -> None:
    """client=None: a LocalCluster of one single-threaded process per core (2 here).
    This process fills the numba cache for the workers only if no earlier warm of
    BASE has (its marker)."""
    # Another test may warm BASE meanwhile (xdist), so the answer the sweep got is
    # the one checked.
    answers: list[bool] = []
    calls = []

    def cached(base: me.SimConfig) -> bool:
        answers.append(sweep_grid.cached(base))
        return answers[-1]

    monkeypatch.setattr(sweep_cluster, "cached", cached)
    monkeypatch.setattr(sweep_cluster, "warm", lambda base: calls.append(base) or 0.0)
    local = me.sweep(GRID, trace=TRACE, base=BASE)
    _same_results(local, serial)
    assert set(local["pid"]).isdisjoint({os.getpid()})  # ran in the workers
    assert len(answers) == 1 and len(calls) == (0 if answers[0] else 1)
    assert sweep_grid.cached(BASE)  # the workers' warms left the marker


def test_a_warm_marks_its_config_cached() -> None:
    """sweep_grid.warm() leaves a marker in the kernels' cache for its config
    (kernels.cache_marker), and only a built-in policy's config gets one: a
    user's policy compiles into its own module's cache, which no marker covers."""
    base = BASE.replace(seed=987_654_321)  # a config no other test warms
    marker = sweep_grid._warm_marker(base)
    assert marker is not None
    marker.unlink(missing_ok=True)
    assert not sweep_grid.cached(base)
    assert sweep_grid.warm(base) > 0
    assert sweep_grid.cached(base) and marker.exists()
    assert not sweep_grid.cached(base.replace(seed=987_654_322))
    marker.unlink()

    @numba.njit
    def oldest(units, last_use, first_use, uses, now):
        return 0

    assert sweep_grid._warm_marker(base.replace(evict=oldest)) is None


def test_a_synthetic_trace_is_generated_once_per_process() -> None:
    """TraceSpec.load(): the runs of one spec share one generated trace; another
    spec replaces it."""
    spec = sweep_grid.trace_spec(dict(TRACE))
    other = sweep_grid.trace_spec({**TRACE, "seed": 2})
    first = spec.load()
    assert spec.load() is first
    assert other.load() is not first
    again = spec.load()
    assert again is not first and (again.addr == first.addr).all()
    assert (again.write == first.write).all() and (again.proc == first.proc).all()


def test_given_client_equals_serial(serial: pd.DataFrame) -> None:
    """A Client of an existing 2-worker cluster; the workers run with NUMBA_NUM_THREADS=1."""
    from dask.distributed import Client

    with sweep_cluster.local_cluster(workers=2) as cluster, Client(cluster) as client:
        df = me.sweep(GRID, trace=TRACE, base=BASE, client=client)
        threads = client.run(lambda: __import__("numba").config.NUMBA_NUM_THREADS)
    _same_results(df, serial)
    assert set(threads.values()) == {1}
    assert df["pid"].nunique() <= 2


def test_trace_grid_and_failed_run(tmp_path: Path) -> None:
    """Traces are a grid dimension; a run that raises is a row with its error, and the
    other runs go on (here a CSV trace malformed past the lines checked up front)."""
    good = tmp_path / "good.csv"
    good.write_text(
        "addr,op\n"
        + "".join(f"{0x10000 + 4096 * (i % 40)},{'W' if i % 3 else 'R'}\n" for i in range(300))
    )
    bad = tmp_path / "bad.csv"
    bad.write_text(good.read_text() + "0x1000,Q\n")
    grid = {"trace": [str(good), str(bad), TRACE], "migrate_pages": [1, 4]}
    df = me.sweep(grid, base=BASE.replace(device_pages=16), client="serial")
    assert len(df) == 6
    failed = df[df["error"].notna()]
    assert set(failed["trace"]) == {str(bad)} and len(failed) == 2
    assert failed["error"].str.contains("bad.csv").all()
    assert df[df["error"].isna()]["data_ok"].all()


@pytest.mark.parametrize(
    ("grid", "kwargs", "match"),
    [
        ({}, {}, "non-empty"),
        ({"prefetchh": ["none"]}, {}, "'prefetchh' is not a SimConfig field"),
        ({"prefetch": []}, {}, "'prefetch' has no values"),
        ({"prefetch": "tree"}, {}, "must map to a list"),
        ({"migrate_pages": ["x"]}, {}, "migrate_pages must be an int"),
        ({"migrate_pages": [3]}, {}, "power of two"),
        ({"engine.gbps": [-1.0]}, {}, "gbps"),
        ({"engine.nope": [1]}, {}, "'engine.nope' is not"),
        ({"prefetch": ["none"]}, {"trace": None}, "needs a trace"),
        ({"trace": [TRACE]}, {"trace": TRACE}, "not both"),
        ({"prefetch": ["none"]}, {"trace": "/no/such/file.csv"}, "no such trace file"),
        (
            {"prefetch": ["none"]},
            {"trace": {"pattern": "zigzag", "pages": 8, "accesses": 8}},
            "zigzag",
        ),
        ({"prefetch": ["none"]}, {"client": 42}, "client must be"),
    ],
)
def test_bad_sweeps_fail_before_running(grid, kwargs, match, monkeypatch) -> None:
    calls = []
    monkeypatch.setattr(sweep_cluster, "run_one", lambda *a: calls.append(a))
    kwargs = {"trace": TRACE, "base": BASE, "client": "serial", **kwargs}
    with pytest.raises(ValueError, match=match):
        me.sweep(grid, **kwargs)
    assert calls == []


def test_unreachable_scheduler(monkeypatch) -> None:
    monkeypatch.setattr(sweep_cluster, "CONNECT_TIMEOUT_S", 1)
    with pytest.raises(ValueError, match="cannot reach the Dask scheduler"):
        me.sweep({"prefetch": ["none"]}, trace=TRACE, base=BASE, client="tcp://127.0.0.1:9")


# ----------------------------------------------------------------------------- the CLI
GRID_TOML = """
[trace]
pattern = "hotspot"
pages = 1024
accesses = 6000
seed = 1

[base]
device_pages = 512
migrate_pages = 4

[grid]
prefetch = ["none", "tree"]
migrate_pages = [1, 4, 16]
"""


def _cli(*argv: str) -> int:
    return cli.main(list(argv))


def test_cli_sweep_writes_and_resumes(tmp_path: Path, capsys) -> None:
    toml = tmp_path / "grid.toml"
    toml.write_text(GRID_TOML)
    out = tmp_path / "out"
    assert _cli("sweep", str(toml), "--out", str(out), "--scheduler", "serial") == 0
    first = read_results(out)
    assert first is not None and len(first) == 6 and first["error"].isna().all()
    assert (out / "summary.png").stat().st_size > 0
    text = capsys.readouterr().out
    assert "ran 6 of 6 runs (0 already in" in text and "device_faults" in text

    # nothing left to run: every row, wall_s included, is kept as it was
    assert _cli("sweep", str(toml), "--out", str(out), "--scheduler", "serial") == 0
    assert "ran 0 of 6 runs (6 already in" in capsys.readouterr().out
    pd.testing.assert_frame_equal(read_results(out), first)

    # a sweep that lost two rows runs exactly those two again, on the local cluster
    first.iloc[[0, 1, 3, 4]].to_parquet(out / RESULTS, index=False)
    assert (
        _cli(
            "sweep",
            str(toml),
            "--out",
            str(out),
            "--scheduler",
            "local",
            "--stat",
            "device_faults",
            "--plot",
            "lines",
        )
        == 0
    )
    assert "ran 2 of 6 runs (4 already in" in capsys.readouterr().out
    again = read_results(out).sort_values("run").reset_index(drop=True)
    _same_results(again, first)
    kept = again["run"].isin([0, 1, 3, 4])
    assert (again[kept]["wall_s"].to_numpy() == first.iloc[[0, 1, 3, 4]]["wall_s"].to_numpy()).all()


def test_cli_sweep_interrupted_keeps_finished_runs(tmp_path: Path, monkeypatch, capsys) -> None:
    """Interrupted after two runs: both are on disk, and the next call runs the other four."""
    toml = tmp_path / "grid.toml"
    toml.write_text(GRID_TOML)
    out = tmp_path / "out"
    real = sweep_grid.run_one
    done = []

    def flaky(run, trace, name):
        if len(done) == 2:
            raise KeyboardInterrupt
        done.append(run.index)
        return real(run, trace, name)

    monkeypatch.setattr(sweep_cluster, "run_one", flaky)
    assert _cli("sweep", str(toml), "--out", str(out), "--scheduler", "serial") == 130
    assert "interrupted" in capsys.readouterr().err
    assert sorted(read_results(out)["run"]) == done == [0, 1]
    monkeypatch.setattr(sweep_cluster, "run_one", real)
    assert _cli("sweep", str(toml), "--out", str(out), "--scheduler", "serial") == 0
    assert "ran 4 of 6 runs (2 already in" in capsys.readouterr().out
    assert sorted(read_results(out)["run"]) == list(range(6))


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("[grid\n", "grid.toml"),
        ("colour = 1\n[grid]\nprefetch = ['none']\n", "unknown key"),
        ("trace = 'missing.csv'\n[grid]\nprefetch = ['none']\n", "no such trace file"),
        (GRID_TOML.replace("prefetch =", "prefetchh ="), "'prefetchh' is not a SimConfig field"),
        (GRID_TOML.replace("device_pages = 512", "device_pages = 'many'"), "device_pages"),
        (GRID_TOML + "[plot]\nshade = 1\n", "unknown key"),
        (GRID_TOML + "[plot]\nx = 'colour'\n", "'colour' is not a run parameter"),
        (GRID_TOML + "[plot]\nkind = 'pie'\n", "kind must be"),
    ],
)
def test_cli_sweep_bad_grid_files(tmp_path: Path, capsys, text: str, match: str) -> None:
    toml = tmp_path / "grid.toml"
    toml.write_text(text)
    out = tmp_path / "out"
    assert _cli("sweep", str(toml), "--out", str(out), "--scheduler", "serial") == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and match in err
    assert not out.exists()  # nothing ran, nothing written


def test_cli_sweep_missing_file_and_bad_scheduler(tmp_path: Path, capsys, monkeypatch) -> None:
    assert _cli("sweep", str(tmp_path / "none.toml"), "--out", str(tmp_path / "o")) == 1
    assert "none.toml" in capsys.readouterr().err
    toml = tmp_path / "grid.toml"
    toml.write_text(GRID_TOML)
    monkeypatch.setattr(sweep_cluster, "CONNECT_TIMEOUT_S", 1)
    assert (
        _cli("sweep", str(toml), "--out", str(tmp_path / "o"), "--scheduler", "tcp://127.0.0.1:9")
        == 1
    )
    assert "cannot reach the Dask scheduler" in capsys.readouterr().err
    assert read_results(tmp_path / "o") is None


def test_example_grid_file_plans_its_runs() -> None:
    """examples/sweep.toml (the README's sweep) is a valid grid of 3 x 3 x 2 runs."""
    from migengine.cli_sweep import load_grid

    p, plot = load_grid(str(Path(__file__).resolve().parents[2] / "examples" / "sweep.toml"))
    assert len(p.runs) == 18 and p.varied == ["prefetch", "migrate_pages", "evict"]
    assert plot == {"stat": "device_faults", "x": "migrate_pages", "y": "prefetch"}
    assert p.base.device_pages == 8192 and not p.base.store_data


def test_importing_migengine_leaves_pandas_unloaded() -> None:
    """pandas loads when a sweep makes its frame, not at import: a sweep's worker
    processes, and every command line run, start that much sooner."""
    import subprocess
    import sys

    code = "import sys, migengine; print('pandas' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
