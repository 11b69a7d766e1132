"""Property test of the device lifecycle: nothing a process stored is ever lost.

Random CPU stores and loads, forks, migrations to and from the device over random
sub-ranges, injected allocation failures and device eviction run against a
shadow copy of every byte of every process. After every step each page is read
through the page tables (without faulting: present, zero, device-private or
empty) and compared with the shadow, and ``m.check()`` must hold. A SIGBUS is
allowed only while an injected allocation failure is pending (hmm-v25's
device_private_entry_fault() -> VM_FAULT_SIGBUS), and the same access retried
without it must succeed.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

import migengine as me
from migengine import kernels

PROFILES = ("hmm-v25", "seed", "modern")
PS = 128
FIRST, SECOND = 12, 6  # two adjacent VMAs: migrations span VMA boundaries
NPAGES = FIRST + SECOND
REGION = NPAGES * PS
MAX_PROCS = 4
RAM_PAGES = 1 + MAX_PROCS * NPAGES + 32  # every process's private copy, with room
DEVICE_PAGES = 12  # fewer than the pages in use: device exhaustion happens too


class Lifecycle:
    """One machine, its processes and a shadow of every byte each process sees."""

    def __init__(self, m: me.Machine) -> None:
        self.m = m
        root = m.new_process()
        first = root.mmap(FIRST)
        root.mmap(SECOND, addr=first.end)
        self.start = first.start
        self.procs = [root]
        self.shadow = [bytearray(REGION)]
        # The first VMA starts with data; the second stays holes (4.14 inserts those).
        self.write(0, 0, np.arange(FIRST * PS, dtype=np.uint8).tobytes())

    # ------------------------------------------------------------ helpers
    def proc(self, k: int) -> int:
        return k % len(self.procs)

    def fail_pending(self) -> bool:
        return int(self.m.state.dev[0, kernels.layout.DEV_FAIL_ALLOC]) > 0

    def cpu(self, access):
        """Run a CPU access; a SIGBUS must come from an injected failure and a retry
        without it must succeed."""
        pending = self.fail_pending()
        try:
            return access()
        except me.SigBus:
            assert pending, "SIGBUS without an injected allocation failure"
            assert self.m.profile != "seed", "seed device memory never faults"
            event("SIGBUS, retried without the injected failure")
            self.m.device.fail_alloc(0)
            return access()

    def on_device(self, k: int, lo: int, hi: int) -> list[int]:
        """Pages of [lo, hi) that process k has in device memory."""
        p = self.procs[k]
        return [
            i for i in range(lo, hi) if p.translate(self.start + i * PS).pfn >= self.m.ram_pages
        ]

    # ------------------------------------------------------------ operations
    def write(self, k: int, off: int, data: bytes) -> None:
        k = self.proc(k)
        data = data[: REGION - off]
        self.cpu(lambda: self.procs[k].write(self.start + off, data))
        self.shadow[k][off : off + len(data)] = data

    def read(self, k: int, off: int, n: int) -> None:
        k = self.proc(k)
        n = min(n, REGION - off)
        got = self.cpu(lambda: self.procs[k].read(self.start + off, n))
        assert got == bytes(self.shadow[k][off : off + n])

    def fork(self, k: int) -> None:
        if len(self.procs) == MAX_PROCS:
            return
        k = self.proc(k)
        self.procs.append(self.procs[k].fork())
        self.shadow.append(bytearray(self.shadow[k]))

    def to_device(self, k: int, lo: int, hi: int) -> None:
        k = self.proc(k)
        n = self.m.device.migrate_to_device(
            self.procs[k], self.start + lo * PS, self.start + hi * PS
        )
        assert 0 <= n <= hi - lo
        if self.m.free_pages(device=True) == 0:
            event("device memory exhausted")

    def to_system(self, k: int, lo: int, hi: int) -> None:
        k = self.proc(k)
        pending = self.fail_pending()
        n = self.m.device.migrate_to_system(
            self.procs[k], self.start + lo * PS, self.start + hi * PS
        )
        assert 0 <= n <= hi - lo
        if not pending:
            assert self.on_device(k, lo, hi) == []

    def fail_alloc(self, n: int) -> None:
        self.m.device.fail_alloc(n)

    def evict(self) -> None:
        before = sum(len(self.on_device(k, 0, NPAGES)) for k in range(len(self.procs)))
        moved = self.m.device.evict()
        if moved:
            event("evict moved pages")
        assert moved <= before  # fork-shared pages move once for all their mappings
        assert (moved == 0) == (before == 0)
        for k in range(len(self.procs)):
            assert self.on_device(k, 0, NPAGES) == []
        # seed puts its CPU-addressable device pages back through the LRU-add
        # batch, like RAM: they are free once it drains.
        self.m.lru_add_drain_all()
        assert self.m.free_pages(device=True) == self.m.device_pages

    # ------------------------------------------------------------ invariants
    def assert_nothing_lost(self) -> None:
        """Every page of every process, through its page table, equals the shadow."""
        m = self.m
        for p, shadow in zip(self.procs, self.shadow, strict=True):
            for i in range(NPAGES):
                pte = p.translate(self.start + i * PS)
                want = bytes(shadow[i * PS : (i + 1) * PS])
                if pte.kind == "none":
                    assert want == bytes(PS), f"pid {p.pid} page {i} lost its data"
                else:
                    assert pte.kind in ("present", "zero", "device"), pte
                    assert m.frame(pte.pfn) == want, f"pid {p.pid} page {i} ({pte.kind})"
        m.check()


# ------------------------------------------------------------------ strategies

_proc = st.integers(0, MAX_PROCS - 1)
_offset = st.integers(0, REGION - 1)
_length = st.integers(1, 2 * PS)
_pages = st.integers(0, NPAGES - 1).flatmap(
    lambda lo: st.tuples(st.just(lo), st.integers(lo + 1, NPAGES))
)
_bytes = st.integers(0, 2**32 - 1).map(
    lambda s: np.random.default_rng(s).integers(0, 256, 2 * PS, dtype=np.uint8).tobytes()
)

OPS = st.one_of(
    st.tuples(st.just("write"), _proc, _offset, st.tuples(_length, _bytes)),
    st.tuples(st.just("read"), _proc, _offset, _length),
    st.tuples(st.just("fork"), _proc),
    st.tuples(st.just("to_device"), _proc, _pages),
    st.tuples(st.just("to_device"), _proc, _pages),
    st.tuples(st.just("to_system"), _proc, _pages),
    st.tuples(st.just("fail_alloc"), st.integers(1, 3)),
    st.tuples(st.just("evict")),
)


def apply(model: Lifecycle, op: tuple) -> None:
    name, *args = op
    if name == "write":
        k, off, (n, data) = args
        model.write(k, off, data[:n])
    elif name == "read":
        model.read(*args)
    elif name in ("to_device", "to_system"):
        k, (lo, hi) = args
        getattr(model, name)(k, lo, hi)
    else:
        getattr(model, name)(*args)


@pytest.mark.parametrize("profile", PROFILES)
@settings(
    # Each example is cheap (a few ms): run several times the profile's count.
    max_examples=5 * settings().max_examples,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(ops=st.lists(OPS, max_size=40), streamed=st.booleans())
def test_device_lifecycle_loses_nothing(make_machine, profile, ops, streamed):
    """hmm-tests.c migrate_multiple / anon_write_child / hmm_cow_in_device /
    migrate_release and the FAIL_ALLOC variants, interleaved at random: after every
    step each process still sees exactly what it stored, and the state checks out.
    ``streamed``: the device's engine writes every batch with streaming stores, on
    threads, as it does for batches past stream_min_bytes."""
    m = make_machine(RAM_PAGES, DEVICE_PAGES, page_size=PS, profile=profile)
    if streamed:
        m.device.engine = me.CopyEngine(stream_min_bytes=0, parallel_min_bytes=0)
    model = Lifecycle(m)
    model.assert_nothing_lost()
    for op in ops:
        apply(model, op)
        model.assert_nothing_lost()

    # Finally every byte, through CPU loads, then once more after eviction.
    for k in range(len(model.procs)):
        model.read(k, 0, REGION)
    model.assert_nothing_lost()
    model.evict()
    model.assert_nothing_lost()
    for k in range(len(model.procs)):
        model.read(k, 0, REGION)
