"""A world of processes on one Machine, with a shadow copy of every byte they map.

The machinery shared by the API state machine (``properties/test_api_state_machine.py``,
driven by hypothesis) and the soak (``soak/test_soak.py``, driven by a seeded
generator): each public operation a user makes is one ``op_*`` method that draws
its arguments from a :class:`Draw`, calls the API, checks the outcome against
what api.md documents, and updates the shadow. After every operation
:meth:`World.step` runs ``m.check()`` and compares every byte the operation could
have changed with the shadow; :meth:`World.verify_all` compares all of them.

The shadow is one ``bytearray`` per mapping (a :class:`View`, one per VMA of
each process), viewed as numpy ``uint8``. Private anonymous mappings get a copy
on ``fork`` (copy-on-write); shmem and file mappings share one array between
parent and child, as they share the page cache. A :class:`Family` is every view
that descends from one ``mmap`` through forks: they may share frames, so an
operation on one is checked on all of them.

Bytes are compared without faulting (:func:`peek`): a CPU read would migrate
device pages back, swap pages in and map zero pages, and so erase the state the
next operation should meet. ``op_read`` is the CPU read, compared too.
"""

from __future__ import annotations

import random
import warnings
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

import numpy as np

import migengine as me
from migengine import kernels
from migengine.kernels import dst_check as kdst
from migengine.kernels import layout as L
from migengine.migrate import InvalidDstWarning
from tests.helpers import comparable_state, copy_state, written_state

# test_driver_mistakes' @njit drivers (cached, and compiled by that suite anyway);
# imported here, not inside a rule: the module's @given tests would count as nested.
from tests.scenarios.test_driver_mistakes import (
    _njit_alloc,
    _njit_alloc_then_raise,
    _njit_nothing,
    _python_style_callback,
    njit_private,
)

T = TypeVar("T")

# Flags a user passes to mmap (api.md, "Processes and address spaces"); the
# VM_SPECIAL and hugetlb ones make migrate_vma() an EINVAL.
MMAP_FLAGS = (0, 0, 0, 0, 0, me.VM_LOCKED, me.VM_UFFD_MISSING, me.VM_IO, me.VM_HUGETLB)
DOCUMENTED = (me.MigengineError, TypeError, ValueError)  # api.md, "Exceptions"


class Draw(Protocol):
    """Where an operation's arguments come from: hypothesis or a seeded generator."""

    def int(self, lo: int, hi: int) -> int:
        """An int in ``[lo, hi]``."""
        ...

    def chance(self, p: float) -> bool:
        """True with probability ``p`` (hypothesis: whichever it explores)."""
        ...


def pick(draw: Draw, seq: Sequence[T]) -> T:
    return seq[draw.int(0, len(seq) - 1)]


class RandomDraw:
    """A seeded generator's draws (the soak): fast and reproducible."""

    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)

    def int(self, lo: int, hi: int) -> int:
        return self.rng.randint(lo, hi)

    def chance(self, p: float) -> bool:
        return self.rng.random() < p


@dataclass(eq=False)
class Family:
    """Every mapping descended from one mmap (forks keep the addresses)."""

    kind: str
    prot: str
    flags: int
    thp: bool
    views: list[View] = field(default_factory=list)

    @property
    def shared(self) -> bool:
        return self.kind != "anon"


@dataclass(eq=False)
class View:
    """One VMA of one process and the bytes it must hold."""

    proc: Proc
    vma: me.Vma
    family: Family
    shadow: np.ndarray  # uint8 over a bytearray; one array for all views of a shared family

    @property
    def size(self) -> int:
        return self.vma.end - self.vma.start

    def allows(self, write: bool) -> bool:
        """access_error(): whether the VMA's protection lets this access through."""
        prot = self.family.prot
        return prot == "rw" or (prot == "r" and not write)


@dataclass(eq=False)
class Proc:
    """A process and its views, in address order."""

    process: me.Process
    views: list[View] = field(default_factory=list)

    def view_at(self, addr: int) -> View | None:
        for v in self.views:
            if v.vma.start <= addr < v.vma.end:
                return v
        return None


Region = tuple[Family, int, int]  # bytes [lo, hi) of a family's mapping


class Failure(AssertionError):
    """The engine broke a documented promise (the message says which)."""


class LostBytes(Failure):
    """Bytes that do not read back as written: ``lost`` of them in the region."""

    def __init__(self, lost: int, message: str) -> None:
        super().__init__(message)
        self.lost = lost


