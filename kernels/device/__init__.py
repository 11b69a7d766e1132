"""The device driver model, after the kernel's test driver (lib/test_hmm.c, dmirror).

Each device is a row of the device table (``state.dev``): its frames (after RAM
and the devices before it), its free stack, its injected allocation failures,
owner, kind and counters; its mirror page table is ``state.mirror[d]``, and its
CPU-fault handler is chosen by the faulting page's device. The callbacks name
their device in ``private`` (``DEV_INDEX_SHIFT``), as a driver's would find its
dmirror instance there. The copy engine (``state.engine``) is shared.

Profiles: in ``hmm-v25`` its frames are device-private ZONE_DEVICE memory (a
free page holds one reference; a CPU access to a device entry faults the page
back through :func:`device_fault`). In ``seed`` they are CPU-addressable device
memory, as in the patch's CAPI example: migrated pages are mapped by ordinary
present PTEs and no fault path exists.

One module per concern: :mod:`.alloc` (the alloc_and_copy callbacks),
:mod:`.alloc_parallel`, :mod:`.mirror` (finalize_and_map), :mod:`.finish`
(the pipeline's finish sweeps), :mod:`.finish_back` (the way back's plain
slots), :mod:`.reserve` (a batch taken as a whole),
:mod:`.pipeline` (the device's own migrate_vma), :mod:`.ranges`
(migrate_to_device / _system, evict) and :mod:`.fault` (the CPU-fault handler).
"""

from ..mm import find_vma
from .alloc import device_alloc_and_copy, device_alloc_page, system_alloc_and_copy
from .common import DEV_KEEP_STATS, DEV_NOFAIL
from .fault import device_fault
from .finish import finish_plain_slot, finish_reserved, finish_reserved_slot
from .mirror import device_finalize_and_map, mirror_entry, system_finalize_and_map
from .pipeline import migrate_vma_driver, migrate_vma_to_device, migrate_vma_to_system, run_driver
from .ranges import (
    evict,
    evict_one,
    migrate_range_to_system,
    migrate_to_device,
    migrate_to_system,
)

__all__ = [
    "DEV_KEEP_STATS",
    "DEV_NOFAIL",
    "device_alloc_and_copy",
    "device_alloc_page",
    "device_fault",
    "device_finalize_and_map",
    "evict",
    "evict_one",
    "find_vma",
    "finish_plain_slot",
    "finish_reserved",
    "finish_reserved_slot",
    "migrate_range_to_system",
    "migrate_to_device",
    "migrate_to_system",
    "migrate_vma_driver",
    "migrate_vma_to_device",
    "migrate_vma_to_system",
    "mirror_entry",
    "run_driver",
    "system_alloc_and_copy",
    "system_finalize_and_map",
]
