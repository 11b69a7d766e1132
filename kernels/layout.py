"""Bit layouts and encodings shared by every compiled kernel.

Three kinds of constants live here, all as fixed-width numpy scalars so that
numba never unifies a flag with a signed int into float64 (numba #4631) and
NumPy 2 never rejects a negated mask (numpy #26440):

* the ``MIGRATE_PFN_*`` layout of each profile (``include/linux/migrate.h``):

  ========  =====  =======  ======  =====  ======  =====  =====
  profile   VALID  MIGRATE  LOCKED  WRITE  DEVICE  ERROR  SHIFT
  ========  =====  =======  ======  =====  ======  =====  =====
  seed      1<<0   1<<1     1<<2    1<<3   absent  1<<4   5
  hmm-v25   1<<0   1<<1     1<<2    1<<3   1<<4    1<<5   6
  modern    1<<0   1<<1     absent  1<<3   absent  absent 6
  ========  =====  =======  ======  =====  ======  =====  =====

  ``seed`` is HMM v25 14/19 as posted; ``hmm-v25`` is the series as merged in
  Linux 4.14, where 16/19 inserted ``MIGRATE_PFN_DEVICE`` at bit 4 and pushed
  ``ERROR`` and the pfn up by one. ``modern`` (Linux 6.x) lost DEVICE and ERROR
  in v5.4 ("mm: remove the unused MIGRATE_PFN_DEVICE flag", "mm: turn
  migrate_vma upside down") and LOCKED in v5.16 (ab09243aa95a), and gained
  ``MIGRATE_PFN_COMPOUND`` at bit 4 with the device-THP series (2025).
* the behaviour bits (``B_*``): one per kernel change a profile carries;
* the simulated page-table encodings (PTE and PMD words);
* struct page flags, VMA flags and the indices of the scalar/counter arrays.

Kernels read the active layout from ``state.layout`` (a uint64 array in
``LAYOUT_FIELDS`` order) and the profile's behaviour bits from
``state.sys[SYS_BEHAVIOUR]``, so one compiled kernel serves every profile.
"""

from collections import namedtuple

import numpy as np

U64 = np.uint64

# COMPOUND (a PMD-sized folio's head slot) arrived with the device-THP series
# (2025); neither the seed nor 4.14 has it, so it is 0 in both.
Layout = namedtuple("Layout", "VALID MIGRATE LOCKED WRITE DEVICE ERROR SHIFT COMPOUND")
LAYOUT_FIELDS = Layout._fields

SEED_LAYOUT = Layout(
    U64(1 << 0), U64(1 << 1), U64(1 << 2), U64(1 << 3), U64(0), U64(1 << 4), U64(5), U64(0)
)
HMM_V25_LAYOUT = Layout(
    U64(1 << 0), U64(1 << 1), U64(1 << 2), U64(1 << 3), U64(1 << 4), U64(1 << 5), U64(6), U64(0)
)
MODERN_LAYOUT = Layout(
    U64(1 << 0), U64(1 << 1), U64(0), U64(1 << 3), U64(0), U64(0), U64(6), U64(1 << 4)
)

PROFILE_SEED = 0
PROFILE_HMM_V25 = 1
PROFILE_MODERN = 2
PROFILES = {"seed": PROFILE_SEED, "hmm-v25": PROFILE_HMM_V25, "modern": PROFILE_MODERN}
# The kernel tree and version each profile follows (m.kernel).
KERNELS = {
    PROFILE_SEED: (
        "HMM v25 14/19 'mm/migrate: new memory migration helper for use with device "
        "memory v5' (Jerome Glisse, linux-mm, 2017-08-17), as posted"
    ),
    PROFILE_HMM_V25: (
        "Linux 4.14 (torvalds/linux v4.14, 2017-11-12): mm/migrate.c migrate_vma() "
        "with HMM v25 14-19/19 as merged"
    ),
    PROFILE_MODERN: (
        "Linux 6.x mm/migrate_device.c (torvalds/linux v6.18 with the linux-mm "
        "device-private THP series, 2025): the split API with struct migrate_vma"
    ),
}
LAYOUTS = {
    PROFILE_SEED: SEED_LAYOUT,
    PROFILE_HMM_V25: HMM_V25_LAYOUT,
    PROFILE_MODERN: MODERN_LAYOUT,
}

