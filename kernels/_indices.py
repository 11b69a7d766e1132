"""The engine's private indices and tuning constants: not part of the ABI.

Users' ``@njit`` code reads :mod:`kernels.layout`; what is here may change
between versions: scratch rows, per-thread sweep fields and the sweeps'
prefetch distance.
"""

from .layout import (
    B_ANON_EXCLUSIVE,
    B_DEVICE_REF0,
    B_DIRTY_TO_FOLIO,
    B_TARGET_LRU,
    BEHAVIOURS_4_14,
    BEHAVIOURS_MODERN,
    PG_EXT_ISOLATED,
    PG_EXT_LOCKED,
    PG_FREE,
    PG_HEAD,
    PG_LOCKED,
    PG_PAGEVEC,
    PG_TAIL,
    PG_ZERO,
    PG_ZONE_DEVICE,
)

# --- struct migrate_vma scalars the engine adds (``mig``, after the kernel's).
# 1: migrate_vma_setup()'s parallel sweep took every slot as plain (kernels.parallel)
MIG_ALL_PLAIN = 8
# 1: the device took the batch as a whole (kernels.device.reserve); reset by setup
MIG_RESERVED = 9

# The fast paths (the parallel sweeps, the plain and reserved finishes) write a
# plain slot's net effect. They need 4.14's collect, device-private memory and
# holes (FAST_PATH_NEEDS), and serve a profile only when each of its other bits
# is one they write (FAST_PATH_WRITES: the flush of an anon-exclusive PTE, the
# dirty bit, the device refcount, the target-only LRU; the setup sweep also the
# selection, the owner and a device entry's write bit) or one a plain slot
# never meets (holes, trylock failures, fault pages); otherwise the plain
# passes run. tests/properties/test_parallel.py
# holds them to the plain passes in every profile they serve.
FAST_PATH_NEEDS = BEHAVIOURS_4_14
FAST_PATH_WRITES = B_ANON_EXCLUSIVE | B_DIRTY_TO_FOLIO | B_DEVICE_REF0 | B_TARGET_LRU
FAST_PATH_BEHAVIOURS = BEHAVIOURS_MODERN  # the bits the fast paths write or never meet

# Slots a sweep prefetches ahead. A slot misses on several lines (two struct pages,
# free-stack entries), so the distance keeps many misses in flight rather than
# covering one latency; measured in docs/performance.md ("Prefetch distance").
PREFETCH_AHEAD = 64

# Pages one window of a range operation (kernels.device.ranges) migrates per
# migrate_vma() call, and the most pairs one engine batch copies: the range
# scratch and the copy scratch hold this many slots at most, so they stay 14 MiB
# however large the machine and its processes (dmirror itself migrates 64 pages
# per call). A multiple of HPAGE_PMD_NR, so windows end on 2 MiB boundaries and
# never split a folio's extent.
RANGE_WINDOW = 1 << 18

# --- rows of the copy scratch (``State.copy_scratch``, int64[COPY_ROWS, width]):
# the (source, destination) pairs of one engine batch and its descriptors.
COPY_SRC, COPY_DST, COPY_DESC_SRC, COPY_DESC_DST, COPY_DESC_LEN = range(5)
COPY_ROWS = 5
# Flags that keep a page off the parallel sweeps' plain path (kernels.parallel).
PLAIN_SETUP_EXCLUDED = (
    PG_HEAD
    | PG_TAIL
    | PG_LOCKED
    | PG_PAGEVEC
    | PG_ZONE_DEVICE
    | PG_FREE
    | PG_ZERO
    | PG_EXT_LOCKED
    | PG_EXT_ISOLATED
)
# The same for a device-private page on the way back (which is ZONE_DEVICE).
PLAIN_DEVICE_EXCLUDED = PLAIN_SETUP_EXCLUDED & ~PG_ZONE_DEVICE

# --- per-thread scratch of the parallel sweeps (``State.sweep_info``, one row a thread).
MAX_SWEEP_THREADS = 64
SW_FIRST, SW_END, SW_STOP, SW_PARTIAL, SW_NEED, SW_PAIRS, SW_NEED0, SW_PAIRS0, SW_MOVED = range(9)
SW_NDESC = 9  # the copy descriptors a device naming thread built
SW_DEVICE = 10  # the device-private pages a setup thread took as plain
SWEEP_INFO = 11
# Each thread's own counts sit this many int64 apart (256 and 512 bytes), so no
# two threads ever write the same cache line: a line bouncing between cores on
# every page cost more than the second thread gained.
SWEEP_MIG_STRIDE = 32
SWEEP_COUNTERS_STRIDE = 64
