"""The simulated machine as flat numpy arrays.

Every kernel takes one :class:`State`, a module-level namedtuple of arrays, so
users' own ``@njit`` code can take it too and numba's cache keeps working (no
jitclass, no structref). What each array means:

``page`` (struct page, one 32-byte record per frame, 64-byte aligned; RAM frames first,
then device frames; ``index`` int64, the counts and ``rmap`` int32, ``flags`` uint32;
a frame never handed out is all zeros until the allocator reaches it, and
``mm.frame_flags()`` reads any frame's flags, see kernels.page_alloc)
    ``refcount``  page_count(): every PTE or device entry mapping it, the per-CPU
                  LRU-add batch, LRU isolation, the page cache, pins (get_user_pages)
                  and transient references of a migration in progress. A free
                  device-private frame holds 1 (the 4.14 convention), a free RAM frame 0.
    ``mapcount``  page_mapcount(): present PTEs and device-private entries mapping it;
                  for a compound head, the PMD mappings.
    ``pins``      references held by ``m.pin`` (so m.check() can account for them).
    ``index``     page->index: the virtual page number (anon) or the file offset;
                  for a free frame, its position on its free stack (or, for a free
                  folio's head, the next free folio's head).
    ``rmap``      head of the reverse-map chain: the first PTE slot that references
                  this frame (present, device-private or migration entry); the chain
                  continues through ``pte_next``. For a PMD-mapped THP the chain links
                  the first PTE slot of each mapping extent. Fork-shared pages are on
                  the chain once per process, which is what try_to_unmap() and
                  remove_migration_ptes() walk.
    ``flags``     PG_* bits from :mod:`layout` (locked, lru, pagevec, head/tail, zone
                  device, zero, mlocked, dirty, free, locked/isolated by someone else).
    ``mapping``   none, anon (page->mapping is an anon_vma) or file (page cache;
                  page_mapping() is non-NULL).
``data``          uint8 frame bytes, ``nframes * page_size`` long; empty when the
                  machine keeps metadata only.
``free_stack``    (int32, as ``pte_next`` and ``swap_map``)
                  indexed free stacks: RAM occupies ``free_stack[0:nr_ram]`` and each
                  device ``free_stack[first_pfn:first_pfn + npages]``; the depths are
                  ``sys[SYS_RAM_FREE]`` and ``dev[d, DEV_FREE]``. A frame on a stack
                  keeps its position in its struct page's ``index``, so a THP
                  allocation can take an aligned run out in O(1) per frame. Frames
                  never handed out (from ``SYS_RAM_FRESH``/``DEV_FRESH`` on) and
                  their stack entries stay unwritten zeros until the allocator
                  reaches them (kernels.page_alloc, "Untouched frames").
``vma``           one record per VMA: ``start``, ``end`` (bytes), ``flags`` (VM_*),
                  ``kind`` (anon/shmem/file), ``mm`` (process id), ``pte_base`` (first
                  PTE slot), ``pmd_base`` (first PMD slot), ``pcache_base`` (first
                  page-cache slot of its file, -1 for anon), ``pgoff``, ``live``.
``pte``           the PTE level: one uint64 word per virtual page of every VMA
                  (kind | write | dirty | pfn or swap slot << 8), see :mod:`layout`.
``pte_next``      reverse-map chain links, one per PTE slot (-1 ends a chain).
``pmd``           the PMD level: one word per 2 MiB extent of every VMA: none (hole),
                  table, THP (head pfn) or the huge zero page.
``mirror``        each device's mirror page table (``[device, PTE slot]``): (device pfn
                  << 1 | write) for pages the device maps, -1 otherwise.
``dev``           the device table, one row per device (``DEV_*`` columns of
                  :mod:`layout`): its frames, free-stack depth, injected allocation
                  failures, owner, kind and counters.
``pcache``        page-cache slots of every file and shmem object (pfn or -1).
``swap_map`` / ``swap_data``
                  swap slots: users per slot (freed slots link the next one,
                  kernels.swapfile) and the slot bytes.
``pagevec`` / ``pagevec_n``
                  the per-CPU LRU-add batches (``NR_CPUS`` x ``MAX_LRU_BATCH + 1``).
``sys``           machine scalars, ``SYS_*`` indices.
``counters``      vmstat-like counters, ``COUNTER_NAMES`` order.
``layout``        the active profile's ``MIGRATE_PFN_*`` values, ``LAYOUT_FIELDS`` order.
``engine``        the device's copy-engine parameters (``kernels.copy`` ENG_* layout).
``copy_stats``    the last migration's copy: descriptors, bytes, wall and model time.
``mig``           scratch ``struct migrate_vma`` scalars (MIG_* indices) used by
                  migrate_vma_setup(); setup never nests, so one block suffices.
``fault_mpfn``    scratch src/dst slots of the CPU-fault migration: one page, or a
                  device folio's 512 (halves: src, dst).
``copy_scratch``  int64[COPY_ROWS, copy_scratch_width(nr_device)]: one engine batch's
                  (source, destination) pairs and its descriptors. Every pair has a
                  device frame on one side, each frame in one pair at most, so a
                  batch never holds more pairs than there are device frames; a
                  range of more slots than RANGE_WINDOW is copied a window at a time.
``dst_mark``      two mark bits per frame (kernels.marks), 32 frames a word: the
                  argument and dst checks' record of the frames a call has named,
                  cleared before the check returns.
``engine_load``   float64[MAX_CHANNELS]: per-channel busy time of the cost model.
``sweep_info`` / ``sweep_mig`` / ``sweep_counters``
                  per-thread scratch of the parallel sweeps (kernels.parallel): each
                  thread's slots and where it stopped (SW_*), its own ``mig`` and its
                  own counters, summed into the machine's after the parallel region.
``range_src`` / ``range_dst``
                  uint64 src/dst slots of the device's range migrations: one per PTE
                  slot up to ``RANGE_WINDOW`` (kernels._indices), the most one
                  migrate_vma() call of a range operation takes.

Scratch lives in the state because the per-page kernels are compiled without
numba's reference counting (``_nrt=False``), so nothing they reach may allocate.
"""