# --- behaviours (state.sys[SYS_BEHAVIOUR]): each difference between profiles is one
# bit, named after the kernel change that made it, and tested where the kernel
# branches; the fast paths cover a set of them (kernels._indices.FAST_PATH_BEHAVIOURS).
B_COLLECT_UNMAPS = 1 << 0  # HMM v25 15/19, 8c3328f1f36a: collect locks and unmaps
B_DEVICE_PRIVATE = 1 << 1  # 16/19, a5430dda8a3a: device-private entries, ZONE_DEVICE frames
B_HOLES = 1 << 2  # 17/19, 8315ada7f095: holes collected, insert_page, no dst clears MIGRATE
B_SELECT = 1 << 3  # v5.7/v5.9: selection flags and pgmap_owner (5143192cd410)
B_OWNER_NOTIFIER = 1 << 4  # v5.9, 6b49bf6ddb70: MMU_NOTIFY_MIGRATE carries the owner
B_HOLES_ANON_ONLY = 1 << 5  # modern collect: pte_none outside an anon VMA is not collected
B_LOCK_IN_COLLECT = 1 << 6  # v5.16, ab09243aa95a: no LOCKED; prepare folded into unmap
B_WRITABLE_DEVICE_ENTRY = 1 << 7  # a device-private entry's write bit reaches src and the entry
B_DIRTY_TO_FOLIO = 1 << 8  # v6.0, fd35ca3d12cc: a dirty PTE marks the folio dirty in collect
B_ANON_EXCLUSIVE = 1 << 9  # v6.0: a maybe-pinned anon-exclusive page is not collected
B_DEVICE_REF0 = 1 << 10  # v6.1: a free device page has refcount 0
B_FAULT_PAGE = 1 << 11  # v6.1, 16ce101db85d: the CPU fault holds the page as fault_page
B_TARGET_LRU = 1 << 12  # 2025, 41cddf83d8b0: finalize puts only the target on the LRU
# 2025, "mm/migrate_device: THP migration of zone device pages" (Balbir Singh):
# SELECT_COMPOUND, MIGRATE_PFN_COMPOUND, device-private PMD entries, PMD migration entries
B_DEVICE_THP = 1 << 13
BEHAVIOURS_4_14 = B_COLLECT_UNMAPS | B_DEVICE_PRIVATE | B_HOLES
BEHAVIOURS_MODERN = (
    BEHAVIOURS_4_14
    | B_SELECT
    | B_OWNER_NOTIFIER
    | B_HOLES_ANON_ONLY
    | B_LOCK_IN_COLLECT
    | B_WRITABLE_DEVICE_ENTRY
    | B_DIRTY_TO_FOLIO
    | B_ANON_EXCLUSIVE
    | B_DEVICE_REF0
    | B_FAULT_PAGE
    | B_TARGET_LRU
    | B_DEVICE_THP
)
BEHAVIOURS = {PROFILE_SEED: 0, PROFILE_HMM_V25: BEHAVIOURS_4_14, PROFILE_MODERN: BEHAVIOURS_MODERN}

# enum migrate_vma_direction (include/linux/migrate.h).
MIGRATE_VMA_SELECT_SYSTEM = 1 << 0
MIGRATE_VMA_SELECT_DEVICE_PRIVATE = 1 << 1
MIGRATE_VMA_SELECT_DEVICE_COHERENT = 1 << 2
MIGRATE_VMA_SELECT_COMPOUND = 1 << 3
MIGRATE_VMA_SELECT_ALL = (1 << 4) - 1
OWNER_NONE = -1  # a pgmap_owner no device has (NULL)

# An mpfn with no flag set: no page, not migrating.
MPFN_NONE = U64(0)

# Indices into state.layout.
L_VALID, L_MIGRATE, L_LOCKED, L_WRITE, L_DEVICE, L_ERROR, L_SHIFT, L_COMPOUND = range(8)

# --- PTE word: kind in bits 0-2, write bit 3, dirty bit 4, pfn (or swap slot) from bit 8.
PTE_KIND_MASK = U64(7)
PTE_NONE = U64(0)
PTE_PRESENT = U64(1)
PTE_SWAP = U64(2)
PTE_MIGRATION = U64(3)
PTE_DEVICE = U64(4)  # device-private swap-style entry (hmm-v25 only)
PTE_ERROR = U64(5)  # hwpoison-style entry: any access is a SIGBUS
PTE_EXCLUSIVE = U64(6)  # device-exclusive entry (modern): keeps its page's rmap and mapcount
PTE_WRITE = U64(1 << 3)
PTE_DIRTY = U64(1 << 4)
PTE_PFN_SHIFT = U64(8)

