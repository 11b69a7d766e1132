"""The invariant checker behind ``m.check()``.

It recounts every mapping from the page tables and compares the result with
the struct pages, the reverse map, the LRU batches, the free lists, the swap
map, the page cache and the device mirror. It returns ``(code, index)``:
``CHK_OK`` or the first broken invariant and the frame, slot or entry where it
broke; the Python layer turns that into an ``InvariantError`` message.
"""

import numpy as np
from numba import njit

from . import layout as L
from . import mm
from ._jit import internal
from .args import held_refs, in_page_cache
from .swapfile import check_swap_free, swap_users

CHECK_MESSAGES = (
    "ok",
    "free list: a frame's PG_free flag, its stack position (index) and the free stack disagree",
    "free frame: refcount, mapcount or flags are not those of a free frame",
    "mapcount does not match the page tables",
    "refcount does not match mappings + LRU batch + pins + isolation + page cache",
    "page left locked by the engine",
    "migration entry left behind in a page table",
    "reverse map chain does not match the page tables",
    "LRU state: an in-use page must be on exactly one of LRU, LRU-add batch, isolated",
    "device mirror maps a slot whose PTE does not map that device page",
    "swap map count does not match the swap entries, or its free slots do not add up",
    "page cache slot and page disagree",
    "a page table maps a free frame or a frame of the wrong kind",
    "compound page: head or tail state is inconsistent",
    "free-page counters disagree with the free stacks",
    "leaked frame: allocated, but no mapping, page-cache slot, LRU-add batch, pin, "
    "lock or isolation holds it",
)
(
    CHK_OK,
    CHK_FREE_LIST,
    CHK_FREE_FRAME,
    CHK_MAPCOUNT,
    CHK_REFCOUNT,
    CHK_LOCKED,
    CHK_MIGRATION_ENTRY,
    CHK_RMAP,
    CHK_LRU,
    CHK_MIRROR,
    CHK_SWAP,
    CHK_PCACHE,
    CHK_BAD_MAP,
    CHK_COMPOUND,
    CHK_FREE_COUNT,
    CHK_LEAK,
) = range(len(CHECK_MESSAGES))


# _check_free_frame()'s outcomes for a free frame, beside CHK_OK (in use)
CHK_FREE_STACKED = -1
CHK_FREE_FOLIO = -2


@internal
def _check_free_frame(st, pfn, bottom, top):
    """A written frame of its pool: CHK_OK when in use; CHK_FREE_STACKED or
    CHK_FREE_FOLIO when it is free, on its stack in ``(bottom, top]`` (the
    untouched frames' positions end at ``bottom``) or heading a free folio;
    else the broken invariant."""
    free = mm.has_flag(st, pfn, L.PG_FREE)
    if not free:
        return CHK_OK
    # a free folio's head (modern) is on its pool's folio list, not the stack
    folio = mm.has_flag(st, pfn, L.PG_HEAD)
    if not folio:
        # Each such frame names a distinct position of its own pool's stack
        # that names it back; with the counts, the stacks hold exactly these
        # frames and the untouched ones.
        pos = st.page["index"][pfn]
        if not bottom < pos <= top or st.free_stack[pos] != pfn:
            return CHK_FREE_LIST
    want_ref = 0 if folio else mm.device_base_ref(st, pfn)
    others = st.page["flags"][pfn] & ~(L.PG_FREE | L.PG_DEVICE_KIND | L.PG_HEAD)
    if st.page["refcount"][pfn] != want_ref or st.page["mapcount"][pfn] != 0 or others:
        return CHK_FREE_FRAME
    return CHK_FREE_FOLIO if folio else CHK_FREE_STACKED


