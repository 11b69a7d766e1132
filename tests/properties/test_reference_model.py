"""The compiled passes against a slow, independent Python model (tests/reference/naive.py).

Hypothesis builds small machines through the public API (mmaps of every kind,
faults, forks, swap, pins, foreign page locks and isolations, pages already on
the device), snapshots the state, then runs one migrate_vma() over a random
sub-range twice: on the engine (me.migrate_vma with Python callbacks) and on the
model (naive.migrate_vma on the snapshot), with the same driver policy. Every
src/dst slot, PTE, PMD, struct page, free list, LRU batch, counter and data byte
must agree, and so must the callbacks the two sides called.

In ``modern`` me.migrate_vma() is migrate_vma_setup() with
MIGRATE_VMA_SELECT_SYSTEM and no pgmap_owner, then the driver, migrate_vma_pages()
and migrate_vma_finalize() (tests/reference/naive_modern.py); the split API with
other flags and owners has a property of its own.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

import migengine as me
from tests.reference import naive, naive_modern

PROFILES = ("hmm-v25", "seed", "modern")
PROFILES_4_14 = ("hmm-v25", "seed")  # me.migrate_vma() still selects device pages
ERROR_SLOT = -2  # Policy.choose(): write MIGRATE_PFN_ERROR
PS = 64  # the smallest page: a THP extent (512 pages) stays cheap
_EXAMPLES = os.environ.get("REFMODEL_EXAMPLES")  # e.g. 4000 for a long local hunt
SETTINGS = settings(
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    **({"max_examples": int(_EXAMPLES)} if _EXAMPLES else {}),  # else conftest's profile
)


# ============================================================================ the driver
@dataclass
class Policy:
    """One driver, run on both sides: for MIGRATE slot i, allocate a destination iff
    ``want[i]`` (device memory iff ``device[i]``), in slot order, copying the source
    (or the zero page for a hole); a device source left without one gets
    MIGRATE_PFN_ERROR iff ``error[i]``. finalize_and_map() only records what it saw.

    The layout decides the rest: dst is pfn|VALID|LOCKED (+WRITE as src had it),
    and LOCKED is 0 in modern (v5.16); modern has neither MIGRATE_PFN_ERROR nor
    MIGRATE_PFN_DEVICE (both 0, v5.4), so the ERROR branch never fires there and a
    failure is dst left 0; whether the source is device memory is the page's
    business (the model's and the engine's), never a src bit the driver reads."""

    want: list[bool]
    device: list[bool]
    error: list[bool]
    calls: list[tuple[str, list[int], list[int]]] = field(default_factory=list)

    def record(self, name: str, src: Any, dst: Any, n: int) -> None:
        self.calls.append((name, [int(x) for x in src[:n]], [int(x) for x in dst[:n]]))

    def choose(self, i: int, src_i: int, lay: dict[str, int], alloc: Any) -> int | None:
        """A destination pfn for slot i, ERROR_SLOT, or None to leave dst alone;
        ``alloc(device) -> pfn or -1``."""
        if not src_i & lay["MIGRATE"]:
            return None
        if self.want[i]:
            pfn = alloc(self.device[i])
            if pfn >= 0:
                return pfn
        if self.error[i] and lay["ERROR"] and lay["DEVICE"] and src_i & lay["DEVICE"]:
            return ERROR_SLOT
        return None

    # ------------------------------------------------------------ engine side
    def engine_ops(self, m: me.Machine) -> me.MigrateOps:
        lay = {k: int(v) for k, v in m.layout._asdict().items()}

        def alloc(device: bool) -> int:
            try:
                return m.alloc_page(device=device)
            except me.OutOfMemory:
                return -1

        def alloc_and_copy(vma, src, dst, start, end, private) -> None:
            n = (end - start) // m.page_size
            self.record("alloc_and_copy", src, dst, n)
            for i in range(n):
                pfn = self.choose(i, int(src[i]), lay, alloc)
                if pfn is None:
                    continue
                if pfn == ERROR_SLOT:
                    dst[i] = lay["ERROR"]
                    continue
                spfn = m.mpfn_to_pfn(src[i])
                m.copy_page(pfn, spfn if spfn >= 0 else m.zero_pfn)
                dst[i] = m.migrate_pfn(pfn) | lay["LOCKED"] | (int(src[i]) & lay["WRITE"])

        def finalize_and_map(vma, src, dst, start, end, private) -> None:
            self.record("finalize_and_map", src, dst, (end - start) // m.page_size)

        return me.MigrateOps(alloc_and_copy, finalize_and_map)

    # ------------------------------------------------------------ model side
    def model_ops(self, md: naive.Model) -> naive.Ops:
        lay = md.layout

        def alloc_and_copy(md_, v, src, dst, start, end, private) -> None:
            n = (end - start) // md.page_size
            self.record("alloc_and_copy", src, dst, n)
            for i in range(n):
                pfn = self.choose(i, src[i], lay, md.alloc_page)
                if pfn is None:
                    continue
                if pfn == ERROR_SLOT:
                    dst[i] = lay["ERROR"]
                    continue
                spfn = md.page_of(src[i])
                md.copy_page(pfn, spfn if spfn >= 0 else md.zero_pfn)
                dst[i] = md.mpfn(pfn) | lay["LOCKED"] | (src[i] & lay["WRITE"])

        def finalize_and_map(md_, v, src, dst, start, end, private) -> None:
            self.record("finalize_and_map", src, dst, (end - start) // md.page_size)

        return naive.Ops(alloc_and_copy, finalize_and_map)


# ============================================================================ building states
VMA_FLAGS = st.sampled_from(
    [0] * 6 + [me.VM_LOCKED, me.VM_UFFD_MISSING, me.VM_LOCKED | me.VM_UFFD_MISSING, me.VM_IO]
)


@dataclass
class World:
    m: me.Machine
    procs: list[me.Process]
    vmas: list[me.Vma]


def _mmap(data: st.DataObject, w: World, huge: bool) -> None:
    kind = "anon" if huge else data.draw(st.sampled_from(["anon", "anon", "shmem", "file"]))
    prot = data.draw(st.sampled_from(["rw", "rw", "r"]))
    flags = data.draw(VMA_FLAGS)
    npages = (
        naive.HPAGE_NR + data.draw(st.integers(0, 6)) if huge else data.draw(st.integers(1, 20))
    )
    vma = w.procs[0].mmap(npages, prot=prot, kind=kind, flags=flags, thp=huge)
    w.vmas.append(vma)
    touch = data.draw(st.sampled_from(["no", "read", "write", "write"]), label="populate")
    if touch != "no":
        try:
            vma.process.populate(vma.start, vma.end, write=touch == "write")
        except (me.MigengineError, ValueError):
            pass  # out of memory or not allowed by prot: partly populated


def _page_addr(data: st.DataObject, w: World) -> tuple[me.Vma, int]:
    vma = data.draw(st.sampled_from(w.vmas))
    return vma, vma.start + data.draw(st.integers(0, vma.npages - 1)) * PS


def _mapped_pfn(w: World, vma: me.Vma, addr: int) -> int:
    pte = vma.process.translate(addr)
    if pte.kind in ("present", "device") and pte.pfn > 0:
        return pte.pfn
    return -1


# What the outside world may do between mmap() and the migrate_vma() under test.
OPERATIONS = (
    *("populate", "populate", "read", "write", "write", "fork", "swap", "drain"),
    *("pin", "unpin", "lock", "isolate", "to_device", "to_device", "migrate", "fail_alloc"),
)


def _operation(data: st.DataObject, w: World) -> None:
    """One random thing the outside world does to the machine."""
    op = data.draw(st.sampled_from(OPERATIONS))
    m = w.m
    vma, addr = _page_addr(data, w)
    p = vma.process
    if op == "populate":
        n = data.draw(st.integers(1, vma.npages))
        lo = data.draw(st.integers(0, vma.npages - n))
        p.populate(vma.start + lo * PS, vma.start + (lo + n) * PS, write=data.draw(st.booleans()))
    elif op == "read":
        p.read(addr, data.draw(st.integers(1, PS)))
    elif op == "write":
        p.write(addr, bytes(data.draw(st.binary(min_size=1, max_size=PS))))
    elif op == "fork" and len(w.procs) < 3:
        child = p.fork()
        w.procs.append(child)
        w.vmas.extend(child.vmas())
    elif op == "swap":
        p.swap_out(addr)
    elif op == "to_device" and m.device_pages:
        n = data.draw(st.integers(1, min(vma.npages, 8)))
        lo = data.draw(st.integers(0, vma.npages - n))
        m.device.migrate_to_device(p, vma.start + lo * PS, vma.start + (lo + n) * PS)
    elif op == "drain":
        m.lru_add_drain_all()
    elif op == "fail_alloc":  # the next device fault cannot allocate: SIGBUS, entry kept
        m.device.fail_alloc(data.draw(st.integers(1, 2)))
        p.read(addr, 1)
    elif op == "migrate":  # another driver's migrate_vma(): the system pages it
        call = draw_call(data, w)  # inserts wait in the driver CPU's LRU-add batch
        me.migrate_vma(
            call.policy.engine_ops(m), call.vma, call.start, call.end, call.src, call.dst
        )
    elif op in ("pin", "lock", "isolate", "unpin"):
        pfn = _mapped_pfn(w, vma, addr)
        if pfn > 0:
            action = {
                "pin": m.pin,
                "unpin": m.unpin,
                "lock": m.lock_page,
                "isolate": m.isolate_lru_page,
            }[op]
            action(pfn)


def build_world(data: st.DataObject, make_machine: Any, profile: str, hostile: bool) -> World:
    """A small machine in a random state reached through the public API only."""
    huge = data.draw(st.sampled_from([False, False, False, True]), label="thp machine")
    ram = 1100 if huge else data.draw(st.integers(12, 48), label="ram")
    dev = data.draw(st.integers(0, 20), label="device pages")
    m = make_machine(ram, dev, page_size=PS, profile=profile)
    w = World(m, [m.new_process()], [])
    if huge:
        _mmap(data, w, huge=True)
    for _ in range(data.draw(st.integers(1 if not huge else 0, 3), label="mmaps")):
        _mmap(data, w, huge=False)
    for _ in range(data.draw(st.integers(0, 14), label="operations")):
        try:
            _operation(data, w)
        except (me.MigengineError, ValueError):
            pass  # refused by the machine (segfault, OOM, not pinnable...): state unchanged
    if hostile:
        _make_hostile(data, w)
    w.m.check()  # the state before migrate_vma(): a failure here is not the passes'
    return w


def _make_hostile(data: st.DataObject, w: World) -> None:
    """Someone else holds the mapped pages (pinned, locked or isolated): all of them,
    so that prepare ends with cpages == 0, or a random part of them."""
    hold_all = data.draw(st.booleans(), label="hold every page")
    hold = {"pin": w.m.pin, "lock": w.m.lock_page, "isolate": w.m.isolate_lru_page}
    for vma in w.vmas:
        pages = range(min(vma.npages, 24))  # a THP extent is held through its head
        for k in pages:
            pfn = _mapped_pfn(w, vma, vma.start + k * PS)
            if pfn <= 0 or not (hold_all or data.draw(st.booleans())):
                continue
            try:
                hold[data.draw(st.sampled_from(sorted(hold)))](pfn)
            except ValueError:
                pass  # a THP tail, or already held that way


@dataclass
class Call:
    """One migrate_vma() call: the arguments and the driver policy."""

    vma: me.Vma
    start: int
    end: int
    src: np.ndarray
    dst: np.ndarray
    policy: Policy


def draw_call(data: st.DataObject, w: World) -> Call:
    # Half the time the first VMA (the THP one on a THP machine) and its whole extent.
    vma = w.vmas[0] if data.draw(st.booleans()) else data.draw(st.sampled_from(w.vmas))
    lo, hi = 0, vma.npages
    if data.draw(st.booleans(), label="sub-range"):
        lo = data.draw(st.integers(0, vma.npages - 1), label="first page")
        hi = data.draw(st.integers(lo + 1, vma.npages), label="end page")
    shape = data.draw(st.sampled_from(["ok"] * 12 + ["before", "after", "empty"]), label="range")
    # The kernel rounds both ends down to a page, so sub-page offsets change nothing
    # in 4.14; modern's migrate_vma_setup() counts nr_pages from the unrounded
    # end - start first, so a range shorter than a page is -EINVAL there.
    start = vma.start + lo * PS + data.draw(st.sampled_from([0, 0, 1, PS - 1]))
    end = vma.start + hi * PS + data.draw(st.sampled_from([0, 0, 7, PS - 1]))
    if shape == "before":  # start below vm_start: EINVAL
        lo, start = -1, vma.start - PS
    elif shape == "after":  # end past vm_end: EINVAL
        hi, end = vma.npages + 1, vma.end + PS
    elif shape == "empty":  # start == end after rounding down: EINVAL
        hi, end = lo, start + PS - 1 - (start % PS)
    n = max(hi - lo, 0) + 2  # two spare slots: nothing past npages may be touched
    # dst holds junk without VALID: the seed's collect leaves it in non-hole slots.
    junk = data.draw(st.integers(0, 2**40), label="junk") * 4 + 2
    src = np.array([junk + 8 * i for i in range(n)], np.uint64)
    dst = np.array([junk + 16 * i for i in range(n)], np.uint64)
    policy = Policy(*(_mask(data, n) for _ in range(3)))
    return Call(vma, start, end, src, dst, policy)


def _mask(data: st.DataObject, n: int) -> list[bool]:
    """A per-slot mask as a repeated short pattern (all, none, every other...): a
    512-slot THP range costs a few draws instead of 512."""
    pattern = data.draw(st.lists(st.booleans(), min_size=1, max_size=12))
    return [pattern[i % len(pattern)] for i in range(n)]


# ============================================================================ running both
@dataclass
class Outcome:
    ret: int
    src: list[int]
    dst: list[int]
    calls: list[tuple[str, list[int], list[int]]]
    state: naive.Model
    mig: naive.Migrate | None = None


def run_model(m: me.Machine, call: Call) -> Outcome:
    md = naive.snapshot(m)
    pol = Policy(call.policy.want, call.policy.device, call.policy.error)
    src = [int(x) for x in call.src]
    dst = [int(x) for x in call.dst]
    ret, mig = naive.migrate_vma(
        md, pol.model_ops(md), call.vma.index, call.start, call.end, src, dst
    )
    return Outcome(ret, src, dst, pol.calls, md, mig)


def describe(md: naive.Model, mig: naive.Migrate | None) -> None:
    """Hypothesis statistics: where the call returned and what it moved."""
    event(f"{md.profile}: returned after {mig.stage if mig else 'EINVAL'}")
    if mig is None:
        return
    for note in mig.notes:
        event(f"{md.profile}: {note}")
    if mig.stage != "done":
        return
    lay = md.layout
    pairs = zip(mig.src, mig.dst, strict=True)
    moved = sum(1 for s, d in pairs if s & lay["MIGRATE"] and d & lay["VALID"])
    event(f"{md.profile}: slots migrated {'0' if not moved else '1-3' if moved < 4 else '4+'}")


def run_engine(m: me.Machine, call: Call) -> Outcome:
    pol = Policy(call.policy.want, call.policy.device, call.policy.error)
    src, dst = call.src.copy(), call.dst.copy()
    try:
        ret = me.migrate_vma(pol.engine_ops(m), call.vma, call.start, call.end, src, dst)
    except me.MigrateError as exc:
        assert exc.errno == 22
        ret = naive.EINVAL
    return Outcome(ret, [int(x) for x in src], [int(x) for x in dst], pol.calls, naive.snapshot(m))


def compare(want: Outcome, got: Outcome) -> None:
    """Each aspect on its own line, so Hypothesis reports distinct disagreements apart."""
    d = naive.differences(want.state, got.state).found
    assert want.ret == got.ret, f"return value: model {want.ret}, engine {got.ret}"
    assert [c[0] for c in want.calls] == [c[0] for c in got.calls], "callbacks called"
    assert want.calls == got.calls, "arrays seen by the callbacks"
    assert want.src == got.src, f"src: {naive._first(want.src, got.src)}"
    assert want.dst == got.dst, f"dst: {naive._first(want.dst, got.dst)}"
    assert "pte" not in d and "pmd" not in d, f"page tables: {d}"
    assert not {k: v for k, v in d.items() if k.startswith("page.")}, f"struct pages: {d}"
    assert "free_ram" not in d and "free_dev" not in d, f"free lists: {d}"
    assert "pagevec" not in d, f"LRU-add batches: {d}"
    assert "data" not in d, f"frame contents: {d}"
    assert "mirror" not in d and "pcache" not in d and "swap_map" not in d, f"tables: {d}"
    counters = {k: v for k, v in d.items() if k.startswith("counter.") and "tlb" not in k}
    assert not counters, f"counters: {counters}"
    assert "counter.tlb_flush" not in d, f"TLB flushes: {d['counter.tlb_flush']}"
    assert not d, f"anything else: {d}"


# ============================================================================ the properties
@pytest.mark.parametrize("profile", PROFILES)
@SETTINGS
@given(data=st.data())
def test_engine_matches_reference_model(make_machine, profile, data):
    """4.14 / v25-14 migrate_vma(), every pass: collect, prepare, unmap, pages,
    finalize, and the driver's argument checks, against the Python model."""
    w = build_world(data, make_machine, profile, hostile=False)
    call = draw_call(data, w)
    want = run_model(w.m, call)
    describe(want.state, want.mig)
    got = run_engine(w.m, call)
    compare(want, got)
    w.m.check()


