"""Peers for the benchmark: the same migration written in pure Python and in numpy.

Both peers run what ``m.device.migrate_to_device`` runs for one VMA, pass by
pass: collect, prepare, unmap, alloc (+ copy descriptors and the engine
model), pages, finalize_and_map (the device mirror) and finalize, over flat
arrays equivalent to ``m.state`` (one array per struct-page field, the PTE
words, the reverse-map links, the free stacks, the per-CPU LRU-add batches
and, when the machine keeps them, the frames' bytes). They end in exactly
the state the engine ends in, which ``bench_peers.py`` checks field by field.

They are written for the common path their benchmarks exercise and nothing
else: profile ``hmm-v25``; every page of the range present (or, for the
Python peer, a device-private entry), private anonymous, order-0, mapped
once, unlocked and unpinned; every PMD a page table; no injected allocation
failure. Any other input raises ``OffCommonPath`` (a ``NotImplementedError``)
at the point where the kernel would take another branch, so a peer never
silently computes something different.

* ``python_migrate_range`` - the kernel's algorithm over Python lists, one
  small function per kernel helper (get_page, put_page, alloc_frame, ...), as
  a straightforward Python port would be. It migrates any run of the VMA's
  pages in either direction (system to device, or device to system as
  eviction and the CPU-fault handler do), copies the pages' bytes when the
  state has them, and leaves a slot whose pool has no frame left where it was,
  as the kernel does. ``python_migrate`` is it over the whole VMA, to the
  device. bench/peers_sim.py builds a pure-Python ``me.simulate`` on it.
* ``numpy_migrate`` - each pass as whole-array numpy operations over index
  arrays (one temporary per step), relying on the common path's facts (the
  pages are distinct, on the LRU, each reverse-map chain is one slot; enough
  device frames; a one-channel linear engine model) to vectorise.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field, fields
from typing import NamedTuple

import numpy as np

from migengine.kernels import copy as kcopy
from migengine.kernels import layout as L
from migengine.kernels.copy.params import UVM_HALF_SPEED_BYTES
from migengine.kernels.state import write_untouched

# Counters a migration (and the device's CPU-fault handler) changes, by their
# state.counters names.
COUNTERS = (
    "migrate_vma_calls",
    "migrate_vma_collected",
    "lru_add_drain",
    "lru_add_drain_all",
    "tlb_flush",
    "device_calloc",
    "device_cfree",
    "device_faults",
    "pgmigrate_success",
    "pgmigrate_fail",
)
_PAGE_FIELDS = ("refcount", "mapcount", "pins", "index", "rmap", "flags", "mapping")
_ARRAYS = ("pte", "pte_next", "mirror", "free_stack", *_PAGE_FIELDS)

_KIND = int(L.PTE_KIND_MASK)
_PRESENT = int(L.PTE_PRESENT)
_MIGRATION = int(L.PTE_MIGRATION)
_DEVICE_PTE = int(L.PTE_DEVICE)
_PTE_WRITE = int(L.PTE_WRITE)
_PFN_SHIFT = int(L.PTE_PFN_SHIFT)
_PMD_TABLE = int(L.PMD_TABLE)
_LOCKED = int(L.PG_LOCKED)
_LRU = int(L.PG_LRU)
_PAGEVEC = int(L.PG_PAGEVEC)
_COMPOUND = int(L.PG_HEAD | L.PG_TAIL)
_ZONE_DEVICE = int(L.PG_ZONE_DEVICE)
_FREE = int(L.PG_FREE)
_MOVED_FLAGS = int(L.PG_DIRTY | L.PG_MLOCKED)
_ANON = int(L.MAPPING_ANON)
_FILE = int(L.MAPPING_FILE)
_NONE = int(L.MAPPING_NONE)
_UVM_HALF_SPEED = int(UVM_HALF_SPEED_BYTES)


class OffCommonPath(NotImplementedError):
    """The input needs a kernel branch the peers do not implement."""


@dataclass
class Flat:
    """The arrays and scalars a migration within one VMA touches.

    Arrays are numpy arrays (``numpy_migrate``) or Python lists
    (``python_migrate``, after :meth:`as_lists`). Frame arrays are indexed by
    pfn, PTE arrays by global PTE slot, exactly as in ``m.state``. ``slot0``,
    ``start`` and ``npages`` describe the VMA; ``pagevec`` holds each CPU's
    LRU-add batch (pfns); ``data`` the frames' bytes (frame ``pfn`` at
    ``[pfn * page_size, (pfn + 1) * page_size)``), or None when the machine
    keeps none.
    """

    pte: object
    pte_next: object
    mirror: object
    free_stack: object
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
    pagevec: list[list[int]]
    fail_alloc: int
    lay: dict[str, int]
    engine: dict[str, float]
    counters: dict[str, int] = field(default_factory=dict)
    data: bytearray | None = None

    @classmethod
    def from_workload(cls, work) -> Flat:
        """Copy the migration's inputs out of a ``migengine.bench.Workload``."""
        return cls.from_machine(work.machine, work.vma)

    @classmethod
    def from_machine(cls, m, vma) -> Flat:
        """Copy what a migration within ``vma`` reads out of machine ``m``'s state."""
        if m.profile != "hmm-v25":
            raise OffCommonPath("the peers implement the hmm-v25 profile only")
        # the peers model no untouched frames: every frame is written, on the
        # engine's side too, so that both start and end alike
        write_untouched(m.state)
        st = m.state
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
            pagevec=_pagevecs(st),
            fail_alloc=int(st.dev[0, L.DEV_FAIL_ALLOC]),
            lay={k.lower(): int(v) for k, v in m.layout._asdict().items()},
            engine={
                "chunk_pages": int(eng[kcopy.ENG_CHUNK_PAGES]),
                "channels": int(eng[kcopy.ENG_CHANNELS]),
                "setup_ns": float(eng[kcopy.ENG_SETUP_NS]),
                "gbps": float(eng[kcopy.ENG_GBPS]),
                "model": int(eng[kcopy.ENG_MODEL]),
                "curve_b": float(eng[kcopy.ENG_CURVE_B]),
            },
            counters={name: m.counters[name] for name in COUNTERS},
            data=bytearray(st.data.tobytes()) if st.sys[L.SYS_STORE_DATA] else None,
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
        if self.pagevec != _pagevecs(st):
            bad.append("pagevec")
        if self.data is not None and not np.array_equal(
            np.frombuffer(self.data, np.uint8), st.data
        ):
            bad.append("data")
        bad += [f"counter {n}" for n in COUNTERS if self.counters[n] != machine.counters[n]]
        return bad


