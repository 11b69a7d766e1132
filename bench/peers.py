"""Peers for the benchmark: the same migration written in pure Python and in numpy.

Both peers run what ``m.device.migrate_to_device`` runs for one VMA, pass by
pass: collect, prepare, unmap, alloc (+ copy descriptors and the engine
model, no byte copy), pages, finalize_and_map (the device mirror) and
finalize, over flat arrays equivalent to ``m.state`` (one array per
struct-page field, the PTE words, the reverse-map links, the free stacks).
They end in exactly the state the engine ends in, which
``bench_peers.py`` checks field by field.

They are written for the common path the benchmark exercises and nothing
else: profile ``hmm-v25``; every page of the range present, private
anonymous, order-0, mapped once, on the LRU, unlocked and unpinned; every PMD
a page table; enough free device frames; no injected allocation failure; a
one-channel linear engine model. Any other input raises
``NotImplementedError`` at the point where the kernel would take another
branch, so a peer never silently computes something different.

* ``python_migrate`` - the kernel's algorithm over Python lists, one small
  function per kernel helper (get_page, put_page, alloc_frame, ...), as a
  straightforward Python port would be.
* ``numpy_migrate`` - each pass as whole-array numpy operations over index
  arrays (one temporary per step), relying on the common path's facts (the
  pages are distinct, each reverse-map chain is one slot) to vectorise.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field, fields

import numpy as np

from migengine.kernels import copy as kcopy
from migengine.kernels import layout as L

# Counters the migration changes, by their state.counters names.
COUNTERS = (
    "migrate_vma_calls",
    "migrate_vma_collected",
    "lru_add_drain",
    "tlb_flush",
    "device_calloc",
    "pgmigrate_success",
)
_PAGE_FIELDS = ("refcount", "mapcount", "pins", "index", "rmap", "flags", "mapping")
_ARRAYS = ("pte", "pte_next", "mirror", "free_stack", "free_pos", *_PAGE_FIELDS)

_KIND = int(L.PTE_KIND_MASK)
_PRESENT = int(L.PTE_PRESENT)
_MIGRATION = int(L.PTE_MIGRATION)
_DEVICE_PTE = int(L.PTE_DEVICE)
_PTE_WRITE = int(L.PTE_WRITE)
_PFN_SHIFT = int(L.PTE_PFN_SHIFT)
_PMD_TABLE = int(L.PMD_TABLE)
_LOCKED = int(L.PG_LOCKED)
_LRU = int(L.PG_LRU)
_COMPOUND = int(L.PG_HEAD | L.PG_TAIL)
_ZONE_DEVICE = int(L.PG_ZONE_DEVICE)
_FREE = int(L.PG_FREE)
_MOVED_FLAGS = int(L.PG_DIRTY | L.PG_MLOCKED)
_ANON = int(L.MAPPING_ANON)
_FILE = int(L.MAPPING_FILE)
_NONE = int(L.MAPPING_NONE)


class OffCommonPath(NotImplementedError):
    """The input needs a kernel branch the peers do not implement."""


@dataclass
class Flat:
    """The arrays and scalars a system -> device migration of one VMA touches.

    Arrays are numpy arrays (``numpy_migrate``) or Python lists
    (``python_migrate``, after :meth:`as_lists`). Frame arrays are indexed by
    pfn, PTE arrays by global PTE slot, exactly as in ``m.state``.
    """

    pte: object
    pte_next: object
    mirror: object
    free_stack: object
    free_pos: object
    refcount: object
    mapcount: object
    pins: object
    index: object
    rmap: object
    flags: object
    mapping: object
    ram_free: int
    dev_free: int
    nr_ram: int
    zero_pfn: int
    page_size: int
    slot0: int
    npages: int
    start: int
    pmd_first: int
    pmd_kinds_ok: bool
    driver_pagevec_n: int
    fail_alloc: int
    lay: dict[str, int]
    engine: dict[str, float]
    counters: dict[str, int] = field(default_factory=dict)

    @classmethod
    def from_workload(cls, work) -> Flat:
        """Copy the migration's inputs out of a ``migengine.bench.Workload``."""
        m, vma = work.machine, work.vma
        st = m.state
        if m.profile != "hmm-v25":
            raise OffCommonPath("the peers implement the hmm-v25 profile only")
        rec = st.vma[vma.index]
        ext_pages = L.HPAGE_PMD_NR
        pmd_base = int(rec["pmd_base"])
        nlevel = (vma.npages + ext_pages - 1) // ext_pages
        pmds = st.pmd[pmd_base : pmd_base + nlevel] & L.PMD_KIND_MASK
        eng = st.engine
        return cls(
            pte=st.pte.copy(),
            pte_next=st.pte_next.copy(),
            mirror=st.mirror[0].copy(),  # the peers model one device
            free_stack=st.free_stack.copy(),
            free_pos=st.free_pos.copy(),
            **{name: st.page[name].copy() for name in _PAGE_FIELDS},
            ram_free=int(st.sys[L.SYS_RAM_FREE]),
            dev_free=int(st.dev[0, L.DEV_FREE]),
            nr_ram=m.ram_pages,
            zero_pfn=m.zero_pfn,
            page_size=m.page_size,
            slot0=int(rec["pte_base"]),
            npages=vma.npages,
            start=vma.start,
            pmd_first=vma.start // (m.page_size * ext_pages),
            pmd_kinds_ok=bool(np.all(pmds == L.PMD_TABLE)),
            driver_pagevec_n=int(st.pagevec_n[L.CPU_DRIVER]),
            fail_alloc=int(st.dev[0, L.DEV_FAIL_ALLOC]),
            lay={k.lower(): int(v) for k, v in m.layout._asdict().items()},
            engine={
                "chunk_pages": int(eng[kcopy.ENG_CHUNK_PAGES]),
                "channels": int(eng[kcopy.ENG_CHANNELS]),
                "setup_ns": float(eng[kcopy.ENG_SETUP_NS]),
                "gbps": float(eng[kcopy.ENG_GBPS]),
                "model": int(eng[kcopy.ENG_MODEL]),
            },
            counters={name: m.counters[name] for name in COUNTERS},
        )

    def copy(self) -> Flat:
        return copy.deepcopy(self)

    def as_lists(self) -> Flat:
        """A copy whose arrays are Python lists of ints (for ``python_migrate``)."""
        out = self.copy()
        for name in _ARRAYS:
            setattr(out, name, getattr(self, name).tolist())
        return out

    def mismatches(self, machine) -> list[str]:
        """Names of the fields that differ from ``machine``'s state (empty: identical)."""
        st = machine.state
        theirs = {
            "pte": st.pte,
            "pte_next": st.pte_next,
            "mirror": st.mirror[0],
            "free_stack": st.free_stack,
            "free_pos": st.free_pos,
            **{name: st.page[name] for name in _PAGE_FIELDS},
        }
        bad = [
            name
            for name in _ARRAYS
            if not np.array_equal(np.asarray(getattr(self, name)), theirs[name])
        ]
        if self.ram_free != st.sys[L.SYS_RAM_FREE]:
            bad.append("ram_free")
        if self.dev_free != st.dev[0, L.DEV_FREE]:
            bad.append("dev_free")
        bad += [f"counter {n}" for n in COUNTERS if self.counters[n] != machine.counters[n]]
        return bad