# --- PMD word: kind in bits 0-2, write bit 3, head pfn from bit 8.
PMD_KIND_MASK = U64(7)
PMD_NONE = U64(0)  # no page table below: the whole extent is a hole
PMD_TABLE = U64(1)  # a PTE table: look at the PTE level
PMD_THP = U64(2)  # a PMD-mapped transparent huge page
PMD_HUGE_ZERO = U64(3)  # the huge zero page, read-only
PMD_DEVICE = U64(4)  # a device-private PMD entry: a 2 MiB device folio (modern, B_DEVICE_THP)
PMD_MIGRATION = U64(5)  # a PMD migration entry, only while a migration holds the folio
PMD_WRITE = U64(1 << 3)
HPAGE_PMD_ORDER = 9
HPAGE_PMD_NR = 1 << HPAGE_PMD_ORDER

# --- struct page flags (page["flags"]).
PG_LOCKED = np.uint32(1 << 0)  # PG_locked, by anyone
PG_LRU = np.uint32(1 << 1)  # on an LRU list
PG_PAGEVEC = np.uint32(1 << 2)  # waiting in a per-CPU LRU-add batch
PG_HEAD = np.uint32(1 << 3)  # compound head (order HPAGE_PMD_ORDER)
PG_TAIL = np.uint32(1 << 4)  # compound tail
PG_ZONE_DEVICE = np.uint32(1 << 5)  # device frame (device-private in hmm-v25)
PG_ZERO = np.uint32(1 << 6)  # the shared zero page
PG_MLOCKED = np.uint32(1 << 7)
PG_DIRTY = np.uint32(1 << 8)
PG_FREE = np.uint32(1 << 9)  # on a free list
PG_EXT_LOCKED = np.uint32(1 << 10)  # the lock is held by someone else (m.lock_page)
PG_EXT_ISOLATED = np.uint32(1 << 11)  # isolated from the LRU by someone else
PG_LAZYFREE = np.uint32(1 << 12)  # MADV_FREE: an anon page with PG_swapbacked cleared
PG_COHERENT = np.uint32(1 << 13)  # a ZONE_DEVICE frame of MEMORY_DEVICE_COHERENT memory
PG_DEVICE_KIND = PG_ZONE_DEVICE | PG_COHERENT  # what a frame keeps when allocated or freed

# page["mapping"]
MAPPING_NONE = np.int8(0)
MAPPING_ANON = np.int8(1)
MAPPING_FILE = np.int8(2)  # page cache: file or shmem

# --- VMA flags (the kernel's vm_flags bits that matter here).
VM_READ = 0x1
VM_WRITE = 0x2
VM_SHARED = 0x8
VM_LOCKED = 0x2000
VM_IO = 0x4000
VM_DONTEXPAND = 0x40000
VM_PFNMAP = 0x400
VM_MIXEDMAP = 0x10000000
VM_HUGETLB = 0x400000
VM_HUGEPAGE = 0x20000000  # thp=True
VM_UFFD_MISSING = 0x200
# The model's mark for vma_is_dax() (the kernel asks the file's inode, not vm_flags):
# a bit no kernel vm_flags value uses. Modern migrate_vma_setup() refuses DAX VMAs.
VM_DAX = 1 << 48
VM_SPECIAL = VM_IO | VM_DONTEXPAND | VM_PFNMAP | VM_MIXEDMAP
USER_VM_FLAGS = VM_HUGETLB | VM_SPECIAL | VM_LOCKED | VM_UFFD_MISSING | VM_DAX

# vma["kind"]
VMA_ANON = 0
VMA_SHMEM = 1
VMA_FILE = 2
VMA_FILE_PRIVATE = 3  # MAP_PRIVATE of a file: page-cache pages, copied on write
VMA_KINDS = {
    "anon": VMA_ANON,
    "shmem": VMA_SHMEM,
    "file": VMA_FILE,
    "file_private": VMA_FILE_PRIVATE,
}

