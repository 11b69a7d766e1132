"""Keep numba's on-disk cache of these kernels coherent across edits and upgrades.

numba keys a cached function on its own file only: when a callee in another
module changes, the caller's cache entry is still loaded and may call a symbol
whose code or ABI changed (numba #1833, open since 2016), which can crash. The
kernels call each other across modules and subpackages, so the whole package's
cache is keyed on a hash of all its sources, subpackages included: if any
source changed since the cache was written, every cache file of the package is
dropped before anything loads.
"""

import hashlib
import os
from pathlib import Path

_HERE = Path(__file__).resolve().parent
_STAMP = "migengine-kernels.stamp"


def _sources() -> list[Path]:
    """Every source file of the package, subpackages included, in a fixed order."""
    return sorted(p for p in _HERE.rglob("*.py") if "__pycache__" not in p.parts)


def _cache_dir_of(source_dir: Path) -> Path:
    """The directory numba caches the modules of ``source_dir`` in (its own
    locator's rule: ``__pycache__`` beside them, or under NUMBA_CACHE_DIR)."""
    root = os.environ.get("NUMBA_CACHE_DIR")
    if not root:
        return source_dir / "__pycache__"
    from numba.core.caching import UserProvidedCacheLocator

    return Path(root) / UserProvidedCacheLocator.get_suitable_cache_subpath(
        str(source_dir / "x.py")
    )


def _cache_dirs() -> list[Path]:
    """The directories numba caches these modules in: one per source directory."""
    return [_cache_dir_of(d) for d in sorted({p.parent for p in _sources()})]


def _source_digest() -> str:
    h = hashlib.sha256()
    for path in _sources():
        h.update(str(path.relative_to(_HERE)).encode())
        h.update(path.read_bytes())
    return h.hexdigest()


def _drop_unless_stamped(stamp: Path, dirs: list[Path], *patterns: str) -> None:
    """Unless ``stamp`` holds the kernels' current digest: delete the cache files
    matching ``patterns`` in ``dirs``, then write the digest to ``stamp``."""
    digest = _source_digest()
    try:
        if stamp.read_text() == digest:
            return
    except OSError:
        pass
    try:
        for cache in dirs:
            if not cache.is_dir():
                continue
            for pattern in patterns:
                for path in cache.glob(pattern):
                    path.unlink(missing_ok=True)
        stamp.parent.mkdir(parents=True, exist_ok=True)
        stamp.write_text(digest)
    except OSError:
        pass  # a read-only install: numba falls back to compiling in memory


def ensure_coherent_cache() -> None:
    """Drop stale cache files when the kernels' sources changed (cheap: ~1 ms)."""
    dirs = _cache_dirs()
    _drop_unless_stamped(dirs[0] / _STAMP, dirs, "*.nb[ic]", "*.marker")


def cache_marker(key: str) -> Path:
    """A marker file in the kernels' cache for ``key``, for these sources only.

    What a caller knows about the cache's contents (a sweep: "every kernel a run
    of this config needs is in it") holds only while the sources, and the files
    numba stamps its index with, are the ones the cache was written from. So the
    name hashes ``key`` with the sources' digest and their newest mtime, and
    :func:`ensure_coherent_cache` deletes every marker with the cache files.
    Post: the path is returned; nothing is created.
    """
    newest = max(p.stat().st_mtime_ns for p in _sources())
    h = hashlib.sha256(f"{_source_digest()}|{newest}|{key}".encode())
    return _cache_dirs()[0] / f"{h.hexdigest()[:32]}.marker"


def drop_stale_user_cache(module_file: str) -> None:
    """Drop numba's cache files of a module whose cached functions call these
    kernels when the kernels' sources changed since they were written.

    Such a function embeds the kernels' code, but numba keys its cache on its
    own file only (numba #1833): after an edit or upgrade of the kernels it
    would load and run the old code. Call this at the top of the module
    (``drop_stale_user_cache(__file__)``), before any of its functions load;
    it hashes the kernels' sources (a few ms). Pre: ``module_file`` is the module's source path.
    Post: the module's ``*.nbi``/``*.nbc`` files are gone if they were written
    against other kernel sources, and a stamp of the current ones is beside them.
    """
    path = Path(module_file).resolve()
    cache = _cache_dir_of(path.parent)
    _drop_unless_stamped(cache / f"{path.stem}.kernels-stamp", [cache], f"{path.stem}.*.nb[ic]")