# ---------------------------------------------------------------- reading without faulting
def peek(m: me.Machine, view: View, lo: int = 0, hi: int | None = None) -> np.ndarray:
    """The bytes ``[lo, hi)`` of ``view`` as a CPU load would see them, read from
    the flat state without faulting: the PMD (a THP or the huge zero page), else
    the PTE (a present or device-private entry: its frame; swap: the slot's bytes;
    none: zeroes, or the page-cache page of a shared mapping).

    An independent reading of kernels/state.py's documented layout, so a state the
    engine's own walkers misread still shows up as wrong bytes.
    """
    ps = m.page_size
    hi = view.size if hi is None else hi
    first, last = lo // ps, (hi + ps - 1) // ps
    n = last - first
    st = m.state
    rec = st.vma[view.vma.index]
    start = int(rec["start"])
    pages = np.arange(first, last, dtype=np.int64)
    vpn = start // ps + pages
    # pmd_slot(): the VMA's first PMD slot covers the extent holding its start
    pmd_i = (vpn >> L.HPAGE_PMD_ORDER) - ((start // ps) >> L.HPAGE_PMD_ORDER)
    pmd = st.pmd[int(rec["pmd_base"]) + pmd_i]
    pte = st.pte[int(rec["pte_base"]) + first : int(rec["pte_base"]) + last]
    pmd_kind = pmd & L.PMD_KIND_MASK
    pte_kind = pte & L.PTE_KIND_MASK
    table = pmd_kind == L.PMD_TABLE
    frame = np.full(n, -1, np.int64)
    thp = pmd_kind == L.PMD_THP
    frame[thp] = (pmd[thp] >> L.PTE_PFN_SHIFT).astype(np.int64) + (vpn[thp] % L.HPAGE_PMD_NR)
    mapped = table & ((pte_kind == L.PTE_PRESENT) | (pte_kind == L.PTE_DEVICE))
    frame[mapped] = (pte[mapped] >> L.PTE_PFN_SHIFT).astype(np.int64)
    odd = table & ~mapped & (pte_kind != L.PTE_NONE) & (pte_kind != L.PTE_SWAP)
    if odd.any():
        i = int(np.argmax(odd))
        raise Failure(
            f"{view.vma} page {first + i}: PTE kind {int(pte_kind[i])} between operations "
            "(a migration entry left behind, or an error entry)"
        )
    hole = (pmd_kind == L.PMD_NONE) | (table & (pte_kind == L.PTE_NONE))
    if view.family.shared and hole.any():  # do_shared_fault() would map the cache page
        pc = int(rec["pcache_base"]) + int(rec["pgoff"]) + pages[hole]
        frame[hole] = st.pcache[pc]
    out = np.zeros((n, ps), np.uint8)
    data = st.data.reshape(-1, ps)
    have = frame >= 0
    out[have] = data[frame[have]]
    swapped = table & (pte_kind == L.PTE_SWAP)
    if swapped.any():
        slots = (pte[swapped] >> L.PTE_PFN_SHIFT).astype(np.int64)
        out[swapped] = st.swap_data.reshape(-1, ps)[slots]
    flat = out.reshape(-1)
    return flat[lo - first * ps : hi - first * ps]


def payload(tag: int, n: int) -> np.ndarray:
    """Distinct bytes for each write (``tag`` differs), cheap to make."""
    return ((np.arange(n, dtype=np.int64) * 131 + tag * 7 + (tag >> 8)) % 251).astype(np.uint8)


# ---------------------------------------------------------------- the world
class World:
    """A Machine, its processes, the shadow of their bytes, and the holds others
    have on its pages (pins, locks, isolations, a driver's pages)."""

    def __init__(
        self,
        profile: str,
        *,
        ram: int = 4096,
        device: int = 512,
        page_size: int = 64,
        max_procs: int = 4,
        max_vmas: int = 5,
        max_mapped: int | None = None,
    ) -> None:
        self.m = me.Machine(ram, device, page_size=page_size, profile=profile)
        self.ps = page_size
        self.max_procs = max_procs
        self.max_vmas = max_vmas
        # Pages all views may map together: past RAM some faults run out of memory,
        # which is exercised, but not all the time.
        self.max_mapped = ram * 9 // 10 if max_mapped is None else max_mapped
        self.procs: list[Proc] = [Proc(self.m.new_process())]
        self.families: list[Family] = []
        self.pins: list[int] = []
        self.locks: list[int] = []
        self.isolated: list[int] = []
        self.held: list[int] = []  # pages a driver allocated (alloc_page) and holds
        self.tag = 0
        self.armed = 0  # injected allocation failures when the current operation began
        self.stats: Counter[str] = Counter()
        self.bytes_compared = 0
        self.free0 = (self.m.free_pages(), self.m.free_pages(device=True))
        self.other: me.Process | None = None  # another machine's, made on first use

    # ------------------------------------------------------------ bookkeeping
    @property
    def views(self) -> list[View]:
        return [v for f in self.families for v in f.views]

    def mapped_pages(self) -> int:
        return sum(v.size for v in self.views) // self.ps

    def note(self, what: str) -> None:
        self.stats[what] += 1

    def next_tag(self) -> int:
        self.tag += 1
        return self.tag

    def held_by_others(self) -> bool:
        """Pins, locks or isolations by someone else: a fault or migration meeting
        one may fail (would block, SIGBUS) without the engine being at fault."""
        return bool(self.pins or self.locks or self.isolated)

    def fail_armed(self) -> int:
        return int(self.m.state.dev[0, L.DEV_FAIL_ALLOC])

    def pick_view(self, draw: Draw, pred: Callable[[View], bool] | None = None) -> View | None:
        views = [v for v in self.views if pred is None or pred(v)]
        return pick(draw, views) if views else None

    def span(self, draw: Draw, view: View) -> tuple[int, int]:
        """A page-aligned range in ``view``: all of it, a few pages, or many."""
        npages = view.vma.npages
        if draw.chance(0.2):
            return view.vma.start, view.vma.end
        first = draw.int(0, npages - 1)
        count = draw.int(1, min(npages - first, 8 if draw.chance(0.5) else 600))
        return view.vma.start + first * self.ps, view.vma.start + (first + count) * self.ps

    def regions(self, proc: Proc, a: int, b: int, *, extents: bool = False) -> list[Region]:
        """The family ranges ``[a, b)`` of ``proc`` covers (whole PMD extents of a
        THP family when ``extents``: a THP copy touches all of it)."""
        out = []
        for v in proc.views:
            lo, hi = max(a, v.vma.start), min(b, v.vma.end)
            if lo >= hi:
                continue
            if extents and v.family.thp:  # PMD extents are aligned in the address space
                ext = self.ps * L.HPAGE_PMD_NR
                lo, hi = max(v.vma.start, lo - lo % ext), min(v.vma.end, hi + (-hi) % ext)
            out.append((v.family, lo - v.vma.start, hi - v.vma.start))
        return out

    def everything(self) -> list[Region]:
        return [(f, 0, f.views[0].size) for f in self.families if f.views]

    def fault_point(self, proc: Proc, a: int, b: int, write: bool) -> int | None:
        """Where a CPU access to ``[a, b)`` must stop with SegFault (no VMA, or one
        whose protection forbids it; access_error() runs before any fault), or None."""
        pos = a
        while pos < b:
            v = proc.view_at(pos)
            if v is None or not v.allows(write):
                return pos
            pos = v.vma.end
        return None

    def expected(self, proc: Proc, a: int, b: int) -> np.ndarray:
        """The shadow's bytes for ``[a, b)`` of ``proc`` (every byte mapped)."""
        out = np.empty(b - a, np.uint8)
        pos = a
        while pos < b:
            v = proc.view_at(pos)
            assert v is not None
            stop = min(b, v.vma.end)
            out[pos - a : stop - a] = v.shadow[pos - v.vma.start : stop - v.vma.start]
            pos = stop
        return out

    # ------------------------------------------------------------ checks
    def verify(self, regions: list[Region]) -> None:
        """Every view of each region's family reads, without faulting, as the shadow."""
        for fam, lo, hi in regions:
            for v in fam.views:
                got = peek(self.m, v, lo, hi)
                want = v.shadow[lo:hi]
                if not np.array_equal(got, want):
                    bad = int(np.argmax(got != want)) + lo
                    raise LostBytes(
                        int((got != want).sum()),
                        f"pid {v.proc.process.pid} {fam.kind} {v.vma}: byte at "
                        f"{v.vma.start + bad:#x} (page {bad // self.ps}) is "
                        f"{int(got[bad - lo])}, the shadow says {int(want[bad - lo])}",
                    )
                self.bytes_compared += hi - lo

    def verify_all(self) -> None:
        self.verify(self.everything())

    def step(self, op: Callable[[Draw], list[Region] | None], draw: Draw) -> None:
        """One operation, then ``m.check()`` and the bytes it could have changed."""
        self.armed = self.fail_armed()  # what excusable() may blame, as it was before
        regions = op(draw)
        self.m.check()
        self.note("check")
        if regions:
            self.verify(regions)

    def unexpected(self, what: str, exc: BaseException) -> Failure:
        return Failure(f"{what}: unexpected {type(exc).__name__}: {exc}")

    def excusable(self, exc: BaseException, what: str) -> None:
        """Raise Failure unless ``exc`` is an outcome the situation explains: SigBus
        with injected allocation failures or no RAM to fault back into, OutOfMemory
        with no free frame, a fault that would block on a page someone else holds."""
        if isinstance(exc, me.SigBus) and (self.armed or self.m.free_pages() < 2):
            self.note(f"{what}: SigBus")
            return
        if isinstance(exc, me.SigBus) and self.held_by_others():
            self.note(f"{what}: SigBus (held)")
            return
        if isinstance(exc, me.OutOfMemory) and (
            self.m.free_pages() == 0 or self.held_by_others()  # a pinned THP cannot split
        ):
            self.note(f"{what}: OutOfMemory")
            return
        if type(exc) is me.MigengineError and "would block" in str(exc) and self.held_by_others():
            self.note(f"{what}: would block")
            return
        raise self.unexpected(what, exc)

    # ------------------------------------------------------------ mmap, fork
    def op_new_process(self, draw: Draw) -> None:
        """Machine.new_process() (api.md "Processes and address spaces")."""
        if len(self.procs) < self.max_procs:
            self.procs.append(Proc(self.m.new_process()))

    def op_mmap(self, draw: Draw) -> list[Region] | None:
        """p.mmap(npages, prot=, kind=, flags=, addr=, thp=): anonymous, shmem and
        file mappings, THP, each protection, mlocked/uffd/special flags; a third
        placed right after another VMA, so accesses and migrations cross VMAs."""
        proc = pick(draw, self.procs)
        if len(proc.views) >= self.max_vmas:
            return None
        thp = draw.chance(0.15)
        kind = "anon" if thp else pick(draw, ("anon", "anon", "shmem", "file"))
        prot = pick(draw, ("rw", "rw", "rw", "r", "none"))
        flags = pick(draw, MMAP_FLAGS)
        if thp:
            npages = L.HPAGE_PMD_NR * draw.int(1, 2) + draw.int(0, 40)
        else:
            npages = draw.int(1, pick(draw, (16, 48, 48, 300, 1100)))
        if self.mapped_pages() + npages > self.max_mapped // 2:  # leave room for forks
            return None
        addr = None
        if proc.views and draw.chance(0.3):
            addr = max(v.vma.end for v in proc.views)  # adjacent to the last VMA
        vma = proc.process.mmap(npages, prot=prot, kind=kind, flags=flags, addr=addr, thp=thp)
        fam = Family(kind, prot, flags, thp)
        view = View(proc, vma, fam, np.frombuffer(bytearray(npages * self.ps), np.uint8))
        fam.views.append(view)
        self.families.append(fam)
        proc.views.append(view)
        proc.views.sort(key=lambda v: v.vma.start)
        self.note(f"mmap {kind}{' thp' if thp else ''} {prot}")
        regions = [(fam, 0, view.size)]
        if thp and prot == "rw" and draw.chance(0.7):
            try:  # THPs while memory is not fragmented yet, as MAP_POPULATE would
                proc.process.populate(vma.start, vma.end)
            except DOCUMENTED as exc:
                self.excusable(exc, "populate thp")
            if draw.chance(0.3):  # and a fork while they are whole (THP copy-on-write)
                regions += self.op_fork(draw, proc) or []
        return regions

    def op_fork(self, draw: Draw, parent: Proc | None = None) -> list[Region] | None:
        """p.fork(): the child shares private anonymous pages copy-on-write (its
        shadow is a copy) and shmem/file pages (the same shadow)."""
        if len(self.procs) >= self.max_procs:
            return None
        parent = pick(draw, self.procs) if parent is None else parent
        if self.mapped_pages() + sum(v.size for v in parent.views) // self.ps > self.max_mapped:
            return None
        child = parent.process.fork()
        kid = Proc(child)
        by_start = {v.vma.start: v for v in parent.views}
        for vma in child.vmas():
            pv = by_start[vma.start]
            shadow = pv.shadow
            if not pv.family.shared:  # copy-on-write: the child's own copy from now on
                shadow = np.frombuffer(bytearray(pv.shadow), np.uint8)
            view = View(kid, vma, pv.family, shadow)
            pv.family.views.append(view)
            kid.views.append(view)
        kid.views.sort(key=lambda v: v.vma.start)
        self.procs.append(kid)
        self.note("fork")
        regions = [(v.family, 0, v.size) for v in kid.views]
        ext = self.ps * L.HPAGE_PMD_NR
        huge_at = [
            (v, a)
            for v in parent.views + kid.views
            if v.family.thp and v.allows(True)
            for a in range(v.vma.start - v.vma.start % ext, v.vma.end, ext)
            if a >= v.vma.start and v.proc.process.translate(a).huge
        ]
        if huge_at and draw.chance(0.7):
            # A store to a THP the fork left shared, before anything splits it:
            # do_huge_pmd_wp_page() copies it (or falls back to 512 small pages).
            view, first = pick(draw, huge_at)
            addr = first + draw.int(0, L.HPAGE_PMD_NR - 1) * self.ps
            huge = view.proc.process.translate(addr).huge
            data = payload(self.next_tag(), draw.int(1, 3 * self.ps))
            data = data[: view.vma.end - addr]
            try:
                view.proc.process.write(addr, data.tobytes())
            except DOCUMENTED as exc:
                self.excusable(exc, "thp cow")
                self._partial_write(view.proc, addr, addr + data.size, data)
            else:
                self._store(view.proc, addr, data)
                self.note(f"fork: thp cow{' (shared THP)' if huge else ''}")
        return regions

    # ------------------------------------------------------------ CPU accesses
    def _access_range(self, draw: Draw, view: View) -> tuple[int, int]:
        """An access inside ``view``; one in five runs past its end (into the next
        VMA, or a gap), one in ten is many pages long."""
        a = view.vma.start + draw.int(0, view.size - 1)
        if draw.chance(0.2):
            b = view.vma.end + draw.int(1, 3 * self.ps)
        elif draw.chance(0.1):
            b = min(view.vma.end, a + draw.int(1, 64 * self.ps))
        else:
            b = min(view.vma.end, a + draw.int(1, 3 * self.ps))
        return a, b

    def op_read(self, draw: Draw) -> list[Region] | None:
        """p.read(addr, n): a CPU load, across pages and VMAs; it must return the
        shadow's bytes, or SegFault exactly where no VMA or its prot allows it."""
        view = self.pick_view(draw)
        if view is None:
            return None
        proc = view.proc
        a, b = self._access_range(draw, view)
        stop = self.fault_point(proc, a, b, write=False)
        try:
            got = proc.process.read(a, b - a)
        except me.SegFault as exc:
            if stop is None:
                raise self.unexpected("read", exc) from exc
            self.note("read: SegFault")
        except DOCUMENTED as exc:
            self.excusable(exc, "read")
        else:
            if stop is not None:
                raise Failure(f"read [{a:#x}, {b:#x}) succeeded; SegFault due at {stop:#x}")
            want = self.expected(proc, a, b)
            if got != want.tobytes():
                bad = next(i for i in range(b - a) if got[i] != want[i])
                raise Failure(
                    f"read at {a + bad:#x} (pid {proc.process.pid}) gave {got[bad]}, "
                    f"the shadow says {int(want[bad])}"
                )
            self.bytes_compared += b - a
            self.note("read")
        return self.regions(proc, a, b, extents=True)

    def op_write(self, draw: Draw) -> list[Region] | None:
        """p.write(addr, data): a CPU store, across pages and VMAs. A store that
        faults stops at a page boundary (access_vm()): the bytes before it are
        written, none after; SegFault exactly where the first VMA forbids it."""
        view = self.pick_view(draw)
        if view is None:
            return None
        proc = view.proc
        a, b = self._access_range(draw, view)
        data = payload(self.next_tag(), b - a)
        stop = self.fault_point(proc, a, b, write=True)
        try:
            proc.process.write(a, data.tobytes())
        except me.SegFault as exc:
            if stop is None:
                raise self.unexpected("write", exc) from exc
            self.note("write: SegFault")
            self._partial_write(proc, a, stop, data)
        except DOCUMENTED as exc:
            self.excusable(exc, "write")
            self._partial_write(proc, a, b if stop is None else stop, data)
        else:
            if stop is not None:
                raise Failure(f"write [{a:#x}, {b:#x}) succeeded; SegFault due at {stop:#x}")
            self._store(proc, a, data)
            self.note("write")
        return self.regions(proc, a, b, extents=True)

    def _store(self, proc: Proc, a: int, data: np.ndarray) -> None:
        pos, b = a, a + data.size
        while pos < b:
            v = proc.view_at(pos)
            assert v is not None
            stop = min(b, v.vma.end)
            v.shadow[pos - v.vma.start : stop - v.vma.start] = data[pos - a : stop - a]
            pos = stop

    def _partial_write(self, proc: Proc, a: int, limit: int, data: np.ndarray) -> None:
        """After a store that faulted: the machine holds ``data[:k]`` then the old
        bytes, for one page-boundary ``k`` before ``limit`` (read without faulting)."""
        if limit <= a:
            return
        n = limit - a
        got = np.empty(n, np.uint8)
        pos = a
        while pos < limit:
            v = proc.view_at(pos)
            assert v is not None
            stop = min(limit, v.vma.end)
            got[pos - a : stop - a] = peek(self.m, v, pos - v.vma.start, stop - v.vma.start)
            pos = stop
        old = self.expected(proc, a, limit)
        new = data[:n]
        same_new = np.flatnonzero(got != new)
        prefix = int(same_new[0]) if same_new.size else n  # got[:prefix] == new
        same_old = np.flatnonzero(got != old)
        suffix = int(same_old[-1]) + 1 if same_old.size else 0  # got[suffix:] == old
        if suffix > prefix:
            raise Failure(
                f"a faulted write at {a:#x} left bytes that are neither a prefix of the "
                f"data nor the old bytes (from {a + prefix:#x} to {a + suffix:#x})"
            )
        self._store(proc, a, got)
        self.bytes_compared += n

    def op_populate(self, draw: Draw) -> list[Region] | None:
        """p.populate(start, end, write): MAP_POPULATE; SegFault where the VMA's
        prot forbids the access (checked before any fault). Bytes do not change."""
        view = self.pick_view(draw)
        if view is None:
            return None
        s, e = self.span(draw, view)
        write = draw.chance(0.5)
        try:
            view.proc.process.populate(s, e, write=write)
        except me.SegFault as exc:
            if view.allows(write):
                raise self.unexpected("populate", exc) from exc
            self.note("populate: SegFault")
        except DOCUMENTED as exc:
            self.excusable(exc, "populate")
        else:
            if not view.allows(write):
                raise Failure(f"populate(write={write}) of a {view.family.prot} VMA succeeded")
            self.note("populate")
        return self.regions(view.proc, s, e, extents=True)

    def op_swap_out(self, draw: Draw) -> list[Region] | None:
        """p.swap_out(addr): shrink_page_list() + try_to_unmap() on one anonymous page."""
        view = self.pick_view(draw)
        if view is None:
            return None
        addr = view.vma.start + draw.int(0, view.vma.npages - 1) * self.ps
        pte = view.proc.process.translate(addr)
        try:
            view.proc.process.swap_out(addr)
        except ValueError as exc:
            self.note("swap_out: refused")
            if pte.kind == "present" and not view.family.shared and not pte.huge:
                info = self.m.page(pte.pfn)
                if not (info.pins or info.locked or self.isolated or self.held):
                    raise self.unexpected("swap_out of a present anonymous page", exc) from exc
        except me.OutOfMemory:
            self.note("swap_out: swap full")
        except me.MigengineError as exc:
            if pte.kind != "device":
                raise self.unexpected("swap_out", exc) from exc
            self.note("swap_out: device page")
        else:
            if pte.kind not in ("present",) or view.family.shared:
                raise Failure(f"swap_out of a {pte.kind} entry ({view.family.kind}) succeeded")
            if view.proc.process.translate(addr).kind != "swap":
                raise Failure(f"swap_out at {addr:#x} left a {pte.kind} entry")
            self.note("swap_out")
        return self.regions(view.proc, addr, addr + self.ps, extents=True)

    # ------------------------------------------------------------ the device
    def _device_range(self, draw: Draw) -> tuple[Proc, int, int] | None:
        """A range for migrate_to_device/_system: one VMA's, or from one VMA to the
        end of the process's last (crossing VMAs and the gaps between them)."""
        view = self.pick_view(draw)
        if view is None:
            return None
        s, e = self.span(draw, view)
        if draw.chance(0.15):
            e = max(v.vma.end for v in view.proc.views)
        return view.proc, s, e

    def _covered(self, proc: Proc, s: int, e: int, readable: bool) -> bool:
        pos = s
        while pos < e:
            v = proc.view_at(pos)
            if v is None or (readable and v.family.prot == "none"):
                return False
            pos = v.vma.end
        return True

    def op_to_device(self, draw: Draw) -> list[Region] | None:
        """m.device.migrate_to_device(p, start, end) (api.md, "The device"): it
        returns how many pages the device maps; MigrateError when the range is not
        covered by readable VMAs."""
        picked = self._device_range(draw)
        if picked is None:
            return None
        proc, s, e = picked
        try:
            n = self.m.device.migrate_to_device(proc.process, s, e)
        except me.MigrateError as exc:
            if self._covered(proc, s, e, readable=True):
                raise self.unexpected("migrate_to_device", exc) from exc
            self.note("to_device: EINVAL")
        else:
            if not 0 <= n <= (e - s) // self.ps:
                raise Failure(f"migrate_to_device returned {n} for {(e - s) // self.ps} pages")
            self.note("to_device")
        return self.regions(proc, s, e, extents=True)

    def op_to_system(self, draw: Draw) -> list[Region] | None:
        """m.device.migrate_to_system(p, start, end): the device's pages back to RAM."""
        picked = self._device_range(draw)
        if picked is None:
            return None
        proc, s, e = picked
        try:
            n = self.m.device.migrate_to_system(proc.process, s, e)
        except me.MigrateError as exc:
            if self._covered(proc, s, e, readable=False):
                raise self.unexpected("migrate_to_system", exc) from exc
            self.note("to_system: EINVAL")
        except DOCUMENTED as exc:
            self.excusable(exc, "to_system")
        else:
            if not 0 <= n <= (e - s) // self.ps:
                raise Failure(f"migrate_to_system returned {n}")
            self.note("to_system")
        return self.regions(proc, s, e, extents=True)

    def op_evict(self, draw: Draw) -> list[Region] | None:
        """m.device.evict(): every device page of every process back to RAM."""
        try:
            self.m.device.evict()
        except DOCUMENTED as exc:
            self.excusable(exc, "evict")
        self.note("evict")
        return self.everything()

    def op_fail_alloc(self, draw: Draw) -> None:
        """m.device.fail_alloc(n): the next n device-side and fault-back allocations fail."""
        self.m.device.fail_alloc(draw.int(0, 3))
        self.note("fail_alloc")

    def op_drain(self, draw: Draw) -> None:
        """m.lru_add_drain_all()."""
        self.m.lru_add_drain_all()
        self.note("drain")

    # ------------------------------------------------------------ me.migrate_vma with a driver
    def _migratable(self, v: View) -> bool:
        return not v.family.flags & (me.VM_HUGETLB | me.VM_SPECIAL)

    def op_migrate_vma(self, draw: Draw) -> list[Region] | None:
        """me.migrate_vma(ops, vma, start, end, src, dst) with the drivers of
        :mod:`tests.shadow_world` (a sound Python driver, one that raises, one that
        hands over an unsound dst, one that re-enters the API, the device's own
        ops, @njit drivers, and the split API from Python)."""
        view = self.pick_view(draw, self._migratable)
        if view is None:
            return None
        s, e = self.span(draw, view)
        kind = pick(draw, DRIVERS)
        DRIVER_RUNS[kind](self, draw, view, s, e)
        self.note(f"migrate_vma {kind}")
        return self.regions(view.proc, s, e, extents=True)

    # ------------------------------------------------------------ others acting on pages
    def pfn_in_use(self, draw: Draw) -> int:
        """A frame some view maps (present or device entry, not the zero page or a
        compound tail), or -1."""
        view = self.pick_view(draw)
        if view is None:
            return -1
        addr = view.vma.start + draw.int(0, view.vma.npages - 1) * self.ps
        pte = view.proc.process.translate(addr)
        if pte.pfn < 0 or pte.kind not in ("present", "device"):
            return -1
        flags = int(self.m.state.page["flags"][pte.pfn])
        if flags & (L.PG_ZERO | L.PG_TAIL | L.PG_FREE):
            return -1
        return pte.pfn

    def op_pin(self, draw: Draw) -> None:
        """m.pin(pfn) (get_user_pages) on a mapped page; m.unpin(pfn) of a pin."""
        if self.pins and draw.chance(0.5):
            self.m.unpin(self.pins.pop(draw.int(0, len(self.pins) - 1)))
            self.note("unpin")
            return
        pfn = self.pfn_in_use(draw)
        if pfn >= 0 and len(self.pins) < 8:
            self.m.pin(pfn)
            self.pins.append(pfn)
            self.note("pin")

    def op_lock(self, draw: Draw) -> None:
        """m.lock_page(pfn): another thread holds the page lock; unlock_page."""
        if self.locks and draw.chance(0.5):
            self.m.unlock_page(self.locks.pop(draw.int(0, len(self.locks) - 1)))
            self.note("unlock")
            return
        pfn = self.pfn_in_use(draw)
        if pfn < 0 or len(self.locks) >= 4:
            return
        if self.m.page(pfn).locked:
            expect(ValueError, lambda: self.m.lock_page(pfn))
            self.note("lock: already locked")
            return
        self.m.lock_page(pfn)
        self.locks.append(pfn)
        self.note("lock")

    def op_isolate(self, draw: Draw) -> None:
        """m.isolate_lru_page(pfn): another isolator; putback_lru_page(pfn)."""
        if self.isolated and draw.chance(0.5):
            self.m.putback_lru_page(self.isolated.pop(draw.int(0, len(self.isolated) - 1)))
            self.note("putback")
            return
        pfn = self.pfn_in_use(draw)
        if pfn < 0 or pfn in self.isolated or len(self.isolated) >= 4:
            return
        info = self.m.page(pfn)
        if not (info.lru or info.pagevec):  # a page in the LRU-add batch: drained first
            before = copy_state(self.m.state)
            expect(ValueError, lambda: self.m.isolate_lru_page(pfn))
            self.unchanged(before, "isolate_lru_page of a page off the LRU")
            self.note("isolate: not on the LRU")
            return
        self.m.isolate_lru_page(pfn)
        self.isolated.append(pfn)
        self.note("isolate")

    def op_driver_page(self, draw: Draw) -> None:
        """A driver's helpers: m.alloc_page(device), m.copy_page(dst, src) from a
        mapped page (checked with m.frame), unlock and m.put_page(pfn)."""
        m = self.m
        if self.held and draw.chance(0.5):
            pfn = self.held.pop(draw.int(0, len(self.held) - 1))
            kernels.unlock_page(m.state, pfn)
            m.put_page(pfn)
            if not m.page(pfn).free:
                raise Failure(f"put_page of the only reference left pfn {pfn} in use")
            self.note("put_page")
            return
        if len(self.held) >= 6:
            return
        try:
            pfn = m.alloc_page(device=draw.chance(0.5))
        except me.OutOfMemory:
            self.note("alloc_page: OutOfMemory")
            return
        info = m.page(pfn)
        if not info.locked or info.free:
            raise Failure(f"alloc_page gave pfn {pfn} {'free' if info.free else 'unlocked'}")
        self.held.append(pfn)
        src = self.pfn_in_use(draw)
        if src >= 0:
            m.copy_page(pfn, src)
            if m.frame(pfn) != m.frame(src):
                raise Failure(f"copy_page({pfn}, {src}) copied other bytes")
        self.note("alloc_page")

    # ------------------------------------------------------------ bad arguments
    def op_bad_input(self, draw: Draw) -> None:
        """A public call with a bad argument (one of :data:`BAD_INPUTS`): it raises
        the documented exception and the machine is unchanged, every byte with it."""
        bad = pick(draw, BAD_INPUTS)
        view = self.pick_view(draw, lambda v: bad.needs(self, v))
        if view is None:
            return
        before = copy_state(self.m.state)
        with warnings.catch_warnings():
            warnings.simplefilter("error", InvalidDstWarning)
            expect(bad.exc, lambda: bad.call(self, view), bad.name)
        self.unchanged(before, bad.name)
        self.note(f"bad: {bad.name}")

    def unchanged(self, before: Any, what: str) -> None:
        a, b = comparable_state(before), comparable_state(self.m.state)
        for key, arr in a.items():
            if not np.array_equal(arr, b[key]):
                raise Failure(f"{what} changed state.{key}")

    # ------------------------------------------------------------ the end
    def quiesce(self) -> None:
        """Release every hold: pins, locks, isolations, a driver's pages, injected
        failures, the LRU-add batches; then evict the device."""
        m = self.m
        for pfn in self.pins:
            m.unpin(pfn)
        for pfn in self.locks:
            m.unlock_page(pfn)
        for pfn in self.isolated:
            m.putback_lru_page(pfn)
        for pfn in self.held:
            kernels.unlock_page(m.state, pfn)
            m.put_page(pfn)
        self.pins, self.locks, self.isolated, self.held = [], [], [], []
        m.device.fail_alloc(0)
        m.lru_add_drain_all()
        m.device.evict()
        m.lru_add_drain_all()
        m.check()

    def account(self) -> dict[str, int]:
        """No frame is lost: after :meth:`quiesce`, every frame that was free at the
        start is free again or held by a mapping (a PTE, a device entry, a THP's
        PMD) or by the page cache; checked from the flat state, independently of
        ``m.check()``. Returns the counts."""
        m, st = self.m, self.m.state
        used = np.zeros(m.nframes, bool)
        nvma = int(st.sys[L.SYS_NR_VMAS])
        ps = self.ps
        for rec in st.vma[:nvma]:
            if not rec["live"]:
                continue
            n = (int(rec["end"]) - int(rec["start"])) // ps
            pte = st.pte[int(rec["pte_base"]) : int(rec["pte_base"]) + n]
            kind = pte & L.PTE_KIND_MASK
            mapped = (kind == L.PTE_PRESENT) | (kind == L.PTE_DEVICE)
            used[(pte[mapped] >> L.PTE_PFN_SHIFT).astype(np.int64)] = True
            nlevel = (int(rec["end"]) - 1) // (ps * 512) - int(rec["start"]) // (ps * 512) + 1
            pmd = st.pmd[int(rec["pmd_base"]) : int(rec["pmd_base"]) + nlevel]
            for word in pmd[(pmd & L.PMD_KIND_MASK) == L.PMD_THP]:
                head = int(word >> L.PTE_PFN_SHIFT)
                used[head : head + L.HPAGE_PMD_NR] = True
        cache = st.pcache[: int(st.sys[L.SYS_PCACHE_USED])]
        used[cache[cache >= 0]] = True
        used[m.zero_pfn] = False
        free = (written_state(m).page["flags"] & L.PG_FREE) != 0
        ram = m.ram_pages
        counts = {
            "ram_free": m.free_pages(),
            "ram_used": int(used[:ram].sum()),
            "device_free": m.free_pages(device=True),
            "device_used": int(used[ram:].sum()),
        }
        if (
            int(free[:ram].sum()) != counts["ram_free"]
            or int(free[ram:].sum()) != (counts["device_free"])
        ):
            raise Failure(f"free frame counts disagree with the PG_FREE flags: {counts}")
        both = np.flatnonzero(used & free)
        if both.size:
            raise Failure(f"frames both free and mapped: {both[:8].tolist()}")
        if counts["ram_free"] + counts["ram_used"] != self.free0[0]:
            lost = np.flatnonzero(~used[:ram] & ~free[:ram])
            lost = lost[lost != m.zero_pfn]
            raise Failure(f"RAM frames held by nothing: {lost[:16].tolist()} ({counts})")
        if counts["device_free"] + counts["device_used"] != self.free0[1]:
            lost = ram + np.flatnonzero(~used[ram:] & ~free[ram:])
            raise Failure(f"device frames held by nothing: {lost[:16].tolist()} ({counts})")
        return counts

    def read_everything(self) -> None:
        """p.read of every view, compared with the shadow (faults, as a user's would)."""
        for v in self.views:
            if not v.allows(False):
                continue
            try:
                got = v.proc.process.read(v.vma.start, v.size)
            except (me.OutOfMemory, me.SigBus):  # RAM full: device pages cannot come back
                self.verify([(v.family, 0, v.size)])
                self.note("read everything: OutOfMemory")
                continue
            if got != v.shadow.tobytes():
                raise Failure(f"pid {v.proc.process.pid} {v.vma}: read differs from the shadow")
            self.bytes_compared += v.size


def expect(exc_type: type[BaseException], call: Callable[[], Any], what: str = "") -> None:
    """``call()`` raises ``exc_type`` (api.md's documented kind), nothing else."""
    try:
        call()
    except exc_type:
        return
    except BaseException as exc:
        raise Failure(
            f"{what}: expected {exc_type.__name__}, got {type(exc).__name__}: {exc}"
        ) from exc
    raise Failure(f"{what}: expected {exc_type.__name__}, nothing was raised")


# ---------------------------------------------------------------- drivers
def fill_ops(
    w: World,
    seed: int,
    *,
    device_p: float,
    fail_p: float,
    propagate: bool = False,
    skip: int = -1,
    given: dict[int, int] | None = None,
) -> me.MigrateOps:
    """The README's Python driver: for each MIGRATE slot (but ``skip``) a fresh
    locked page, device memory with probability ``device_p``, holding a copy of
    the source (zeroes for a hole); with probability ``fail_p`` a slot gets no
    destination (a device source sometimes ERROR, as a failed fault-back
    allocation sets it). ``given`` records the pfn per slot."""
    m, lay = w.m, w.m.layout
    rng = random.Random(seed)
    ps = w.ps

    def alloc_and_copy(vma, src, dst, start, end, private) -> None:
        for i in range((end - start) // ps):
            s = src[i]
            if not s & lay.MIGRATE or i == skip:
                continue
            if rng.random() < fail_p:
                if lay.DEVICE and s & lay.DEVICE and rng.random() < 0.5:
                    dst[i] = lay.ERROR
                continue
            try:
                pfn = m.alloc_page(device=rng.random() < device_p)
            except me.OutOfMemory:
                if propagate:  # the README's drivers let it out of the callback
                    raise
                continue
            spfn = m.mpfn_to_pfn(s)
            m.copy_page(pfn, spfn if spfn >= 0 else m.zero_pfn)
            dst[i] = m.migrate_pfn(pfn) | lay.LOCKED | (s & lay.WRITE)
            if given is not None:
                given[i] = pfn

    return me.MigrateOps(alloc_and_copy, lambda *args: None)


def _arrays(w: World, s: int, e: int) -> tuple[np.ndarray, np.ndarray]:
    n = (e - s) // w.ps
    return np.zeros(n, np.uint64), np.zeros(n, np.uint64)


def _run_sound(w: World, draw: Draw, view: View, s: int, e: int) -> None:
    """A sound Python driver: no warning; OutOfMemory only when it lets one out."""
    propagate = draw.chance(0.3)
    ops = fill_ops(
        w,
        draw.int(0, 2**30),
        device_p=pick(draw, (0.0, 0.5, 1.0)),
        fail_p=pick(draw, (0.0, 0.0, 0.1, 0.5, 1.0)),
        propagate=propagate,
    )
    src, dst = _arrays(w, s, e)
    with warnings.catch_warnings():
        warnings.simplefilter("error", InvalidDstWarning)
        try:
            assert me.migrate_vma(ops, view.vma, s, e, src, dst) == 0
        except me.OutOfMemory:
            if not propagate:
                raise
            w.note("migrate_vma: driver's OutOfMemory")


class DriverBug(Exception):
    """What the raising drivers raise."""


def _run_raising(w: World, draw: Draw, view: View, s: int, e: int) -> None:
    """A Python driver that raises in alloc_and_copy (after filling some slots) or
    in finalize_and_map: the migration unwinds (or completes, past the pages pass)
    and the exception propagates; the machine is clean (checked by step())."""
    where = pick(draw, ("alloc_and_copy", "finalize_and_map"))
    base = fill_ops(w, draw.int(0, 2**30), device_p=0.5, fail_p=0.2)
    called: list[str] = []

    def alloc(*args: Any) -> None:
        called.append("alloc_and_copy")
        base.alloc_and_copy(*args)
        if where == "alloc_and_copy":
            raise DriverBug(where)

    def fin(*args: Any) -> None:
        called.append("finalize_and_map")
        if where == "finalize_and_map":
            raise DriverBug(where)

    src, dst = _arrays(w, s, e)
    try:
        me.migrate_vma(me.MigrateOps(alloc, fin), view.vma, s, e, src, dst)
    except DriverBug:
        w.note(f"migrate_vma: raised in {where}")
        return
    if where in called:
        raise Failure(f"the exception from {where} did not propagate")


def _bogus_word(w: World, draw: Draw, view: View, given: dict[int, int], slot: int) -> tuple:
    """An unsound dst word for ``slot`` and the DST_* reason the check must give."""
    m, lay = w.m, w.m.layout
    choice = draw.int(0, 5)
    if choice == 0:
        return int(m.migrate_pfn(m.zero_pfn) | lay.LOCKED), kdst.DST_ZERO_PAGE
    if choice == 1:
        free = np.flatnonzero(written_state(m).page["flags"] & L.PG_FREE)
        if free.size:
            return int(m.migrate_pfn(int(free[-1])) | lay.LOCKED), kdst.DST_FREE
    if choice == 2:
        pfn = m.nframes + draw.int(0, 1000)
        return int(m.migrate_pfn(pfn) | lay.LOCKED), kdst.DST_OUT_OF_RANGE
    if choice == 3:
        earlier = [i for i in given if i < slot]
        if earlier:  # the earlier slot keeps its page; this one is refused
            return int(m.migrate_pfn(given[earlier[0]]) | lay.LOCKED), kdst.DST_DUPLICATE
    if choice == 4:
        pfn = w.pfn_in_use(draw)
        if pfn >= 0 and not m.page(pfn).compound:  # the check tests the lock first
            why = kdst.DST_IN_USE if m.page(pfn).locked else kdst.DST_NOT_LOCKED
            return int(m.migrate_pfn(pfn) | lay.LOCKED), why
    if choice == 5:
        thp = [v for v in w.views if v.family.thp]
        for v in thp:
            pte = v.proc.process.translate(v.vma.start)
            if pte.huge and pte.kind == "present":
                return int(m.migrate_pfn(pte.pfn + 3) | lay.LOCKED), kdst.DST_WRONG_KIND
    return int(m.migrate_pfn(m.nframes + 7)), kdst.DST_OUT_OF_RANGE


def _run_bogus(w: World, draw: Draw, view: View, s: int, e: int) -> None:
    """A Python driver that writes one unsound dst entry (the zero page, a free
    frame, a pfn past the machine, another slot's page, a page in use, a THP
    tail): exactly one InvalidDstWarning naming that slot and reason."""
    m = w.m
    given: dict[int, int] = {}
    seed = draw.int(0, 2**30)
    chosen: list[tuple[int, int, int]] = []
    target = draw.int(0, (e - s) // w.ps - 1)
    holder: dict[str, me.MigrateOps] = {}

    def alloc(vma, src, dst, start, end, private) -> None:
        slots = [i for i in range((end - start) // w.ps) if src[i] & m.layout.MIGRATE]
        slot = min(slots, key=lambda i: abs(i - target))
        holder["ops"] = fill_ops(w, seed, device_p=0.5, fail_p=0.0, skip=slot, given=given)
        holder["ops"].alloc_and_copy(vma, src, dst, start, end, private)
        word, reason = _bogus_word(w, draw, view, given, slot)
        dst[slot] = word
        chosen.append((slot, word, reason))

    src, dst = _arrays(w, s, e)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        me.migrate_vma(me.MigrateOps(alloc, lambda *a: None), view.vma, s, e, src, dst)
    got = [x.message for x in caught if issubclass(x.category, InvalidDstWarning)]
    if not chosen:  # nothing was collected: the callbacks never ran
        if got:
            raise Failure(f"InvalidDstWarning without a callback: {got}")
        return
    slot, word, reason = chosen[0]
    if len(got) != 1 or (got[0].slot, got[0].reason) != (slot, reason):
        raise Failure(
            f"dst[{slot}] = {word:#x} (reason {kdst.DST_REASONS[reason]!r}): warnings {got}"
        )
    w.note(f"migrate_vma: refused dst {reason}")


def _run_reentrant(w: World, draw: Draw, view: View, s: int, e: int) -> None:
    """A Python driver that forks, mmaps or starts a process from a callback
    (under mmap_sem): MigengineError, the migration unwinds, nothing was made."""
    act = pick(draw, ("fork", "mmap", "new_process"))
    proc = view.proc.process
    base = fill_ops(w, draw.int(0, 2**30), device_p=0.5, fail_p=0.0)
    nprocs, nvmas = len(w.m.processes), len(proc.vmas())

    def alloc(*args: Any) -> None:
        base.alloc_and_copy(*args)
        if act == "fork":
            proc.fork()
        elif act == "mmap":
            proc.mmap(1)
        else:
            w.m.new_process()

    src, dst = _arrays(w, s, e)
    try:
        me.migrate_vma(me.MigrateOps(alloc, lambda *a: None), view.vma, s, e, src, dst)
    except me.MigengineError as exc:
        if "callback" not in str(exc):
            raise w.unexpected(f"{act} in a callback", exc) from exc
        w.note(f"migrate_vma: {act} refused")
    if (len(w.m.processes), len(proc.vmas())) != (nprocs, nvmas):
        raise Failure(f"{act} in a callback made something")


def _run_device_ops(w: World, draw: Draw, view: View, s: int, e: int) -> None:
    """me.migrate_vma with the device's own @njit ops (m.device.ops, or the same
    kernels in a MigrateOps of one's own)."""
    if draw.chance(0.5):
        ops = w.m.device.ops
    else:
        ops = me.MigrateOps(kernels.device_alloc_and_copy, kernels.device_finalize_and_map)
    src, dst = _arrays(w, s, e)
    with warnings.catch_warnings():
        warnings.simplefilter("error", InvalidDstWarning)
        assert me.migrate_vma(ops, view.vma, s, e, src, dst) == 0


def _njit_private(w: World, draw: Draw, n: int) -> np.ndarray:
    return njit_private(draw.chance(0.5), {}, n)


def _run_njit(w: World, draw: Draw, view: View, s: int, e: int) -> None:
    """@njit callbacks (test_driver_mistakes' compiled driver): a sound one, or one
    that raises after filling dst; through me.migrate_vma or the split API
    (kernels.migrate_vma_setup/_pages/_finalize) called from Python."""
    src, dst = _arrays(w, s, e)
    private = _njit_private(w, draw, src.size)
    how = pick(draw, ("sound", "raises", "split"))
    with warnings.catch_warnings():
        warnings.simplefilter("error", InvalidDstWarning)
        if how == "sound":
            me.migrate_vma(
                me.MigrateOps(_njit_alloc, _njit_nothing), view.vma, s, e, src, dst, private
            )
        elif how == "raises":
            ops = me.MigrateOps(_njit_alloc_then_raise, _njit_nothing)
            try:
                me.migrate_vma(ops, view.vma, s, e, src, dst, private)
            except RuntimeError:
                w.note("migrate_vma: njit raised")
        else:
            st, v = w.m.state, view.vma.index
            if kernels.migrate_vma_setup(st, v, s, e, src, dst) > 0:
                _njit_alloc(st, v, src, dst, s, e, private)
                kernels.migrate_vma_pages(st, v, s, e, src, dst)
                kernels.migrate_vma_finalize(st, v, s, e, src, dst)


DRIVER_RUNS: dict[str, Callable[[World, Draw, View, int, int], None]] = {
    "sound": _run_sound,
    "raising": _run_raising,
    "bogus dst": _run_bogus,
    "re-entrant": _run_reentrant,
    "device ops": _run_device_ops,
    "njit": _run_njit,
}
DRIVERS = tuple(DRIVER_RUNS)


# ---------------------------------------------------------------- bad arguments
@dataclass(frozen=True)
class Bad:
    """A public call with one bad argument, and the exception api.md documents for
    it. ``call(w, v)`` makes it with view ``v`` (of a VMA ``needs(w, v)`` accepts)."""

    name: str
    exc: type[BaseException]
    call: Callable[[World, View], Any]
    needs: Callable[[World, View], bool] = lambda w, v: True


def _gap(w: World, v: View) -> int:
    """An address no VMA of ``v``'s process covers."""
    return max(x.vma.end for x in v.proc.views) + 5 * w.ps


def _first_pfn(w: World, v: View) -> int:
    """The frame mapped at ``v``'s first page (present or device entry, not the
    zero page or a THP tail), or -1."""
    pte = v.proc.process.translate(v.vma.start)
    if pte.pfn < 0 or pte.kind not in ("present", "device"):
        return -1
    return -1 if int(w.m.state.page["flags"][pte.pfn]) & (L.PG_ZERO | L.PG_TAIL) else pte.pfn


def _mapped(w: World, v: View) -> bool:
    return _first_pfn(w, v) >= 0


def _free_frame(w: World, v: View) -> int:
    free = np.flatnonzero(written_state(w.m).page["flags"] & L.PG_FREE)
    return int(free[0]) if free.size else -1


def _prot(prot: str) -> Callable[[World, View], bool]:
    return lambda w, v: v.family.prot == prot


def _migrate(w: World, v: View, **override: Any) -> None:
    """me.migrate_vma over ``v`` with arguments replaced; a Python driver that
    must not be called, since the call is refused before anything happens."""

    def never(*args: Any) -> None:
        raise Failure("a callback ran for a call that had to be refused first")

    args: dict[str, Any] = {
        "ops": me.MigrateOps(never, never),
        "vma": v.vma,
        "start": v.vma.start,
        "end": v.vma.end,
        "src": np.zeros(v.vma.npages, np.uint64),
        "dst": np.zeros(v.vma.npages, np.uint64),
    }
    args.update(override)
    me.migrate_vma(**args)


def _readonly(n: int) -> np.ndarray:
    a = np.zeros(n, np.uint64)
    a.flags.writeable = False
    return a


def _wrong_signature_ops() -> me.MigrateOps:
    return me.MigrateOps(_python_style_callback, _njit_nothing)


def _other_process(w: World) -> me.Process:
    """A process of another machine, with one VMA."""
    if w.other is None:
        other = me.Machine(16, 4, page_size=w.ps, profile=w.m.profile)
        w.other = other.new_process()
        w.other.mmap(1)
    return w.other


def _other_range(w: World) -> tuple[me.Process, int, int]:
    p = _other_process(w)
    return p, p.vmas()[0].start, p.vmas()[0].end


def _ok_vma(w: World, v: View) -> bool:
    """migrate_vma's checks of the VMA pass (so the bad argument is what is refused)."""
    return w._migratable(v)


def _special(w: World, v: View) -> bool:
    return not w._migratable(v)


def _pages(v: View) -> np.ndarray:
    return np.zeros(v.vma.npages, np.uint64)


def _same(v: View) -> dict[str, np.ndarray]:
    a = _pages(v)
    return {"src": a, "dst": a}


BAD_INPUTS: tuple[Bad, ...] = (
    # CPU accesses (api.md "Processes and address spaces")
    Bad("read at -1", ValueError, lambda w, v: v.proc.process.read(-1, 4)),
    Bad("read past 2**64", ValueError, lambda w, v: v.proc.process.read(2**64, 4)),
    Bad("read n=-1", ValueError, lambda w, v: v.proc.process.read(v.vma.start, -1)),
    Bad("read n=4.0", TypeError, lambda w, v: v.proc.process.read(v.vma.start, 4.0)),
    Bad("read addr str", TypeError, lambda w, v: v.proc.process.read("0", 4)),
    Bad("read in a gap", me.SegFault, lambda w, v: v.proc.process.read(_gap(w, v), 4)),
    Bad(
        "read PROT_NONE",
        me.SegFault,
        lambda w, v: v.proc.process.read(v.vma.start, 8),
        _prot("none"),
    ),
    Bad("write str", TypeError, lambda w, v: v.proc.process.write(v.vma.start, "text")),
    Bad("write at -5", ValueError, lambda w, v: v.proc.process.write(-5, b"x")),
    Bad("write in a gap", me.SegFault, lambda w, v: v.proc.process.write(_gap(w, v), b"x")),
    Bad(
        "write read-only",
        me.SegFault,
        lambda w, v: v.proc.process.write(v.vma.start, b"xy"),
        _prot("r"),
    ),
    Bad(
        "write PROT_NONE",
        me.SegFault,
        lambda w, v: v.proc.process.write(v.vma.end - 1, b"z"),
        _prot("none"),
    ),
    Bad(
        "populate write='no'",
        TypeError,
        lambda w, v: v.proc.process.populate(v.vma.start, v.vma.end, write="no"),
    ),
    Bad("populate at -1", ValueError, lambda w, v: v.proc.process.populate(-1, v.vma.end)),
    Bad(
        "populate a gap",
        me.SegFault,
        lambda w, v: v.proc.process.populate(_gap(w, v), _gap(w, v) + w.ps),
    ),
    Bad(
        "populate PROT_NONE",
        me.SegFault,
        lambda w, v: v.proc.process.populate(v.vma.start, v.vma.end, write=False),
        _prot("none"),
    ),
    Bad(
        "populate read-only, write",
        me.SegFault,
        lambda w, v: v.proc.process.populate(v.vma.start, v.vma.end),
        _prot("r"),
    ),
    Bad("swap_out in a gap", me.SegFault, lambda w, v: v.proc.process.swap_out(_gap(w, v))),
    Bad("swap_out at -1", ValueError, lambda w, v: v.proc.process.swap_out(-1)),
    Bad("swap_out at 1.5", TypeError, lambda w, v: v.proc.process.swap_out(1.5)),
    Bad("translate -1", ValueError, lambda w, v: v.proc.process.translate(-1)),
    Bad("translate 2**64", ValueError, lambda w, v: v.proc.process.translate(2**64)),
    Bad("translate None", TypeError, lambda w, v: v.proc.process.translate(None)),
    # mmap
    Bad("mmap 0 pages", ValueError, lambda w, v: v.proc.process.mmap(0)),
    Bad("mmap 2.0 pages", TypeError, lambda w, v: v.proc.process.mmap(2.0)),
    Bad("mmap 2**31 pages", ValueError, lambda w, v: v.proc.process.mmap(2**31)),
    Bad("mmap prot 'wx'", ValueError, lambda w, v: v.proc.process.mmap(1, prot="wx")),
    Bad("mmap kind 'anonymous'", ValueError, lambda w, v: v.proc.process.mmap(1, kind="anonymous")),
    Bad("mmap flags 1<<40", ValueError, lambda w, v: v.proc.process.mmap(1, flags=1 << 40)),
    Bad("mmap thp=1", TypeError, lambda w, v: v.proc.process.mmap(1, thp=1)),
    Bad("mmap overlapping", ValueError, lambda w, v: v.proc.process.mmap(1, addr=v.vma.start)),
    Bad("mmap unaligned", ValueError, lambda w, v: v.proc.process.mmap(1, addr=_gap(w, v) + 1)),
    Bad("mmap at the top", ValueError, lambda w, v: v.proc.process.mmap(4, addr=2**63 - w.ps)),
    # others acting on pages, a driver's helpers (api.md "Machine: physical memory")
    Bad("pin -1", ValueError, lambda w, v: w.m.pin(-1)),
    Bad("pin past the machine", ValueError, lambda w, v: w.m.pin(w.m.nframes)),
    Bad("pin the zero page", ValueError, lambda w, v: w.m.pin(w.m.zero_pfn)),
    Bad("pin a free frame", ValueError, lambda w, v: w.m.pin(_free_frame(w, v))),
    Bad("pin '1'", TypeError, lambda w, v: w.m.pin("1")),
    Bad("pin True", TypeError, lambda w, v: w.m.pin(True)),
    Bad(
        "unpin an unpinned page",
        ValueError,
        lambda w, v: w.m.unpin(_first_pfn(w, v)),
        lambda w, v: _mapped(w, v) and not w.m.page(_first_pfn(w, v)).pins,
    ),
    Bad("lock the zero page", ValueError, lambda w, v: w.m.lock_page(w.m.zero_pfn)),
    Bad(
        "unlock an unlocked page",
        ValueError,
        lambda w, v: w.m.unlock_page(_first_pfn(w, v)),
        lambda w, v: _mapped(w, v) and _first_pfn(w, v) not in w.locks,
    ),
    Bad("isolate a free frame", ValueError, lambda w, v: w.m.isolate_lru_page(_free_frame(w, v))),
    Bad(
        "putback a page not isolated",
        ValueError,
        lambda w, v: w.m.putback_lru_page(_first_pfn(w, v)),
        lambda w, v: _mapped(w, v) and _first_pfn(w, v) not in w.isolated,
    ),
    Bad(
        "put_page of a mapped page",
        ValueError,
        lambda w, v: w.m.put_page(_first_pfn(w, v)),
        _mapped,
    ),
    Bad("put_page of a free frame", ValueError, lambda w, v: w.m.put_page(_free_frame(w, v))),
    Bad("put_page -1", ValueError, lambda w, v: w.m.put_page(-1)),
    Bad(
        "copy_page onto the zero page",
        ValueError,
        lambda w, v: w.m.copy_page(w.m.zero_pfn, _first_pfn(w, v)),
        _mapped,
    ),
    Bad("copy_page past the machine", ValueError, lambda w, v: w.m.copy_page(w.m.nframes, 1)),
    Bad("copy_page src str", TypeError, lambda w, v: w.m.copy_page(1, "2")),
    Bad("migrate_pfn -1", ValueError, lambda w, v: w.m.migrate_pfn(-1)),
    Bad(
        "migrate_pfn that wraps",
        ValueError,
        lambda w, v: w.m.migrate_pfn(1 << (64 - int(w.m.layout.SHIFT))),
    ),
    Bad("migrate_pfn 1.0", TypeError, lambda w, v: w.m.migrate_pfn(1.0)),
    Bad("mpfn_to_pfn -1", ValueError, lambda w, v: w.m.mpfn_to_pfn(-1)),
    Bad("mpfn_to_pfn 2**64", ValueError, lambda w, v: w.m.mpfn_to_pfn(2**64)),
    Bad("page past the machine", ValueError, lambda w, v: w.m.page(w.m.nframes)),
    Bad("frame -1", ValueError, lambda w, v: w.m.frame(-1)),
    Bad("alloc_page device=1", TypeError, lambda w, v: w.m.alloc_page(device=1)),
    # the device (api.md "The device")
    Bad(
        "migrate_to_device(None)",
        TypeError,
        lambda w, v: w.m.device.migrate_to_device(None, v.vma.start, v.vma.end),
    ),
    Bad(
        "migrate_to_system(None)",
        TypeError,
        lambda w, v: w.m.device.migrate_to_system(None, v.vma.start, v.vma.end),
    ),
    Bad(
        "migrate_to_device unaligned",
        me.MigrateError,
        lambda w, v: w.m.device.migrate_to_device(v.proc.process, v.vma.start + 1, v.vma.end),
    ),
    Bad(
        "migrate_to_device reversed",
        me.MigrateError,
        lambda w, v: w.m.device.migrate_to_device(v.proc.process, v.vma.end, v.vma.start),
    ),
    Bad(
        "migrate_to_device a gap",
        me.MigrateError,
        lambda w, v: w.m.device.migrate_to_device(v.proc.process, _gap(w, v), _gap(w, v) + w.ps),
    ),
    Bad(
        "migrate_to_system a gap",
        me.MigrateError,
        lambda w, v: w.m.device.migrate_to_system(v.proc.process, _gap(w, v), _gap(w, v) + w.ps),
    ),
    Bad(
        "migrate_to_device another machine's process",
        ValueError,
        lambda w, v: w.m.device.migrate_to_device(*_other_range(w)),
    ),
    Bad("fail_alloc -1", ValueError, lambda w, v: w.m.device.fail_alloc(-1)),
    Bad("fail_alloc 2**63", ValueError, lambda w, v: w.m.device.fail_alloc(2**63)),
    Bad("fail_alloc 1.5", TypeError, lambda w, v: w.m.device.fail_alloc(1.5)),
    Bad("engine = 5", TypeError, lambda w, v: setattr(w.m.device, "engine", 5)),
    # migrate_vma's argument checks (api.md "migrate_vma: the seed's entry point")
    Bad("migrate_vma vma None", me.MigrateError, lambda w, v: _migrate(w, v, vma=None), _ok_vma),
    Bad("migrate_vma ops None", me.MigrateError, lambda w, v: _migrate(w, v, ops=None), _ok_vma),
    Bad("migrate_vma src None", me.MigrateError, lambda w, v: _migrate(w, v, src=None), _ok_vma),
    Bad("migrate_vma ops str", TypeError, lambda w, v: _migrate(w, v, ops="ops"), _ok_vma),
    Bad(
        "migrate_vma src float64",
        TypeError,
        lambda w, v: _migrate(w, v, src=np.zeros(v.vma.npages)),
        _ok_vma,
    ),
    Bad(
        "migrate_vma dst short",
        ValueError,
        lambda w, v: _migrate(w, v, dst=np.zeros(v.vma.npages - 1, np.uint64)),
        _ok_vma,
    ),
    Bad(
        "migrate_vma dst read-only",
        ValueError,
        lambda w, v: _migrate(w, v, dst=_readonly(v.vma.npages)),
        _ok_vma,
    ),
    Bad(
        "migrate_vma src 2-D",
        ValueError,
        lambda w, v: _migrate(w, v, src=np.zeros((v.vma.npages, 1), np.uint64)),
        _ok_vma,
    ),
    Bad("migrate_vma src is dst", ValueError, lambda w, v: _migrate(w, v, **_same(v)), _ok_vma),
    Bad(
        "migrate_vma start outside",
        me.MigrateError,
        lambda w, v: _migrate(w, v, start=v.vma.start - w.ps),
        _ok_vma,
    ),
    Bad(
        "migrate_vma end outside",
        me.MigrateError,
        lambda w, v: _migrate(w, v, end=v.vma.end + w.ps),
        _ok_vma,
    ),
    Bad(
        "migrate_vma empty", me.MigrateError, lambda w, v: _migrate(w, v, end=v.vma.start), _ok_vma
    ),
    Bad(
        "migrate_vma start str",
        TypeError,
        lambda w, v: _migrate(w, v, start=str(v.vma.start)),
        _ok_vma,
    ),
    Bad("migrate_vma start 2**64", ValueError, lambda w, v: _migrate(w, v, start=2**64), _ok_vma),
    Bad("migrate_vma special VMA", me.MigrateError, lambda w, v: _migrate(w, v), _special),
    Bad(
        "migrate_vma device ops, special VMA",
        me.MigrateError,
        lambda w, v: _migrate(w, v, ops=w.m.device.ops),
        _special,
    ),
    Bad(
        "migrate_vma device ops, dst short",
        ValueError,
        lambda w, v: _migrate(w, v, ops=w.m.device.ops, dst=_pages(v)[:-1]),
        _ok_vma,
    ),
    Bad(
        "migrate_vma device ops, private of no device",
        ValueError,
        lambda w, v: _migrate(w, v, ops=w.m.device.ops, private=3 << 8),
        _ok_vma,
    ),
    Bad(
        "migrate_vma @njit callback of the wrong signature",
        TypeError,
        lambda w, v: _migrate(w, v, ops=_wrong_signature_ops()),
        _ok_vma,
    ),
    Bad(
        "migrate_vma @njit and Python callbacks mixed",
        TypeError,
        lambda w, v: _migrate(
            w, v, ops=me.MigrateOps(kernels.device_alloc_and_copy, lambda *a: None)
        ),
        _ok_vma,
    ),
    # constructors
    Bad("Machine(1)", ValueError, lambda w, v: me.Machine(1)),
    Bad("Machine page_size=100", ValueError, lambda w, v: me.Machine(16, page_size=100)),
    Bad("Machine profile 'linux'", ValueError, lambda w, v: me.Machine(16, profile="linux")),
    Bad("CopyEngine chunk_pages=0", ValueError, lambda w, v: me.CopyEngine(chunk_pages=0)),
)


# ---------------------------------------------------------------- the operations
#: Each operation (a ``World.op_*`` method) and its weight in the soak's mix.
OPS: dict[str, float] = {
    "mmap": 3,
    "new_process": 0.5,
    "fork": 1,
    "read": 14,
    "write": 14,
    "populate": 4,
    "swap_out": 5,
    "to_device": 8,
    "to_system": 6,
    "evict": 1,
    "fail_alloc": 2,
    "drain": 2,
    "migrate_vma": 10,
    "pin": 3,
    "lock": 2,
    "isolate": 2,
    "driver_page": 2,
    "bad_input": 5,
}
