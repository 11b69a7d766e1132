"""``migengine bench`` (the public contract's command line) and the workload behind it.

The CLI runs in-process with tiny --pages and a tmp --out. Timings are never
asserted (this VM is noisy); what is checked is what the numbers must satisfy
whatever the machine: descriptor counts of the known physical layout, the
documented engine model, the files and the error handling.
"""

from __future__ import annotations

import io
import json
import math

import numba
import numpy as np
import pytest

from migengine import bench, cli
from migengine.kernels.copy import DEFAULT_STREAM_MIN_BYTES

PAGES = 256
REQUIRED = ("chunk_pages", "wall_gbps", "model_gbps", "descriptors", "memcpy_ratio")


def _run_ok(capsys, *argv: str) -> tuple[str, str]:
    assert cli.main(["bench", *argv]) == 0
    out, err = capsys.readouterr()
    return out, err


def _physical_runs(pfns: np.ndarray) -> np.ndarray:
    """Lengths of the maximal runs of consecutive frames, in virtual order."""
    cuts = np.flatnonzero(np.diff(pfns) != 1) + 1
    edges = np.concatenate(([0], cuts, [pfns.size]))
    return np.diff(edges)


def _expected_descriptors(runs: np.ndarray, chunk: int) -> int:
    # The device side is one fresh contiguous run, so only source runs and the
    # chunk limit cut descriptors.
    return int(sum(math.ceil(n / chunk) for n in runs))


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    """One small CLI run shared by the output checks (it costs a few seconds)."""
    out = tmp_path_factory.mktemp("bench")
    argv = ["bench", "--pages", str(PAGES), "--chunk-pages", "16,1,4", "--repeat", "2"]
    argv += ["--fragmentation", "0.25", "--seed", "7", "--out", str(out)]
    cap_out, cap_err = io.StringIO(), io.StringIO()
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr("sys.stdout", cap_out)
        mp.setattr("sys.stderr", cap_err)
        status = cli.main(argv)
    return status, cap_out.getvalue(), cap_err.getvalue(), out


def test_bench_prints_a_table_row_per_chunk(sweep):
    """The public contract: `migengine bench` prints a table (chunk sizes sorted, one row each)."""
    status, out, err, _ = sweep
    assert status == 0
    lines = out.splitlines()
    assert lines[0].startswith(f"migengine bench: {PAGES:,} pages")
    header = next(i for i, line in enumerate(lines) if "wall GB/s" in line)
    rows = [line.split() for line in lines[header + 1 : header + 4]]
    assert [int(r[0]) for r in rows] == [1, 4, 16]
    assert "threading layer" in out
    assert "%|" not in err, "no progress bar when stderr is not a terminal"


def test_bench_results_json_records(sweep, make_machine):
    """The public contract: results.json holds one record per chunk size with chunk_pages,
    wall_gbps, model_gbps, descriptors and memcpy_ratio; descriptors follow the
    physical layout of the fragmented process."""
    _, _, _, out = sweep
    result = json.loads((out / "results.json").read_text())
    records = result["records"]
    assert [r["chunk_pages"] for r in records] == [1, 4, 16]
    work = bench.Workload(
        PAGES, fragmentation=0.25, seed=7, store_data=False, machine_factory=make_machine
    )
    runs = _physical_runs(work.source_pfns())
    for rec in records:
        assert set(REQUIRED) <= rec.keys()
        assert rec["descriptors"] == _expected_descriptors(runs, rec["chunk_pages"])
        for key in ("wall_gbps", "memcpy_ratio", "copyto_gbps", "meta_ns_per_page", "meta_share"):
            assert math.isfinite(rec[key]) and rec[key] > 0, key
        assert rec["memcpy_ratio"] == pytest.approx(rec["copyto_s"] / rec["wall_s"])
        assert rec["meta_share"] == pytest.approx(rec["meta_wall_s"] / rec["copyto_s"])
        assert rec["wall_gbps"] == pytest.approx(PAGES * 4096 / rec["wall_s"] / 1e9)