@internal
def _check_free_lists(st):
    """Every written frame marked free is on its pool's stack (or heads a free
    folio) and looks free; with the untouched frames (kernels.page_alloc), the
    free frames add up to the stacks' depths and folio counts."""
    nr_ram = st.sys[L.SYS_NR_RAM]
    nfree_ram = 0
    nfree_dev = 0
    folio_heads = _count_free_folios(st)
    if folio_heads < 0:
        return CHK_FREE_LIST, -1
    for pool in range(-1, st.dev.shape[0]):
        first, end = mm.pool_span(st, pool)
        mark = mm.pool_fresh(st, pool)
        # the untouched frames are free and fill the stack's bottom positions
        if not first <= mark <= end or mm.pool_free(st, pool) < end - mark:
            return CHK_FREE_COUNT, -1
        if pool < 0:
            nfree_ram += end - mark
        else:
            nfree_dev += end - mark
        top = mm.free_top(st, pool)
        bottom = top - mm.pool_free(st, pool) + end - mark
        for pfn in range(first, mark):
            code = _check_free_frame(st, pfn, bottom, top)
            if code == CHK_FREE_FOLIO:
                folio_heads -= 1
            elif code == CHK_FREE_STACKED:
                if pfn < nr_ram:
                    nfree_ram += 1
                else:
                    nfree_dev += 1
            elif code != CHK_OK:
                return code, pfn
    if nfree_ram != st.sys[L.SYS_RAM_FREE]:
        return CHK_FREE_COUNT, -1
    for d in range(st.dev.shape[0]):
        nfree_dev -= st.dev[d, L.DEV_FREE]
    if nfree_dev != 0 or folio_heads != 0:
        return CHK_FREE_COUNT, -1
    return CHK_OK, -1


@internal
def _count_free_folios(st):
    """Walk every pool's free-folio list (kernels.page_alloc): each node a free
    head, aligned, of that pool, as many as its count; the total, or -1."""
    total = 0
    for pool in range(-1, st.dev.shape[0]):
        n = mm.pool_folios(st, pool)
        head = st.sys[L.SYS_FOLIO_TOP] if pool < 0 else st.dev[pool, L.DEV_FOLIO_TOP]
        for _ in range(n):
            if head < 0 or head % L.HPAGE_PMD_NR != 0 or mm.device_of(st, head) != pool:
                return -1
            if not mm.has_flag(st, head, L.PG_FREE) or not mm.has_flag(st, head, L.PG_HEAD):
                return -1
            head = st.page["index"][head]
        if head != -1:
            return -1
        total += n
    return total


