"""The page allocator (mm/page_alloc.c): one indexed free stack per pool.

A pool is system RAM (``RAM_POOL``) or one device (its index in ``state.dev``).
RAM occupies ``free_stack[0:nr_ram]`` and device ``d`` the positions from its
first frame on; the depths are ``sys[SYS_RAM_FREE]`` and ``dev[d, DEV_FREE]``.
A frame on a stack keeps its position there in its struct page's ``index``
(meaningless while it is free, as page->index is in the kernel's free lists),
so a THP allocation takes an aligned run out in O(1) a frame. The lowest free frame is on
top, so a fresh machine hands out frames in ascending order. Re-exported by :mod:`kernels.mm`.

Untouched frames. A pool's frames from its fresh mark (``sys[SYS_RAM_FRESH]``,
``dev[d, DEV_FRESH]``) on have never been handed out: their struct pages and
their free-stack entries (the stack's bottom positions) are still the zeroed
memory the state was built with, which the OS has not backed, so a big machine
costs what it uses (the kernel's CONFIG_DEFERRED_STRUCT_PAGE_INIT does
the same at boot). materialize() writes them, in 2 MiB steps, just before the
stack's top reaches them or a THP scan does; readers that take a pfn from a
caller (the driver's checks, ``m.check()``) ask is_fresh() first.
"""

import numpy as np

from . import layout as L
from ._jit import internal
from .pgtable import behaves, clear_flag, device_of, ix, set_flag


# --------------------------------------------------------------------- allocator
@internal(inline=True)
def pool_free(st, pool):
    """How many frames pool ``pool`` has free (its free stack's depth)."""
    return st.sys[L.SYS_RAM_FREE] if pool < 0 else st.dev[pool, L.DEV_FREE]


@internal(inline=True)
def add_pool_free(st, pool, n):
    """Move pool ``pool``'s free-stack depth by ``n``."""
    if pool < 0:
        st.sys[L.SYS_RAM_FREE] += n
    else:
        st.dev[pool, L.DEV_FREE] += n


@internal(inline=True)
def _stack_base(st, pool):
    """Where pool ``pool``'s free stack starts: 0 for RAM, a device's first frame."""
    return np.int64(0) if pool < 0 else st.dev[pool, L.DEV_FIRST_PFN]


@internal(inline=True)
def free_top(st, pool):
    """The free-stack position of the frame alloc_frame() would pop next."""
    return _stack_base(st, pool) + pool_free(st, pool) - 1


@internal(inline=True)
def on_free_stack(st, pfn):
    """Whether frame ``pfn`` sits on its pool's free stack: free, and not the
    head of a free folio (modern), whose tails are not marked free."""
    return (st.page["flags"][ix(pfn)] & (L.PG_FREE | L.PG_HEAD)) == L.PG_FREE


@internal(hot=True)
def _stack_remove(st, pfn):
    """Take ``pfn`` out of its free stack in O(1) by moving the top into its slot."""
    pool = device_of(st, pfn)
    top = free_top(st, pool)
    pos = st.page["index"][ix(pfn)]
    moved = np.int64(st.free_stack[top])
    place_free(st, moved, pos)
    unplace_free(st, pfn, top)
    add_pool_free(st, pool, -1)


@internal(hot=True)
def init_allocated(st, pfn):
    st.page["flags"][pfn] &= L.PG_DEVICE_KIND
    st.page["mapcount"][pfn] = 0
    st.page["pins"][pfn] = 0
    st.page["mapping"][pfn] = L.MAPPING_NONE
    st.page["index"][pfn] = 0
    st.page["rmap"][pfn] = -1
    st.page["refcount"][pfn] += 1


# --------------------------------------------------------------------- untouched frames
@internal(inline=True)
def pool_span(st, pool):
    """Pool ``pool``'s frames: ``(first, end)``."""
    if pool < 0:
        return np.int64(0), st.sys[L.SYS_NR_RAM]
    first = st.dev[pool, L.DEV_FIRST_PFN]
    return first, first + st.dev[pool, L.DEV_NPAGES]


@internal(inline=True)
def pool_fresh(st, pool):
    """Pool ``pool``'s fresh mark: its frames from here on were never touched."""
    return st.sys[L.SYS_RAM_FRESH] if pool < 0 else st.dev[pool, L.DEV_FRESH]


@internal(inline=True)
def is_fresh(st, pfn):
    """Whether frame ``pfn`` (inside the machine) was never touched: it is free,
    and its struct page is not written yet (fresh_flags() are its flags)."""
    return pfn >= pool_fresh(st, device_of(st, pfn))


