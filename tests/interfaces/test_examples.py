"""examples/ run end to end at tiny sizes, and their numbers add up.

gpu_oversubscription.py is checked against a plain-Python LRU model of the same
trace and byte for byte through the CPU; chunk_policy.py must write its plot.
"""

from __future__ import annotations

import importlib
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pytest

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
PS = 4096
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture
def gpu(monkeypatch):
    monkeypatch.syspath_prepend(str(EXAMPLES))
    return importlib.import_module("gpu_oversubscription")


@pytest.fixture
def chunk_policy(monkeypatch, gpu):
    return importlib.import_module("chunk_policy")


def _lru_model(pages, block_pages, capacity_blocks):
    """Faults and evictions of an LRU cache of whole blocks, in plain Python."""
    lru: OrderedDict[int, None] = OrderedDict()
    faults = evictions = 0
    for page in pages:
        block = int(page) // block_pages
        if block in lru:
            lru.move_to_end(block)
            continue
        faults += 1
        if len(lru) == capacity_blocks:
            lru.popitem(last=False)
            evictions += 1
        lru[block] = None
    return faults, evictions


def _expected_page(page, writes):
    body = bytes((page * 31 + j * 7 + 1) & 0xFF for j in range(4, PS))
    return int(writes).to_bytes(4, "little") + body


def _assert_consistent(r, block_pages):
    """The run's own counts agree with each other and with the machine."""
    assert r["hits"] + r["faults"] == r["accesses"]
    assert r["pages_in"] == r["faults"] * block_pages  # every block is whole and fits
    assert r["pages_in"] - r["pages_out"] == r["resident_pages"]
    assert r["dma_bytes"] == (r["pages_in"] + r["pages_out"]) * PS
    assert r["counters"]["pgmigrate_success"] == r["pages_in"] + r["pages_out"]
    assert r["counters"]["pgmigrate_fail"] == 0
    assert r["remote_writes"] == 0  # every device write found its page in device memory
    assert r["bad_pages"] == 0


@pytest.mark.parametrize("profile", ["hmm-v25", "seed"])
@pytest.mark.parametrize("pattern", ["hotspot", "strided", "random"])
def test_oversubscription_matches_an_lru_model(gpu, make_machine, profile, pattern):
    """Device faults and LRU evictions are those of a Python LRU over the same
    trace; eviction carries device writes home (dmirror evict + CPU read-back)."""
    args = dict(pages=64, device_pages=32, accesses=3000, block_pages=4, stride=8, seed=3)
    r = gpu.run(pattern=pattern, profile=profile, make_machine=make_machine, **args)
    trace, _ = gpu.make_trace(gpu.PATTERNS[pattern], 3000, 64, 8, 16, 0.9, 0.2, 3)
    assert (r["faults"], r["evictions"]) == _lru_model(trace, 4, 32 // 4)
    _assert_consistent(r, 4)
    assert r["dma_model_s"] > 0 and r["fault_model_s"] == pytest.approx(r["faults"] * 45e-6)


def test_device_writes_reach_system_memory(gpu, make_machine):
    """After the run the Python API reads every page: its write counter equals the
    number of device writes in the trace and the rest of the page is intact."""
    r = gpu.run(pages=32, device_pages=16, accesses=2000, block_pages=4, make_machine=make_machine)
    p, vma, expected = r["process"], r["vma"], r["expected_writes"]
    assert expected.sum() > 0
    for page in range(32):
        assert p.read(vma.start + page * PS, PS) == _expected_page(page, expected[page])


def test_without_oversubscription_each_block_faults_once(gpu, make_machine):
    """A device as large as the working set: one fault per block touched, no eviction."""
    r = gpu.run(pages=64, device_pages=64, accesses=500, block_pages=8, make_machine=make_machine)
    trace, _ = gpu.make_trace(gpu.PATTERNS["hotspot"], 500, 64, 16, 32, 0.9, 0.2, 0)
    assert r["faults"] == np.unique(trace // 8).size
    assert (r["evictions"], r["pages_out"]) == (0, 0)
    _assert_consistent(r, 8)


def test_strided_trace_walks_columns(gpu):
    """The strided pattern is a column-major walk of rows ``stride`` pages long."""
    pages, _ = gpu.make_trace(gpu.PATTERNS["strided"], 20, 8, 4, 1, 0.0, 0.0, 0)
    assert pages.tolist() == [0, 4, 1, 5, 2, 6, 3, 7] * 2 + [0, 4, 1, 5]


def test_gpu_oversubscription_main(gpu, capsys):
    """The script entry point at tiny sizes prints the rate and the modelled DMA."""
    argv = ["--pages", "64", "--device-pages", "32", "--accesses", "2000", "--block-pages", "8"]
    r = gpu.main(argv)
    out = capsys.readouterr().out
    assert "pages migrated/s" in out and "modelled DMA" in out and "64/64 pages intact" in out
    assert r["pages_per_s"] > 0
    _assert_consistent(r, 8)
    r["machine"].check()


def test_chunk_policy_main_writes_the_plot(chunk_policy, tmp_path, capsys):
    """The sweep runs both patterns at every block size and writes a PNG."""
    out = tmp_path / "sweep.png"
    argv = ["--pages", "64", "--device-pages", "32", "--accesses", "600", "--blocks", "1,4,16"]
    rows = chunk_policy.main([*argv, "--out", str(out)])
    assert out.read_bytes()[:8] == PNG_MAGIC
    assert [(r["pattern"], r["block_pages"]) for r in rows] == [
        (pattern, block) for pattern in ("strided", "random") for block in (1, 4, 16)
    ]
    for r in rows:
        _assert_consistent(r, r["block_pages"])
        assert r["total_model_s"] == pytest.approx(r["dma_model_s"] + r["fault_model_s"])
    assert "best block for random" in capsys.readouterr().out


def test_chunk_policy_sweep_leaves_machines_consistent(chunk_policy, make_machine):
    """Every machine of a sweep passes m.check() (make_machine checks at teardown)."""
    rows = chunk_policy.sweep(
        blocks=(2, 8), make_machine=make_machine, pages=32, device_pages=16, accesses=300
    )
    assert len(rows) == 4 and all(r["bad_pages"] == 0 for r in rows)


@pytest.mark.parametrize(
    "argv",
    [["--blocks", "0"], ["--blocks", "4,x"], ["--device-pages", "8", "--blocks", "16"]],
)
def test_chunk_policy_rejects_bad_blocks(chunk_policy, tmp_path, argv):
    with pytest.raises(SystemExit) as exc:
        chunk_policy.main([*argv, "--out", str(tmp_path / "x.png")])
    assert exc.value.code == 2