def _pagevecs(st) -> list[list[int]]:
    """Each CPU's LRU-add batch in ``st``, as lists of pfns."""
    return [st.pagevec[cpu, : st.pagevec_n[cpu]].tolist() for cpu in range(L.NR_CPUS)]


def _tlb_flushes(f: Flat) -> int:
    """collect flushes once per PMD extent in which it installed migration entries."""
    ext = f.page_size * L.HPAGE_PMD_NR
    end = f.start + f.npages * f.page_size
    return (end - 1) // ext - f.start // ext + 1


def _check_range(f: Flat) -> None:
    """What both peers rely on: PTE tables under every PMD, no injected failure."""
    if not f.pmd_kinds_ok:
        raise OffCommonPath("collect: a THP or hole extent")
    if f.fail_alloc:
        raise OffCommonPath("alloc: injected allocation failures")


def _check_setup(f: Flat) -> None:
    """What numpy_migrate relies on besides _check_range()."""
    _check_range(f)
    if f.engine["model"] != kcopy.MODEL_LINEAR or f.engine["channels"] != 1:
        raise OffCommonPath("the numpy peer models a one-channel linear engine only")


# ============================================================== pure Python
class Migrated(NamedTuple):
    """What one ``python_migrate_range`` call did."""

    moved: list[int]  # slots of the range (0-based) whose page moved
    descriptors: int  # copy descriptors of the engine batch
    model_ns: float  # the engine model's time for them (busiest channel)
    nbytes: int  # bytes the batch copied


def _get_page(f: Flat, pfn: int) -> None:
    f.refcount[pfn] += 1


def _free_frame(f: Flat, pfn: int) -> None:
    """free_frame(): push the frame on its pool's free stack (RAM's from position 0,
    the device's from its first frame, ``nr_ram``) and mark it free."""
    if pfn < f.nr_ram:
        pos = f.ram_free
        f.ram_free += 1
    else:
        pos = f.nr_ram + f.dev_free
        f.dev_free += 1
        f.counters["device_cfree"] += 1
    f.free_stack[pos] = pfn
    f.index[pfn] = pos  # a free frame keeps its stack position
    f.flags[pfn] = (f.flags[pfn] & _ZONE_DEVICE) | _FREE
    f.mapcount[pfn] = 0
    f.mapping[pfn] = _NONE
    f.rmap[pfn] = -1