def _tlb_flushes(f: Flat) -> int:
    """collect flushes once per PMD extent in which it installed migration entries."""
    ext = f.page_size * L.HPAGE_PMD_NR
    end = f.start + f.npages * f.page_size
    return (end - 1) // ext - f.start // ext + 1


def _check_engine(f: Flat) -> None:
    if f.engine["model"] != kcopy.MODEL_LINEAR or f.engine["channels"] != 1:
        raise OffCommonPath("the peers model a one-channel linear engine only")


def _check_setup(f: Flat) -> None:
    if not f.pmd_kinds_ok:
        raise OffCommonPath("collect: a THP or hole extent")
    if f.driver_pagevec_n:
        raise OffCommonPath("prepare: the driver CPU's LRU-add batch is not empty")
    if f.fail_alloc:
        raise OffCommonPath("alloc: injected allocation failures")
    _check_engine(f)


# ============================================================== pure Python
def _get_page(f: Flat, pfn: int) -> None:
    f.refcount[pfn] += 1


def _free_frame(f: Flat, pfn: int) -> None:
    if pfn >= f.nr_ram:
        raise OffCommonPath("free_frame: a device frame")
    pos = f.ram_free
    f.free_stack[pos] = pfn
    f.free_pos[pfn] = pos
    f.ram_free += 1
    f.flags[pfn] = (f.flags[pfn] & _ZONE_DEVICE) | _FREE
    f.mapcount[pfn] = 0
    f.mapping[pfn] = _NONE
    f.rmap[pfn] = -1


