"""migengine.kernels - the compiled level: plain ``@njit`` functions over ``m.state``.

This namespace is the stable API for users' own numba code (see the README's
"Embedding" section). Every function takes the machine's flat state first and
only arrays, scalars and module-level namedtuples after it; all but
``migrate_vma`` (which takes ``@njit`` callbacks) load from numba's cache.
Nothing compiles at import time.

Pipeline (HMM v25 ``migrate_vma`` and its callback-free split form):
    migrate_vma, migrate_vma_setup, migrate_vma_pages, migrate_vma_finalize
Driver helpers:
    alloc_page, put_page, unlock_page, copy_page, migrate_pfn, mpfn_to_pfn
CPU side:
    cpu_read, cpu_write, translate, handle_mm_fault, populate, find_vma
The device (lib/test_hmm.c model):
    device_alloc_and_copy, device_finalize_and_map, device_fault,
    system_alloc_and_copy, system_finalize_and_map, migrate_to_device,
    migrate_to_system, evict
Passes, one module each: collect, prepare, unmap, pages, finalize.
"""

from ._cache_guard import ensure_coherent_cache

ensure_coherent_cache()

from . import layout  # noqa: E402  (after the cache guard, before any dispatcher loads)
from .device import (  # noqa: E402
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
    alloc_page,
    copy_page,
    cpu_read,
    cpu_write,
    migrate_pfn,
    mpfn_to_pfn,
    put_page,
    translate,
    unlock_page,
)
from .memory import handle_mm_fault, populate  # noqa: E402
from .migrate import migrate_vma, migrate_vma_finalize, migrate_vma_pages, migrate_vma_setup  # noqa: E402
from .state import State  # noqa: E402

__all__ = [
    "State",
    "layout",
    "migrate_vma",
    "migrate_vma_setup",
    "migrate_vma_pages",
    "migrate_vma_finalize",
    "alloc_page",
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
]
