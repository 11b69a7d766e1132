"""Device-side migration without virtual addresses (modern, mm/migrate_device.c).

migrate_device_range() and migrate_device_pfns() collect device pages by pfn
("mm/migrate_device: introduce migrate_device_range()", v6.1; the pfn list
a14fa8ec9d81, v6.15), then unmap them from every process through the reverse
map (migrate_device_unmap(), :func:`kernels.unmap.migrate_vma_unmap`);
migrate_device_pages() and migrate_device_finalize() are the pages and
finalize passes without a VMA, so a hole is never inserted and the fault page
is none. A driver evicting its memory (dmirror's HMM_DMIRROR_RELEASE, device
removal) runs them over its own frames.

The per-pfn collect takes a reference only on a page in use
(folio_get_nontail_page(): a free device page has refcount 0 since v6.1) and
keeps it only if the trylock succeeds. The unmap reuses ``state.mig`` for its
scalars, so these calls refuse (-EINVAL) while a migrate_vma_setup() window
is open or suspended, and leave none open.
"""

import numpy as np
from numba.extending import overload

from . import layout as L
from . import mm
from ._jit import internal, kernel
from ._llvm import memcpy_bytes
from .args import dst_sound, mpfn_arrays, mutable_mpfn_type, src_sound, valid_pfn, window_open
from .dst_check import check_dst
from .finalize import finalize_slot
from .marks import MARK_SRC, clear_marks, marked, set_mark
from .pages import migrate_page_move_mapping
from .unmap import migrate_vma_unmap


@internal(hot=True)
def collect_device_pfn(st, pfn):
    """One slot of migrate_device_range(): ``pfn|VALID|MIGRATE`` for a device
    page in use that trylocks (it keeps the reference taken), else 0."""
    if st.page["refcount"][pfn] == 0 or mm.has_flag(st, pfn, L.PG_TAIL | L.PG_FREE):
        return L.MPFN_NONE
    mm.get_page(st, pfn)
    if not mm.trylock_page(st, pfn):
        mm.put_page(st, pfn)
        return L.MPFN_NONE
    return mm.make_mpfn(st.layout, pfn) | st.layout[L.L_MIGRATE]


@internal
def collect_device_slot(st, src, i, n, pfn):
    """Slot ``i`` of ``n`` for device frame ``pfn``; the slots it filled. A
    folio's head (B_DEVICE_THP) gets COMPOUND and the next 511 slots 0; one
    whose slots would run past ``n`` is not collected (0)."""
    mpfn = collect_device_pfn(st, pfn)
    if mpfn == L.MPFN_NONE or not mm.has_flag(st, pfn, L.PG_HEAD):
        src[i] = mpfn
        return 1
    if i + L.HPAGE_PMD_NR > n:
        mm.unlock_page(st, pfn)
        mm.put_page(st, pfn)
        src[i] = L.MPFN_NONE
        return 1
    src[i] = mpfn | st.layout[L.L_COMPOUND]
    for j in range(1, L.HPAGE_PMD_NR):
        src[i + j] = L.MPFN_NONE
    return L.HPAGE_PMD_NR


@internal(inline=True)
def _device_frame(st, pfn):
    """``pfn`` is a frame of some device."""
    return valid_pfn(st, pfn) and mm.is_device_pfn(st, pfn)


@internal
def _unmap_collected(st, src, npages):
    """migrate_device_unmap() over the collected slots, on ``state.mig``."""
    mig = st.mig
    mig[:] = 0
    mig[L.MIG_NPAGES] = npages
    mig[L.MIG_FAULT_PFN] = -1
    mig[L.MIG_FLAGS] = L.MIGRATE_VMA_SELECT_DEVICE_PRIVATE
    mig[L.MIG_OWNER] = L.OWNER_NONE
    lay = st.layout
    for i in range(npages):
        if (src[i] & lay[L.L_MIGRATE]) != 0:
            mig[L.MIG_CPAGES] += 1
    if mig[L.MIG_CPAGES] > 0:
        migrate_vma_unmap(st, src, mig)
    mig[:] = 0
    return np.int64(0)


def _typed(fn, state, src, dst, a, b):
    """``fn(state, src, dst, a, b)``, or -EINVAL when ``src`` or ``dst`` is not a
    writable 1-D uint64 array: decided when numba compiles the caller, so such
    an array compiles to the -EINVAL branch alone (the passes write both)."""
    return fn(state, src, dst, a, b)


