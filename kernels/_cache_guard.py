"""Keep numba's on-disk cache of these kernels coherent across edits and upgrades.

numba keys a cached function on its own file only: when a callee in another
module changes, the caller's cache entry is still loaded and may call a symbol
whose code or ABI changed (numba #1833, open since 2016), which can crash. The
kernels call each other across modules, so the whole package's cache is keyed on
a hash of all its sources instead: if any source changed since the cache was
written, every cache file of the package is dropped before anything loads.
"""

import hashlib
import os
from pathlib import Path

_HERE = Path(__file__).resolve().parent
_STAMP = "migengine-kernels.stamp"


def _cache_dir() -> Path:
    """The directory numba caches these modules in (its own locator's rule)."""
    root = os.environ.get("NUMBA_CACHE_DIR")
    if not root:
        return _HERE / "__pycache__"
    from numba.core.caching import UserProvidedCacheLocator

    # A subdirectory per source directory: only the kernels' own cache files.
    return Path(root) / UserProvidedCacheLocator.get_suitable_cache_subpath(str(_HERE / "mm.py"))


def _source_digest() -> str:
    h = hashlib.sha256()
    for path in sorted(_HERE.glob("*.py")):
        h.update(path.name.encode())
        h.update(path.read_bytes())
    return h.hexdigest()


def ensure_coherent_cache() -> None:
    """Drop stale cache files when the kernels' sources changed (cheap: ~1 ms)."""
    cache = _cache_dir()
    digest = _source_digest()
    stamp = cache / _STAMP
    try:
        if stamp.read_text() == digest:
            return
    except OSError:
        pass
    try:
        cache.mkdir(parents=True, exist_ok=True)
        for path in cache.glob("*"):
            if path.suffix in (".nbi", ".nbc") and path.name.split(".")[0] in _module_names():
                path.unlink(missing_ok=True)
        stamp.write_text(digest)
    except OSError:
        pass  # a read-only install: numba falls back to compiling in memory


def _module_names() -> set:
    return {p.stem for p in _HERE.glob("*.py")}