from collections import namedtuple

import numba
import numpy as np
from numba import types

from . import _indices as I
from . import layout as L

# 32 bytes, so a record never straddles a cache line and the sweeps of a large
# migration move a third less struct-page traffic than with 48 (measured in
# docs/performance.md, "Struct page layout"). The counts are int32, as the
# kernel's atomic_t; ``rmap`` holds a PTE slot, at most MAX_PTE_SLOTS.
PAGE_DTYPE = np.dtype(
    [
        ("index", np.int64),
        ("refcount", np.int32),
        ("mapcount", np.int32),
        ("pins", np.int32),
        ("flags", np.uint32),
        ("rmap", np.int32),
        ("mapping", np.int8),
    ],
    align=True,
)
assert PAGE_DTYPE.itemsize == 32

VMA_DTYPE = np.dtype(
    [
        ("start", np.int64),
        ("end", np.int64),
        ("flags", np.int64),
        ("kind", np.int64),
        ("mm", np.int64),
        ("pte_base", np.int64),
        ("pmd_base", np.int64),
        ("pcache_base", np.int64),
        ("pgoff", np.int64),
        ("live", np.int64),
    ],
    align=True,
)

# Each State array's name, dtype and rank, in field order. The namedtuple, the
# handle table (kernels.handle) and _llvm.state_with() all follow this one list.
STATE_SPEC = (
    ("page", PAGE_DTYPE, 1),
    ("data", np.uint8, 1),
    ("free_stack", np.int32, 1),
    ("vma", VMA_DTYPE, 1),
    ("pte", np.uint64, 1),
    ("pte_next", np.int32, 1),
    ("pmd", np.uint64, 1),
    ("mirror", np.int64, 2),
    ("pcache", np.int64, 1),
    ("swap_map", np.int32, 1),
    ("swap_data", np.uint8, 1),
    ("pagevec", np.int64, 2),
    ("pagevec_n", np.int64, 1),
    ("sys", np.int64, 1),
    ("counters", np.int64, 1),
    ("layout", np.uint64, 1),
    ("engine", np.float64, 1),
    ("copy_stats", np.float64, 1),
    ("mig", np.int64, 1),
    ("fault_mpfn", np.uint64, 1),
    ("copy_scratch", np.int64, 2),
    ("dst_mark", np.uint64, 1),
    ("engine_load", np.float64, 1),
    ("range_src", np.uint64, 1),
    ("range_dst", np.uint64, 1),
    ("sweep_info", np.int64, 2),
    ("sweep_mig", np.int64, 2),
    ("sweep_counters", np.int64, 2),
    ("dev", np.int64, 2),
)

