"""Device-side migration without virtual addresses (modern profile only):
``me.migrate_device_range``, ``migrate_device_pfns``, ``migrate_device_pages``
and ``migrate_device_finalize``, after mm/migrate_device.c (v6.1; the pfn list
2025). Each call validates in Python, then runs the compiled kernel of the same
name (``migengine.kernels.migrate_device``). A driver collects its own pages
by pfn, allocates and copies, then calls pages and finalize, as dmirror does
when it evicts its memory.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from migengine._validate import as_count, as_int, mpfn_array
from migengine.kernels import layout as L
from migengine.kernels import migrate_device as kdev

__all__ = [
    "migrate_device_finalize",
    "migrate_device_pages",
    "migrate_device_pfns",
    "migrate_device_range",
]


def _modern(m: Any, what: str) -> None:
    """ValueError outside the modern profile; MigengineError while a migration
    (a callback, a setup window, a device range) is open."""
    if getattr(m, "profile", None) != "modern":
        raise ValueError(f"{what}: the device-range API is the modern profile's (v6.1)")
    m.core.refuse_during_migration(f"{what}()")


def _device_of(m: Any, pfn: int, what: str) -> Any:
    for dev in m.devices:
        if dev.first_pfn <= pfn < dev.first_pfn + dev.npages:
            return dev
    raise ValueError(f"{what}: pfn {pfn} is no device frame")


def _opened(m: Any, src: np.ndarray) -> None:
    """Remember what the core collected: pages and finalize continue from it."""
    record = src.copy()
    m.core.device_range = record if (record & L.MODERN_LAYOUT.MIGRATE).any() else None


def migrate_device_range(m: Any, src: np.ndarray, start_pfn: int, npages: int) -> int:
    """migrate_device_range(): collect device frames ``[start_pfn, start_pfn +
    npages)`` (one device's) that are in use and trylock, and unmap them from
    every process. ``src[i]`` becomes ``pfn|VALID|MIGRATE`` or 0. Returns 0."""
    what = "migrate_device_range"
    _modern(m, what)
    start, n = as_count(start_pfn, "start_pfn"), as_count(npages, "npages", minimum=1)
    out = mpfn_array(src, "src", n)
    first, last = _device_of(m, start, what), _device_of(m, start + n - 1, what)
    if first is not last:
        raise ValueError(f"{what}: [{start}, {start + n}) spans two devices")
    if int(kdev.migrate_device_range(m.state, out, start, n)) != 0:
        raise ValueError(f"{what}: the kernel refused the range")
    _opened(m, out[:n])
    return 0


def migrate_device_pfns(m: Any, src: np.ndarray) -> int:
    """migrate_device_pfns(): migrate_device_range() for the device pfns listed
    in ``src`` (plain numbers), rewritten in place to migrate pfns. Returns 0."""
    what = "migrate_device_pfns"
    _modern(m, what)
    out = mpfn_array(src, "src", 1)
    for i, pfn in enumerate(out.tolist()):
        _device_of(m, as_int(pfn, f"src[{i}]"), what)
    if len(set(out.tolist())) != out.shape[0]:
        raise ValueError(f"{what}: a pfn is listed twice")
    if int(kdev.migrate_device_pfns(m.state, out)) != 0:
        raise ValueError(f"{what}: the kernel refused the list")
    _opened(m, out)
    return 0


def _continue(m: Any, src: np.ndarray, dst: np.ndarray, what: str, kernel: Any) -> bool:
    """Run ``kernel(state, src, dst)`` on the open device-range migration, after
    the checks: modern, the arrays the range collected, ``src`` as the core last
    left it. False, nothing done, when the range collected nothing."""
    if getattr(m, "profile", None) != "modern":
        raise ValueError(f"{what}: the device-range API is the modern profile's (v6.1)")
    record = m.core.device_range
    n = 0 if record is None else record.shape[0]
    s, d = mpfn_array(src, "src", max(n, 1)), mpfn_array(dst, "dst", max(n, 1))
    if record is None:
        if (s & L.MODERN_LAYOUT.MIGRATE).any():
            raise ValueError(f"{what}: no device-range migration is open")
        return False  # nothing was collected: nothing to do
    s, d = s[:n], d[:n]  # the slots the range collected
    if np.may_share_memory(s, d):
        raise ValueError(f"{what}: src and dst must not overlap")
    if not np.array_equal(s, record):
        raise ValueError(f"{what}: src was written since the core last did")
    m.core.refuse_during_callback(f"{what}()")
    if int(kernel(m.state, s, d)) != 0:
        raise ValueError(f"{what}: the kernel refused the arrays")
    return True


def migrate_device_pages(m: Any, src: np.ndarray, dst: np.ndarray) -> None:
    """migrate_device_pages(): the pages pass without a VMA (no hole insertion).
    ``src`` must be what migrate_device_range() or _pfns() left in it."""
    if _continue(m, src, dst, "migrate_device_pages", kdev.migrate_device_pages):
        record = m.core.device_range
        m.core.device_range = np.asarray(src)[: record.shape[0]].copy()


def migrate_device_finalize(m: Any, src: np.ndarray, dst: np.ndarray) -> None:
    """migrate_device_finalize(): remap every slot (the new page where it
    migrated, the old one elsewhere), unlock and release; closes the migration."""
    if _continue(m, src, dst, "migrate_device_finalize", kdev.migrate_device_finalize):
        m.core.device_range = None