# --- state.sys: machine scalars.
SYS_PAGE_SIZE = 0
SYS_NR_RAM = 1
SYS_NR_DEVICE = 2
SYS_PROFILE = 3
SYS_STORE_DATA = 4
SYS_ZERO_PFN = 5
SYS_RAM_FREE = 6  # free-stack depth of RAM
SYS_CPU = 7  # the CPU the running kernel path is on: CPU_DRIVER, or CPU_USER in a fault
SYS_NR_VMAS = 8
SYS_PTE_USED = 9
SYS_PMD_USED = 10
SYS_PCACHE_USED = 11
SYS_SWAP_FREE = 12
SYS_BEHAVIOUR = 13  # the profile's B_* bits
SYS_NR_SWAP = 14
SYS_PAGE_SHIFT = 15  # log2(page size): a shift, not a 64-bit division, per address
SYS_LRU_BATCH = 16  # the LRU-add batch's size (PAGEVEC_SIZE, or the folio batch's)
SYS_FOLIOS = 17  # RAM's free 2 MiB folios (modern, kernels.page_alloc), beside its stack
SYS_FOLIO_TOP = 18  # the head of the first of them, -1 for none
SYS_SWAP_HEAD = 19  # the last freed swap slot, -1 for none (kernels.swapfile)
SYS_SWAP_FRESH = 20  # swap slots from here on were never used
SYS_RAM_FRESH = 21  # RAM frames from here on were never touched (kernels.page_alloc)
SYS_FIELDS = 22

# --- state.dev: the device table, one row per device (ZONE_DEVICE pgmap), DEV_* columns.
# Each device owns the frames [DEV_FIRST_PFN, + DEV_NPAGES), after RAM and the devices
# before it; its free stack is free_stack[DEV_FIRST_PFN:], DEV_FREE deep.
DEV_FIRST_PFN = 0
DEV_NPAGES = 1
DEV_FREE = 2  # free-stack depth
DEV_FAIL_ALLOC = 3  # its allocations left to fail (dev.fail_alloc, HMM_DMIRROR_FLAG_FAIL_ALLOC)
DEV_OWNER = 4  # pgmap->owner, as an int id
DEV_KIND = 5  # DEVICE_PRIVATE or DEVICE_COHERENT
DEV_CALLOC = 6  # pages handed out (dmirror's calloc)
DEV_CFREE = 7  # pages returned (cfree)
DEV_FAULTS = 8  # CPU faults its handler served
DEV_SIGBUS = 9  # of those, the ones that ended in SIGBUS
DEV_FOLIOS = 10  # free device folios (dmirror's free_folios, modern), beside the stack
DEV_FOLIO_TOP = 11  # the head of the first of them, -1 for none
DEV_FRESH = 12  # its frames from here on were never touched (kernels.page_alloc)
DEV_FIELDS = 13
# A mirror entry (state.mirror[d, slot]) is (pfn << 1) | writable, -1 for none;
# dmirror's DPT_XA_TAG_ATOMIC (a page the device holds exclusively) is this bit.
MIRROR_ATOMIC = np.int64(1 << 62)
DEVICE_PRIVATE = 0  # MEMORY_DEVICE_PRIVATE
DEVICE_COHERENT = 1  # MEMORY_DEVICE_COHERENT
DEVICE_KINDS = {"private": DEVICE_PRIVATE, "coherent": DEVICE_COHERENT}
RAM_POOL = -1  # the page allocator's pool of system RAM; device d's pool is d

# --- state.counters: vmstat-like, cumulative.
COUNTER_NAMES = (
    "pgmigrate_success",
    "pgmigrate_fail",
    "lru_add_drain_all",
    "lru_add_drain",
    "migrate_vma_calls",
    "migrate_vma_collected",
    "thp_split_page",
    "thp_split_pmd",
    "pgfault",
    "pswpout",
    "pswpin",
    "cow_break",
    "insert_page",
    "tlb_flush",
    "device_calloc",
    "device_cfree",
    "device_faults",
    "device_sigbus",
    "migrate_dst_invalid",  # dst entries the dst check refused (kernels.dst_check)
    "pglazyfreed",  # MADV_FREE pages reclaim discarded (kernels.vmscan)
)
(
    C_PGMIGRATE_SUCCESS,
    C_PGMIGRATE_FAIL,
    C_LRU_ADD_DRAIN_ALL,
    C_LRU_ADD_DRAIN,
    C_MIGRATE_VMA_CALLS,
    C_MIGRATE_VMA_COLLECTED,
    C_THP_SPLIT_PAGE,
    C_THP_SPLIT_PMD,
    C_PGFAULT,
    C_PSWPOUT,
    C_PSWPIN,
    C_COW_BREAK,
    C_INSERT_PAGE,
    C_TLB_FLUSH,
    C_DEVICE_CALLOC,
    C_DEVICE_CFREE,
    C_DEVICE_FAULTS,
    C_DEVICE_SIGBUS,
    C_MIGRATE_DST_INVALID,
    C_PGLAZYFREED,
) = range(len(COUNTER_NAMES))

