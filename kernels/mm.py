"""Core memory-management primitives over :class:`kernels.state.State`.

These model the kernel helpers the migration passes call: the page allocator,
``get_page``/``put_page``, the page lock, the per-CPU LRU-add batch and
``lru_add_drain_all``, LRU isolation, the reverse map, and the PTE/PMD encoding.
Every function is a small ``@njit(cache=True, nogil=True, _nrt=False)`` kernel that numba
inlines into the passes. ``_nrt=False`` because with numba's reference counting on,
each call taking the state increfs and decrefs every array (measured at
~600 ns per call); nothing on the per-page path allocates, so it needs none.
Refcount conventions (both profiles unless stated):

* a free RAM frame has refcount 0; a free device frame has 1 in ``hmm-v25``
  (4.14: the device holds a reference, and a put back to 1 frees it), 0 in
  ``seed`` (CPU-addressable device memory behaves like a second RAM node);
* each PTE or device-private entry mapping a page holds one reference;
* the per-CPU LRU-add batch, LRU isolation, the page cache and each pin hold one.
"""

import numpy as np
from numba import njit

from . import layout as L
from .prefetch import prefetch_for_write

_NOT = np.uint32(0xFFFFFFFF)


# --------------------------------------------------------------------- encodings
@njit(cache=True, nogil=True, _nrt=False)
def pte_kind(pte):
    return pte & L.PTE_KIND_MASK


@njit(cache=True, nogil=True, _nrt=False)
def pte_pfn(pte):
    return np.int64(pte >> L.PTE_PFN_SHIFT)


@njit(cache=True, nogil=True, _nrt=False)
def make_pte(kind, pfn, write):
    word = (np.uint64(pfn) << L.PTE_PFN_SHIFT) | kind
    if write:
        word |= L.PTE_WRITE
    return word


@njit(cache=True, nogil=True, _nrt=False)
def pte_write(pte):
    return (pte & L.PTE_WRITE) != 0


@njit(cache=True, nogil=True, _nrt=False)
def pmd_kind(pmd):
    return pmd & L.PMD_KIND_MASK


@njit(cache=True, nogil=True, _nrt=False)
def make_pmd(kind, pfn, write):
    word = (np.uint64(pfn) << L.PTE_PFN_SHIFT) | kind
    if write:
        word |= L.PMD_WRITE
    return word


@njit(cache=True, nogil=True, _nrt=False)
def make_mpfn(lay, pfn):
    """migrate_pfn(): ``(pfn << SHIFT) | VALID`` in the active layout."""
    return (np.uint64(pfn) << lay[L.L_SHIFT]) | lay[L.L_VALID]


@njit(cache=True, nogil=True, _nrt=False)
def mpfn_to_pfn(lay, mpfn):
    """migrate_pfn_to_page() as a pfn: -1 unless VALID is set."""
    if (mpfn & lay[L.L_VALID]) == 0:
        return np.int64(-1)
    return np.int64(mpfn >> lay[L.L_SHIFT])


@njit(cache=True, nogil=True, _nrt=False)
def page_size(st):
    return st.sys[L.SYS_PAGE_SIZE]


@njit(cache=True, nogil=True, _nrt=False, inline="always")
def pages_in(st, nbytes):
    """``nbytes // page_size``: page sizes are powers of two, so a shift."""
    return nbytes >> st.sys[L.SYS_PAGE_SHIFT]


@njit(cache=True, nogil=True, _nrt=False, inline="always")
def page_down(st, addr):
    """``addr - addr % page_size`` (round down to a page)."""
    return addr & -st.sys[L.SYS_PAGE_SIZE]


@njit(cache=True, nogil=True, _nrt=False)
def pte_slot(st, v, addr):
    """PTE slot of ``addr`` inside VMA ``v``."""
    return st.vma["pte_base"][v] + pages_in(st, addr - st.vma["start"][v])


@njit(cache=True, nogil=True, _nrt=False)
def pmd_extent(st):
    return st.sys[L.SYS_PAGE_SIZE] * L.HPAGE_PMD_NR


@njit(cache=True, nogil=True, _nrt=False)
def pmd_slot(st, v, addr):
    """PMD slot of the 2 MiB extent holding ``addr`` inside VMA ``v``."""
    shift = st.sys[L.SYS_PAGE_SHIFT] + L.HPAGE_PMD_ORDER
    return st.vma["pmd_base"][v] + (addr >> shift) - (st.vma["start"][v] >> shift)