def _put_page(f: Flat, pfn: int) -> None:
    """put_page(): a RAM page is freed at 0, a device page back at 1 (the device's own)."""
    f.refcount[pfn] -= 1
    ref = f.refcount[pfn]
    if f.flags[pfn] & _ZONE_DEVICE:
        if ref == 1:
            _free_frame(f, pfn)
    elif ref == 0:
        _free_frame(f, pfn)


def _lru_cache_add(f: Flat, cpu: int, pfn: int) -> None:
    """__lru_cache_add() (4.14): the batch takes a reference; the add that fills
    it (PAGEVEC_SIZE, 14) drains it. The peers meet no compound page."""
    _get_page(f, pfn)
    f.flags[pfn] |= _PAGEVEC
    f.pagevec[cpu].append(pfn)
    if len(f.pagevec[cpu]) == L.PAGEVEC_SIZE:
        _drain_cpu(f, cpu)


def _putback_lru_page(f: Flat, cpu: int, pfn: int) -> None:
    """putback_lru_page() (4.14): lru_cache_add() on this CPU, then put_page()."""
    _lru_cache_add(f, cpu, pfn)
    _put_page(f, pfn)


def _release(f: Flat, cpu: int, pfn: int) -> None:
    """finalize's release: put_page() for a device page, putback_lru_page() for RAM."""
    if f.flags[pfn] & _ZONE_DEVICE:
        _put_page(f, pfn)
    else:
        _putback_lru_page(f, cpu, pfn)


def _drain_cpu(f: Flat, cpu: int) -> None:
    """__pagevec_lru_add(): one CPU's LRU-add batch onto the LRU, its references dropped."""
    for pfn in f.pagevec[cpu]:
        f.flags[pfn] = (f.flags[pfn] & ~_PAGEVEC) | _LRU
        _put_page(f, pfn)
    f.pagevec[cpu] = []


def _lru_add_drain_all(f: Flat) -> None:
    f.counters["lru_add_drain_all"] += 1
    for cpu in range(L.NR_CPUS):
        _drain_cpu(f, cpu)


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


def _alloc_frame(f: Flat, device: bool) -> int:
    """alloc_locked_page(): the top of the device's or RAM's free stack, taken and
    locked (one reference more), or -1 when that pool is empty."""
    if device:
        if f.dev_free == 0:
            return -1
        pos = f.nr_ram + f.dev_free - 1
        f.dev_free -= 1
        f.counters["device_calloc"] += 1
    else:
        if f.ram_free == 0:
            return -1
        pos = f.ram_free - 1
        f.ram_free -= 1
    pfn = f.free_stack[pos]
    f.free_stack[pos] = -1
    f.flags[pfn] = (f.flags[pfn] & _ZONE_DEVICE) | _LOCKED
    f.mapcount[pfn] = 0
    f.pins[pfn] = 0
    f.mapping[pfn] = _NONE
    f.index[pfn] = 0
    f.rmap[pfn] = -1
    f.refcount[pfn] += 1
    return pfn


def _py_collect(f: Flat, first: int, n: int, src: list[int], dst: list[int]) -> int:
    """migrate_vma_collect() over the VMA's slots ``[first, first + n)``: each present
    page or device-private entry is locked and replaced by a migration entry (a
    device entry's read-only: 4.14 takes its write bit from the swap PTE); one
    TLB flush per PMD extent in which a present PTE went. The walk's notifier
    range wipes the device's mirror of the range (4.14). Returns cpages."""
    lay = f.lay
    for slot in range(f.slot0 + first, f.slot0 + first + n):
        f.mirror[slot] = -1
    shift = lay["shift"]
    cpages = 0
    page0 = f.start // f.page_size + first  # the range's first virtual page number
    k = 0
    while k < n:
        stop = min(n, k + L.HPAGE_PMD_NR - (page0 + k) % L.HPAGE_PMD_NR)  # PMD extent end
        unmapped = False
        for i in range(k, stop):
            slot = f.slot0 + first + i
            pte = f.pte[slot]
            kind = pte & _KIND
            pfn = pte >> _PFN_SHIFT
            if kind == _DEVICE_PTE:
                mpfn = (pfn << shift) | lay["valid"] | lay["migrate"] | lay["device"]
            elif kind == _PRESENT and pfn != f.zero_pfn:
                mpfn = (pfn << shift) | lay["valid"] | lay["migrate"]
                unmapped = True
            else:
                raise OffCommonPath("collect: a hole, the zero page, a swap or migration entry")
            if f.mapping[pfn] == _NONE or f.flags[pfn] & _COMPOUND:
                raise OffCommonPath("collect: no mapping or a compound page")
            write = pte & _PTE_WRITE
            if write:
                mpfn |= lay["write"]
            if kind == _DEVICE_PTE:
                write = 0
            _get_page(f, pfn)
            cpages += 1
            if not _trylock(f, pfn):
                raise OffCommonPath("collect: page locked by someone else")
            f.pte[slot] = (pfn << _PFN_SHIFT) | _MIGRATION | write
            f.mapcount[pfn] -= 1
            _put_page(f, pfn)
            dst[i] = 0
            src[i] = mpfn | lay["locked"]
        if unmapped:
            f.counters["tlb_flush"] += 1
        k = stop
    return cpages