@pytest.mark.parametrize("profile", PROFILES)
@SETTINGS
@given(data=st.data())
def test_early_returns_match_reference_model(make_machine, profile, data):
    """migrate_vma(): 'if (!migrate.cpages) return 0' after collect, prepare and
    unmap - no callback runs for nothing. Mostly pinned/locked/isolated pages, so
    the early returns are common; the model and the engine must call the same
    callbacks (none, or both)."""
    w = build_world(data, make_machine, profile, hostile=True)
    call = draw_call(data, w)
    want = run_model(w.m, call)
    describe(want.state, want.mig)
    got = run_engine(w.m, call)
    assert [c[0] for c in want.calls] == [c[0] for c in got.calls], "callbacks called"
    assert want.ret == got.ret and want.src == got.src, "outcome of the early return"
    compare(want, got)
    w.m.check()


# ============================================================================ split API (modern)
SELECTIONS = st.sampled_from(
    [
        naive_modern.SELECT_SYSTEM,
        naive_modern.SELECT_DEVICE_PRIVATE,
        naive_modern.SELECT_SYSTEM | naive_modern.SELECT_DEVICE_PRIVATE,
    ]
)


def run_model_split(m: me.Machine, call: Call, flags: int, own: bool) -> tuple[Outcome, int]:
    md = naive.snapshot(m)
    pol = Policy(call.policy.want, call.policy.device, call.policy.error)
    src = [int(x) for x in call.src]
    dst = [int(x) for x in call.dst]
    mig = naive_modern.MigrateVma(
        vma=call.vma.index,
        start=call.start,
        end=call.end,
        src=src,
        dst=dst,
        flags=flags,
        owner=md.dev_owner if own else None,
    )
    ret = naive_modern.run(md, pol.model_ops(md), mig)
    out = Outcome(ret, src, dst, pol.calls, md, mig if ret == 0 else None)
    return out, mig.cpages if ret == 0 else -1


