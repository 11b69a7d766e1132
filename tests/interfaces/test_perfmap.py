"""bench/perfmap.py names numba's compiled functions for perf (docs/performance.md)."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import textwrap
import weakref
from pathlib import Path

import numba
import pytest

PERFMAP = Path(__file__).resolve().parents[2] / "bench" / "perfmap.py"


def _perfmap():
    spec = importlib.util.spec_from_file_location("perfmap", PERFMAP)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


class _Referent:
    pass


def test_the_map_names_a_function_compiled_here(tmp_path: Path) -> None:
    """Also with a dead weak proxy in the process: the collector lists those too
    (a long test session has them; isinstance() on one raises ReferenceError)."""
    referent = _Referent()
    dead = [weakref.proxy(referent)]
    del referent

    @numba.njit
    def twice_plus_perfmap_probe(x):
        return 2 * x + 1

    assert twice_plus_perfmap_probe(3) == 7
    out = _perfmap().write_perf_map(tmp_path / "perf-1.map")
    rows = [line.split(" ", 2) for line in out.read_text().splitlines()]
    named = [r for r in rows if "twice_plus_perfmap_probe" in r[2]]
    assert named, "the compiled function is missing from the map"
    starts = [int(r[0], 16) for r in rows]
    assert starts == sorted(starts) and all(int(r[1], 16) > 0 for r in rows)
    with pytest.raises(ReferenceError):  # the proxy the map walked past was dead
        str(dead[0])


_CACHED_CHILD = textwrap.dedent(
    """
    import sys
    import migengine as me
    from migengine import kernels
    sys.path.insert(0, sys.argv[1])
    import perfmap

    m = me.Machine(64)
    p = m.new_process()
    vma = p.mmap(4)
    assert kernels.find_vma(m.state, p.pid, vma.start) == vma.index
    print(perfmap.write_perf_map(sys.argv[2]))
    """
)


def test_the_map_names_a_kernel_loaded_from_the_cache(tmp_path: Path) -> None:
    """A cached entry point loads without parsing its IR (kernels/_jit.py); the
    map still names it. The first child compiles and caches, the second loads."""
    env = dict(os.environ, NUMBA_CACHE_DIR=str(tmp_path / "cache"))
    maps = []
    for i in range(2):
        out = tmp_path / f"perf-{i}.map"
        run = subprocess.run(
            [sys.executable, "-c", _CACHED_CHILD, str(PERFMAP.parent), str(out)],
            capture_output=True,
            text=True,
            env=env,
            timeout=600,
        )
        assert run.returncode == 0, run.stderr[-3000:]
        maps.append(out.read_text())
    assert all("find_vma" in text for text in maps)