State = namedtuple("State", [name for name, _, _ in STATE_SPEC])
# numba's type of each field, for the handle's arrays_at().
State.ARRAY_TYPES = tuple(
    types.Array(numba.from_dtype(np.dtype(dtype)), ndim, "C") for _, dtype, ndim in STATE_SPEC
)


# Frame numbers, free-stack positions, rmap links and swap slots are int32.
MAX_FRAMES = 2**31 - 1
# Every engine batch copies to or from device frames, one pair per device frame at
# most, and the device takes a range a window at a time, so the copy scratch needs
# as many columns as the machine has device frames up to RANGE_WINDOW (and a few,
# for the dst check's records of refused entries).
MIN_COPY_SCRATCH = 64


def copy_scratch_width(nr_device: int) -> int:
    """Columns of the copy scratch: the most (source, destination) pairs one batch holds."""
    return min(max(nr_device, MIN_COPY_SCRATCH), I.RANGE_WINDOW)


def mark_words(nframes: int) -> int:
    """Words of ``state.dst_mark`` for ``nframes`` frames: kernels.marks packs
    two bits a frame, 32 frames to a uint64."""
    return (nframes + 31) // 32


def page_aligned_zeros(nbytes: int, page_size: int) -> np.ndarray:
    """Zeroed uint8 memory whose first byte starts a page (or any power-of-two
    ``page_size``, e.g. a cache line), as a physical frame does. A large one is
    not backed by the OS until written (numpy's zeros are calloc's).

    numpy's large allocations start 16 bytes past a page boundary, which would
    split every frame's first and last cache line and keep streaming stores
    from writing whole lines.
    """
    raw = np.zeros(nbytes + page_size, np.uint8)
    skip = -raw.ctypes.data % page_size
    return raw[skip : skip + nbytes]