def run_engine_split(m: me.Machine, call: Call, flags: int, own: bool) -> tuple[Outcome, int]:
    """The driver of run_model_split() over me.MigrateVma: the callbacks are called
    by hand between setup and pages, and between pages and finalize."""
    pol = Policy(call.policy.want, call.policy.device, call.policy.error)
    src, dst = call.src.copy(), call.dst.copy()
    owner = m.devices[0].owner if own else None
    args = me.MigrateVma(call.vma, call.start, call.end, src, dst, flags=flags, pgmap_owner=owner)
    cpages = -1
    try:
        me.migrate_vma_setup(args)
    except me.MigrateError as exc:
        assert exc.errno == 22
        ret = naive.EINVAL
    else:
        ret, cpages = 0, args.cpages
        if args.cpages:
            ops = pol.engine_ops(m)
            s = call.start - call.start % m.page_size
            e = s + args.npages * m.page_size
            ops.alloc_and_copy(call.vma, src, dst, s, e, None)
            me.migrate_vma_pages(args)
            ops.finalize_and_map(call.vma, src, dst, s, e, None)
            me.migrate_vma_finalize(args)
    out = Outcome(ret, [int(x) for x in src], [int(x) for x in dst], pol.calls, naive.snapshot(m))
    return out, cpages


