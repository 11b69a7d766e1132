"""A slow, independent reference model of migrate_vma() for both profiles.

Everything here is plain Python over plain Python objects (lists, ints, small
dataclasses) built from a snapshot of ``m.state``. It is written from the kernel
semantics, not from ``kernels/*.py``:

* ``seed``: the seed patch (HMM v25 14/19, migrate_vma v5) as posted, with the one
  correction the public contract asks for: prepare drops the collect reference
  after a successful isolate_lru_page().
* ``hmm-v25``: the 4.14 merge of patches 14-17 (mm/migrate.c's migrate_vma()):
  collect locks and unmaps, device-private sources, holes and zero pages as
  MIGRATE, no-destination clears MIGRATE, insert_page on holes.
* ``modern``: Linux 6.x mm/migrate_device.c (migrate_vma_setup/pages/finalize);
  its passes live in ``naive_modern.py``, which :func:`migrate_vma` hands over to.

Only the *encodings* are shared with the engine (``kernels.layout``: MIGRATE_PFN
layouts, PTE/PMD words, PG_* bits, counter names), plus the simulator's
bookkeeping conventions (kernels/mm.py): CPU 0 takes user faults and CPU 1 runs the driver
(so migrate_vma()'s batch is CPU 1's), a free device-private page
holds one reference in hmm-v25 (page_free when a put brings it back to 1), the
allocator pops the top of a LIFO free stack and frees push onto it, and a
migration entry stays on its page's reverse-map chain until it is removed. The
simulator's own bookkeeping is modelled as it documents it: vmstat-like counters
(pgmigrate_success per page moved, pgmigrate_fail per destination offered in
vain, migrate_vma_calls/collected, one tlb_flush per flush operation, the
device's calloc/cfree for every device frame handed out/returned) and the device
mirror forgetting a slot whose device page moved away.

Deliberate deviation: 4.14 leaks the THP reference when the trylock in collect
fails; like the simulator, the model drops it so that the invariants hold.

Use :func:`snapshot` to build a :class:`Model` from a machine, :func:`migrate_vma`
to run the passes on it, and :func:`differences` to compare two models.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from migengine.kernels import layout as L
from tests.helpers import written_state

EINVAL = -22
HPAGE_NR = L.HPAGE_PMD_NR
# include/linux/pagevec.h (4.14): PAGEVEC_SIZE 14. mm/swap.c's __lru_cache_add()
# adds, then drains when pagevec_add() reports no space left or the page is compound.
PAGEVEC_SIZE = 14
# Linux 6.10+ include/linux/pagevec.h: PAGEVEC_SIZE 31 ("31 pointers + header align
# the folio_batch structure to a power of two"; renamed FOLIO_BATCH_SIZE later).
# mm/swap.c __folio_batch_add_and_move(): folio_get(), then folio_batch_move_lru()
# when folio_batch_add() leaves no space or !folio_may_be_lru_cached() (large folio):
# the same rule as 4.14's, so only the size differs.
FOLIO_BATCH_SIZE = 31
LRU_BATCH_SIZE = {"seed": PAGEVEC_SIZE, "hmm-v25": PAGEVEC_SIZE, "modern": FOLIO_BATCH_SIZE}
CPU_USER, CPU_DRIVER = L.CPU_USER, L.CPU_DRIVER

# struct page flag bits, as plain ints.
PG_LOCKED = int(L.PG_LOCKED)
PG_LRU = int(L.PG_LRU)
PG_PAGEVEC = int(L.PG_PAGEVEC)
PG_HEAD = int(L.PG_HEAD)
PG_TAIL = int(L.PG_TAIL)
PG_ZONE_DEVICE = int(L.PG_ZONE_DEVICE)
PG_ZERO = int(L.PG_ZERO)
PG_MLOCKED = int(L.PG_MLOCKED)
PG_DIRTY = int(L.PG_DIRTY)
PG_FREE = int(L.PG_FREE)

PTE_NONE, PTE_PRESENT, PTE_SWAP = int(L.PTE_NONE), int(L.PTE_PRESENT), int(L.PTE_SWAP)
PTE_MIGRATION, PTE_DEVICE = int(L.PTE_MIGRATION), int(L.PTE_DEVICE)
PTE_WRITE, PTE_DIRTY, PTE_SHIFT = int(L.PTE_WRITE), int(L.PTE_DIRTY), int(L.PTE_PFN_SHIFT)
PMD_NONE, PMD_TABLE, PMD_THP = int(L.PMD_NONE), int(L.PMD_TABLE), int(L.PMD_THP)
PMD_HUGE_ZERO, PMD_WRITE = int(L.PMD_HUGE_ZERO), int(L.PMD_WRITE)

MAPPING_NONE, MAPPING_ANON, MAPPING_FILE = 0, 1, 2


@dataclass
class Page:
    """One struct page."""

    ref: int
    map: int
    pins: int
    index: int
    flags: int
    mapping: int
    rmap: list[int]  # PTE slots (present, device or migration entries) on its chain


@dataclass
class Vma:
    start: int
    end: int
    flags: int
    kind: int
    mm: int
    pte_base: int
    pmd_base: int
    pcache_base: int
    pgoff: int
    live: int


@dataclass
class Model:
    """The machine, as plain Python objects."""

    profile: str
    layout: dict[str, int]
    page_size: int
    nr_ram: int
    nr_dev: int
    zero_pfn: int
    pages: list[Page]
    vmas: list[Vma]
    pte: list[int]
    pmd: list[int]
    mirror: list[int]
    pcache: list[int]
    swap_map: list[int]
    pagevec: list[list[int]]
    free_ram: list[int]  # bottom .. top of the LIFO stack
    free_dev: list[int]
    counters: dict[str, int]
    data: bytearray
    fail_alloc: int
    dev_owner: int = 0  # the device's pgmap->owner id (state.dev[0, DEV_OWNER])

    @property
    def hmm(self) -> bool:
        return self.profile == "hmm-v25"

    @property
    def device_free_ref(self) -> int:
        """A free ZONE_DEVICE page's refcount: 1 in 4.14, 0 since v6.1 (modern)."""
        return 0 if self.profile == "modern" else 1

    # ------------------------------------------------------------ MIGRATE_PFN words
    def mpfn(self, pfn: int) -> int:
        """migrate_pfn(): (pfn << SHIFT) | VALID."""
        return (pfn << self.layout["SHIFT"]) | self.layout["VALID"]

    def page_of(self, mpfn: int) -> int:
        """migrate_pfn_to_page() as a pfn, -1 for NULL (no VALID bit)."""
        if not mpfn & self.layout["VALID"]:
            return -1
        return mpfn >> self.layout["SHIFT"]

    # ------------------------------------------------------------ geometry
    @property
    def pmd_span(self) -> int:
        return self.page_size * HPAGE_NR

    def pte_slot(self, v: int, addr: int) -> int:
        vma = self.vmas[v]
        return vma.pte_base + (addr - vma.start) // self.page_size

    def pmd_index(self, v: int, addr: int) -> int:
        vma = self.vmas[v]
        return vma.pmd_base + addr // self.pmd_span - vma.start // self.pmd_span

    def slot_owner(self, slot: int) -> tuple[int, int]:
        """The (VMA, address) a PTE slot belongs to."""
        for v, vma in enumerate(self.vmas):
            npages = (vma.end - vma.start) // self.page_size
            if vma.live and vma.pte_base <= slot < vma.pte_base + npages:
                return v, vma.start + (slot - vma.pte_base) * self.page_size
        raise LookupError(f"PTE slot {slot} belongs to no VMA")

    # ------------------------------------------------------------ struct page helpers
    def has(self, pfn: int, flag: int) -> bool:
        return bool(self.pages[pfn].flags & flag)

    def set(self, pfn: int, flag: int) -> None:
        self.pages[pfn].flags |= flag

    def clear(self, pfn: int, flag: int) -> None:
        self.pages[pfn].flags &= ~flag

    def device_private(self, pfn: int) -> bool:
        """is_zone_device_page(): device frames are device-private in hmm-v25 and modern."""
        return self.has(pfn, PG_ZONE_DEVICE)

    def compound(self, pfn: int) -> bool:
        return self.has(pfn, PG_HEAD | PG_TAIL)

    def head(self, pfn: int) -> int:
        return pfn - pfn % HPAGE_NR if self.has(pfn, PG_TAIL) else pfn

    def kind_of(self, pfn: int) -> str:
        if self.device_private(pfn):
            return "device-private"
        return "file/shmem" if self.pages[pfn].mapping == MAPPING_FILE else "anon"

    def mapped(self, pfn: int) -> bool:
        return self.pages[self.head(pfn)].map > 0

    # ------------------------------------------------------------ page allocator
    def _stack(self, pfn: int) -> list[int]:
        return self.free_dev if pfn >= self.nr_ram else self.free_ram

    def alloc_frame(self, device: bool) -> int:
        """Pop the top of the free stack; the frame comes back with one more reference."""
        stack = self.free_dev if device else self.free_ram
        if not stack:
            return -1
        pfn = stack.pop()
        p = self.pages[pfn]
        p.flags &= PG_ZONE_DEVICE
        p.map, p.pins, p.index, p.mapping, p.rmap = 0, 0, 0, MAPPING_NONE, []
        p.ref += 1
        return pfn

    def free_frame(self, pfn: int) -> None:
        p = self.pages[pfn]
        self._stack(pfn).append(pfn)
        p.flags = (p.flags & PG_ZONE_DEVICE) | PG_FREE
        p.map, p.mapping, p.rmap = 0, MAPPING_NONE, []
        if pfn >= self.nr_ram:
            self.counters["device_cfree"] += 1  # back on the device's free list

    # ------------------------------------------------------------ references
    def get_page(self, pfn: int) -> None:
        self.pages[self.head(pfn)].ref += 1

    def put_page(self, pfn: int) -> None:
        """Drop a reference; free at 0 (RAM) or, for device-private memory, at
        device_free_ref (1 in 4.14; 0 in modern, where the pgmap's page_free runs)."""
        h = self.head(pfn)
        if h == self.zero_pfn:
            return  # the shared zero page is never counted
        p = self.pages[h]
        p.ref -= 1
        if self.device_private(h):
            if p.ref == self.device_free_ref:
                self.free_frame(h)
            return
        if p.ref == 0:
            if self.has(h, PG_HEAD):
                for j in range(HPAGE_NR):
                    self.pages[h + j].ref = 0
                    self.free_frame(h + j)
            else:
                self.free_frame(h)

    # ------------------------------------------------------------ page lock
    def trylock(self, pfn: int) -> bool:
        if self.has(pfn, PG_LOCKED):
            return False
        self.set(pfn, PG_LOCKED)
        return True

    def unlock(self, pfn: int) -> None:
        self.clear(pfn, PG_LOCKED)

    # ------------------------------------------------------------ LRU
    def _drain(self, cpu: int) -> None:
        batch, self.pagevec[cpu] = self.pagevec[cpu], []
        for pfn in batch:
            self.clear(pfn, PG_PAGEVEC)
            self.set(pfn, PG_LRU)
            self.put_page(pfn)

    def lru_cache_add(self, cpu: int, pfn: int) -> None:
        """__lru_cache_add(): the batch takes a reference; the add that fills it
        (the 14th page; modern: the 31st), or any compound page, drains it."""
        self.get_page(pfn)
        self.set(pfn, PG_PAGEVEC)
        self.pagevec[cpu].append(pfn)
        if len(self.pagevec[cpu]) == LRU_BATCH_SIZE[self.profile] or self.has(pfn, PG_HEAD):
            self._drain(cpu)

    def lru_add_drain(self, cpu: int) -> None:
        self.counters["lru_add_drain"] += 1
        self._drain(cpu)

    def lru_add_drain_all(self) -> None:
        self.counters["lru_add_drain_all"] += 1
        for cpu in range(len(self.pagevec)):
            self._drain(cpu)

    def isolate_lru_page(self, pfn: int) -> bool:
        """True on success (the isolation holds a reference), False (-EBUSY) off the LRU."""
        if not self.has(pfn, PG_LRU):
            return False
        self.clear(pfn, PG_LRU)
        self.get_page(pfn)
        return True

    def putback_lru_page(self, pfn: int) -> None:
        """mm/vmscan.c (4.14): lru_cache_add(page), then put_page(page) for the
        isolation's reference. migrate_vma() runs on the driver's CPU, so the page
        waits in that CPU's batch, which holds it until the batch drains."""
        h = self.head(pfn)
        self.lru_cache_add(CPU_DRIVER, h)
        self.put_page(h)

    # ------------------------------------------------------------ page-table words
    @staticmethod
    def pte_word(kind: int, pfn: int, write: bool) -> int:
        return (pfn << PTE_SHIFT) | kind | (PTE_WRITE if write else 0)

    # ------------------------------------------------------------ driver helpers
    def copy_page(self, dst_pfn: int, src_pfn: int) -> None:
        ps = self.page_size
        self.data[dst_pfn * ps : (dst_pfn + 1) * ps] = self.data[src_pfn * ps : (src_pfn + 1) * ps]

    def alloc_page(self, device: bool) -> int:
        """m.alloc_page(): a fresh page, locked, or -1."""
        pfn = self.alloc_frame(device)
        if pfn >= 0:
            self.set(pfn, PG_LOCKED)
            if device:
                self.counters["device_calloc"] += 1  # handed out by the device's allocator
        return pfn