def _put_page(f: Flat, pfn: int) -> None:
    f.refcount[pfn] -= 1
    ref = f.refcount[pfn]
    if f.flags[pfn] & _ZONE_DEVICE:
        if ref == 1:
            raise OffCommonPath("put_page: a device page freed")
        return
    if ref == 0:
        _free_frame(f, pfn)


def _trylock(f: Flat, pfn: int) -> bool:
    if f.flags[pfn] & _LOCKED:
        return False
    f.flags[pfn] |= _LOCKED
    return True


def _unlock(f: Flat, pfn: int) -> None:
    f.flags[pfn] &= ~_LOCKED


def _check_page(f: Flat, pfn: int) -> bool:
    if f.flags[pfn] & _COMPOUND:
        return False
    if f.flags[pfn] & _ZONE_DEVICE:
        return True
    extra = 2 if f.mapping[pfn] == _FILE else 1
    return f.refcount[pfn] - extra <= f.mapcount[pfn]


def _alloc_device_frame(f: Flat) -> int:
    if f.dev_free == 0:
        raise OffCommonPath("alloc: out of device frames")
    pos = f.nr_ram + f.dev_free - 1
    pfn = f.free_stack[pos]
    f.free_stack[pos] = -1
    f.free_pos[pfn] = -1
    f.dev_free -= 1
    f.flags[pfn] &= _ZONE_DEVICE
    f.mapcount[pfn] = 0
    f.pins[pfn] = 0
    f.mapping[pfn] = _NONE
    f.index[pfn] = 0
    f.rmap[pfn] = -1
    f.refcount[pfn] += 1
    return pfn


def _py_collect(f: Flat, src: list[int], dst: list[int]) -> int:
    lay = f.lay
    cpages = 0
    for k in range(f.npages):
        slot = f.slot0 + k
        pte = f.pte[slot]
        if pte & _KIND != _PRESENT:
            raise OffCommonPath("collect: a PTE that is not present")
        pfn = pte >> _PFN_SHIFT
        if pfn == f.zero_pfn or f.mapping[pfn] == _NONE or f.flags[pfn] & _COMPOUND:
            raise OffCommonPath("collect: zero page, no mapping or compound page")
        write = pte & _PTE_WRITE
        mpfn = (pfn << lay["shift"]) | lay["valid"] | lay["migrate"]
        if write:
            mpfn |= lay["write"]
        _get_page(f, pfn)
        cpages += 1
        if not _trylock(f, pfn):
            raise OffCommonPath("collect: page locked by someone else")
        mpfn |= lay["locked"]
        f.pte[slot] = (pfn << _PFN_SHIFT) | _MIGRATION | write
        f.mapcount[pfn] -= 1
        _put_page(f, pfn)
        dst[k] = 0
        src[k] = mpfn
    f.counters["tlb_flush"] += _tlb_flushes(f)
    return cpages