@SETTINGS
@given(data=st.data())
def test_split_api_matches_reference_model(make_machine, data):
    """modern migrate_vma_setup/pages/finalize with a random selection (SYSTEM,
    DEVICE_PRIVATE or both) and pgmap_owner (the device's own owner, or None):
    device-private entries are collected only with DEVICE_PRIVATE and the owner,
    system pages and the zero page only with SYSTEM, holes whatever the flags, and
    the mirror forgets the range unless the owner is the device itself."""
    w = build_world(data, make_machine, "modern", hostile=data.draw(st.booleans()))
    call = draw_call(data, w)
    flags = data.draw(SELECTIONS, label="flags")
    own = data.draw(st.booleans(), label="pgmap_owner is the device's")
    want, want_cpages = run_model_split(w.m, call, flags, own)
    describe(want.state, want.mig)
    got, got_cpages = run_engine_split(w.m, call, flags, own)
    assert want_cpages == got_cpages, (
        f"cpages after setup: model {want_cpages}, engine {got_cpages}"
    )
    compare(want, got)
    w.m.check()


# ============================================================================ THP, by hand
def _thp_populated(m: me.Machine, p: me.Process, v: me.Vma) -> None:
    p.populate(v.start, v.end, write=True)


def _thp_forked(m: me.Machine, p: me.Process, v: me.Vma) -> None:
    p.populate(v.start, v.end, write=True)
    p.fork()


