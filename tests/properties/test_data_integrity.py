"""Data integrity under random sequences of CPU accesses, migrations, fork and swap.

A hypothesis rule-based state machine keeps a shadow bytearray per process (and one
for the shmem object all processes share) and checks, byte for byte, that every
read returns the last bytes written there, whatever migrated, forked or swapped
in between; ``m.check()`` runs after every step. Every profile.
"""

from __future__ import annotations

from dataclasses import dataclass

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

import migengine as me

PS = 4096
RAM_PAGES = 128
DEVICE_PAGES = 64
SHM_PAGES = 4
MAX_PROCESSES = 3  # 3 x 32 private pages + shmem stay below RAM, so no OOM is expected


@dataclass
class Proc:
    process: me.Process
    anon: me.Vma
    shm: me.Vma
    shadow: bytearray  # what the anonymous VMA must hold


def payload(seed: int, n: int) -> bytes:
    """Distinct, cheap bytes: a rolling pattern starting at ``seed``."""
    return bytes((seed + 31 * (k // 256) + k) % 256 for k in range(n))


PROC = st.integers(0, MAX_PROCESSES - 1)
OFFSET = st.integers(0, 32 * PS - 1)
LENGTH = st.integers(1, 2 * PS + 17)
SEED = st.integers(0, 255)


class DataIntegrity(RuleBasedStateMachine):
    """Every byte written reads back the same after any sequence of operations."""

    PROFILE = "hmm-v25"

    def __init__(self) -> None:
        super().__init__()
        self.m = me.Machine(RAM_PAGES, DEVICE_PAGES, profile=self.PROFILE)
        self.procs: list[Proc] = []
        self.shm_shadow = bytearray(SHM_PAGES * PS)

    # ------------------------------------------------------------------ helpers
    def proc(self, index: int) -> Proc:
        return self.procs[index % len(self.procs)]

    @staticmethod
    def clip(vma: me.Vma, offset: int, n: int) -> tuple[int, int]:
        size = vma.end - vma.start
        offset %= size
        return offset, min(n, size - offset)

    def span(self, vma: me.Vma, first: int, count: int) -> tuple[int, int]:
        first %= vma.npages
        count = min(count, vma.npages - first)
        return vma.start + first * PS, vma.start + (first + count) * PS

    # ------------------------------------------------------------------ setup
    @initialize(npages=st.integers(8, 32))
    def start(self, npages: int) -> None:
        p = self.m.new_process()
        anon = p.mmap(npages)
        shm = p.mmap(SHM_PAGES, kind="shmem")
        self.procs.append(Proc(p, anon, shm, bytearray(npages * PS)))

    # ------------------------------------------------------------------ CPU accesses
    @rule(index=PROC, offset=OFFSET, n=LENGTH, seed=SEED)
    def write(self, index: int, offset: int, n: int, seed: int) -> None:
        pr = self.proc(index)
        offset, n = self.clip(pr.anon, offset, n)
        data = payload(seed, n)
        pr.process.write(pr.anon.start + offset, data)
        pr.shadow[offset : offset + n] = data

    @rule(index=PROC, offset=OFFSET, n=LENGTH)
    def read(self, index: int, offset: int, n: int) -> None:
        pr = self.proc(index)
        offset, n = self.clip(pr.anon, offset, n)
        assert pr.process.read(pr.anon.start + offset, n) == bytes(pr.shadow[offset : offset + n])

    @rule(index=PROC, offset=OFFSET, n=LENGTH, seed=SEED)
    def write_shared(self, index: int, offset: int, n: int, seed: int) -> None:
        pr = self.proc(index)
        offset, n = self.clip(pr.shm, offset, n)
        data = payload(seed, n)
        pr.process.write(pr.shm.start + offset, data)
        self.shm_shadow[offset : offset + n] = data

    @rule(index=PROC)
    def read_everything(self, index: int) -> None:
        pr = self.proc(index)
        size = pr.anon.end - pr.anon.start
        assert pr.process.read(pr.anon.start, size) == bytes(pr.shadow)
        assert pr.process.read(pr.shm.start, SHM_PAGES * PS) == bytes(self.shm_shadow)

    # ------------------------------------------------------------------ migrations
    @rule(index=PROC, first=st.integers(0, 31), count=st.integers(1, 32))
    def to_device(self, index: int, first: int, count: int) -> None:
        pr = self.proc(index)
        start, end = self.span(pr.anon, first, count)
        mapped = self.m.device.migrate_to_device(pr.process, start, end)
        assert 0 <= mapped <= (end - start) // PS

    @rule(index=PROC, first=st.integers(0, 31), count=st.integers(1, 32))
    def to_system(self, index: int, first: int, count: int) -> None:
        pr = self.proc(index)
        start, end = self.span(pr.anon, first, count)
        moved = self.m.device.migrate_to_system(pr.process, start, end)
        assert 0 <= moved <= (end - start) // PS
        for addr in range(start, end, PS):
            assert pr.process.translate(addr).pfn < self.m.ram_pages

    @rule(index=PROC)
    def shared_to_device(self, index: int) -> None:
        """Page-cache pages never reach device-private memory; data must not care."""
        pr = self.proc(index)
        self.m.device.migrate_to_device(pr.process, pr.shm.start, pr.shm.end)

    @rule()
    def evict(self) -> None:
        self.m.device.evict()
        for pr in self.procs:
            for addr in range(pr.anon.start, pr.anon.end, PS):
                assert pr.process.translate(addr).kind != "device"

    # ------------------------------------------------------------------ fork, swap
    @precondition(lambda self: len(self.procs) < MAX_PROCESSES)
    @rule(index=PROC)
    def fork(self, index: int) -> None:
        parent = self.proc(index)
        child = parent.process.fork()
        anon, shm = child.vmas()  # same order and addresses as the parent's
        assert (anon.start, shm.start) == (parent.anon.start, parent.shm.start)
        self.procs.append(Proc(child, anon, shm, bytearray(parent.shadow)))

    @rule(index=PROC, page=st.integers(0, 31))
    def swap_out(self, index: int, page: int) -> None:
        pr = self.proc(index)
        addr = pr.anon.start + (page % pr.anon.npages) * PS
        pte = pr.process.translate(addr)
        if pte.kind != "present":
            return  # only a present anonymous page can be reclaimed
        pr.process.swap_out(addr)
        assert pr.process.translate(addr).kind == "swap"

    # ------------------------------------------------------------------ invariants
    @invariant()
    def machine_is_consistent(self) -> None:
        self.m.check()

    def teardown(self) -> None:
        for pr in self.procs:
            self.read_everything(self.procs.index(pr))
        self.m.check()


class DataIntegritySeed(DataIntegrity):
    PROFILE = "seed"


class DataIntegrityModern(DataIntegrity):
    PROFILE = "modern"


RUNS = settings(max_examples=60, stateful_step_count=40)  # deadline: conftest's profiles
TestDataIntegrityHmmV25 = DataIntegrity.TestCase
TestDataIntegrityHmmV25.settings = RUNS
TestDataIntegritySeed = DataIntegritySeed.TestCase
TestDataIntegritySeed.settings = RUNS
TestDataIntegrityModern = DataIntegrityModern.TestCase
TestDataIntegrityModern.settings = RUNS
