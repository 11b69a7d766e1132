"""migengine.kernels - the compiled level: plain ``@njit`` functions over ``m.state``.

This namespace is the stable API for users' own numba code (see
docs/embedding.md); the constants an embedder needs are re-exported here too.
Every function takes the machine's flat state first and only arrays, scalars
and module-level namedtuples after it; all but ``migrate_vma`` (which takes
``@njit`` callbacks) load from numba's cache.
Nothing compiles at import time.

Pipeline (HMM v25 ``migrate_vma`` and its callback-free split form):
    migrate_vma, migrate_vma_setup, migrate_vma_pages, migrate_vma_finalize,
    migrate_vma_setup_flags (the v5.9+ arguments: selection flags, owner, fault page)
Device-side migration (modern):
    migrate_device_range, migrate_device_pfns, migrate_device_pages,
    migrate_device_finalize, migrate_device_coherent_folio
Driver helpers:
    alloc_page, put_page, unlock_page, copy_page, migrate_pfn, mpfn_to_pfn
CPU side:
    cpu_read, cpu_write, translate, handle_mm_fault, populate, find_vma
The device (lib/test_hmm.c model):
    device_alloc_and_copy, device_finalize_and_map, device_fault,
    system_alloc_and_copy, system_finalize_and_map, migrate_to_device,
    migrate_to_system, evict
Passes, one module each: collect, prepare, unmap, pages, finalize.
docs/architecture.md maps every import path and kernel function to its file.
"""

from ._cache_guard import cache_marker, drop_stale_user_cache, ensure_coherent_cache

ensure_coherent_cache()

from . import layout  # noqa: E402  (after the cache guard, before any dispatcher loads)
from .copy import (  # noqa: E402
    STAT_BYTES,
    STAT_CALLS,
    STAT_DESCRIPTORS,
    STAT_MODEL_S,
    STAT_WALL_S,
)
from .cpu import (  # noqa: E402
    TR_DEVICE,
    TR_ERROR,
    TR_EXCLUSIVE,
    TR_MIGRATION,
    TR_NONE,
    TR_PRESENT,
    TR_SWAP,
    TR_ZERO,
    cpu_read,
    cpu_write,
    translate,
)
from .device import (  # noqa: E402  # noqa: E402
    DEV_KEEP_STATS,
    DEV_NOFAIL,
    device_alloc_and_copy,
    device_fault,
    device_finalize_and_map,
    evict,
    find_vma,
    migrate_to_device,
    migrate_to_system,
    migrate_vma_to_device,
    migrate_vma_to_system,
    system_alloc_and_copy,
    system_finalize_and_map,
)
from .driver import (  # noqa: E402
    alloc_folio,
    alloc_page,
    copy_page,
    migrate_pfn,
    mpfn_to_pfn,
    put_page,
    unlock_page,
)
from .layout import FAULT_OK, FAULT_OOM, FAULT_RETRY, FAULT_SEGV, FAULT_SIGBUS  # noqa: E402
from .memory import handle_mm_fault, populate  # noqa: E402
from .migrate import (  # noqa: E402
    migrate_vma,
    migrate_vma_finalize,
    migrate_vma_pages,
    migrate_vma_setup,
    migrate_vma_setup_flags,
)
from .migrate_device import (  # noqa: E402
    migrate_device_coherent_folio,
    migrate_device_finalize,
    migrate_device_pages,
    migrate_device_pfns,
    migrate_device_range,
)
from .state import State  # noqa: E402

__all__ = [
    "DEV_KEEP_STATS",
    "DEV_NOFAIL",
    "FAULT_OK",
    "FAULT_OOM",
    "FAULT_RETRY",
    "FAULT_SEGV",
    "FAULT_SIGBUS",
    "STAT_BYTES",
    "STAT_CALLS",
    "STAT_DESCRIPTORS",
    "STAT_MODEL_S",
    "STAT_WALL_S",
    "TR_DEVICE",
    "TR_ERROR",
    "TR_EXCLUSIVE",
    "TR_MIGRATION",
    "TR_NONE",
    "TR_PRESENT",
    "TR_SWAP",
    "TR_ZERO",
    "State",
    "layout",
    "migrate_vma",
    "migrate_vma_setup",
    "migrate_vma_setup_flags",
    "migrate_vma_pages",
    "migrate_vma_finalize",
    "migrate_device_range",
    "migrate_device_pfns",
    "migrate_device_pages",
    "migrate_device_finalize",
    "migrate_device_coherent_folio",
    "alloc_page",
    "alloc_folio",
    "put_page",
    "unlock_page",
    "copy_page",
    "migrate_pfn",
    "mpfn_to_pfn",
    "cpu_read",
    "cpu_write",
    "translate",
    "handle_mm_fault",
    "populate",
    "find_vma",
    "device_alloc_and_copy",
    "device_finalize_and_map",
    "device_fault",
    "system_alloc_and_copy",
    "system_finalize_and_map",
    "migrate_to_device",
    "migrate_to_system",
    "migrate_vma_to_device",
    "migrate_vma_to_system",
    "evict",
    "cache_marker",
    "drop_stale_user_cache",
]