@internal
def _count_mappings(st, maps, swaps):
    """Recount mappings per frame (into ``maps``) and users per swap slot."""
    ps = st.sys[L.SYS_PAGE_SIZE]
    ext = mm.pmd_extent(st)
    for v in range(st.sys[L.SYS_NR_VMAS]):
        if st.vma["live"][v] == 0:
            continue
        start = st.vma["start"][v]
        end = st.vma["end"][v]
        for j in range((end - 1) // ext - start // ext + 1):
            word = st.pmd[st.vma["pmd_base"][v] + j]
            pk = mm.pmd_kind(word)
            if pk == L.PMD_MIGRATION:
                return CHK_MIGRATION_ENTRY, st.vma["pmd_base"][v] + j
            if mm.pmd_maps_folio(pk):
                head = mm.pte_pfn(word)
                if not mm.has_flag(st, head, L.PG_HEAD):
                    return CHK_COMPOUND, head
                if (pk == L.PMD_DEVICE) != mm.is_device_private(st, head):
                    return CHK_BAD_MAP, head
                maps[head] += 1
        base = st.vma["pte_base"][v]
        for k in range((end - start) // ps):
            pte = st.pte[base + k]
            kind = mm.pte_kind(pte)
            if kind == L.PTE_NONE or kind == L.PTE_ERROR:
                continue
            target = mm.pte_pfn(pte)
            if kind == L.PTE_MIGRATION:
                return CHK_MIGRATION_ENTRY, base + k
            if kind == L.PTE_SWAP:
                if target >= st.sys[L.SYS_SWAP_FRESH]:
                    return CHK_SWAP, base + k  # a slot get_swap_slot() never handed out
                swaps[target] += 1
                continue
            if mm.is_zero_pfn(st, target):
                continue
            if (mm.frame_flags(st, target) & (L.PG_FREE | L.PG_TAIL | L.PG_HEAD)) != 0:
                return CHK_BAD_MAP, base + k
            if (kind == L.PTE_DEVICE) != mm.is_device_private(st, target):
                return CHK_BAD_MAP, base + k
            maps[target] += 1
    return CHK_OK, -1


@internal
def _chain_matches(st, pfn, limit):
    """Every node of the page's chain maps it, and there are mapcount nodes."""
    node = st.page["rmap"][pfn]
    n = 0
    while node != -1:
        n += 1
        if n > limit:
            return False
        pte = st.pte[node]
        kind = mm.pte_kind(pte)
        mapping = kind == L.PTE_PRESENT or kind == L.PTE_DEVICE or kind == L.PTE_EXCLUSIVE
        mapped_here = mapping and mm.pte_pfn(pte) == pfn
        if not mapped_here and not mm.has_flag(st, pfn, L.PG_HEAD):
            return False
        node = st.pte_next[node]
    return n == st.page["mapcount"][pfn]


@internal
def _held(st, pfn, maps):
    """Something accounts for the allocated frame ``pfn``: a PTE, device-private
    entry or PMD mapping (``maps``), its page-cache slot, the LRU-add batch, a pin,
    a page lock (a migration in flight, a driver's page between alloc_page() and
    migrate_vma(), m.lock_page()) or an isolation by someone else. The LRU itself
    holds no reference, and the model has no swap cache (swap-out copies the page
    out and frees it at once)."""
    if maps[pfn] > 0 or st.page["pins"][pfn] > 0:
        return True
    if (st.page["flags"][pfn] & (L.PG_PAGEVEC | L.PG_LOCKED | L.PG_EXT_ISOLATED)) != 0:
        return True
    return in_page_cache(st, pfn)


@internal
def _check_page(st, pfn, maps, limit):
    flags = st.page["flags"][pfn]
    if (flags & (L.PG_FREE | L.PG_ZERO)) != 0:
        return CHK_OK
    if (flags & L.PG_TAIL) != 0:
        # no half-split folio: a tail's head is a head, and a tail holds nothing
        ok = st.page["refcount"][pfn] == 0 and st.page["mapcount"][pfn] == 0
        ok = ok and mm.has_flag(st, pfn - pfn % L.HPAGE_PMD_NR, L.PG_HEAD)
        return CHK_OK if ok else CHK_COMPOUND
    if (flags & L.PG_HEAD) != 0:
        for j in range(1, L.HPAGE_PMD_NR):
            if not mm.has_flag(st, pfn + j, L.PG_TAIL):
                return CHK_COMPOUND
    if st.page["mapcount"][pfn] != maps[pfn]:
        return CHK_MAPCOUNT
    if not _chain_matches(st, pfn, limit):
        return CHK_RMAP
    if not _held(st, pfn, maps):
        return CHK_LEAK
    in_use = st.page["mapping"][pfn] != L.MAPPING_NONE or maps[pfn] > 0
    if (flags & L.PG_EXT_LOCKED) != 0 and (flags & L.PG_LOCKED) == 0:
        return CHK_LOCKED
    if not in_use:
        return CHK_OK  # a driver's page between alloc_page() and migrate_vma()
    if (flags & L.PG_LOCKED) != 0 and (flags & L.PG_EXT_LOCKED) == 0:
        return CHK_LOCKED
    if st.page["refcount"][pfn] != held_refs(st, pfn):
        return CHK_REFCOUNT
    homes = 0
    for f in (L.PG_LRU, L.PG_PAGEVEC, L.PG_EXT_ISOLATED):
        if (flags & f) != 0:
            homes += 1
    if homes != (0 if (flags & L.PG_ZONE_DEVICE) != 0 else 1):
        return CHK_LRU
    return CHK_OK


@internal
def _check_batches(st):
    queued = 0
    for cpu in range(L.NR_CPUS):
        for k in range(st.pagevec_n[cpu]):
            pfn = st.pagevec[cpu, k]
            if not mm.has_flag(st, pfn, L.PG_PAGEVEC):
                return CHK_LRU, pfn
            queued += 1
    flagged = 0
    for pool in range(-1, st.dev.shape[0]):
        for pfn in range(mm.pool_span(st, pool)[0], mm.pool_fresh(st, pool)):
            if mm.has_flag(st, pfn, L.PG_PAGEVEC):
                flagged += 1
    return (CHK_OK if flagged == queued else CHK_LRU), -1


@internal
def _check_tables(st, swaps):
    for e in range(st.sys[L.SYS_SWAP_FRESH]):  # the others are unused (_count_mappings())
        if swap_users(st, e) != swaps[e]:
            return CHK_SWAP, e
    if not check_swap_free(st):
        return CHK_SWAP, -1
    for pc in range(st.sys[L.SYS_PCACHE_USED]):
        pfn = st.pcache[pc]
        if pfn >= 0 and (st.page["mapping"][pfn] != L.MAPPING_FILE or st.page["index"][pfn] != pc):
            return CHK_PCACHE, pc
    return _check_mirrors(st)


@internal
def _mapped_at(st, v, addr, slot):
    """(pfn, writable) that the page tables map at ``addr`` of VMA ``v``, or
    (-1, False): a PMD mapping (THP or huge zero page), a present PTE or a
    device-private entry."""
    pword = st.pmd[mm.pmd_slot(st, v, addr)]
    pk = mm.pmd_kind(pword)
    if pk == L.PMD_HUGE_ZERO:
        return st.sys[L.SYS_ZERO_PFN], False
    if mm.pmd_maps_folio(pk):
        pfn = mm.pte_pfn(pword) + mm.pages_in(st, addr % mm.pmd_extent(st))
        return pfn, (pword & L.PMD_WRITE) != 0
    if pk == L.PMD_TABLE:
        pte = st.pte[slot]
        kind = mm.pte_kind(pte)
        if kind == L.PTE_PRESENT or kind == L.PTE_DEVICE or kind == L.PTE_EXCLUSIVE:
            return mm.pte_pfn(pte), mm.pte_write(pte)
    return np.int64(-1), False


@internal(inline=True)
def _device_entry_at(st, v, addr, slot):
    """A device-private entry maps ``addr``: a PTE, or (modern) a PMD entry."""
    if mm.pmd_kind(st.pmd[mm.pmd_slot(st, v, addr)]) == L.PMD_DEVICE:
        return True
    return mm.pte_kind(st.pte[slot]) == L.PTE_DEVICE


@internal
def _check_mirrors(st):
    """Every mirror entry maps the frame the page tables map at its slot: a
    device page the device migrated there, or any page the device faulted in
    with dev.read / dev.write (then writable only where the CPU's mapping of a
    system page is). A device-private frame is mapped by a device entry."""
    ps = st.sys[L.SYS_PAGE_SIZE]
    private = mm.behaves(st, L.B_DEVICE_PRIVATE)
    for v in range(st.sys[L.SYS_NR_VMAS]):
        if st.vma["live"][v] == 0:
            continue
        base = st.vma["pte_base"][v]
        start = st.vma["start"][v]
        for k in range((st.vma["end"][v] - start) // ps):
            slot = base + k
            for d in range(st.mirror.shape[0]):
                m = st.mirror[d, slot]
                if m < 0:
                    continue
                pfn, writable = _mapped_at(st, v, start + k * ps, slot)
                if pfn != mm.mirror_pfn(m):
                    return CHK_MIRROR, slot
                device = mm.is_device_pfn(st, pfn)
                entry = mm.is_device_private(st, pfn)
                if (m & 1) != 0 and not writable and not device:
                    return CHK_MIRROR, slot
                if entry and private and not _device_entry_at(st, v, start + k * ps, slot):
                    return CHK_MIRROR, slot
    return CHK_OK, -1


@njit(cache=True, nogil=True)
def check_state(state):
    """check_state() - verify every invariant of the machine.

    Args: state. Pre: no migration in progress. Returns (CHK_*, index).
    """
    code, idx = _check_free_lists(state)
    if code != CHK_OK:
        return code, idx
    # int32, as the counts they are held against: a 2**28-frame machine's check
    # takes 1.3 GiB less. Only the written frames' and used slots' counts are
    # zeroed and read (_count_mappings() stops at an entry naming another), so
    # the check costs the pages in use, not the machine's size.
    maps = np.empty(state.page.shape[0], np.int32)
    for pool in range(-1, state.dev.shape[0]):
        maps[mm.pool_span(state, pool)[0] : mm.pool_fresh(state, pool)] = 0
    swaps = np.empty(state.swap_map.shape[0], np.int32)
    swaps[: state.sys[L.SYS_SWAP_FRESH]] = 0
    code, idx = _count_mappings(state, maps, swaps)
    if code != CHK_OK:
        return code, idx
    limit = state.sys[L.SYS_PTE_USED] + 1
    # an untouched frame is free, and _count_mappings() found no mapping of it
    for pool in range(-1, state.dev.shape[0]):
        for pfn in range(mm.pool_span(state, pool)[0], mm.pool_fresh(state, pool)):
            code = _check_page(state, pfn, maps, limit)
            if code != CHK_OK:
                return code, pfn
    code, idx = _check_batches(state)
    if code != CHK_OK:
        return code, idx
    return _check_tables(state, swaps)