# ============================================================================ snapshot
def _chain(page_rmap: int, pte_next: Any) -> list[int]:
    out = []
    node = int(page_rmap)
    while node != -1:
        out.append(node)
        node = int(pte_next[node])
    return out


def snapshot(m: Any) -> Model:
    """Copy a machine's state into plain Python objects, every frame written:
    the model, as a kernel booted without deferred struct page init, has every
    frame's struct page and free-list entry from the start."""
    st = written_state(m)
    sysv = [int(x) for x in st.sys]
    nr_ram, nr_dev = sysv[L.SYS_NR_RAM], sysv[L.SYS_NR_DEVICE]
    pages = [
        Page(
            ref=int(rec["refcount"]),
            map=int(rec["mapcount"]),
            pins=int(rec["pins"]),
            index=int(rec["index"]),
            flags=int(rec["flags"]),
            mapping=int(rec["mapping"]),
            rmap=_chain(rec["rmap"], st.pte_next),
        )
        for rec in st.page
    ]
    vmas = [
        Vma(*(int(rec[name]) for name in Vma.__dataclass_fields__))
        for rec in st.vma[: sysv[L.SYS_NR_VMAS]]
    ]
    nptes = sysv[L.SYS_PTE_USED]
    layout = {name: int(value) for name, value in zip(L.LAYOUT_FIELDS, st.layout, strict=True)}
    return Model(
        profile=m.profile,
        layout=layout,
        page_size=sysv[L.SYS_PAGE_SIZE],
        nr_ram=nr_ram,
        nr_dev=nr_dev,
        zero_pfn=sysv[L.SYS_ZERO_PFN],
        pages=pages,
        vmas=vmas,
        pte=[int(x) for x in st.pte[:nptes]],
        pmd=[int(x) for x in st.pmd[: sysv[L.SYS_PMD_USED]]],
        mirror=[int(x) for x in st.mirror[0, :nptes]],  # the one device the model has
        pcache=[int(x) for x in st.pcache[: sysv[L.SYS_PCACHE_USED]]],
        swap_map=[max(int(x), 0) for x in st.swap_map],  # < 0: a freed slot's link
        pagevec=[[int(p) for p in st.pagevec[c, : st.pagevec_n[c]]] for c in range(L.NR_CPUS)],
        free_ram=[int(x) for x in st.free_stack[: sysv[L.SYS_RAM_FREE]]],
        free_dev=[int(x) for x in st.free_stack[nr_ram : nr_ram + st.dev[0, L.DEV_FREE]]],
        counters={n: int(v) for n, v in zip(L.COUNTER_NAMES, st.counters, strict=True)},
        data=bytearray(st.data.tobytes()),
        fail_alloc=int(st.dev[0, L.DEV_FAIL_ALLOC]),
        dev_owner=int(st.dev[0, L.DEV_OWNER]),
    )


