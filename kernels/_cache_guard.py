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


def _cache_dirs() -> list[Path]:
    """The directories numba caches these modules in (its own locator's rule):
    one per source directory."""
    dirs = sorted({p.parent for p in _sources()})
    root = os.environ.get("NUMBA_CACHE_DIR")
    if not root:
        return [d / "__pycache__" for d in dirs]
    from numba.core.caching import UserProvidedCacheLocator

    return [
        Path(root) / UserProvidedCacheLocator.get_suitable_cache_subpath(str(d / "x.py"))
        for d in dirs
    ]


def _source_digest() -> str:
    h = hashlib.sha256()
    for path in _sources():
        h.update(str(path.relative_to(_HERE)).encode())
        h.update(path.read_bytes())
    return h.hexdigest()


def ensure_coherent_cache() -> None:
    """Drop stale cache files when the kernels' sources changed (cheap: ~1 ms)."""
    dirs = _cache_dirs()
    digest = _source_digest()
    stamp = dirs[0] / _STAMP
    try:
        if stamp.read_text() == digest:
            return
    except OSError:
        pass
    try:
        for cache in dirs:
            if not cache.is_dir():
                continue
            for path in cache.glob("*"):
                if path.suffix in (".nbi", ".nbc"):
                    path.unlink(missing_ok=True)
        dirs[0].mkdir(parents=True, exist_ok=True)
        stamp.write_text(digest)
    except OSError:
        pass  # a read-only install: numba falls back to compiling in memory