@overload(_typed, inline="always")
def _typed_impl(fn, state, src, dst, a, b):
    if mutable_mpfn_type(src) and mutable_mpfn_type(dst):
        return lambda fn, state, src, dst, a, b: fn(state, src, dst, a, b)
    return lambda fn, state, src, dst, a, b: np.int64(-L.EINVAL)


@kernel
def migrate_device_range(state, src, start_pfn, npages):
    """migrate_device_range() - collect and unmap a range of device pages.

    Args: state; src: uint64 array of at least ``npages`` slots; start_pfn,
    npages: device frames ``[start_pfn, start_pfn + npages)``.
    Returns 0, or -22 with nothing changed: not the modern profile, a range
    outside one device's frames, a short or non-uint64 ``src``, or a
    migrate_vma_setup() window open.
    Post: ``src[i]`` is ``pfn|VALID|MIGRATE`` for each page locked and
    unmapped everywhere (its mappings are migration entries), else 0.
    """
    start, n = np.int64(start_pfn), np.int64(npages)
    return _typed(_range, state, src, src, start, n)


@internal
def _range(state, src, unused, start, n):
    """migrate_device_range()'s checks and body."""
    if not mm.behaves(state, L.B_DEVICE_REF0):
        return np.int64(-L.EINVAL)
    if n <= 0 or src.shape[0] < n or window_open(state.mig):
        return np.int64(-L.EINVAL)
    if not _device_frame(state, start) or not _device_frame(state, start + n - 1):
        return np.int64(-L.EINVAL)
    if mm.device_of(state, start) != mm.device_of(state, start + n - 1):
        return np.int64(-L.EINVAL)
    i = 0
    while i < n:
        i += collect_device_slot(state, src, i, n, start + i)
    return _unmap_collected(state, src, n)


@kernel
def migrate_device_pfns(state, src):
    """migrate_device_pfns() - migrate_device_range() for a list of pfns.

    Args: state; src: uint64 array of device pfns (plain numbers), rewritten in
    place to migrate pfns as migrate_device_range() writes them.
    Returns 0, or -22 with nothing changed: not modern, a pfn that is no device
    frame, a pfn listed twice, or a window open.
    """
    return _typed(_pfns, state, src, src, np.int64(0), np.int64(0))


@internal
def _mark_pfns(state, src, n):
    """migrate_device_pfns()'s check of its list: every entry a device frame,
    none listed twice (kernels.marks); (sound, entries marked)."""
    for i in range(n):
        if src[i] > np.uint64(state.page.shape[0]) or not _device_frame(state, np.int64(src[i])):
            return False, i
        if marked(state, np.int64(src[i]), MARK_SRC):
            return False, i  # listed twice
        set_mark(state, np.int64(src[i]), MARK_SRC)
    return True, n


@internal
def _pfns(state, src, unused, a, b):
    """migrate_device_pfns()'s checks and body."""
    if not mm.behaves(state, L.B_DEVICE_REF0) or window_open(state.mig):
        return np.int64(-L.EINVAL)
    n = src.shape[0]
    ok, reached = _mark_pfns(state, src, n)
    for i in range(reached):  # every frame marked is a device frame
        clear_marks(state, np.int64(src[i]))
    if not ok:
        return np.int64(-L.EINVAL)
    i = 0
    while i < n:
        i += collect_device_slot(state, src, i, n, np.int64(src[i]))
    return _unmap_collected(state, src, n)


@internal
def device_args_ok(state, src, dst):
    """The checks of migrate_device_pages() and _finalize(): modern, no
    migrate_vma_setup() window open, arrays of one length, every pfn ``src``
    names a locked frame named once (src_sound()) that the engine locked (not
    m.lock_page()) and that is mapped nowhere."""
    if not mm.behaves(state, L.B_DEVICE_REF0) or window_open(state.mig):
        return False
    n = src.shape[0]
    if not mpfn_arrays(src, dst, n) or dst.shape[0] != n or not src_sound(state, src, n):
        return False
    for i in range(n):
        pfn = mm.mpfn_to_pfn(state.layout, src[i])
        if pfn < 0:
            continue
        if mm.has_flag(state, pfn, L.PG_EXT_LOCKED) or state.page["mapcount"][pfn] != 0:
            return False
    return True


@kernel
def migrate_device_pages(state, src, dst):
    """migrate_device_pages() - the pages pass without a VMA.

    Per slot: no destination, or no source page, clears MIGRATE (no hole is
    inserted); a page-cache source refuses a device destination; else the
    struct-page move (folio_migrate_mapping(), no fault page).
    Returns 0, or -22 with nothing changed (device_args_ok()).
    """
    return _typed(_pages, state, src, dst, np.int64(0), np.int64(0))


