"""A hypothesis state machine over the process operations (munmap, mprotect,
mremap, madvise, reclaim, pins) mixed with CPU accesses and device migrations,
with a shadow of every byte keyed by virtual page.

The shadow is written from the kernel's rules, not from the engine: a page
munmap()ed reads as SegFault; one MADV_DONTNEED'ed reads zeroes (private) or
its file's page again; one MADV_FREE'd either keeps its data or, once reclaim
discarded it, reads zeroes (which one depends on whether it was clean and on
the LRU, so the shadow takes what reads back, if it is one of the two);
mprotect decides which accesses are SegFault; mremap moves every byte.
After every rule ``m.check()`` passes; every few steps every mapped byte is
compared; at the end every pin is released and the device evicted.
"""

from __future__ import annotations

import os

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

import migengine as me

SCALE = float(os.environ.get("MIGENGINE_SM_SCALE", "1"))
PS = 64
PROTS = ("rw", "r", "none")


class ProcessOpsMachine(RuleBasedStateMachine):
    profile = "hmm-v25"

    @initialize()
    def build(self) -> None:
        self.m = me.Machine(1024, 128, page_size=PS, profile=self.profile)
        self.p = self.m.new_process()
        # vpn -> [bytes, prot, kind, maybe_zero]: maybe_zero marks an MADV_FREE'd page
        self.pages: dict[int, list] = {}
        self.pins: list[int] = []
        self.steps = 0
        self.base = 0x7F00_0000_0000 // PS

    # ------------------------------------------------------------------ helpers
    def _vpns(self) -> list[int]:
        return sorted(self.pages)

    def _pick(self, data: st.DataObject, n: int = 8) -> tuple[int, int]:
        """A page range [lo, hi) starting on a mapped page (or anywhere, rarely)."""
        vpns = self._vpns()
        if vpns and data.draw(st.integers(0, 9)) < 9:
            lo = data.draw(st.sampled_from(vpns))
        else:
            lo = self.base + data.draw(st.integers(0, 64))
        return lo, lo + data.draw(st.integers(1, n))

    def _readable(self, vpn: int) -> bool:
        return vpn in self.pages and self.pages[vpn][1] != "none"

    # ------------------------------------------------------------------ rules
    @rule(data=st.data(), n=st.integers(1, 24), kind=st.sampled_from(["anon", "file_private"]))
    def mmap(self, data, n, kind) -> None:
        prot = data.draw(st.sampled_from(PROTS))
        vma = self.p.mmap(n, kind=kind, prot=prot, addr=None)
        for i in range(n):
            self.pages[vma.start // PS + i] = [bytes(PS), prot, kind, False]

    @rule(data=st.data())
    def write(self, data) -> None:
        lo, hi = self._pick(data, 4)
        val = bytes([data.draw(st.integers(1, 255))]) * PS
        for vpn in range(lo, hi):
            ok = vpn in self.pages and self.pages[vpn][1] == "rw"
            if not ok:
                with pytest.raises(me.SegFault):
                    self.p.write(vpn * PS, val)
                return
            self.p.write(vpn * PS, val)
            self.pages[vpn][0], self.pages[vpn][3] = val, False

    @rule(data=st.data())
    def read(self, data) -> None:
        lo, hi = self._pick(data, 4)
        for vpn in range(lo, hi):
            if not self._readable(vpn):
                with pytest.raises(me.SegFault):
                    self.p.read(vpn * PS, PS)
                return
            self._compare(vpn)

    @rule(data=st.data())
    def munmap(self, data) -> None:
        lo, hi = self._pick(data)
        self.p.munmap(lo * PS, hi * PS)
        for vpn in range(lo, hi):
            self.pages.pop(vpn, None)

    @rule(data=st.data())
    def mprotect(self, data) -> None:
        lo, hi = self._pick(data)
        prot = data.draw(st.sampled_from(PROTS))
        if not all(v in self.pages for v in range(lo, hi)):
            with pytest.raises(me.SegFault):
                self.p.mprotect(lo * PS, hi * PS, prot)
            return
        self.p.mprotect(lo * PS, hi * PS, prot)
        for vpn in range(lo, hi):
            self.pages[vpn][1] = prot

    @rule(data=st.data())
    def madvise(self, data) -> None:
        lo, hi = self._pick(data)
        advice = data.draw(st.sampled_from(["dontneed", "free"]))
        covered = all(v in self.pages for v in range(lo, hi))
        kinds = {self.pages[v][2] for v in range(lo, hi) if v in self.pages}
        if covered and advice == "free" and kinds != {"anon"}:
            with pytest.raises(ValueError):
                self.p.madvise(lo * PS, hi * PS, advice)
            return
        if not covered:
            with pytest.raises(me.SegFault):
                self.p.madvise(lo * PS, hi * PS, advice)
            return
        self.p.madvise(lo * PS, hi * PS, advice)
        for vpn in range(lo, hi):
            page = self.pages[vpn]
            if advice == "dontneed":  # a private page refaults as zeroes (the file's are)
                page[0], page[3] = bytes(PS), False
            else:
                page[3] = True

    @rule()
    def reclaim(self) -> None:
        self.m.reclaim()

    @rule(data=st.data())
    def mremap(self, data) -> None:
        vmas = self.p.vmas()
        if not vmas:
            return
        v = data.draw(st.sampled_from(vmas))
        lo = v.start // PS + data.draw(st.integers(0, v.npages - 1))
        hi = data.draw(st.integers(lo + 1, v.end // PS))
        top = max(self.pages, default=self.base) + 1
        new = top + data.draw(st.integers(0, 600))
        self.p.mremap(lo * PS, hi * PS, new * PS)
        moved = {vpn - lo + new: self.pages.pop(vpn) for vpn in range(lo, hi)}
        for vpn in range(new, new + hi - lo):
            self.pages.pop(vpn, None)
        self.pages.update(moved)

    @rule(data=st.data(), to_device=st.booleans())
    def migrate(self, data, to_device) -> None:
        vmas = [v for v in self.p.vmas() if self.pages[v.start // PS][1] != "none"]
        if not vmas:
            return
        v = data.draw(st.sampled_from(vmas))
        if to_device:
            self.m.device.migrate_to_device(self.p, v.start, v.end)
        else:
            self.m.device.migrate_to_system(self.p, v.start, v.end)

    @rule(data=st.data())
    def pin(self, data) -> None:
        lo, _ = self._pick(data, 1)
        if not self._readable(lo):
            with pytest.raises(me.SegFault):
                self.p.pin(lo * PS)
            return
        self.pins.append(self.p.pin(lo * PS))

    @rule()
    def unpin(self) -> None:
        if self.pins:
            self.m.unpin(self.pins.pop())

    # ------------------------------------------------------------------ checks
    def _compare(self, vpn: int) -> None:
        got = self.p.read(vpn * PS, PS)
        page = self.pages[vpn]
        if page[3] and got == bytes(PS):  # an MADV_FREE'd page reclaim discarded
            page[0] = got
        assert got == page[0], f"page {vpn:#x}"

    @invariant()
    def consistent(self) -> None:
        self.m.check()
        self.steps += 1
        if self.steps % 5 == 0:
            for vpn in self._vpns():
                if self._readable(vpn):
                    self._compare(vpn)

    def teardown(self) -> None:
        if not hasattr(self, "m"):
            return
        for pfn in self.pins:
            self.m.unpin(pfn)
        self.m.device.evict()
        self.m.check()
        for vpn in self._vpns():
            if self._readable(vpn):
                self._compare(vpn)


class ProcessOpsSeed(ProcessOpsMachine):
    profile = "seed"


class ProcessOpsModern(ProcessOpsMachine):
    profile = "modern"


_SETTINGS = settings(
    max_examples=int(40 * SCALE),
    stateful_step_count=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
TestProcessOpsHmmV25 = ProcessOpsMachine.TestCase
TestProcessOpsHmmV25.settings = _SETTINGS
TestProcessOpsSeed = ProcessOpsSeed.TestCase
TestProcessOpsSeed.settings = _SETTINGS
TestProcessOpsModern = ProcessOpsModern.TestCase
TestProcessOpsModern.settings = _SETTINGS
