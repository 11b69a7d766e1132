"""MigrateOps: the driver's two callbacks (``struct migrate_vma_ops``).

In a module of its own so that both the device (which builds its ops) and
``migrate_vma`` (which runs them) can import it without importing each other.
"""

from __future__ import annotations

from collections import namedtuple

__all__ = ["MigrateOps"]

MigrateOps = namedtuple("MigrateOps", "alloc_and_copy finalize_and_map")
MigrateOps.__module__ = "migengine"  # the public name: migengine.MigrateOps
MigrateOps.__doc__ = """struct migrate_vma_ops: the driver's two callbacks.

Python callables take ``(vma, src, dst, start, end, private)``, with ``src``
read-only. ``@njit`` functions take ``(state, vma_index, src, dst, start, end,
private)``; with those the whole migration runs in compiled code."""