@njit(cache=True, nogil=True, _nrt=False)
def is_device_pfn(st, pfn):
    return pfn >= st.sys[L.SYS_NR_RAM]


@njit(cache=True, nogil=True, _nrt=False)
def is_zone_device(st, pfn):
    """is_device_private_page(): device frames are ZONE_DEVICE only in hmm-v25."""
    return (st.page["flags"][pfn] & L.PG_ZONE_DEVICE) != 0


@njit(cache=True, nogil=True, _nrt=False)
def is_zero_pfn(st, pfn):
    return pfn == st.sys[L.SYS_ZERO_PFN]


@njit(cache=True, nogil=True, _nrt=False)
def has_flag(st, pfn, flag):
    return (st.page["flags"][pfn] & flag) != 0


@njit(cache=True, nogil=True, _nrt=False)
def set_flag(st, pfn, flag):
    st.page["flags"][pfn] |= flag


@njit(cache=True, nogil=True, _nrt=False)
def clear_flag(st, pfn, flag):
    st.page["flags"][pfn] &= _NOT ^ flag


@njit(cache=True, nogil=True, _nrt=False, inline="always")
def compound_head(st, pfn):
    if has_flag(st, pfn, L.PG_TAIL):
        return pfn - pfn % L.HPAGE_PMD_NR
    return pfn


@njit(cache=True, nogil=True, _nrt=False, inline="always")
def ix(i):
    """``i`` as an index numba uses as is: an unsigned one. Only for ``i >= 0``.

    numba wraps every signed index (``a[-1]`` is the last element), which
    costs a shift, an and and an add per access. In the sweeps' hot loops,
    whose indices are never negative, that was measured at 15-30% of a loop's
    time (a stripped-down finish loop, int64 against uint64 indices)."""
    return np.uint64(i)


@njit(cache=True, nogil=True, _nrt=False, inline="always")
def prefetch_page(st, pfn):
    """Prefetch a struct page (one cache line: records are 32 bytes, aligned)."""
    prefetch_for_write(st.page["refcount"], pfn)


# --------------------------------------------------------------------- allocator
@njit(cache=True, nogil=True, _nrt=False)
def _depth_index(device):
    """Index in ``sys`` of the free-stack depth of RAM or device memory."""
    return L.SYS_DEV_FREE if device else L.SYS_RAM_FREE


@njit(cache=True, nogil=True, _nrt=False)
def _stack_base(st, device):
    """Where the free stack of RAM (0) or device memory (nr_ram) starts."""
    return st.sys[L.SYS_NR_RAM] if device else np.int64(0)


@njit(cache=True, nogil=True, _nrt=False, inline="always")
def free_top(st, device):
    """The free-stack position of the frame alloc_frame() would pop next."""
    return _stack_base(st, device) + st.sys[_depth_index(device)] - 1


@njit(cache=True, nogil=True, _nrt=False, inline="always")
def _stack_remove(st, pfn):
    """Take ``pfn`` out of its free stack in O(1) by moving the top into its slot."""
    device = is_device_pfn(st, pfn)
    depth_i = _depth_index(device)
    top = free_top(st, device)
    pos = st.free_pos[pfn]
    moved = st.free_stack[top]
    place_free(st, moved, pos)
    unplace_free(st, pfn, top)
    st.sys[depth_i] -= 1


@njit(cache=True, nogil=True, _nrt=False, inline="always")
def init_allocated(st, pfn):
    st.page["flags"][pfn] &= L.PG_ZONE_DEVICE
    st.page["mapcount"][pfn] = 0
    st.page["pins"][pfn] = 0
    st.page["mapping"][pfn] = L.MAPPING_NONE
    st.page["index"][pfn] = 0
    st.page["rmap"][pfn] = -1
    st.page["refcount"][pfn] += 1


@njit(cache=True, nogil=True, _nrt=False, inline="always")
def alloc_frame(st, device):
    """Allocate one frame (unlocked, refcount +1); -1 when the pool is empty."""
    depth_i = _depth_index(device)
    if st.sys[depth_i] == 0:
        return -1
    pfn = st.free_stack[free_top(st, device)]
    _stack_remove(st, pfn)
    init_allocated(st, pfn)
    return pfn


@njit(cache=True, nogil=True, _nrt=False, inline="always")
def free_frame(st, pfn):
    """Return a frame to its free stack (refcount already at its free value)."""
    device = is_device_pfn(st, pfn)
    depth_i = _depth_index(device)
    place_free(st, pfn, _stack_base(st, device) + st.sys[depth_i])
    st.sys[depth_i] += 1
    mark_free(st, pfn)