def new_state(
    nr_ram: int,
    nr_device: int,
    page_size: int,
    store_data: bool,
    profile: int,
    engine: np.ndarray,
    nr_swap: int,
    vma_capacity: int = 64,
    pte_capacity: int = 4096,
    pcache_capacity: int = 1024,
    device_sizes: tuple[int, ...] | None = None,
    device_kinds: tuple[int, ...] | None = None,
) -> State:
    """Build an empty machine: every frame free, no VMA, RAM frame 0 the zero page.

    ``device_sizes``: each device's frames, in pfn order after RAM (default: one
    device of ``nr_device`` frames, which may be none); they add up to ``nr_device``.
    ``device_kinds``: each device's DEVICE_PRIVATE or DEVICE_COHERENT (default
    private); a coherent device's frames carry PG_COHERENT.
    """
    sizes = (nr_device,) if device_sizes is None else tuple(device_sizes)
    if sum(sizes) != nr_device or not sizes:
        raise ValueError(f"device sizes {sizes} do not add up to {nr_device} device frames")
    nframes = nr_ram + nr_device
    if nframes > MAX_FRAMES:
        raise ValueError(f"{nframes:,} frames: at most {MAX_FRAMES:,} (int32 frame numbers)")
    # Cache-line aligned, so no 32-byte record spans two lines. Zeroed memory
    # the OS backs only when written: every frame but the zero page is
    # untouched until kernels.page_alloc.materialize() writes it as free.
    page = page_aligned_zeros(nframes * PAGE_DTYPE.itemsize, 64).view(PAGE_DTYPE)
    zero = 0
    page["flags"][zero] = L.PG_ZERO
    page["refcount"][zero] = 1
    page["rmap"][zero] = -1
    behaviour = L.BEHAVIOURS[profile]
    free_stack = np.zeros(nframes, np.int32)
    devices = np.zeros((len(sizes), L.DEV_FIELDS), np.int64)
    first = nr_ram
    for d, size in enumerate(sizes):
        devices[d, L.DEV_FIRST_PFN] = first
        devices[d, L.DEV_NPAGES] = size
        devices[d, L.DEV_FREE] = size
        devices[d, L.DEV_OWNER] = d
        devices[d, L.DEV_FOLIO_TOP] = -1
        devices[d, L.DEV_KIND] = L.DEVICE_PRIVATE if device_kinds is None else device_kinds[d]
        devices[d, L.DEV_FRESH] = first
        first += size
    sysv = np.zeros(L.SYS_FIELDS, np.int64)
    sysv[L.SYS_PAGE_SIZE] = page_size
    sysv[L.SYS_CPU] = L.CPU_DRIVER
    sysv[L.SYS_PAGE_SHIFT] = page_size.bit_length() - 1
    sysv[L.SYS_NR_RAM] = nr_ram
    sysv[L.SYS_NR_DEVICE] = nr_device
    sysv[L.SYS_PROFILE] = profile
    sysv[L.SYS_BEHAVIOUR] = behaviour
    sysv[L.SYS_LRU_BATCH] = L.LRU_BATCH[profile]
    sysv[L.SYS_STORE_DATA] = 1 if store_data else 0
    sysv[L.SYS_ZERO_PFN] = zero
    sysv[L.SYS_RAM_FREE] = nr_ram - 1
    sysv[L.SYS_RAM_FRESH] = zero + 1
    sysv[L.SYS_FOLIO_TOP] = -1
    sysv[L.SYS_SWAP_FREE] = nr_swap
    sysv[L.SYS_NR_SWAP] = nr_swap
    sysv[L.SYS_SWAP_HEAD] = -1
    data = page_aligned_zeros(nframes * page_size if store_data else 0, page_size)
    swap_data = page_aligned_zeros(nr_swap * page_size if store_data else 0, page_size)
    layout = np.array(L.LAYOUTS[profile], dtype=np.uint64)
    return State(
        page=page,
        data=data,
        free_stack=free_stack,
        vma=np.zeros(vma_capacity, VMA_DTYPE),
        pte=np.zeros(pte_capacity, np.uint64),
        pte_next=np.full(pte_capacity, -1, np.int32),
        pmd=np.zeros(max(pte_capacity // L.HPAGE_PMD_NR, 16), np.uint64),
        mirror=np.full((devices.shape[0], pte_capacity), -1, np.int64),
        pcache=np.full(pcache_capacity, -1, np.int64),
        swap_map=np.zeros(nr_swap, np.int32),
        swap_data=swap_data,
        pagevec=np.full((L.NR_CPUS, L.MAX_LRU_BATCH + 1), -1, np.int64),
        pagevec_n=np.zeros(L.NR_CPUS, np.int64),
        sys=sysv,
        counters=np.zeros(len(L.COUNTER_NAMES), np.int64),
        layout=layout,
        engine=engine.astype(np.float64).copy(),
        copy_stats=np.zeros(5, np.float64),
        mig=np.zeros(L.MIG_FIELDS, np.int64),
        fault_mpfn=np.zeros(2 * L.HPAGE_PMD_NR, np.uint64),
        copy_scratch=np.zeros((I.COPY_ROWS, copy_scratch_width(nr_device)), np.int64),
        dst_mark=np.zeros(mark_words(nframes), np.uint64),
        engine_load=np.zeros(L.MAX_CHANNELS, np.float64),
        range_src=np.zeros(min(pte_capacity, I.RANGE_WINDOW), np.uint64),
        range_dst=np.zeros(min(pte_capacity, I.RANGE_WINDOW), np.uint64),
        sweep_info=np.zeros((I.MAX_SWEEP_THREADS, I.SWEEP_INFO), np.int64),
        sweep_mig=np.zeros((I.MAX_SWEEP_THREADS, I.SWEEP_MIG_STRIDE), np.int64),
        sweep_counters=np.zeros((I.MAX_SWEEP_THREADS, I.SWEEP_COUNTERS_STRIDE), np.int64),
        dev=devices,
    )


def _pools(st: State) -> list[tuple[int, int, int]]:
    """Every pool's ``(first frame, end, pool)``: RAM_POOL, then each device."""
    pools = [(0, int(st.sys[L.SYS_NR_RAM]), L.RAM_POOL)]
    for d, row in enumerate(st.dev):
        first = int(row[L.DEV_FIRST_PFN])
        pools.append((first, first + int(row[L.DEV_NPAGES]), d))
    return pools


def _free_page(st: State, pool: int) -> tuple[int, int]:
    """The flags and refcount of pool ``pool``'s free frames as built
    (kernels.page_alloc.fresh_flags(); 4.14's device holds one reference)."""
    behaviour = int(st.sys[L.SYS_BEHAVIOUR])
    flags, ref = int(L.PG_FREE), 0
    if pool >= 0 and behaviour & L.B_DEVICE_PRIVATE:
        flags |= int(L.PG_ZONE_DEVICE)
        ref = 0 if behaviour & L.B_DEVICE_REF0 else 1
    if pool >= 0 and st.dev[pool, L.DEV_KIND] == L.DEVICE_COHERENT:
        flags |= int(L.PG_COHERENT)
    return flags, ref


def _fresh_mark(st: State, pool: int) -> int:
    return int(st.sys[L.SYS_RAM_FRESH] if pool < 0 else st.dev[pool, L.DEV_FRESH])


def untouched_page(st: State, pfn: int) -> tuple[int, int] | None:
    """Frame ``pfn``'s flags and refcount if it is untouched (never handed out,
    its struct page unwritten: kernels.page_alloc), else None."""
    for first, end, pool in _pools(st):
        if first <= pfn < end:
            return _free_page(st, pool) if pfn >= _fresh_mark(st, pool) else None
    return None


def write_untouched(st: State) -> None:
    """Write every untouched frame as the free frame it is, and its stack entry,
    as kernels.page_alloc.materialize() does when the allocator reaches it; for
    Python code that reads the arrays whole (the pure-Python peers). Nothing a
    reader of the machine sees changes, and the machine costs its full size."""
    for first, end, pool in _pools(st):
        mark = _fresh_mark(st, pool)
        flags, ref = _free_page(st, pool)
        frames = np.arange(mark, end)
        pos = first + end - 1 - frames  # the stack's bottom positions, highest frame lowest
        rec = st.page[mark:end]
        rec["flags"], rec["refcount"], rec["rmap"], rec["index"] = flags, ref, -1, pos
        rec["mapcount"], rec["pins"], rec["mapping"] = 0, 0, L.MAPPING_NONE
        st.free_stack[pos] = frames
        if pool < 0:
            st.sys[L.SYS_RAM_FRESH] = end
        else:
            st.dev[pool, L.DEV_FRESH] = end


def _grown(arr: np.ndarray, need: int, fill: int) -> np.ndarray:
    """``arr`` with its last axis holding at least ``need`` entries (doubled as
    needed; the new ones ``fill``): a 1-D table, or one row per device."""
    cap = arr.shape[-1]
    while cap < need:
        cap *= 2
    if cap == arr.shape[-1]:
        return arr
    # zeros the OS backs as they are written: a zero-filled table (the PTEs)
    # costs the slots in use, not the ones reserved
    out = np.zeros(arr.shape[:-1] + (cap,), arr.dtype)
    out[..., : arr.shape[-1]] = arr
    if fill != 0:
        out[..., arr.shape[-1] :] = fill
    return out


def check_pte_slots(ptes: int) -> None:
    """ValueError when a machine would need more than MAX_PTE_SLOTS PTE slots."""
    if ptes > L.MAX_PTE_SLOTS:
        raise ValueError(f"{ptes} PTE slots exceed the {L.MAX_PTE_SLOTS} a page's rmap can name")


def reserve(st: State, vmas: int, ptes: int, pmds: int, pcache: int) -> State:
    """Return a state whose tables hold at least the given numbers of entries.

    Growing reallocates, so compiled code must take ``m.state`` again after an
    ``mmap`` or ``fork``; page, frame and counter arrays are never reallocated.
    Raises ValueError, before anything changes, past MAX_PTE_SLOTS PTE slots.
    """
    check_pte_slots(ptes)
    return st._replace(
        vma=_grown(st.vma, vmas, 0),
        pte=_grown(st.pte, ptes, 0),
        pte_next=_grown(st.pte_next, ptes, -1),
        mirror=_grown(st.mirror, ptes, -1),
        range_src=_grown(st.range_src, min(ptes, I.RANGE_WINDOW), 0),
        range_dst=_grown(st.range_dst, min(ptes, I.RANGE_WINDOW), 0),
        pmd=_grown(st.pmd, pmds, 0),
        pcache=_grown(st.pcache, pcache, -1),
    )