def _thp_pinned(m: me.Machine, p: me.Process, v: me.Vma) -> None:
    p.populate(v.start, v.end, write=True)
    m.pin(p.translate(v.start).pfn)


def _thp_locked(m: me.Machine, p: me.Process, v: me.Vma) -> None:
    p.populate(v.start, v.end, write=True)
    m.lock_page(p.translate(v.start).pfn)


def _huge_zero(m: me.Machine, p: me.Process, v: me.Vma) -> None:
    p.populate(v.start, v.end, write=False)


@pytest.mark.parametrize("profile", PROFILES)
@pytest.mark.parametrize(
    "setup",
    [_thp_populated, _thp_forked, _thp_pinned, _thp_locked, _huge_zero],
    ids=["thp", "thp-forked", "thp-pinned", "thp-locked", "huge-zero"],
)
def test_thp_collect_matches_reference_model(make_machine, profile, setup):
    """migrate_vma_collect_pmd(): a PMD-mapped THP is referenced, trylocked (failure:
    skip the extent) and split (failure when pinned: skip); the huge zero PMD is
    split into zero-page PTEs (4.14: collected as holes). Whole range, every slot
    given a system destination; the engine must match the model exactly."""
    m = make_machine(1100, 8, page_size=PS, profile=profile)
    p = m.new_process()
    v = p.mmap(naive.HPAGE_NR + 2, thp=True)
    setup(m, p, v)
    n = v.npages + 2
    policy = Policy([True] * n, [False] * n, [False] * n)
    junk = np.arange(n, dtype=np.uint64) * 4 + 2
    call = Call(v, v.start, v.end, junk.copy(), junk.copy(), policy)
    want = run_model(m, call)
    got = run_engine(m, call)
    compare(want, got)