def _py_prepare(f: Flat, cpu: int, n: int, src: list[int]) -> None:
    """migrate_vma_prepare(): this CPU's LRU-add batch drained, then each collected
    RAM page is isolated from the LRU (every CPU's batch drained once, at the first
    page found off it) and checked for pins; device pages skip both."""
    lay = f.lay
    f.counters["lru_add_drain"] += 1
    _drain_cpu(f, cpu)
    drained_all = False
    for k in range(n):
        mpfn = src[k]
        if not mpfn & lay["valid"]:
            continue
        pfn = mpfn >> lay["shift"]
        if not mpfn & lay["locked"]:
            raise OffCommonPath("prepare: trylock here")
        if f.flags[pfn] & _ZONE_DEVICE:
            continue  # no LRU, and migrate_vma_check_page() passes a device page
        if not f.flags[pfn] & _LRU and not drained_all:
            _lru_add_drain_all(f)
            drained_all = True
        if not f.flags[pfn] & _LRU:
            raise OffCommonPath("prepare: page isolated by someone else")
        f.flags[pfn] &= ~_LRU  # isolate_lru_page()
        _get_page(f, pfn)
        _put_page(f, pfn)  # drop the collect reference
        if not _check_page(f, pfn):
            raise OffCommonPath("prepare: pinned page")


def _py_unmap(f: Flat, n: int, src: list[int]) -> None:
    lay = f.lay
    for k in range(n):
        mpfn = src[k]
        if not mpfn & lay["valid"] or not mpfn & lay["migrate"]:
            continue
        pfn = mpfn >> lay["shift"]
        if f.mapcount[pfn] > 0:
            raise OffCommonPath("unmap: still mapped elsewhere (try_to_unmap)")
        if not _check_page(f, pfn):
            raise OffCommonPath("unmap: pinned page")


def _py_descriptors(sp: list[int], dp: list[int], chunk: int) -> list[tuple[int, int, int]]:
    """build_descriptors(): (source pfn, destination pfn, pages) of each run of pairs
    contiguous on both sides, at most ``chunk`` pages long."""
    descs: list[tuple[int, int, int]] = []
    if not sp:
        return descs
    s0, d0, run = sp[0], dp[0], 1
    for i in range(1, len(sp)):
        if run < chunk and sp[i] == s0 + run and dp[i] == d0 + run:
            run += 1
            continue
        descs.append((s0, d0, run))
        s0, d0, run = sp[i], dp[i], 1
    descs.append((s0, d0, run))
    return descs


def _descriptor_ns(eng: dict[str, float], nbytes: int) -> float:
    """descriptor_ns(): one descriptor's modelled time, linear or UVM-Smart's curve."""
    if nbytes <= 0:
        return eng["setup_ns"]
    if eng["model"] == kcopy.MODEL_UVM_CURVE:
        speed = 2.0 / math.pi * eng["gbps"] * math.atan(eng["curve_b"] * (nbytes / 1024.0))
        if nbytes >= _UVM_HALF_SPEED:
            speed /= 2.0
        return eng["setup_ns"] + nbytes / speed
    return eng["setup_ns"] + nbytes / eng["gbps"]