# ============================================================================ struct migrate_vma
@dataclass
class Migrate:
    vma: int
    start: int
    end: int
    src: list[int]
    dst: list[int]
    npages: int = 0
    cpages: int = 0
    stage: str = ""  # where migrate_vma() returned: einval/collect/prepare/unmap/done
    notes: set[str] = field(default_factory=set)  # kernel branches taken (for statistics)

    def emit(self, mpfn: int, dst_zero: bool) -> None:
        """Fill the next slot (migrate->src[migrate->npages++] = mpfn)."""
        if dst_zero:
            self.dst[self.npages] = 0
        self.src[self.npages] = mpfn
        self.npages += 1


# ============================================================================ THP
def split_huge_pmd_zero(md: Model, v: int, addr: int) -> None:
    """split_huge_pmd() of the huge zero page: 512 read-only zero-page PTEs."""
    first = addr - addr % md.pmd_span
    slot0 = md.pte_slot(v, first)
    for j in range(HPAGE_NR):
        md.pte[slot0 + j] = md.pte_word(PTE_PRESENT, md.zero_pfn, False)
    md.pmd[md.pmd_index(v, addr)] = PMD_TABLE
    md.counters["thp_split_pmd"] += 1


def split_huge_page(md: Model, head: int) -> bool:
    """split_huge_page() with the caller holding the page lock and one reference.

    Fails (-EBUSY) when anything beyond the PMD mappings and the caller holds a
    reference. Otherwise every PMD mapping becomes 512 PTEs, each subpage holds one
    reference per mapping, inherits LRU/dirty/mlocked, mapping and index; the head
    keeps the lock and the caller's reference. The new PTEs follow the simulator's
    convention for writable anonymous PTEs (dirty); 4.14 re-creates them through
    migration entries, clean, with PG_dirty on the pages. Nothing reads that bit.
    """
    hp = md.pages[head]
    if hp.ref - 1 != hp.map:
        return False
    nmaps, flags, mapping, index0 = hp.map, hp.flags, hp.mapping, hp.index
    extents = list(hp.rmap)
    for j in range(HPAGE_NR):
        sub = md.pages[head + j]
        sub.flags = flags & (PG_LRU | PG_DIRTY | PG_MLOCKED)
        sub.mapping, sub.index = mapping, index0 + j
        sub.map = sub.ref = nmaps
        sub.rmap = []
    hp.flags |= flags & PG_LOCKED
    hp.ref += 1
    for first_slot in extents:
        v, addr = md.slot_owner(first_slot)
        pmd_i = md.pmd_index(v, addr)
        write = bool(md.pmd[pmd_i] & PMD_WRITE)
        for j in range(HPAGE_NR):
            md.pte[first_slot + j] = md.pte_word(PTE_PRESENT, head + j, write) | (
                PTE_DIRTY if write else 0
            )
            md.pages[head + j].rmap.append(first_slot + j)
        md.pmd[pmd_i] = PMD_TABLE
    md.counters["thp_split_page"] += 1
    return True