def _py_prepare(f: Flat, src: list[int]) -> None:
    lay = f.lay
    f.counters["lru_add_drain"] += 1  # the driver CPU's own batch is empty
    for k in range(f.npages):
        mpfn = src[k]
        if not mpfn & lay["valid"]:
            continue
        pfn = mpfn >> lay["shift"]
        if not mpfn & lay["locked"] or f.flags[pfn] & _ZONE_DEVICE:
            raise OffCommonPath("prepare: trylock here, or a device page")
        if not f.flags[pfn] & _LRU:
            raise OffCommonPath("prepare: page not on the LRU (lru_add_drain_all)")
        f.flags[pfn] &= ~_LRU  # isolate_lru_page()
        _get_page(f, pfn)
        _put_page(f, pfn)  # drop the collect reference
        if not _check_page(f, pfn):
            raise OffCommonPath("prepare: pinned page")


def _py_unmap(f: Flat, src: list[int]) -> None:
    lay = f.lay
    for k in range(f.npages):
        mpfn = src[k]
        if not mpfn & lay["valid"] or not mpfn & lay["migrate"]:
            continue
        pfn = mpfn >> lay["shift"]
        if f.mapcount[pfn] > 0:
            raise OffCommonPath("unmap: still mapped elsewhere (try_to_unmap)")
        if not _check_page(f, pfn):
            raise OffCommonPath("unmap: pinned page")


def _py_descriptors(sp: list[int], dp: list[int], chunk: int) -> list[int]:
    lens: list[int] = []
    if not sp:
        return lens
    s0, d0, run = sp[0], dp[0], 1
    for i in range(1, len(sp)):
        if run < chunk and sp[i] == s0 + run and dp[i] == d0 + run:
            run += 1
            continue
        lens.append(run)
        s0, d0, run = sp[i], dp[i], 1
    lens.append(run)
    return lens


def _py_alloc_and_copy(f: Flat, src: list[int], dst: list[int]) -> tuple[int, float]:
    lay = f.lay
    sp: list[int] = []
    dp: list[int] = []
    for k in range(f.npages):
        mpfn = src[k]
        if not mpfn & lay["migrate"]:
            continue
        if not mpfn & lay["valid"]:
            raise OffCommonPath("alloc: a hole (zero-fill and insert)")
        spfn = mpfn >> lay["shift"]
        if spfn >= f.nr_ram:
            raise OffCommonPath("alloc: a device source")
        dpfn = _alloc_device_frame(f)
        _trylock(f, dpfn)
        f.counters["device_calloc"] += 1
        sp.append(spfn)
        dp.append(dpfn)
        dst[k] = (dpfn << lay["shift"]) | lay["valid"] | lay["locked"] | (mpfn & lay["write"])
    eng = f.engine
    lens = _py_descriptors(sp, dp, eng["chunk_pages"])
    model_ns = 0.0
    for n in lens:
        model_ns += eng["setup_ns"] + n * f.page_size / eng["gbps"]
    return len(lens), model_ns


def _py_pages(f: Flat, src: list[int], dst: list[int]) -> None:
    lay = f.lay
    for k in range(f.npages):
        if not dst[k] & lay["valid"]:
            src[k] &= ~lay["migrate"]
            continue
        if not src[k] & lay["valid"]:
            raise OffCommonPath("pages: insert a hole")
        if not src[k] & lay["migrate"]:
            continue
        newpage = dst[k] >> lay["shift"]
        page = src[k] >> lay["shift"]
        if f.mapping[page] == _FILE:
            raise OffCommonPath("pages: page cache page")
        if f.refcount[page] != 1:  # migrate_page_move_mapping(): -EAGAIN
            src[k] &= ~lay["migrate"]
            continue
        f.index[newpage] = f.index[page]
        f.mapping[newpage] = f.mapping[page]
        moved = f.flags[page] & _MOVED_FLAGS
        f.flags[page] &= ~_MOVED_FLAGS
        f.flags[newpage] |= moved