@internal(inline=True)
def fresh_flags(st, pool):
    """The flags of pool ``pool``'s free frames as the machine was built: PG_FREE,
    and a device frame's kind (ZONE_DEVICE where the profile has device-private
    memory, PG_COHERENT on a coherent device)."""
    flags = L.PG_FREE
    if pool >= 0:
        if behaves(st, L.B_DEVICE_PRIVATE):
            flags |= L.PG_ZONE_DEVICE
        if st.dev[pool, L.DEV_KIND] == L.DEVICE_COHERENT:
            flags |= L.PG_COHERENT
    return flags


@internal(inline=True)
def frame_flags(st, pfn):
    """Frame ``pfn``'s flags, an untouched frame's included (fresh_flags()): for
    readers of a pfn a caller names. Only an all-zero word can be untouched."""
    flags = st.page["flags"][ix(pfn)]
    if flags == 0 and is_fresh(st, pfn):
        return fresh_flags(st, device_of(st, pfn))
    return flags


@internal
def materialize(st, pool, upto):
    """Write pool ``pool``'s untouched frames below ``upto`` (rounded up to a 2 MiB
    boundary, at most the pool's end) as a free frame and its stack entry.

    Pre: the stack's bottom positions hold the fresh frames, highest pfn lowest.
    Post: the fresh mark is at least ``upto``; nothing any reader sees changed.
    """
    first, end = pool_span(st, pool)
    mark = pool_fresh(st, pool)
    if upto <= mark:
        return
    stop = min(end, (upto + L.HPAGE_PMD_NR - 1) // L.HPAGE_PMD_NR * L.HPAGE_PMD_NR)
    flags = fresh_flags(st, pool)
    ref = np.int32(0)
    if (flags & L.PG_ZONE_DEVICE) != 0 and not behaves(st, L.B_DEVICE_REF0):
        ref = np.int32(1)  # 4.14: a free device-private page holds one reference
    top = _stack_base(st, pool) + end - 1  # frame f sits at position top - f
    for pfn in range(mark, stop):
        at = ix(pfn)
        st.page["flags"][at] = flags
        st.page["refcount"][at] = ref
        st.page["mapcount"][at] = 0
        st.page["pins"][at] = 0
        st.page["rmap"][at] = -1
        st.page["mapping"][at] = L.MAPPING_NONE
        st.page["index"][at] = top - pfn
        st.free_stack[ix(top - pfn)] = pfn
    if pool < 0:
        st.sys[L.SYS_RAM_FRESH] = stop
    else:
        st.dev[pool, L.DEV_FRESH] = stop


@internal(inline=True)
def ready_pops(st, pool, n):
    """Before ``n`` pops of pool ``pool``'s stack (n <= its depth): have the
    entries they read written. The fresh frames fill its bottom ``end - mark``
    positions, so the ``n`` from the top are written once mark >= end - depth + n."""
    need = pool_span(st, pool)[1] - pool_free(st, pool) + n
    if need > pool_fresh(st, pool):
        materialize(st, pool, need)


# --------------------------------------------------------------------- free folios
# modern (B_DEVICE_THP) keeps each pool's free 2 MiB folios whole, beside its
# free stack: dmirror's free_folios for a device, the buddy allocator's order-9
# free list for RAM. A free folio's head has PG_FREE|PG_HEAD and links the next
# free head through page["index"]; its tails keep PG_TAIL and sit on no stack.
# Allocating and freeing one is O(1); a base allocation that finds the stack
# empty breaks one up (the buddy allocator's split); none is ever merged back.
@internal(inline=True)
def pool_folios(st, pool):
    """How many free folios pool ``pool`` keeps whole."""
    return st.sys[L.SYS_FOLIOS] if pool < 0 else st.dev[pool, L.DEV_FOLIOS]


@internal(inline=True)
def pool_free_pages(st, pool):
    """Every free frame of ``pool``: its stack's and its free folios'."""
    return pool_free(st, pool) + L.HPAGE_PMD_NR * pool_folios(st, pool)


@internal(inline=True)
def _folio_top(st, pool):
    return st.sys[L.SYS_FOLIO_TOP] if pool < 0 else st.dev[pool, L.DEV_FOLIO_TOP]


@internal(inline=True)
def _set_folio_top(st, pool, head, delta):
    if pool < 0:
        st.sys[L.SYS_FOLIO_TOP] = head
        st.sys[L.SYS_FOLIOS] += delta
    else:
        st.dev[pool, L.DEV_FOLIO_TOP] = head
        st.dev[pool, L.DEV_FOLIOS] += delta


@internal
def free_folio(st, head):
    """A whole folio's last put (modern): onto its pool's free folios, in O(1).
    Its tails are as allocation left them (nothing marks a tail, see
    kernels.check); a device's cfree counts its 512 pages (folio_free())."""
    pool = device_of(st, head)
    at = ix(head)
    st.page["flags"][at] = (st.page["flags"][at] & L.PG_DEVICE_KIND) | L.PG_FREE | L.PG_HEAD
    st.page["refcount"][at] = 0
    st.page["mapcount"][at] = 0
    st.page["mapping"][at] = L.MAPPING_NONE
    st.page["rmap"][at] = -1
    st.page["index"][at] = _folio_top(st, pool)
    _set_folio_top(st, pool, head, 1)
    if pool >= 0:
        st.counters[L.C_DEVICE_CFREE] += L.HPAGE_PMD_NR
        st.dev[pool, L.DEV_CFREE] += L.HPAGE_PMD_NR


@internal
def _take_folio(st, pool):
    """Pop pool ``pool``'s first free folio, still marked free; its head."""
    head = _folio_top(st, pool)
    _set_folio_top(st, pool, st.page["index"][ix(head)], -1)
    return head


@internal
def _break_folio(st, pool):
    """A base allocation found the stack empty: a free folio's 512 frames go on
    it, the head last (on top, so the lowest frame goes first)."""
    head = _take_folio(st, pool)
    for j in range(L.HPAGE_PMD_NR - 1, -1, -1):
        pfn = head + j
        at = ix(pfn)
        st.page["flags"][at] = (st.page["flags"][at] & L.PG_DEVICE_KIND) | L.PG_FREE
        st.page["index"][at] = 0
        place_free(st, pfn, _stack_base(st, pool) + pool_free(st, pool))
        add_pool_free(st, pool, 1)


@internal(inline=True)
def alloc_frame(st, pool):
    """Allocate one frame of ``pool`` (RAM_POOL or a device index; unlocked,
    refcount +1); -1 when the pool is empty."""
    if pool_free(st, pool) == 0:
        if pool_folios(st, pool) == 0:
            return -1
        _break_folio(st, pool)
    ready_pops(st, pool, 1)
    pfn = np.int64(st.free_stack[free_top(st, pool)])
    _stack_remove(st, pfn)
    init_allocated(st, pfn)
    return pfn


@internal(hot=True)
def free_frame(st, pfn):
    """Return a frame to its free stack (refcount already at its free value)."""
    pool = device_of(st, pfn)
    place_free(st, pfn, _stack_base(st, pool) + pool_free(st, pool))
    add_pool_free(st, pool, 1)
    mark_free(st, pfn)


@internal(inline=True)
def place_free(st, pfn, pos):
    """Put a freed frame at position ``pos`` of the free stack."""
    st.free_stack[ix(pos)] = pfn
    st.page["index"][ix(pfn)] = pos


@internal(inline=True)
def unplace_free(st, pfn, pos):
    """Empty position ``pos`` of the free stack, where frame ``pfn`` was: it is
    in use (init_allocated() then sets its index)."""
    st.free_stack[ix(pos)] = -1


@internal(hot=True)
def mark_free(st, pfn):
    """The struct-page side of freeing a frame (free_frame() without the stack)."""
    at = ix(pfn)
    st.page["flags"][at] = (st.page["flags"][at] & L.PG_DEVICE_KIND) | L.PG_FREE
    st.page["mapcount"][at] = 0
    st.page["mapping"][at] = L.MAPPING_NONE
    st.page["rmap"][at] = -1
    if pfn >= st.sys[L.SYS_NR_RAM]:
        st.counters[L.C_DEVICE_CFREE] += 1
        st.dev[device_of(st, pfn), L.DEV_CFREE] += 1


@internal
def alloc_thp_pool(st, pool):
    """Allocate an aligned order-9 run of ``pool`` (RAM_POOL or a device) as a
    compound page: head pfn (refcount 1, tails 0), or -1 when no aligned run of
    the pool is wholly free: a free folio (modern) if it keeps one, else a run
    of its stack found by a scan. A device folio, as a system THP, starts at a
    pfn aligned to HPAGE_PMD_NR."""
    if pool_folios(st, pool) > 0:
        head = _take_folio(st, pool)
        init_allocated(st, head)  # refcount 0 -> 1; PG_FREE goes, PG_HEAD stays
        st.page["flags"][ix(head)] |= L.PG_HEAD
        return head
    lo = _stack_base(st, pool)
    hi = st.sys[L.SYS_NR_RAM] if pool < 0 else lo + st.dev[pool, L.DEV_NPAGES]
    if pool_free(st, pool) < L.HPAGE_PMD_NR:
        return -1
    first = (lo + L.HPAGE_PMD_NR - 1) // L.HPAGE_PMD_NR * L.HPAGE_PMD_NR
    for head in range(first, hi - L.HPAGE_PMD_NR + 1, L.HPAGE_PMD_NR):
        materialize(st, pool, head + L.HPAGE_PMD_NR)  # the scan reached untouched frames
        ok = True
        for j in range(L.HPAGE_PMD_NR):
            if not on_free_stack(st, head + j):
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


@internal
def alloc_thp(st):
    """Allocate an aligned order-9 RAM run as a compound page; head pfn or -1."""
    return alloc_thp_pool(st, L.RAM_POOL)