# ============================================================================ rmap
def remove_migration_pte(md: Model, slot: int, page: int, newpage: int) -> bool:
    """Map ``newpage`` where a migration entry for ``page`` stands (write bit kept).

    The device's mirror page table forgets a slot whose device page moved away
    (the simulator's stand-in for the dmirror mmu-notifier invalidation)."""
    word = md.pte[slot]
    if word & 7 != PTE_MIGRATION or word >> PTE_SHIFT != page:
        return False
    kind = PTE_DEVICE if md.device_private(newpage) else PTE_PRESENT
    md.pte[slot] = md.pte_word(kind, newpage, bool(word & PTE_WRITE))
    md.pages[newpage].map += 1
    md.get_page(newpage)
    if newpage != page and md.mirror[slot] >= 0 and md.mirror[slot] >> 1 == page:
        md.mirror[slot] = -1  # the page left the device: the mirror's notifier drops it
    return True


def remove_migration_ptes(md: Model, page: int, newpage: int) -> None:
    """Every migration entry of ``page``, in every process, now maps ``newpage``."""
    for slot in list(md.pages[page].rmap):
        if remove_migration_pte(md, slot, page, newpage) and newpage != page:
            md.pages[page].rmap.remove(slot)
            md.pages[newpage].rmap.append(slot)


def try_to_unmap(md: Model, page: int, device_write: bool = False) -> None:
    """try_to_unmap(TTU_MIGRATION|TTU_IGNORE_MLOCK|TTU_IGNORE_ACCESS).

    Each present PTE becomes a migration entry with the same write permission;
    a device-private entry (ZONE_DEVICE) becomes a read-only one (4.14's
    try_to_unmap_one(): make_migration_entry(page, 0)), or keeps its write bit
    with ``device_write`` (modern's try_to_migrate_one():
    is_writable_device_private_entry()). The mapping's count and reference go
    away. A present PTE is cleared with ptep_clear_flush() (one TLB flush each)
    and its dirty bit moves to the page; a device-private entry is simply
    cleared (no TLB entry to flush). The notifier drops the slot from the
    mirror (mmu_notifier_invalidate_range(); modern's MMU_NOTIFY_CLEAR range).
    """
    for slot in md.pages[page].rmap:
        word = md.pte[slot]
        kind = word & 7
        if kind not in (PTE_PRESENT, PTE_DEVICE):
            continue
        if kind == PTE_PRESENT:
            md.counters["tlb_flush"] += 1
            if word & PTE_DIRTY:
                md.set(page, PG_DIRTY)
        write = (kind == PTE_PRESENT or device_write) and bool(word & PTE_WRITE)
        md.pte[slot] = md.pte_word(PTE_MIGRATION, page, write)
        md.mirror[slot] = -1
        md.pages[page].map -= 1
        md.put_page(page)


# ============================================================================ collect
def _collect_hole(md: Model, mig: Migrate, n: int) -> None:
    """pte_hole / pmd_none. seed: src = dst = 0. 4.14: src = MIGRATE, cpages++ each."""
    for _ in range(n):
        if md.hmm:
            mig.emit(md.layout["MIGRATE"], dst_zero=True)
            mig.cpages += 1
        else:
            mig.emit(0, dst_zero=True)