def _py_finalize_and_map(f: Flat, src: list[int], dst: list[int]) -> None:
    lay = f.lay
    for k in range(f.npages):
        if not src[k] & lay["migrate"] or not dst[k] & lay["valid"]:
            continue
        dpfn = dst[k] >> lay["shift"]
        if dpfn >= f.nr_ram:
            f.mirror[f.slot0 + k] = (dpfn << 1) | (1 if dst[k] & lay["write"] else 0)


def _py_remove_migration_ptes(f: Flat, page: int, newpage: int) -> None:
    slot = f.rmap[page]
    prev = -1
    while slot != -1:
        nxt = f.pte_next[slot]
        pte = f.pte[slot]
        if pte & _KIND == _MIGRATION and pte >> _PFN_SHIFT == page:
            f.pte[slot] = (newpage << _PFN_SHIFT) | _DEVICE_PTE | (pte & _PTE_WRITE)
            f.mapcount[newpage] += 1
            _get_page(f, newpage)
            if prev == -1:
                f.rmap[page] = nxt
            else:
                f.pte_next[prev] = nxt
            f.pte_next[slot] = f.rmap[newpage]  # rmap_add()
            f.rmap[newpage] = slot
        else:
            prev = slot
        slot = nxt


def _py_finalize(f: Flat, src: list[int], dst: list[int]) -> None:
    lay = f.lay
    for k in range(f.npages):
        if not src[k] & lay["valid"]:
            raise OffCommonPath("finalize: a filled hole")
        if not src[k] & lay["migrate"] or not dst[k] & lay["valid"]:
            raise OffCommonPath("finalize: a page that did not migrate")
        page = src[k] >> lay["shift"]
        newpage = dst[k] >> lay["shift"]
        _py_remove_migration_ptes(f, page, newpage)
        _unlock(f, page)
        if f.refcount[page] > 1:  # putback_lru_page()
            f.flags[page] |= _LRU
        _put_page(f, page)
        _unlock(f, newpage)
        _put_page(f, newpage)  # a ZONE_DEVICE page is put, not put back
        f.counters["pgmigrate_success"] += 1


def python_migrate(f: Flat) -> tuple[int, float]:
    """Migrate the VMA of ``f`` (lists, from :meth:`Flat.as_lists`) in place.

    Returns ``(descriptors, modelled copy ns)``.
    """
    _check_setup(f)
    src = [0] * f.npages
    dst = [0] * f.npages
    f.counters["migrate_vma_calls"] += 1
    cpages = _py_collect(f, src, dst)
    f.counters["migrate_vma_collected"] += cpages
    _py_prepare(f, src)
    _py_unmap(f, src)
    result = _py_alloc_and_copy(f, src, dst)
    _py_pages(f, src, dst)
    _py_finalize_and_map(f, src, dst)
    _py_finalize(f, src, dst)
    return result


# ============================================================== numpy
def _np_collect(f: Flat) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    lay = f.lay
    slots = np.arange(f.slot0, f.slot0 + f.npages)
    ptes = f.pte[slots]
    if np.any(ptes & np.uint64(_KIND) != _PRESENT):
        raise OffCommonPath("collect: a PTE that is not present")
    pfns = (ptes >> np.uint64(_PFN_SHIFT)).astype(np.int64)
    odd = (pfns == f.zero_pfn) | (f.mapping[pfns] == _NONE) | ((f.flags[pfns] & _COMPOUND) != 0)
    if np.any(odd):
        raise OffCommonPath("collect: zero page, no mapping or compound page")
    write = (ptes & np.uint64(_PTE_WRITE)) != 0
    f.refcount[pfns] += 1
    if np.any(f.flags[pfns] & _LOCKED):
        raise OffCommonPath("collect: page locked by someone else")
    f.flags[pfns] |= np.uint32(_LOCKED)
    wbits = write.astype(np.uint64)
    f.pte[slots] = (pfns.astype(np.uint64) << np.uint64(_PFN_SHIFT)) | np.uint64(_MIGRATION)
    f.pte[slots] |= wbits * np.uint64(_PTE_WRITE)
    f.mapcount[pfns] -= 1
    f.refcount[pfns] -= 1  # put_page(): the collect reference keeps it above 0
    src = (pfns.astype(np.uint64) << np.uint64(lay["shift"])) | np.uint64(
        lay["valid"] | lay["migrate"] | lay["locked"]
    )
    src |= wbits * np.uint64(lay["write"])
    f.counters["tlb_flush"] += _tlb_flushes(f)
    return slots, pfns, write, src