def _py_copy(f: Flat, sp: list[int], dp: list[int]) -> tuple[int, float]:
    """The copy engine's batch: descriptors, their bytes moved (when the state keeps
    bytes), each charged to the least-loaded channel. Returns (descriptors, busiest
    channel's ns)."""
    eng = f.engine
    ps = f.page_size
    descs = _py_descriptors(sp, dp, eng["chunk_pages"])
    data = f.data
    load = [0.0] * max(eng["channels"], 1)
    for s0, d0, run in descs:
        if data is not None:
            data[d0 * ps : (d0 + run) * ps] = data[s0 * ps : (s0 + run) * ps]
        c = load.index(min(load))
        load[c] += _descriptor_ns(eng, run * ps)
    return len(descs), (max(load) if descs else 0.0)


def _py_alloc_and_copy(
    f: Flat, to_device: bool, n: int, src: list[int], dst: list[int]
) -> tuple[int, float, int]:
    """The device's alloc_and_copy callback for one direction: a locked destination
    for each MIGRATE slot (a device frame, or a RAM frame for a device page going
    back), ``dst`` written, then one engine batch. A slot its pool has no frame
    for keeps ``dst = 0`` and stays where it is. Returns (descriptors, model ns,
    bytes copied)."""
    lay = f.lay
    sp: list[int] = []
    dp: list[int] = []
    for k in range(n):
        mpfn = src[k]
        dst[k] = 0
        if not mpfn & lay["migrate"]:
            continue
        if not mpfn & lay["valid"]:
            raise OffCommonPath("alloc: a hole (zero-fill and insert)")
        spfn = mpfn >> lay["shift"]
        if (spfn >= f.nr_ram) == to_device:
            raise OffCommonPath("alloc: a source already on the destination's side")
        dpfn = _alloc_frame(f, to_device)
        if dpfn < 0:
            if not to_device:
                raise OffCommonPath("alloc: no RAM frame (dst = MIGRATE_PFN_ERROR)")
            continue
        sp.append(spfn)
        dp.append(dpfn)
        dst[k] = (dpfn << lay["shift"]) | lay["valid"] | lay["locked"] | (mpfn & lay["write"])
    ndesc, model_ns = _py_copy(f, sp, dp)
    return ndesc, model_ns, len(sp) * f.page_size


def _py_pages(f: Flat, n: int, src: list[int], dst: list[int]) -> None:
    lay = f.lay
    for k in range(n):
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
        # migrate_page_move_mapping(): -EAGAIN unless the isolation (or collect)
        # reference, plus the device's own for a device page, is all there is
        expected = 2 if f.flags[page] & _ZONE_DEVICE else 1
        if f.refcount[page] != expected:
            src[k] &= ~lay["migrate"]
            continue
        f.index[newpage] = f.index[page]
        f.mapping[newpage] = f.mapping[page]
        moved = f.flags[page] & _MOVED_FLAGS
        f.flags[page] &= ~_MOVED_FLAGS
        f.flags[newpage] |= moved


def _py_finalize_and_map(
    f: Flat, to_device: bool, first: int, n: int, src: list[int], dst: list[int]
) -> None:
    """dmirror's finalize_and_map: a page that moved to the device enters its mirror
    page table; one that moved back leaves it."""
    lay = f.lay
    for k in range(n):
        if not src[k] & lay["migrate"] or not dst[k] & lay["valid"]:
            continue
        slot = f.slot0 + first + k
        if not to_device:
            f.mirror[slot] = -1
            continue
        dpfn = dst[k] >> lay["shift"]
        if dpfn >= f.nr_ram:
            f.mirror[slot] = (dpfn << 1) | (1 if dst[k] & lay["write"] else 0)


def _py_remove_migration_ptes(f: Flat, page: int, newpage: int) -> None:
    """remove_migration_ptes(page, newpage): each migration entry of ``page`` maps
    ``newpage`` (a device entry for a device page, a present PTE otherwise); for a
    new page the slots move to its reverse-map chain."""
    kind = _DEVICE_PTE if f.flags[newpage] & _ZONE_DEVICE else _PRESENT
    slot = f.rmap[page]
    prev = -1
    while slot != -1:
        nxt = f.pte_next[slot]
        pte = f.pte[slot]
        if pte & _KIND == _MIGRATION and pte >> _PFN_SHIFT == page:
            f.pte[slot] = (newpage << _PFN_SHIFT) | kind | (pte & _PTE_WRITE)
            if newpage != page and f.mirror[slot] >= 0 and f.mirror[slot] >> 1 == page:
                f.mirror[slot] = -1  # the page left the device: the mirror forgets it
            f.mapcount[newpage] += 1
            _get_page(f, newpage)
            if newpage == page:
                prev = slot
            else:
                if prev == -1:
                    f.rmap[page] = nxt
                else:
                    f.pte_next[prev] = nxt
                f.pte_next[slot] = f.rmap[newpage]  # rmap_add()
                f.rmap[newpage] = slot
        else:
            prev = slot
        slot = nxt


