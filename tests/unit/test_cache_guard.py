"""The cache guard (kernels/_cache_guard.py) hashes and clears subpackages too.

numba keys a cached function on its own file only, so a caller's cache entry
could outlive an edit of a callee in another module (numba #1833). The guard
drops every cache file of the package when any source changed, subpackages
included. Here a copy of the package is edited in a subpackage.
"""

from __future__ import annotations

import importlib.util
import shutil
from pathlib import Path

import pytest

KERNELS = Path(__file__).resolve().parents[2] / "kernels"


def _guard(root: Path):
    spec = importlib.util.spec_from_file_location("guard_copy", root / "_cache_guard.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _fake_cache(dirs: list[Path]) -> list[Path]:
    files = []
    for d in dirs:
        d.mkdir(parents=True, exist_ok=True)
        for suffix in (".nbi", ".nbc"):
            f = d / f"alloc.device_alloc_page-1.py311{suffix}"
            f.write_bytes(b"stale")
            files.append(f)
    return files


@pytest.fixture(params=[False, True], ids=["__pycache__", "NUMBA_CACHE_DIR"])
def kernels_copy(request, tmp_path, monkeypatch) -> Path:
    """A copy of the package's sources, cached beside them or under NUMBA_CACHE_DIR."""
    root = tmp_path / "kernels"
    shutil.copytree(KERNELS, root, ignore=shutil.ignore_patterns("__pycache__"))
    if request.param:
        monkeypatch.setenv("NUMBA_CACHE_DIR", str(tmp_path / "numba-cache"))
    else:
        monkeypatch.delenv("NUMBA_CACHE_DIR", raising=False)
    return root


def test_an_edit_in_a_subpackage_drops_the_cache(kernels_copy):
    root = kernels_copy
    guard = _guard(root)
    dirs = guard._cache_dirs()
    assert len(dirs) >= 4  # kernels/ and its copy/, device/ and parallel/ subpackages
    guard.ensure_coherent_cache()  # first run: stamps the sources
    files = _fake_cache(dirs)
    guard.ensure_coherent_cache()  # nothing changed: the cache stays
    assert all(f.exists() for f in files)
    source = root / "device" / "alloc.py"
    source.write_text(source.read_text() + "\n# edited\n")
    guard.ensure_coherent_cache()  # a subpackage source changed: every cache file goes
    assert not any(f.exists() for f in files)
    files = _fake_cache(dirs)
    guard.ensure_coherent_cache()  # stamped again: the new cache stays
    assert all(f.exists() for f in files)


def test_a_user_module_cache_goes_when_the_kernels_change(kernels_copy, tmp_path):
    """drop_stale_user_cache(): a user's cached functions embed the kernels' code
    (docs/embedding.md), so a kernel edit drops that module's cache files only."""
    root = kernels_copy
    guard = _guard(root)
    user = tmp_path / "mine" / "driver.py"
    user.parent.mkdir()
    user.write_text("# a user's module\n")
    cache = guard._cache_dir_of(user.parent)
    guard.drop_stale_user_cache(str(user))  # first run: stamps the kernels' sources

    def fake() -> list[Path]:
        cache.mkdir(parents=True, exist_ok=True)
        files = [cache / f"driver.run-3.py311{s}" for s in (".nbi", ".nbc")]
        for f in files:
            f.write_bytes(b"compiled against the old kernels")
        return files

    files = fake()
    other = cache / "other.run-3.py311.nbi"
    other.write_bytes(b"another module's")
    guard.drop_stale_user_cache(str(user))  # nothing changed: the cache stays
    assert all(f.exists() for f in files)
    source = root / "copy" / "engine.py"
    source.write_text(source.read_text() + "\n# edited\n")
    guard.drop_stale_user_cache(str(user))  # a kernel changed: the module's cache goes
    assert not any(f.exists() for f in files)
    assert other.exists()
    files = fake()
    guard.drop_stale_user_cache(str(user))  # stamped again: the new cache stays
    assert all(f.exists() for f in files)


def test_a_cache_marker_lasts_only_as_long_as_the_sources(kernels_copy):
    """cache_marker(): a sweep's "this config's kernels are cached" marker names
    the sources it was made for, and goes with the cache when they change."""
    guard = _guard(kernels_copy)
    guard.ensure_coherent_cache()
    marker = guard.cache_marker("sweep-warm: cfg A")
    assert marker != guard.cache_marker("sweep-warm: cfg B")
    assert marker.parent == guard._cache_dirs()[0]
    marker.touch()
    guard.ensure_coherent_cache()
    assert marker.exists() and guard.cache_marker("sweep-warm: cfg A") == marker
    source = kernels_copy / "layout.py"
    source.write_text(source.read_text() + "\n# edited\n")
    assert guard.cache_marker("sweep-warm: cfg A") != marker  # names the new sources
    guard.ensure_coherent_cache()
    assert not marker.exists()
