"""examples/ run end to end at tiny sizes, and their numbers add up.

Each example is a short use of ``me.simulate``; the driver model itself is
checked against its pure-Python reference in tests/properties/test_sim_reference.py.
"""

from __future__ import annotations

import importlib
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture
def examples(monkeypatch):
    monkeypatch.syspath_prepend(str(EXAMPLES))
    return importlib.import_module


def _consistent(s):
    assert s["device_hits"] + s["device_faults"] == s["device_accesses"]
    moved_in = s["pages_to_device"] + s["pages_prefetched"]
    assert moved_in - s["pages_evicted"] - s["cpu_faults"] == s["resident_pages"]
    assert s["data_ok"] is True


@pytest.mark.parametrize("pattern", ["hotspot", "strided", "random"])
def test_gpu_oversubscription_run(examples, pattern):
    """Twice the device's memory: faults, eviction, every byte intact, m.check()."""
    gpu = examples("gpu_oversubscription")
    res = gpu.run(pattern, pages=2048, device_pages=1024, accesses=20000, prefetch="tree")
    _consistent(res.stats)
    assert res.stats["pages_evicted"] > 0
    res.machine.check()


def test_gpu_oversubscription_main(examples, capsys, tmp_path):
    gpu = examples("gpu_oversubscription")
    argv = ["--pages", "256", "--device-pages", "128", "--accesses", "3000"]
    res = gpu.main([*argv, "--out", str(tmp_path / "o")])
    out = capsys.readouterr().out
    assert "pages migrated/s" in out and "every byte intact" in out
    assert (tmp_path / "o" / "run.png").read_bytes()[:8] == PNG_MAGIC
    _consistent(res.stats)


def test_custom_eviction_compares_user_policies(examples, capsys):
    """The user's @njit policies run inside the replay and change the outcome."""
    ce = examples("custom_eviction")
    runs = ce.main(["--pages", "2048", "--device-pages", "1024", "--accesses", "20000"])
    assert set(runs) == set(ce.POLICIES)
    for s in runs.values():
        _consistent(s)
        assert s["evictions"] > 0
    assert "least frequently used" in capsys.readouterr().out


def test_chunk_policy_main_writes_the_plot(examples, tmp_path, capsys):
    """The sweep runs both patterns at every unit size and writes a PNG."""
    cp = examples("chunk_policy")
    out = tmp_path / "sweep.png"
    argv = ["--pages", "64", "--device-pages", "32", "--accesses", "600", "--blocks", "1,4,16"]
    rows = cp.main([*argv, "--out", str(out)])
    assert out.read_bytes()[:8] == PNG_MAGIC
    assert [(r["pattern"], r["block_pages"]) for r in rows] == [
        (pattern, block) for pattern in ("strided", "random") for block in (1, 4, 16)
    ]
    for r in rows:
        _consistent(r)
        assert r["total_model_s"] == pytest.approx(r["dma_model_s"] + r["fault_model_s"])
    assert "best block for random" in capsys.readouterr().out


@pytest.mark.parametrize(
    "argv",
    [["--blocks", "0"], ["--blocks", "4,x"], ["--device-pages", "8", "--blocks", "16"]],
)
def test_chunk_policy_rejects_bad_blocks(examples, tmp_path, argv):
    cp = examples("chunk_policy")
    with pytest.raises(SystemExit) as exc:
        cp.main([*argv, "--out", str(tmp_path / "x.png")])
    assert exc.value.code == 2