@njit(cache=True, nogil=True, _nrt=False, inline="always")
def place_free(st, pfn, pos):
    """Put a freed frame at position ``pos`` of the free stack."""
    st.free_stack[ix(pos)] = pfn
    st.free_pos[ix(pfn)] = pos


@njit(cache=True, nogil=True, _nrt=False, inline="always")
def unplace_free(st, pfn, pos):
    """Empty position ``pos`` of the free stack, where frame ``pfn`` was: it is in use."""
    st.free_stack[ix(pos)] = -1
    st.free_pos[ix(pfn)] = -1


@njit(cache=True, nogil=True, _nrt=False, inline="always")
def mark_free(st, pfn):
    """The struct-page side of freeing a frame (free_frame() without the stack)."""
    at = ix(pfn)
    st.page["flags"][at] = (st.page["flags"][at] & L.PG_ZONE_DEVICE) | L.PG_FREE
    st.page["mapcount"][at] = 0
    st.page["mapping"][at] = L.MAPPING_NONE
    st.page["rmap"][at] = -1
    if is_device_pfn(st, pfn):
        st.counters[L.C_DEVICE_CFREE] += 1


@njit(cache=True, nogil=True, _nrt=False)
def alloc_thp(st):
    """Allocate an aligned order-9 RAM run as a compound page; head pfn or -1."""
    nr = st.sys[L.SYS_NR_RAM]
    for head in range(0, nr - L.HPAGE_PMD_NR + 1, L.HPAGE_PMD_NR):
        ok = True
        for j in range(L.HPAGE_PMD_NR):
            if st.free_pos[head + j] < 0:
                ok = False
                break
        if ok:
            for j in range(L.HPAGE_PMD_NR):
                _stack_remove(st, head + j)
                init_allocated(st, head + j)
                st.page["refcount"][head + j] = 0
                set_flag(st, head + j, L.PG_TAIL)
            clear_flag(st, head, L.PG_TAIL)
            set_flag(st, head, L.PG_HEAD)
            st.page["refcount"][head] = 1
            return head
    return -1


# --------------------------------------------------------------------- refcounts
@njit(cache=True, nogil=True, _nrt=False, inline="always")
def get_page(st, pfn):
    st.page["refcount"][compound_head(st, pfn)] += 1


@njit(cache=True, nogil=True, _nrt=False)
def _free_compound(st, head):
    for j in range(L.HPAGE_PMD_NR):
        st.page["refcount"][head + j] = 0
        free_frame(st, head + j)


@njit(cache=True, nogil=True, _nrt=False, inline="always")
def put_page(st, pfn):
    """Drop a reference; free the page when it reaches its free value.

    A ZONE_DEVICE page (hmm-v25) is handed back to the device's free list when the
    count returns to 1, the v4.14 ``page_free`` convention.
    """
    head = compound_head(st, pfn)
    refcount = st.page["refcount"]
    if is_zero_pfn(st, head):
        return  # the zero page is never freed or counted
    refcount[head] -= 1
    ref = refcount[head]
    if is_zone_device(st, head):
        if ref == 1:
            free_frame(st, head)
        return
    if ref == 0:
        if has_flag(st, head, L.PG_HEAD):
            _free_compound(st, head)
        else:
            free_frame(st, head)


# --------------------------------------------------------------------- page lock
@njit(cache=True, nogil=True, _nrt=False, inline="always")
def trylock_page(st, pfn):
    if has_flag(st, pfn, L.PG_LOCKED):
        return False
    set_flag(st, pfn, L.PG_LOCKED)
    return True


@njit(cache=True, nogil=True, _nrt=False, inline="always")
def unlock_page(st, pfn):
    clear_flag(st, pfn, L.PG_LOCKED)


# --------------------------------------------------------------------- LRU
@njit(cache=True, nogil=True, _nrt=False)
def _drain_cpu(st, cpu):
    """__pagevec_lru_add(): move one CPU's batch to the LRU and drop its references."""
    n = st.pagevec_n[cpu]
    for k in range(n):
        pfn = st.pagevec[cpu, k]
        st.pagevec[cpu, k] = -1
        clear_flag(st, pfn, L.PG_PAGEVEC)
        set_flag(st, pfn, L.PG_LRU)
        put_page(st, pfn)
    st.pagevec_n[cpu] = 0