def _py_finalize(f: Flat, cpu: int, n: int, src: list[int], dst: list[int]) -> list[int]:
    """migrate_vma_finalize(): each migration entry maps the new page where the slot
    kept MIGRATE with a destination, the old page otherwise; both unlocked and
    released. Returns the slots that moved."""
    lay = f.lay
    moved: list[int] = []
    for k in range(n):
        if not src[k] & lay["valid"]:
            raise OffCommonPath("finalize: a filled hole")
        page = src[k] >> lay["shift"]
        newpage = dst[k] >> lay["shift"] if dst[k] & lay["valid"] else -1
        if not src[k] & lay["migrate"] or newpage < 0:
            if newpage >= 0:  # a destination was offered, in vain
                _unlock(f, newpage)
                _put_page(f, newpage)
                f.counters["pgmigrate_fail"] += 1
            newpage = page
        _py_remove_migration_ptes(f, page, newpage)
        _unlock(f, page)
        _release(f, cpu, page)
        if newpage != page:
            _unlock(f, newpage)
            _release(f, cpu, newpage)
            f.counters["pgmigrate_success"] += 1
            moved.append(k)
    return moved


def python_migrate_range(
    f: Flat, first: int, npages: int, to_device: bool, cpu: int = L.CPU_DRIVER
) -> Migrated:
    """migrate_vma() of the VMA's pages ``[first, first + npages)`` with the device's
    callbacks, in place over ``f`` (lists, from :meth:`Flat.as_lists`), run on
    ``cpu`` (the driver's; the faulting CPU's for the CPU-fault handler).

    To the device every page must be present in RAM; back to system memory
    (eviction, the CPU-fault handler) every page must be on the device.
    """
    _check_range(f)
    src = [0] * npages
    dst = [0] * npages
    f.counters["migrate_vma_calls"] += 1
    f.counters["migrate_vma_collected"] += _py_collect(f, first, npages, src, dst)
    _py_prepare(f, cpu, npages, src)
    _py_unmap(f, npages, src)
    ndesc, model_ns, nbytes = _py_alloc_and_copy(f, to_device, npages, src, dst)
    _py_pages(f, npages, src, dst)
    _py_finalize_and_map(f, to_device, first, npages, src, dst)
    moved = _py_finalize(f, cpu, npages, src, dst)
    return Migrated(moved, ndesc, model_ns, nbytes)


def python_migrate(f: Flat) -> tuple[int, float]:
    """Migrate the whole VMA of ``f`` (lists, from :meth:`Flat.as_lists`) to the
    device in place. Returns ``(descriptors, modelled copy ns)``."""
    done = python_migrate_range(f, 0, f.npages, True)
    return done.descriptors, done.model_ns


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
    _drain_cpu(f, L.CPU_DRIVER)  # at most 13 pages: the local lru_add_drain()
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
    # putback_lru_page() in slot order through the driver CPU's batch, which
    # prepare emptied: each add that fills it (every PAGEVEC_SIZE-th) drains it,
    # freeing the sources in it in slot order; the last ones wait in it.
    if np.any(f.refcount[pfns] != 1):
        raise OffCommonPath("finalize: a source still referenced")
    waiting = pfns.size % L.PAGEVEC_SIZE
    freed = pfns[: pfns.size - waiting]
    f.refcount[freed] -= 1
    positions = f.ram_free + np.arange(freed.size)
    f.free_stack[positions] = freed
    f.index[freed] = positions
    f.ram_free += freed.size
    f.flags[freed] = (f.flags[freed] & np.uint32(_ZONE_DEVICE)) | np.uint32(_FREE)
    f.mapcount[freed] = 0
    f.mapping[freed] = _NONE
    left = pfns[pfns.size - waiting :]
    f.flags[left] |= np.uint32(_PAGEVEC)
    f.pagevec[L.CPU_DRIVER] = left.tolist()
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