def _np_check_page(f: Flat, pfns: np.ndarray) -> np.ndarray:
    extra = np.where(f.mapping[pfns] == _FILE, 2, 1)
    ok = f.refcount[pfns] - extra <= f.mapcount[pfns]
    return ok & ((f.flags[pfns] & _COMPOUND) == 0)


def _np_prepare(f: Flat, pfns: np.ndarray) -> None:
    f.counters["lru_add_drain"] += 1
    if np.any(f.flags[pfns] & _ZONE_DEVICE):
        raise OffCommonPath("prepare: a device page")
    if not np.all(f.flags[pfns] & _LRU):
        raise OffCommonPath("prepare: page not on the LRU (lru_add_drain_all)")
    f.flags[pfns] &= np.uint32(~_LRU & 0xFFFFFFFF)
    f.refcount[pfns] += 1  # isolate_lru_page()
    f.refcount[pfns] -= 1  # drop the collect reference
    if not np.all(_np_check_page(f, pfns)):
        raise OffCommonPath("prepare: pinned page")


def _np_unmap(f: Flat, pfns: np.ndarray) -> None:
    if np.any(f.mapcount[pfns] > 0):
        raise OffCommonPath("unmap: still mapped elsewhere (try_to_unmap)")
    if not np.all(_np_check_page(f, pfns)):
        raise OffCommonPath("unmap: pinned page")


def _np_descriptors(sp: np.ndarray, dp: np.ndarray, chunk: int) -> np.ndarray:
    n = sp.size
    if n == 0:
        return np.empty(0, np.int64)
    brk = np.ones(n, bool)
    brk[1:] = (np.diff(sp) != 1) | (np.diff(dp) != 1)
    run_start = np.flatnonzero(brk)
    pos = np.arange(n) - run_start[np.cumsum(brk) - 1]
    starts = np.flatnonzero(pos % chunk == 0)
    return np.diff(np.append(starts, n))


def _np_alloc_and_copy(
    f: Flat, pfns: np.ndarray, src: np.ndarray
) -> tuple[np.ndarray, np.ndarray, int, float]:
    lay = f.lay
    n = pfns.size
    if np.any(pfns >= f.nr_ram):
        raise OffCommonPath("alloc: a device source")
    if f.dev_free < n:
        raise OffCommonPath("alloc: out of device frames")
    top = f.nr_ram + f.dev_free - 1
    positions = top - np.arange(n)
    dpfns = f.free_stack[positions]
    f.free_stack[positions] = -1
    f.free_pos[dpfns] = -1
    f.dev_free -= n
    f.flags[dpfns] &= np.uint32(_ZONE_DEVICE)
    f.mapcount[dpfns] = 0
    f.pins[dpfns] = 0
    f.mapping[dpfns] = _NONE
    f.index[dpfns] = 0
    f.rmap[dpfns] = -1
    f.refcount[dpfns] += 1
    f.flags[dpfns] |= np.uint32(_LOCKED)
    f.counters["device_calloc"] += n
    dst = (dpfns.astype(np.uint64) << np.uint64(lay["shift"])) | np.uint64(
        lay["valid"] | lay["locked"]
    )
    dst |= src & np.uint64(lay["write"])
    eng = f.engine
    lens = _np_descriptors(pfns, dpfns, eng["chunk_pages"])
    model_ns = float(np.sum(eng["setup_ns"] + lens * f.page_size / eng["gbps"]))
    return dpfns, dst, lens.size, model_ns