def test_prepare_drains_the_driver_cpu_batch_locally(make_machine):
    """4.14 prepare: lru_add_drain() runs on the driver's CPU. Pages that an earlier
    migrate_vma() inserted on holes sit in that CPU's LRU-add batch
    (lru_cache_add_active_or_unevictable), so the local drain puts them on the LRU
    and no lru_add_drain_all() is needed to isolate them."""
    m = make_machine(24, 8, page_size=PS, profile="hmm-v25")
    p = m.new_process()
    v = p.mmap(4)
    n = v.npages + 2
    fill = Policy([True] * n, [False] * n, [False] * n)  # holes -> new system pages
    src, dst = np.zeros(n, np.uint64), np.zeros(n, np.uint64)
    me.migrate_vma(fill.engine_ops(m), v, v.start, v.end, src, dst)
    inserted = [p.translate(v.start + k * PS).pfn for k in range(v.npages)]
    assert all(m.page(pfn).pagevec for pfn in inserted)
    drains = m.counters["lru_add_drain_all"]
    to_device = Policy([True] * n, [True] * n, [False] * n)
    call = Call(v, v.start, v.end, src.copy(), dst.copy(), to_device)
    want = run_model(m, call)
    got = run_engine(m, call)
    compare(want, got)
    assert m.counters["lru_add_drain_all"] == drains
    assert all(p.translate(v.start + k * PS).kind == "device" for k in range(v.npages))