def test_bench_baseline_and_metadata_are_paired_samples(sweep):
    """Performance-anchors protocol: np.copyto and the metadata-only migration
    alternate, equally often (META_PAIRS a repetition), and each figure is the
    best of its own samples."""
    _, _, _, out = sweep
    result = json.loads((out / "results.json").read_text())
    par = result["metadata"]["parameters"]
    assert par["meta_pairs"] == bench.META_PAIRS >= 1
    for rec in result["records"]:
        samples = rec["samples"]
        assert len(samples["wall_s"]) == par["repeat"]
        assert (
            len(samples["copyto_s"])
            == len(samples["meta_wall_s"])
            == par["repeat"] * par["meta_pairs"]
        )
        assert rec["copyto_s"] == min(samples["copyto_s"])
        assert rec["meta_wall_s"] == min(samples["meta_wall_s"])
        assert rec["wall_s"] == min(samples["wall_s"])


def test_bench_model_gbps_is_the_ptdma_model(sweep):
    """The public contract's copy engine: modelled time = sum of setup_ns + bytes / gbps per
    descriptor on one channel (the ptdma preset: 1600 ns, 12.7 GB/s)."""
    _, _, _, out = sweep
    result = json.loads((out / "results.json").read_text())
    nbytes = PAGES * 4096
    for rec in result["records"]:
        model_s = (rec["descriptors"] * 1600.0 + nbytes / 12.7) * 1e-9
        assert rec["model_gbps"] == pytest.approx(nbytes / model_s / 1e9)


def test_bench_results_json_metadata(sweep):
    """The run's metadata: machine, numba version, threading layer, thread count
    and the parameters, as the issue asks."""
    _, _, _, out = sweep
    meta = json.loads((out / "results.json").read_text())["metadata"]
    assert meta["numba"] == numba.__version__
    assert meta["threading_layer"] in {"tbb", "omp", "workqueue"}
    assert meta["threads"] == numba.get_num_threads()
    assert meta["machine"]["cpus"] >= 1
    par = meta["parameters"]
    assert par["pages"] == PAGES and par["chunk_pages"] == [1, 4, 16]
    assert (par["repeat"], par["fragmentation"], par["engine"]) == (2, 0.25, "ptdma")
    assert meta["workload"]["break_fraction"] == pytest.approx(0.25, abs=0.02)