# --- per-CPU LRU-add batches. Faults run on the process CPU; migrate_vma() runs on the
# driver's CPU, so its local lru_add_drain() cannot reach the fault batch and only
# lru_add_drain_all() can (the reason the kernel calls it).
NR_CPUS = 2
CPU_USER = 0
CPU_DRIVER = 1
# 4.14's PAGEVEC_SIZE: __lru_cache_add() drains the batch when an add fills it,
# so at most 13 pages wait in it (the contract's v1 said 15). Modern kernels
# batch folios, with the same drain rule (folio_batch_add_and_move()).
PAGEVEC_SIZE = 14
FOLIO_BATCH_SIZE = 31
LRU_BATCH = {
    PROFILE_SEED: PAGEVEC_SIZE,
    PROFILE_HMM_V25: PAGEVEC_SIZE,
    PROFILE_MODERN: FOLIO_BATCH_SIZE,
}
MAX_LRU_BATCH = FOLIO_BATCH_SIZE

# --- lib/test_hmm_uapi.h: HMM_DMIRROR_SNAPSHOT's byte per page (dev.snapshot).
HMM_DMIRROR_PROT_ERROR = np.uint8(0xFF)
HMM_DMIRROR_PROT_NONE = np.uint8(0x00)
HMM_DMIRROR_PROT_READ = np.uint8(0x01)
HMM_DMIRROR_PROT_WRITE = np.uint8(0x02)
HMM_DMIRROR_PROT_PMD = np.uint8(0x04)
HMM_DMIRROR_PROT_PUD = np.uint8(0x08)
HMM_DMIRROR_PROT_ZERO = np.uint8(0x10)
HMM_DMIRROR_PROT_DEV_PRIVATE_LOCAL = np.uint8(0x20)
HMM_DMIRROR_PROT_DEV_PRIVATE_REMOTE = np.uint8(0x30)
HMM_DMIRROR_PROT_DEV_COHERENT_LOCAL = np.uint8(0x40)
HMM_DMIRROR_PROT_DEV_COHERENT_REMOTE = np.uint8(0x50)

# --- errno values the compiled level returns (negated).
EINVAL = 22
ENOMEM = 12
EFAULT = 14
EBUSY = 16
EAGAIN = 11

# --- struct migrate_vma scalars (state of one migrate_vma call, an int64 array).
MIG_NPAGES = 0
MIG_CPAGES = 1
MIG_START = 2
MIG_END = 3
MIG_VMA = 4
MIG_DRAINED = 5  # 1 once the setup sweep has done prepare's lru_add_drain()
MIG_DRAINED_ALL = 6  # 1 once prepare has called lru_add_drain_all() (at most once)
MIG_COLLECTED = 7  # what collect counted into cpages (setup's vmstat counter)
# 8, 9: the engine's own (kernels._indices.MIG_ALL_PLAIN, MIG_RESERVED)
MIG_FLAGS = 10  # MIGRATE_VMA_SELECT_* (modern)
MIG_OWNER = 11  # pgmap_owner as an owner id, OWNER_NONE for NULL (modern)
MIG_FAULT_PFN = 12  # fault_page, -1 for none (modern)
MIG_FIELDS = 13

# page["rmap"] is int32, and a page's int32 counts need headroom above its mappings
# (pins, LRU batches, isolation): PTE slots stop at 2^30.
MAX_PTE_SLOTS = 2**30
MAX_CHANNELS = 1024  # modelled DMA channels; real engines have 1-16

# --- results of compiled CPU accesses and faults.
FAULT_OK = 0
FAULT_SEGV = 1
FAULT_SIGBUS = 2
FAULT_OOM = 3
FAULT_RETRY = 4