def _collect_skip(md: Model, mig: Migrate, n: int) -> None:
    """A PMD range that cannot be collected (THP lock or split failure): src = dst = 0.
    (The seed calls its hole handler here, which is the same thing there.)"""
    for _ in range(n):
        mig.emit(0, dst_zero=True)


def _collect_pte(md: Model, mig: Migrate, slot: int) -> tuple[int, int]:
    """Classify one PTE: (mpfn before the page checks, pfn of its page or -1)."""
    lay = md.layout
    word = md.pte[slot]
    kind = word & 7
    pfn = word >> PTE_SHIFT
    writable = lay["WRITE"] if word & PTE_WRITE else 0
    if kind == PTE_NONE:
        if md.hmm:  # 17/19: a hole the driver may fill
            mig.cpages += 1
            return lay["MIGRATE"], -1
        return 0, -1
    if kind == PTE_PRESENT:
        if pfn == md.zero_pfn:  # vm_normal_page() is NULL; 17/19 treats it as a hole
            if md.hmm:
                mig.cpages += 1
                return lay["MIGRATE"], -1
            return 0, -1
        return md.mpfn(pfn) | lay["MIGRATE"] | writable, pfn
    if kind == PTE_DEVICE and md.hmm:  # 16/19: device-private entry
        return md.mpfn(pfn) | lay["MIGRATE"] | lay["DEVICE"] | writable, pfn
    return 0, -1  # swap, migration and other special entries are left alone


def _collect_pte_range(md: Model, mig: Migrate, v: int, addr: int, stop: int) -> None:
    lay = md.layout
    unmapped = 0
    for a in range(addr, stop, md.page_size):
        slot = md.pte_slot(v, a)
        mpfn, page = _collect_pte(md, mig, slot)
        if page >= 0:
            p = md.pages[page]
            if p.mapping == MAPPING_NONE or md.compound(page):
                mpfn = 0  # no page->mapping, or PageTransCompound(): FIXME THP
            else:
                mig.notes.add(f"collect: {md.kind_of(page)} page")
                md.get_page(page)  # pins the page (and "freezes" the PTE)
                mig.cpages += 1
                if md.hmm and md.trylock(page):
                    # 15/19: lock and unmap right away, the common single-mapping case
                    mpfn |= lay["LOCKED"]
                    was_present = md.pte[slot] & 7 == PTE_PRESENT
                    # make_migration_entry(page, pte_write(pte)): for a device
                    # entry that reads a bit of a swap PTE, clear on x86-64.
                    write = was_present and bool(mpfn & lay["WRITE"])
                    md.pte[slot] = md.pte_word(PTE_MIGRATION, page, write)
                    p.map -= 1  # page_remove_rmap(); the slot stays on the chain
                    md.put_page(page)  # the mapping's reference
                    unmapped += was_present
        # 16/19 clears dst for every slot; the seed writes dst only for holes.
        mig.emit(mpfn, dst_zero=md.hmm)
    if unmapped:
        md.counters["tlb_flush"] += 1  # one flush_tlb_range() per PMD