def test_bench_writes_png(sweep):
    """The public contract: DIR/chunk_sweep.png is written."""
    _, _, _, out = sweep
    assert (out / "chunk_sweep.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_bench_profiles_side_by_side(capsys, tmp_path):
    """#16's comparison: --profile seed,hmm-v25 runs both sweeps on the same workload in one
    run and shows each profile's table, then both side by side; results.json keeps both,
    results.md is regenerated from it unchanged, and the plot is written."""
    out = tmp_path / "cmp"
    argv = ["--pages", "64", "--chunk-pages", "1,16", "--repeat", "1", "--out", str(out)]
    text, _ = _run_ok(capsys, *argv, "--profile", "seed,hmm-v25,seed")
    assert "profile seed," in text and "profile hmm-v25," in text
    side = text[text.index("profiles side by side:") :].splitlines()
    assert "seed x copyto" in side[1] and "hmm-v25 meta ns/pg" in side[1]
    assert "meta hmm-v25/seed" in side[1]
    assert [row.split()[0] for row in side[2:4]] == ["1", "16"] and side[4].startswith("wrote")
    doc = json.loads((out / "results.json").read_text())
    runs = doc["runs"]
    assert [r["metadata"]["parameters"]["profile"] for r in runs] == ["seed", "hmm-v25"]
    for run in runs:
        assert [r["chunk_pages"] for r in run["records"]] == [1, 16]
        assert run["metadata"]["parameters"]["pages"] == 64
    # the same workload: both profiles copy the same descriptors
    assert [r["descriptors"] for r in runs[0]["records"]] == [
        r["descriptors"] for r in runs[1]["records"]
    ]
    md = (out / "results.md").read_text()
    assert "--profile seed,hmm-v25" in md and "## seed" in md and "## hmm-v25" in md
    assert bench.regenerate_markdown(out / "results.json") == str(out / "results.md")
    assert (out / "results.md").read_text() == md
    assert (out / "chunk_sweep.png").stat().st_size > 0


@pytest.mark.parametrize(("fragmentation", "chunk"), [(0.0, 16), (1.0, 4)])
def test_bench_fragmentation_extremes(capsys, tmp_path, fragmentation, chunk):
    """--fragmentation 0: one physical run, full chunks; 1: no two neighbours
    adjacent, so (barring a chance adjacency of shuffled pages) one page per
    descriptor."""
    argv = ["--pages", str(PAGES), "--chunk-pages", str(chunk), "--repeat", "1"]
    _run_ok(capsys, *argv, "--fragmentation", str(fragmentation), "--out", str(tmp_path))
    rec = json.loads((tmp_path / "results.json").read_text())["records"][0]
    if fragmentation == 0.0:
        assert rec["descriptors"] == PAGES // chunk
    else:
        assert rec["descriptors"] >= PAGES - 3


def test_no_stream_copies_through_memcpy(capsys, tmp_path):
    """--no-stream: the engine never streams (stream_min_bytes None); the default streams
    batches from DEFAULT_STREAM_MIN_BYTES."""
    assert bench.SweepConfig().engine_for(16).stream_min_bytes == DEFAULT_STREAM_MIN_BYTES
    argv = ["--pages", str(PAGES), "--chunk-pages", "16", "--repeat", "1", "--no-stream"]
    _run_ok(capsys, *argv, "--out", str(tmp_path))
    meta = json.loads((tmp_path / "results.json").read_text())["metadata"]
    assert meta["parameters"]["stream"] is False
    assert meta["parameters"]["engine_params"]["stream_min_bytes"] is None


BAD_ARGV = [
    [],
    ["frobnicate"],
    ["bench", "--nope"],
    ["bench", "--pages", "0"],
    ["bench", "--pages", "many"],
    ["bench", "--pages", str(cli.MAX_PAGES + 1)],
    ["bench", "--chunk-pages", "1,,4"],
    ["bench", "--chunk-pages", "0,4"],
    ["bench", "--chunk-pages", "4k"],
    ["bench", "--repeat", "0"],
    ["bench", "--fragmentation", "1.5"],
    ["bench", "--fragmentation", "lots"],
    ["bench", "--engine", "warp-drive"],
    ["bench", "--threads", "0"],
    ["bench", "--threads", str(numba.config.NUMBA_NUM_THREADS + 1)],
    ["bench", "--profile", "v26"],
    ["bench", "--profile", "seed,,hmm-v25"],
    ["bench", "--profile", "seed,v26"],
]


@pytest.mark.parametrize("argv", BAD_ARGV, ids=lambda a: " ".join(a) or "no-command")
def test_bad_flag_exits_2_with_one_line(capsys, argv):
    """The public contract: a bad flag exits non-zero with a one-line message."""
    with pytest.raises(SystemExit) as exc:
        cli.main(argv)
    assert exc.value.code == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert len(err.splitlines()) == 1 and err.startswith("migengine: error:")


def test_unwritable_out_exits_nonzero_with_one_line(capsys, tmp_path):
    """--out naming a regular file cannot become a directory: status 1, one line."""
    blocker = tmp_path / "file"
    blocker.write_text("")
    status = cli.main(["bench", "--pages", "16", "--out", str(blocker / "sub")])
    assert status == 1
    out, err = capsys.readouterr()
    assert out == "" and len(err.splitlines()) == 1 and err.startswith("migengine: error:")


def test_compile_notice_says_it_once_and_only_on_compiles():
    """The CLI says that kernels are compiling, and how many it compiled, only
    when numba really compiles (a function already compiled in this process, or
    loaded from the cache, sends no event)."""

    def twice(x):
        return x * 2

    def thrice(x):
        return x * 3

    compiled = numba.njit(twice)
    compiled(1)
    quiet = io.StringIO()
    with bench.compile_notice(quiet):
        compiled(2)
    assert quiet.getvalue() == ""
    loud = io.StringIO()
    with bench.compile_notice(loud):
        numba.njit(thrice)(1)
        numba.njit(twice)(1.5)
    lines = loud.getvalue().splitlines()
    assert len(lines) == 2
    assert "compiling" in lines[0]
    assert lines[1].startswith("migengine: compiled 2 functions in")


def test_compile_notice_reports_how_far_it_has_got():
    """In a log (not a terminal) a progress line every LOG_EVERY functions,
    with the expected total and the function just compiled."""
    out = io.StringIO()
    with bench.compile_notice(out, expected=40) as listener:
        listener.LOG_EVERY = 2
        for k in range(5):
            numba.njit(lambda x, k=k: x + k)(1)
    lines = out.getvalue().splitlines()
    assert lines[0].startswith("migengine: compiling the numba kernels")
    progress = [line for line in lines if " of about 40 done" in line]
    assert [line.split(":")[2].split()[0] for line in progress] == ["2", "4"]
    assert lines[-1].startswith("migengine: compiled 5 functions in")


def test_progress_bar_only_on_a_terminal(monkeypatch):
    """tqdm is used only when stderr is a TTY."""

    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    monkeypatch.setattr("sys.stderr", io.StringIO())
    assert cli._progress(3) is None
    monkeypatch.setattr("sys.stderr", Tty())
    bar = cli._progress(3)
    assert bar is not None
    bar.update(3)
    bar.close()


def test_workload_reset_repeats_the_same_migration(make_machine):
    """Each repetition restores the built workload: the same frames migrate to
    the same device frames, so descriptor counts and the final page tables are
    identical; the restored machine passes m.check() and the process reads its
    own bytes again."""
    work = bench.Workload(
        64, fragmentation=0.3, seed=3, store_data=True, machine_factory=make_machine
    )
    m, p, vma = work.machine, work.process, work.vma
    m.device.engine = bench.SweepConfig().engine_for(8)
    pattern = bytes(range(251)) * (64 * m.page_size // 251) + b"\x07" * (64 * m.page_size % 251)
    p.write(vma.start, pattern)
    before = work.source_pfns()
    work.migrate()
    first = (m.device.copy_stats["descriptors"], m.state.pte.copy(), m.counters)
    work.reset()
    m.check()
    np.testing.assert_array_equal(work.source_pfns(), before)
    assert p.read(vma.start, len(pattern)) == pattern
    work.migrate()
    second = (m.device.copy_stats["descriptors"], m.state.pte.copy(), m.counters)
    assert first[0] == second[0]
    np.testing.assert_array_equal(first[1], second[1])
    assert first[2] == second[2]


def test_copyto_baseline_leaves_the_machine_unchanged(make_machine):
    """The np.copyto baseline copies the process's own frames, byte for byte,
    into the device frames the migration uses, and changes no page of the
    process."""
    work = bench.Workload(32, fragmentation=0.5, seed=1, machine_factory=make_machine)
    m, p, vma = work.machine, work.process, work.vma
    pattern = bytes(range(256)) * (32 * m.page_size // 256)
    p.write(vma.start, pattern)
    assert bench.copyto_baseline(work)() > 0
    assert p.read(vma.start, len(pattern)) == pattern
    first_ram, first_dev = m.zero_pfn + 1, m.ram_pages
    assert sorted(work.source_pfns()) == list(range(first_ram, first_ram + 32))
    for i in range(32):
        assert m.frame(first_dev + i) == m.frame(first_ram + i)


def test_fragmented_runs_cover_the_range_once():
    """fragmented_runs breaks exactly round(f * (n - 1)) boundaries and its runs
    tile [0, n)."""
    runs = bench.fragmented_runs(1000, 0.2, np.random.default_rng(0))
    assert len(runs) == 1 + round(0.2 * 999)
    ordered = runs[np.argsort(runs[:, 0])]
    assert ordered[0, 0] == 0 and ordered[-1, 1] == 1000
    np.testing.assert_array_equal(ordered[1:, 0], ordered[:-1, 1])