# ============================================================================ disagreements
def _one_page_policy(m: me.Machine, device: bool) -> me.MigrateOps:
    """A driver that moves slot 0 into a fresh page (device or system memory)."""
    lay = m.layout

    def alloc_and_copy(vma, src, dst, start, end, private) -> None:
        new = m.alloc_page(device=device)
        m.copy_page(new, m.mpfn_to_pfn(src[0]))
        dst[0] = m.migrate_pfn(new) | lay.LOCKED | (src[0] & lay.WRITE)

    return me.MigrateOps(alloc_and_copy, lambda *args: None)


@pytest.mark.parametrize("profile", PROFILES)
def test_try_to_unmap_flushes_the_tlb_once_per_present_pte(make_machine, profile):
    """4.14 try_to_unmap_one() without TTU_BATCH_FLUSH clears each present PTE with
    ptep_clear_flush(): one TLB flush per mapping it replaces. A page mapped by three
    processes (two forks) is unmapped by three flushes: in the seed all three in
    unmap; in 4.14 one flush_tlb_range() in collect plus two in unmap; modern as
    4.14 (the page is shared, so collect's ptep_clear_flush() of an anon-exclusive
    page does not apply, and try_to_migrate(folio, 0) does not batch)."""
    m = make_machine(16, 0, page_size=PS, profile=profile)
    p = m.new_process()
    v = p.mmap(1)
    p.write(v.start, b"shared three ways")
    p.fork()
    p.fork()
    old = p.translate(v.start).pfn
    before = m.counters["tlb_flush"]
    src, dst = np.zeros(1, np.uint64), np.zeros(1, np.uint64)
    me.migrate_vma(_one_page_policy(m, device=False), v, v.start, v.end, src, dst)
    assert p.translate(v.start).pfn != old  # it moved, so every mapping was replaced
    assert p.read(v.start, 17) == b"shared three ways"
    assert m.counters["tlb_flush"] - before == 3


@pytest.mark.parametrize("profile", PROFILES_4_14)
def test_device_pages_from_alloc_page_are_counted_like_they_are_freed(make_machine, profile):
    """m.device.counters: calloc counts device pages handed out, cfree those returned.
    A device page from m.alloc_page(device=True) that a migration uses, then gives
    back when the page moves to system memory again, must count once in each; the
    engine counts the free for every device frame, so the allocation must be counted
    for every device frame too (the seed's CPU-addressable ones included)."""
    m = make_machine(16, 4, page_size=PS, profile=profile)
    p = m.new_process()
    v = p.mmap(1)
    p.populate(v.start, v.end)
    m.lru_add_drain_all()
    src, dst = np.zeros(1, np.uint64), np.zeros(1, np.uint64)
    me.migrate_vma(_one_page_policy(m, device=True), v, v.start, v.end, src, dst)
    assert p.translate(v.start).pfn >= m.ram_pages  # now in device memory
    me.migrate_vma(_one_page_policy(m, device=False), v, v.start, v.end, src, dst)
    assert p.translate(v.start).pfn < m.ram_pages  # and back: the device page goes
    m.lru_add_drain_all()  # (seed: through the LRU-add batch, like RAM)
    assert m.device.counters["cfree"] == 1
    assert m.device.counters["calloc"] == m.device.counters["cfree"]


@pytest.mark.parametrize("profile", PROFILES)
def test_swap_out_leaves_a_thp_locked_by_someone_else_alone(make_machine, profile):
    """shrink_page_list(): reclaim trylock_page()s a page before it splits a THP
    (split_huge_page() needs the page lock) and keeps a page someone else has
    locked. Found by the reference-model property test while building states: the
    engine split the THP anyway, then failed with EBUSY, and the split turned the
    other thread's lock into a lock nobody owns (m.check(): page left locked)."""
    m = make_machine(1100, 0, page_size=PS, profile=profile)
    p = m.new_process()
    v = p.mmap(naive.HPAGE_NR, thp=True)
    p.populate(v.start, v.end, write=True)
    head = p.translate(v.start).pfn
    m.lock_page(head)
    with pytest.raises(ValueError, match="locked"):
        p.swap_out(v.start)
    assert p.translate(v.start).huge  # EBUSY: nothing changed, still PMD-mapped
    m.check()
    m.unlock_page(head)  # the lock is still the other thread's to drop