def _np_pages(f: Flat, pfns: np.ndarray, dpfns: np.ndarray) -> None:
    if np.any(f.mapping[pfns] == _FILE):
        raise OffCommonPath("pages: page cache page")
    if np.any(f.refcount[pfns] != 1):
        raise OffCommonPath("pages: -EAGAIN from migrate_page_move_mapping()")
    f.index[dpfns] = f.index[pfns]
    f.mapping[dpfns] = f.mapping[pfns]
    moved = f.flags[pfns] & np.uint32(_MOVED_FLAGS)
    f.flags[pfns] &= np.uint32(~_MOVED_FLAGS & 0xFFFFFFFF)
    f.flags[dpfns] |= moved


def _np_finalize_and_map(f: Flat, slots: np.ndarray, dpfns: np.ndarray, write) -> None:
    f.mirror[slots] = (dpfns << 1) | write.astype(np.int64)


def _np_finalize(f: Flat, slots: np.ndarray, pfns: np.ndarray, dpfns: np.ndarray, write) -> None:
    # remove_migration_ptes(): each chain is exactly this one slot on the common path.
    if np.any(f.rmap[pfns] != slots) or np.any(f.pte_next[slots] != -1):
        raise OffCommonPath("finalize: a page mapped more than once")
    f.pte[slots] = (dpfns.astype(np.uint64) << np.uint64(_PFN_SHIFT)) | np.uint64(_DEVICE_PTE)
    f.pte[slots] |= write.astype(np.uint64) * np.uint64(_PTE_WRITE)
    f.mapcount[dpfns] += 1
    f.refcount[dpfns] += 1
    f.rmap[pfns] = -1
    f.pte_next[slots] = f.rmap[dpfns]
    f.rmap[dpfns] = slots
    f.flags[pfns] &= np.uint32(~_LOCKED & 0xFFFFFFFF)
    # putback_lru_page(): the migrated source drops its last reference and is freed,
    # pushed on the RAM free stack in slot order.
    if np.any(f.refcount[pfns] != 1):
        raise OffCommonPath("finalize: a source still referenced")
    f.refcount[pfns] -= 1
    positions = f.ram_free + np.arange(pfns.size)
    f.free_stack[positions] = pfns
    f.free_pos[pfns] = positions
    f.ram_free += pfns.size
    f.flags[pfns] = (f.flags[pfns] & np.uint32(_ZONE_DEVICE)) | np.uint32(_FREE)
    f.mapcount[pfns] = 0
    f.mapping[pfns] = _NONE
    f.flags[dpfns] &= np.uint32(~_LOCKED & 0xFFFFFFFF)
    f.refcount[dpfns] -= 1  # put_page() on the ZONE_DEVICE destination
    f.counters["pgmigrate_success"] += pfns.size


def numpy_migrate(f: Flat) -> tuple[int, float]:
    """Migrate the VMA of ``f`` (numpy arrays) in place, vectorised pass by pass.

    Returns ``(descriptors, modelled copy ns)``.
    """
    _check_setup(f)
    f.counters["migrate_vma_calls"] += 1
    slots, pfns, write, src = _np_collect(f)
    f.counters["migrate_vma_collected"] += pfns.size
    _np_prepare(f, pfns)
    _np_unmap(f, pfns)
    dpfns, _dst, ndesc, model_ns = _np_alloc_and_copy(f, pfns, src)
    _np_pages(f, pfns, dpfns)
    _np_finalize_and_map(f, slots, dpfns, write)
    _np_finalize(f, slots, pfns, dpfns, write)
    return ndesc, model_ns


def field_names() -> tuple[str, ...]:
    """The Flat fields, for documentation and tests."""
    return tuple(f.name for f in fields(Flat))