@njit(cache=True, nogil=True, _nrt=False)
def lru_cache_add(st, cpu, pfn):
    """lru_cache_add(): queue a page in ``cpu``'s LRU-add batch (takes a reference).

    The batch holds up to PAGEVEC_SIZE (15) pages and drains by itself when a page
    would make it hold more. Compound pages bypass the batch, as in the kernel.
    """
    if has_flag(st, pfn, L.PG_HEAD):
        set_flag(st, pfn, L.PG_LRU)
        return
    get_page(st, pfn)
    set_flag(st, pfn, L.PG_PAGEVEC)
    n = st.pagevec_n[cpu]
    st.pagevec[cpu, n] = pfn
    st.pagevec_n[cpu] = n + 1
    if n + 1 > L.PAGEVEC_SIZE:
        _drain_cpu(st, cpu)


@njit(cache=True, nogil=True, _nrt=False, inline="always")
def lru_add_drain(st, cpu):
    """lru_add_drain(): drain the calling CPU's batch only."""
    st.counters[L.C_LRU_ADD_DRAIN] += 1
    if st.pagevec_n[cpu] != 0:
        _drain_cpu(st, cpu)


@njit(cache=True, nogil=True, _nrt=False)
def lru_add_drain_all(st):
    """lru_add_drain_all(): drain every CPU's batch."""
    st.counters[L.C_LRU_ADD_DRAIN_ALL] += 1
    for cpu in range(L.NR_CPUS):
        _drain_cpu(st, cpu)


@njit(cache=True, nogil=True, _nrt=False, inline="always")
def isolate_lru_page(st, pfn):
    """isolate_lru_page(): 0 and a new reference on success, -EBUSY if not on the LRU."""
    if not has_flag(st, pfn, L.PG_LRU):
        return -L.EBUSY
    clear_flag(st, pfn, L.PG_LRU)
    get_page(st, pfn)
    return 0


@njit(cache=True, nogil=True, _nrt=False, inline="always")
def putback_lru_page(st, pfn):
    """putback_lru_page(): back on the LRU, dropping the isolation reference.

    A page whose last reference this was (a migrated source) is freed instead.
    """
    head = compound_head(st, pfn)
    if st.page["refcount"][head] > 1:
        set_flag(st, head, L.PG_LRU)
    put_page(st, head)


# --------------------------------------------------------------------- reverse map
@njit(cache=True, nogil=True, _nrt=False, inline="always")
def rmap_add(st, pfn, slot):
    st.pte_next[slot] = st.page["rmap"][pfn]
    st.page["rmap"][pfn] = slot


@njit(cache=True, nogil=True, _nrt=False)
def rmap_del(st, pfn, slot):
    prev = -1
    cur = st.page["rmap"][pfn]
    while cur != -1 and cur != slot:
        prev = cur
        cur = st.pte_next[cur]
    if cur == -1:
        return
    if prev == -1:
        st.page["rmap"][pfn] = st.pte_next[slot]
    else:
        st.pte_next[prev] = st.pte_next[slot]
    st.pte_next[slot] = -1


@njit(cache=True, nogil=True, _nrt=False)
def page_mapped(st, pfn):
    return st.page["mapcount"][compound_head(st, pfn)] > 0


# --------------------------------------------------------------------- mapping
@njit(cache=True, nogil=True, _nrt=False)
def map_new_page(st, slot, pfn, write, device_entry):
    """Install a PTE (or device-private entry) for a page, as the fault and insert
    paths do: rmap + mapcount + the mapping's reference."""
    kind = L.PTE_DEVICE if device_entry else L.PTE_PRESENT
    word = make_pte(kind, pfn, write)
    if write and not device_entry:
        word |= L.PTE_DIRTY
        set_flag(st, pfn, L.PG_DIRTY)
    st.pte[slot] = word
    st.page["mapcount"][pfn] += 1
    get_page(st, pfn)
    rmap_add(st, pfn, slot)


@njit(cache=True, nogil=True, _nrt=False)
def unmap_slot(st, slot):
    """Tear down a present PTE or device entry: rmap, mapcount and reference."""
    pfn = pte_pfn(st.pte[slot])
    st.pte[slot] = L.PTE_NONE
    if is_zero_pfn(st, pfn):
        return
    st.page["mapcount"][pfn] -= 1
    rmap_del(st, pfn, slot)
    st.mirror[slot] = -1
    put_page(st, pfn)


@njit(cache=True, nogil=True, _nrt=False)
def zero_frame(st, pfn):
    if st.sys[L.SYS_STORE_DATA] == 0:
        return
    ps = st.sys[L.SYS_PAGE_SIZE]
    st.data[pfn * ps : (pfn + 1) * ps] = 0