@internal
def _pages(state, src, dst, a, b):
    """migrate_device_pages()'s checks and pass."""
    if not device_args_ok(state, src, dst):
        return np.int64(-L.EINVAL)
    n = src.shape[0]
    check_dst(state, dst, n)
    lay = state.layout
    for i in range(n):
        page = mm.mpfn_to_pfn(lay, src[i])
        newpage = mm.mpfn_to_pfn(lay, dst[i])
        if (src[i] & lay[L.L_MIGRATE]) == 0:
            continue
        if newpage < 0 or page < 0:
            src[i] &= ~lay[L.L_MIGRATE]
            continue
        if ((src[i] ^ dst[i]) & lay[L.L_COMPOUND]) != 0:
            # B_DEVICE_THP: no VMA, so no split: a folio with a base dst, or a
            # folio dst for a base page, is not migrated
            src[i] &= ~(lay[L.L_MIGRATE] | lay[L.L_COMPOUND])
            continue
        refused = mm.is_zone_device(state, newpage) and (
            state.page["mapping"][page] == L.MAPPING_FILE
        )
        if refused or migrate_page_move_mapping(state, newpage, page, -1) != 0:
            src[i] &= ~lay[L.L_MIGRATE]
    return np.int64(0)


@kernel
def migrate_device_finalize(state, src, dst):
    """migrate_device_finalize() - remap and release after migrate_device_pages().

    As migrate_vma_finalize() without a fault page: each migration entry maps
    the new page where the slot kept MIGRATE, the old one elsewhere; only the
    target goes to the LRU. Returns 0, or -22 with nothing changed.
    """
    return _typed(_finalize, state, src, dst, np.int64(0), np.int64(0))


@internal
def _finalize(state, src, dst, a, b):
    """migrate_device_finalize()'s checks (every destination one finalize may
    put: dst_sound()) and pass."""
    if not device_args_ok(state, src, dst) or not dst_sound(state, src, dst, src.shape[0]):
        return np.int64(-L.EINVAL)
    for i in range(src.shape[0]):
        finalize_slot(state, src, dst, i, np.int64(-1))
    return np.int64(0)


@kernel
def migrate_device_coherent_folio(state, pfn):
    """migrate_device_coherent_folio() - move one device-coherent page to RAM.

    What get_user_pages(FOLL_LONGTERM) does to a device-coherent page
    (v6.0, "mm/gup: migrate device coherent pages when pinning instead of
    failing"): the caller's pin becomes a plain reference, the page is locked
    and unmapped through migrate_device_unmap(), a system page is allocated,
    and pages, the copy and finalize follow.
    Returns 0 (the page moved; the caller's reference went with the old page),
    -EBUSY (it stayed: locked elsewhere, still mapped or pinned, or no RAM),
    or -22 when ``pfn`` is no in-use device-coherent page of a modern machine.
    """
    p = np.int64(pfn)
    if not mm.behaves(state, L.B_DEVICE_REF0) or not _device_frame(state, p):
        return np.int64(-L.EINVAL)
    if not mm.has_flag(state, p, L.PG_COHERENT) or mm.has_flag(state, p, L.PG_FREE):
        return np.int64(-L.EINVAL)
    if window_open(state.mig):
        return np.int64(-L.EBUSY)
    mm.get_page(state, p)  # the pin GUP turned into a reference
    if not mm.trylock_page(state, p):
        mm.put_page(state, p)
        return np.int64(-L.EBUSY)
    lay = state.layout
    src = state.fault_mpfn[0:1]
    dst = state.fault_mpfn[1:2]
    src[0] = mm.make_mpfn(lay, p) | lay[L.L_MIGRATE]
    dst[0] = L.MPFN_NONE
    _unmap_collected(state, src, 1)
    if (src[0] & lay[L.L_MIGRATE]) == 0:
        return np.int64(-L.EBUSY)  # restored, unlocked and put by the unmap
    newpage = mm.alloc_locked_page(state, np.int64(L.RAM_POOL))
    if newpage >= 0:
        dst[0] = mm.make_mpfn(lay, newpage)
    _pages(state, src, dst, np.int64(0), np.int64(0))
    if (src[0] & lay[L.L_MIGRATE]) != 0 and state.sys[L.SYS_STORE_DATA] != 0:
        ps = state.sys[L.SYS_PAGE_SIZE]
        memcpy_bytes(state.data, newpage * ps, state.data, p * ps, ps)
    moved = (src[0] & lay[L.L_MIGRATE]) != 0
    _finalize(state, src, dst, np.int64(0), np.int64(0))
    return np.int64(0) if moved else np.int64(-L.EBUSY)