def walk_pmds(md: Model, mig: Migrate, hole: Any, ptes: Any, huge: Any = None) -> None:
    """The PMD-by-PMD walk of migrate_vma_collect() over [start, end): ``hole(md,
    mig, n)`` for an empty extent, ``ptes(md, mig, addr, stop)`` for a page table;
    4.14 splits the huge zero PMD first, and trylocks and splits a THP (its extent
    skipped when either fails). A later kernel's huge-PMD branches come as
    ``huge(md, mig, kind, pmd, n)``, which returns whether the PTE loop runs."""
    v, span = mig.vma, md.pmd_span
    addr = mig.start
    while addr < mig.end:
        stop = min((addr // span + 1) * span, mig.end)
        n = (stop - addr) // md.page_size
        pmd = md.pmd[md.pmd_index(v, addr)]
        kind = pmd & int(L.PMD_KIND_MASK)
        walk = True
        if huge is not None and kind != PMD_TABLE:
            walk = huge(md, mig, kind, pmd, n)
        elif kind == PMD_NONE:
            hole(md, mig, n)
            walk = False
        elif kind == PMD_HUGE_ZERO:
            mig.notes.add("collect: huge zero PMD")
            split_huge_pmd_zero(md, v, addr)
        elif kind == PMD_THP:
            head = pmd >> PTE_SHIFT
            md.get_page(head)
            mig.notes.add("collect: PMD-mapped THP")
            if not md.trylock(head):
                # The kernel returns here without put_page() (a leaked reference);
                # the simulator drops it so that its invariants hold.
                md.put_page(head)
                walk = False
            else:
                walk = split_huge_page(md, head)  # modern: split_folio()
                md.unlock(head)
                md.put_page(head)
            if not walk:
                mig.notes.add("collect: THP skipped")
                _collect_skip(md, mig, n)
        if walk:
            ptes(md, mig, addr, stop)
        addr = stop
    mig.end = mig.start + mig.npages * md.page_size


def collect(md: Model, mig: Migrate) -> None:
    """migrate_vma_collect(): walk [start, end) PMD by PMD. In 4.14 (15/19) the walk
    runs under mmu_notifier_invalidate_range_start() over the whole range: the
    device's mirror, a notifier with no way to tell its own migration from any
    other change, forgets it all."""
    if md.hmm:
        first = md.pte_slot(mig.vma, mig.start)
        for slot in range(first, first + (mig.end - mig.start) // md.page_size):
            md.mirror[slot] = -1

    def ptes(md: Model, mig: Migrate, addr: int, stop: int) -> None:
        _collect_pte_range(md, mig, mig.vma, addr, stop)

    walk_pmds(md, mig, _collect_hole, ptes)


# ============================================================================ prepare
def check_page(md: Model, page: int) -> bool:
    """migrate_vma_check_page(): False when someone else holds a reference.

    The caller holds one extra reference (isolation, or collect for device pages).
    4.14 adds: device-private pages always pass; a page-cache page has one more.
    """
    if md.compound(page):
        return False
    extra = 1
    if md.hmm:
        if md.device_private(page):
            return True
        if md.pages[page].mapping == MAPPING_FILE:
            extra += 1
    p = md.pages[page]
    return p.ref - extra <= p.map


def _prepare_seed(md: Model, mig: Migrate) -> None:
    lay = md.layout
    allow_drain = True
    i = 0
    while i < mig.npages and mig.cpages:
        page = md.page_of(mig.src[i])
        if page < 0:
            i += 1
            continue
        if not md.trylock(page):  # best effort: back off, never wait
            mig.notes.add("prepare: trylock failed")
            mig.src[i] = 0
            mig.cpages -= 1
            md.put_page(page)
        else:
            mig.src[i] |= lay["LOCKED"]
            if not md.has(page, PG_LRU) and allow_drain:
                mig.notes.add("prepare: lru_add_drain_all()")
                md.lru_add_drain_all()
                allow_drain = False
            if not md.isolate_lru_page(page):
                mig.notes.add("prepare: isolate failed")
                mig.src[i] = 0
                md.unlock(page)
                mig.cpages -= 1
                md.put_page(page)
            else:
                # The correction the public contract asks for: drop the collect reference here.
                md.put_page(page)
                if not check_page(md, page):
                    mig.notes.add("prepare: pinned")
                    mig.src[i] = 0
                    md.unlock(page)
                    mig.cpages -= 1
                    md.putback_lru_page(page)
        i += 1


def _prepare_4_14(md: Model, mig: Migrate) -> None:
    lay = md.layout
    allow_drain = True
    restore = 0
    i = 0
    while i < mig.npages and mig.cpages:
        page = md.page_of(mig.src[i])
        i += 1
        if page < 0:
            continue
        k = i - 1
        remap = True  # locked and unmapped by collect: a failure re-maps it
        if not mig.src[k] & lay["LOCKED"]:
            if not md.trylock(page):
                mig.notes.add("prepare: trylock failed")
                mig.src[k] = 0
                mig.cpages -= 1
                md.put_page(page)
                continue
            remap = False
            mig.src[k] |= lay["LOCKED"]
        device = md.device_private(page)
        if not device:  # ZONE_DEVICE pages are never on an LRU
            if not md.has(page, PG_LRU) and allow_drain:
                mig.notes.add("prepare: lru_add_drain_all()")
                md.lru_add_drain_all()
                allow_drain = False
            if not md.isolate_lru_page(page):
                mig.notes.add(f"prepare: isolate failed (remap={remap})")
                mig.cpages -= 1
                if remap:
                    mig.src[k] &= ~lay["MIGRATE"]
                    restore += 1
                else:
                    mig.src[k] = 0
                    md.unlock(page)
                    md.put_page(page)
                continue
            md.put_page(page)  # drop the reference collect took
        if not check_page(md, page):
            mig.notes.add(f"prepare: pinned (remap={remap})")
            mig.cpages -= 1
            if remap:
                mig.src[k] &= ~lay["MIGRATE"]
                restore += 1
                if not device:
                    md.get_page(page)
                    md.putback_lru_page(page)
            else:
                mig.src[k] = 0
                md.unlock(page)
                if device:
                    md.put_page(page)
                else:
                    md.putback_lru_page(page)
    # Re-map what collect unmapped, at its own address in this VMA.
    addr = mig.start
    for k in range(mig.npages):
        if not restore:
            break
        page = md.page_of(mig.src[k])
        if page >= 0 and not mig.src[k] & lay["MIGRATE"]:
            remove_migration_pte(md, md.pte_slot(mig.vma, addr), page, page)
            mig.src[k] = 0
            md.unlock(page)
            md.put_page(page)
            restore -= 1
        addr += md.page_size


def prepare(md: Model, mig: Migrate) -> None:
    """migrate_vma_prepare(): lock, isolate from the LRU, check for pins."""
    if md.pagevec[CPU_DRIVER]:
        mig.notes.add("prepare: local drain of the driver CPU's batch")
    md.lru_add_drain(CPU_DRIVER)  # local: the driver's CPU only
    if md.hmm:
        _prepare_4_14(md, mig)
    else:
        _prepare_seed(md, mig)


# ============================================================================ unmap
def unmap(md: Model, mig: Migrate) -> None:
    """migrate_vma_unmap(): migration entries everywhere, then check pins again."""
    lay = md.layout
    restore = 0
    for i in range(mig.npages):
        page = md.page_of(mig.src[i])
        if page < 0 or not mig.src[i] & lay["MIGRATE"]:
            continue
        ok = True
        # 15/19: collect already unmapped the walked PTE; only other mappings remain.
        if not md.hmm or md.mapped(page):
            try_to_unmap(md, page)
            ok = not md.mapped(page)
        ok = ok and check_page(md, page)
        if not ok:
            mig.notes.add("unmap: restored")
            mig.src[i] &= ~lay["MIGRATE"]
            mig.cpages -= 1
            restore += 1
    for i in range(mig.npages):
        if not restore:
            break
        page = md.page_of(mig.src[i])
        if page < 0 or mig.src[i] & lay["MIGRATE"]:
            continue
        remove_migration_ptes(md, page, page)
        mig.src[i] = 0
        md.unlock(page)
        restore -= 1
        if md.device_private(page):
            md.put_page(page)
        else:
            md.putback_lru_page(page)


# ============================================================================ pages
def migrate_page(md: Model, newpage: int, page: int) -> bool:
    """migrate_page(mapping, newpage, page, MIGRATE_SYNC_NO_COPY).

    migrate_page_move_mapping(): the page must hold exactly the expected references
    (the isolation/collect one, +1 for a ZONE_DEVICE page's device, +1 for the
    page cache) and, for page cache, still sit in its slot; else -EAGAIN. Then
    mapping and index move, the page cache's reference and slot move, and
    migrate_page_states() carries dirty and mlocked over. No data is copied.
    """
    in_cache = md.pages[page].mapping == MAPPING_FILE
    return move_mapping(md, newpage, page, 1 + md.device_private(page) + in_cache)


def move_mapping(md: Model, newpage: int, page: int, expected: int) -> bool:
    """What 4.14's migrate_page_move_mapping() and modern's folio_migrate_mapping()
    + folio_migrate_flags() share, given the references the page must hold:
    -EAGAIN (False) for another count or a page-cache slot that moved; else the
    page cache's reference and slot, mapping and index move, and dirty and
    mlocked are carried over."""
    p, n = md.pages[page], md.pages[newpage]
    in_cache = p.mapping == MAPPING_FILE
    if p.ref != expected:
        return False
    if in_cache:
        if md.pcache[p.index] != page:
            return False
        n.ref += 1
        md.pcache[p.index] = newpage
        p.ref -= 1
    n.index, n.mapping = p.index, p.mapping
    carried = p.flags & (PG_DIRTY | PG_MLOCKED)
    p.flags &= ~carried
    n.flags |= carried
    return True


def insert_page(md: Model, mig: Migrate, i: int, addr: int, newpage: int) -> None:
    """migrate_vma_insert_page() (17/19): map a new page where collect saw a hole."""
    lay = md.layout
    v = mig.vma
    vma = md.vmas[v]
    pmd_i = md.pmd_index(v, addr)
    slot = md.pte_slot(v, addr)
    word = md.pte[slot]
    replaces_zero = False
    ok = vma.kind == L.VMA_ANON and md.pmd[pmd_i] & 3 not in (PMD_THP, PMD_HUGE_ZERO)
    if word & 7 == PTE_PRESENT:
        replaces_zero = word >> PTE_SHIFT == md.zero_pfn
        ok = ok and replaces_zero  # populated meanwhile: back off
    elif word & 7 != PTE_NONE:
        ok = False
    if not ok or vma.flags & L.VM_UFFD_MISSING:  # do not bypass a userfaultfd
        mig.notes.add("pages: insert backed off")
        mig.src[i] &= ~lay["MIGRATE"]
        return
    mig.notes.add(f"pages: inserted {'device' if md.device_private(newpage) else 'system'} page")
    if md.pmd[pmd_i] & 3 == PMD_NONE:
        md.pmd[pmd_i] = PMD_TABLE  # pte_alloc()
    device = md.device_private(newpage)
    n = md.pages[newpage]
    n.mapping, n.index = MAPPING_ANON, addr // md.page_size
    writable = bool(vma.flags & L.VM_WRITE)
    if not device:
        # lru_cache_add_active_or_unevictable(): mlocked in a VM_LOCKED VMA
        if vma.flags & L.VM_LOCKED:
            md.set(newpage, PG_MLOCKED)
        md.lru_cache_add(CPU_DRIVER, newpage)
    if device:
        md.pte[slot] = md.pte_word(PTE_DEVICE, newpage, writable)
    else:
        md.pte[slot] = md.pte_word(PTE_PRESENT, newpage, writable) | (PTE_DIRTY if writable else 0)
        if writable:
            md.set(newpage, PG_DIRTY)
    n.map += 1
    md.get_page(newpage)
    n.rmap.append(slot)
    if replaces_zero:
        md.counters["tlb_flush"] += 1  # ptep_clear_flush_notify() of the zero page
    md.counters["insert_page"] += 1
    mig.src[i] = lay["MIGRATE"]


def pages(md: Model, mig: Migrate) -> None:
    """migrate_vma_pages(): move struct-page metadata; failures clear MIGRATE."""
    lay = md.layout
    for i in range(mig.npages):
        addr = mig.start + i * md.page_size
        newpage = md.page_of(mig.dst[i])
        page = md.page_of(mig.src[i])
        if md.hmm:
            if newpage < 0:
                mig.src[i] &= ~lay["MIGRATE"]  # 17/19: no destination
                continue
            if page < 0:
                if mig.src[i] & lay["MIGRATE"]:
                    insert_page(md, mig, i, addr, newpage)
                continue
            if md.device_private(newpage) and md.pages[page].mapping == MAPPING_FILE:
                mig.notes.add("pages: page cache refused by device memory")
                mig.src[i] &= ~lay["MIGRATE"]  # only private anonymous to device-private
                continue
        elif page < 0 or newpage < 0:
            continue  # 14/19: skipped, MIGRATE kept
        if not mig.src[i] & lay["MIGRATE"]:
            continue
        if not migrate_page(md, newpage, page):
            mig.notes.add("pages: -EAGAIN")
            mig.src[i] &= ~lay["MIGRATE"]
        else:
            kinds = ("system", "device")
            mig.notes.add(
                f"pages: {kinds[page >= md.nr_ram]} -> {kinds[newpage >= md.nr_ram]}"
                + (" (page cache)" if md.pages[newpage].mapping == MAPPING_FILE else "")
            )


# ============================================================================ finalize
def _release(md: Model, pfn: int) -> None:
    if md.device_private(pfn):
        md.put_page(pfn)
    else:
        md.putback_lru_page(pfn)


def finalize(md: Model, mig: Migrate) -> None:
    """migrate_vma_finalize(): remap to the new page or back to the old one."""
    lay = md.layout
    for i in range(mig.npages):
        newpage = md.page_of(mig.dst[i])
        page = md.page_of(mig.src[i])
        if page < 0:
            if md.hmm and newpage >= 0:  # 17/19: a filled (or refused) hole
                md.unlock(newpage)
                md.put_page(newpage)
            continue
        if not mig.src[i] & lay["MIGRATE"] or newpage < 0:
            if newpage >= 0:
                md.unlock(newpage)
                md.put_page(newpage)
                # The simulator's vmstat convention: a destination offered in vain.
                md.counters["pgmigrate_fail"] += 1
            newpage = page
        remove_migration_ptes(md, page, newpage)
        md.unlock(page)
        mig.cpages -= 1
        _release(md, page)
        if newpage != page:
            md.unlock(newpage)
            _release(md, newpage)
            md.counters["pgmigrate_success"] += 1


# ============================================================================ driver
Callback = Callable[[Model, int, list[int], list[int], int, int, Any], None]


@dataclass
class Ops:
    alloc_and_copy: Callback
    finalize_and_map: Callback


def check_args(md: Model, v: int | None, start: int, end: int) -> int:
    """The sanity checks of migrate_vma(): -EINVAL or the number of pages."""
    ps = md.page_size
    start -= start % ps
    end -= end % ps
    if v is None or not 0 <= v < len(md.vmas) or not md.vmas[v].live:
        return EINVAL
    vma = md.vmas[v]
    if vma.flags & (L.VM_HUGETLB | L.VM_SPECIAL):
        return EINVAL
    if not vma.start <= start < vma.end:
        return EINVAL
    if not vma.start < end <= vma.end:
        return EINVAL
    if start >= end:
        return EINVAL
    return (end - start) // ps


def migrate_vma(
    md: Model,
    ops: Ops | None,
    v: int | None,
    start: int,
    end: int,
    src: list[int] | None,
    dst: list[int] | None,
    private: Any = None,
) -> tuple[int, Migrate | None]:
    """migrate_vma(): returns (0 or -EINVAL, the struct migrate_vma it used)."""
    if md.profile == "modern":  # me.migrate_vma() over the split API (naive_modern.py)
        from tests.reference import naive_modern

        return naive_modern.migrate_vma(md, ops, v, start, end, src, dst, private)
    npages = check_args(md, v, start, end)
    if npages < 0 or ops is None or src is None or dst is None:
        return EINVAL, None
    assert v is not None
    ps = md.page_size
    start -= start % ps
    end = start + npages * ps
    for i in range(npages):
        src[i] = 0
    md.counters["migrate_vma_calls"] += 1
    mig = Migrate(vma=v, start=start, end=end, src=src, dst=dst)
    collect(md, mig)
    md.counters["migrate_vma_collected"] += mig.cpages
    for stage, step in (("collect", prepare), ("prepare", unmap), ("unmap", None)):
        if not mig.cpages:
            mig.stage = stage
            return 0, mig
        if step is not None:
            step(md, mig)
    ops.alloc_and_copy(md, v, src, dst, start, end, private)
    pages(md, mig)
    ops.finalize_and_map(md, v, src, dst, start, end, private)
    finalize(md, mig)
    mig.stage = "done"
    return 0, mig


# ============================================================================ comparison
@dataclass
class Diff:
    """The first difference per aspect between two models (empty when equal)."""

    found: dict[str, str] = field(default_factory=dict)

    def note(self, aspect: str, message: str) -> None:
        self.found.setdefault(aspect, message)


def _first(a: list[Any], b: list[Any]) -> str:
    if len(a) != len(b):
        return f"lengths {len(a)} != {len(b)}"
    for i, (x, y) in enumerate(zip(a, b, strict=True)):
        if x != y:
            return f"[{i}]: {x!r} != {y!r}"
    return ""


def differences(want: Model, got: Model) -> Diff:
    """Compare the model's outcome (``want``) with the engine's (``got``)."""
    d = Diff()
    for name in ("pte", "pmd", "mirror", "pcache", "swap_map"):
        msg = _first(getattr(want, name), getattr(got, name))
        if msg:
            d.note(name, msg)
    for pfn, (a, b) in enumerate(zip(want.pages, got.pages, strict=True)):
        for f in ("ref", "map", "pins", "index", "flags", "mapping"):
            # a free frame's page->index means nothing (the engine keeps the
            # frame's free-stack position there)
            if f == "index" and a.flags & (PG_FREE | PG_HEAD) == PG_FREE:
                continue
            if getattr(a, f) != getattr(b, f):
                d.note(f"page.{f}", f"pfn {pfn}: {getattr(a, f)} != {getattr(b, f)}")
        if sorted(a.rmap) != sorted(b.rmap):
            d.note("page.rmap", f"pfn {pfn}: {sorted(a.rmap)} != {sorted(b.rmap)}")
    for name in ("free_ram", "free_dev"):
        a, b = getattr(want, name), getattr(got, name)
        if sorted(a) != sorted(b) or len(a) != len(b):
            d.note(name, f"{sorted(set(a) ^ set(b))} differ (sizes {len(a)}, {len(b)})")
    if want.pagevec != got.pagevec:
        d.note("pagevec", f"{want.pagevec} != {got.pagevec}")
    for name, value in want.counters.items():
        if got.counters[name] != value:
            d.note(f"counter.{name}", f"{value} != {got.counters[name]}")
    if want.data != got.data:
        ps = want.page_size
        bad = [
            pfn
            for pfn in range(len(want.pages))
            if want.data[pfn * ps : (pfn + 1) * ps] != got.data[pfn * ps : (pfn + 1) * ps]
        ]
        d.note("data", f"frames {bad} differ")
    return d
