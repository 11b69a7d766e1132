"""A pure-Python reference model of ``me.simulate``'s fault-driven UVM driver.

Written from docs/workloads.md only (not from ``kernels/sim`` or ``migengine/sim.py``),
so that ``tests/properties/test_sim_reference.py`` can hold the compiled replay equal
to an independent implementation. It models residency only: which simulated pages
are on the device, the device's free frames (``device_pages`` minus the resident
pages), the open fault batch, the prefetchers and the eviction orders. There are no
bytes, page tables or costs.

One plain Python step per access, lists and dicts throughout, numpy only to turn
the inputs into Python ints up front (and to hand a user policy the int64 arrays an
``@njit`` function expects). Every move, CPU access and device store goes through
one of a few methods (``_move_to_device``, ``_move_to_host``, ``_fault_back``,
``_cpu_access``, ``_device_write``) that here change residency only;
``bench/peers_sim.py`` subclasses the model and overrides them with a pure-Python
migrate_vma() over page tables and frame bytes, the speed peer of ``me.simulate``.

Conventions the document leaves open, chosen here (the compiled replay agrees with
every one of them on the property tests and on targeted traces):

- ``now`` for a batch serviced at the end of the trace is ``len(trace)``.
- A unit that becomes resident gets ``first_use = last_use = now`` and ``uses = 0``.
- The ``units`` handed to a user policy are global unit numbers (simulated page //
  ``migrate_pages``), in the order of the dense resident-unit list.
- Unit victims (fifo, random, user) skip marked *units* only: an unmarked unit of a
  marked block (the one being serviced or an earlier one) may go; only ``lru`` looks
  at block marks.
- The random generator draws only when some unit is resident (also when all of them
  turn out to be marked).
- A fault that closes a full batch joins the next batch even when servicing the full
  one brought its page in (case 3 is decided before the service).
- A CPU access that faults a page back is not a ``migrate_calls``; a remote access is
  not a ``cpu_accesses``.
- Each maximal run of pages to move is one ``migrate_calls`` even when no frame is
  left for any of its pages.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

BLOCK_SHIFT = 21  # 2 MiB VA blocks
PAGE_SHIFT = 12  # 4 KiB pages
BLOCK_PAGES = 1 << (BLOCK_SHIFT - PAGE_SHIFT)  # 512
SEQ_PAGES = 16  # the sequential prefetcher's 64 KiB block
TREE_THRESHOLD = 51  # compute_prefetch_region()'s percentage
USER_VA_END = 1 << 47

MASK64 = (1 << 64) - 1
XS_MUL = 0x2545F4914F6CDD1D
SEED_MUL = 0x9E3779B97F4A7C15

COUNTERS = (
    "accesses",
    "device_accesses",
    "device_hits",
    "device_faults",
    "fault_batches",
    "faults_serviced",
    "faults_coalesced",
    "pages_to_device",
    "pages_prefetched",
    "pages_evicted",
    "cpu_accesses",
    "cpu_faults",
    "remote_accesses",
    "evictions",
    "migrate_calls",
    "resident_pages",
)

PREFETCHERS = ("none", "sequential", "tree")
BUILTIN_EVICT = ("lru", "fifo", "random")


class XorShift64Star:
    """The random eviction policy's generator (xorshift64*, seeded as the engine does)."""

    def __init__(self, seed: int) -> None:
        self.s = ((seed * SEED_MUL + XS_MUL) % (1 << 63)) or 1

    def next(self) -> int:
        """The next 63-bit draw."""
        x = self.s
        x ^= x >> 12
        x ^= (x << 25) & MASK64
        x ^= x >> 27
        self.s = x
        return ((x * XS_MUL) & MASK64) >> 1


def runs(pages: list[int]) -> list[tuple[int, int]]:
    """The maximal runs ``[first, end)`` of consecutive numbers in sorted ``pages``."""
    out: list[tuple[int, int]] = []
    for p in pages:
        if out and out[-1][1] == p:
            out[-1] = (out[-1][0], p + 1)
        else:
            out.append((p, p + 1))
    return out


def page_numbers(addr: Any) -> tuple[list[int], int]:
    """Simulated page of every address, and the number of 2 MiB VA blocks.

    The VA blocks the trace touches, in address order, are packed side by side:
    block rank ``r`` covers simulated pages ``[r * 512, (r + 1) * 512)`` and an
    address keeps its offset in its block.
    """
    a = [int(x) for x in np.asarray(addr, dtype=np.uint64).tolist()]
    for x in a:
        if x >= USER_VA_END:
            raise ValueError(f"address {x:#x} is outside the user address space (2**47)")
    blocks = sorted({x >> BLOCK_SHIFT for x in a})
    rank = {b: r for r, b in enumerate(blocks)}
    in_block = BLOCK_PAGES - 1
    pages = [rank[x >> BLOCK_SHIFT] * BLOCK_PAGES + ((x >> PAGE_SHIFT) & in_block) for x in a]
    return pages, max(len(blocks), 1)


class UvmModel:
    """The driver model's state and steps; :func:`simulate_reference` runs it over a trace."""

    def __init__(
        self,
        nblocks: int,
        *,
        device_pages: int,
        migrate_pages: int,
        batch_faults: int,
        prefetch: str,
        evict: str,
        seed: int,
        policy: Callable[..., int] | None,
    ) -> None:
        if prefetch not in PREFETCHERS:
            raise ValueError(f"prefetch must be one of {PREFETCHERS}, got {prefetch!r}")
        if evict not in (*BUILTIN_EVICT, "user"):
            raise ValueError(f"evict must be one of {BUILTIN_EVICT} or a policy, got {evict!r}")
        mp = migrate_pages
        if mp < 1 or mp > BLOCK_PAGES or mp & (mp - 1):
            raise ValueError(f"migrate_pages must be a power of two from 1 to 512, got {mp}")
        if device_pages < mp or batch_faults < 1:
            raise ValueError("device_pages must hold one unit and batch_faults be >= 1")
        npages = nblocks * BLOCK_PAGES
        nunits = npages // mp
        self.device_pages = device_pages
        self.mp = mp
        self.batch_faults = batch_faults
        self.prefetch = prefetch
        self.evict_kind = evict
        self.policy = policy
        self.rng = XorShift64Star(seed)
        self.ctr = dict.fromkeys(COUNTERS, 0)
        # residency
        self.res = bytearray(npages)  # 1 = the page is on the device
        self.resident = 0
        self.ucount = [0] * nunits  # resident pages per unit
        self.bcount = [0] * nblocks  # resident pages per block
        self.first_use = [0] * nunits
        self.last_use = [0] * nunits
        self.uses = [0] * nunits
        # protection: the batch that marked a unit / block (0 = never)
        self.umark = [0] * nunits
        self.bmark = [0] * nblocks
        self.batch_id = 0
        # eviction orders
        self.lru: dict[int, None] = {}  # blocks, least recently migrated into first
        self.fifo: dict[int, None] = {}  # resident units, oldest arrival first
        self.dense: list[int] = []  # resident units; swap-remove on leaving
        self.dense_pos = [-1] * nunits
        # the open batch: entries (page, access index, write) and the pages in it
        self.entries: list[tuple[int, int, bool]] = []
        self.in_batch: set[int] = set()

    # ------------------------------------------------------------ residency bookkeeping
    def _page_in(self, p: int, now: int) -> None:
        self.res[p] = 1
        self.resident += 1
        self.bcount[p // BLOCK_PAGES] += 1
        u = p // self.mp
        self.ucount[u] += 1
        if self.ucount[u] == 1:  # the unit becomes resident
            self.first_use[u] = now
            self.last_use[u] = now
            self.uses[u] = 0
            self.fifo[u] = None
            self.dense_pos[u] = len(self.dense)
            self.dense.append(u)

    def _page_out(self, p: int) -> None:
        self.res[p] = 0
        self.resident -= 1
        self.bcount[p // BLOCK_PAGES] -= 1
        u = p // self.mp
        self.ucount[u] -= 1
        if self.ucount[u] == 0:  # the unit leaves the resident orders
            del self.fifo[u]
            i = self.dense_pos[u]
            last = self.dense.pop()
            if last != u:
                self.dense[i] = last
                self.dense_pos[last] = i
            self.dense_pos[u] = -1

    # ---------------------------------------------------------------------- eviction
    def _victim(self, now: int) -> int:
        """The next victim (a block for lru, else a unit), or -1 when none is left."""
        bid = self.batch_id
        kind = self.evict_kind
        if kind == "lru":
            for b in self.lru:
                if self.bcount[b] and self.bmark[b] != bid:
                    return b
            return -1
        if kind == "fifo":
            for u in self.fifo:
                if self.umark[u] != bid:
                    return u
            return -1
        dense = self.dense
        n = len(dense)
        if kind == "random":
            if n == 0:
                return -1
            start = self.rng.next() % n
            for j in range(n):
                u = dense[(start + j) % n]
                if self.umark[u] != bid:
                    return u
            return -1
        units = [u for u in dense if self.umark[u] != bid]
        if not units:
            return -1
        i = self.policy(  # type: ignore[misc]
            np.array(units, dtype=np.int64),
            np.array([self.last_use[u] for u in units], dtype=np.int64),
            np.array([self.first_use[u] for u in units], dtype=np.int64),
            np.array([self.uses[u] for u in units], dtype=np.int64),
            now,
        )
        if isinstance(i, (bool, np.bool_)) or not isinstance(i, (int, np.integer)):
            raise ValueError(f"the eviction policy returned {i!r}, not a position")
        i = int(i)
        if not 0 <= i < len(units):
            raise ValueError(f"the eviction policy returned {i} for {len(units)} units")
        return units[i]

    def _evict(self, victim: int) -> None:
        """Move the victim's resident pages back, one migrate_vma() per maximal run."""
        if self.evict_kind == "lru":
            lo, hi = victim * BLOCK_PAGES, (victim + 1) * BLOCK_PAGES
        else:
            lo, hi = victim * self.mp, (victim + 1) * self.mp
        res = self.res
        ctr = self.ctr
        ctr["evictions"] += 1
        for first, end in runs([p for p in range(lo, hi) if res[p]]):
            ctr["migrate_calls"] += 1
            ctr["pages_evicted"] += self._move_to_host(first, end)

    # ------------------------------------------------------ moves and CPU accesses
    # The hooks a driver with page tables and bytes overrides (bench/peers_sim.py):
    # here a move is its residency change alone.
    def _move_to_device(self, first: int, end: int, now: int) -> None:
        """One migrate_vma() of pages ``[first, end)`` (none resident) to the device:
        frames are handed out in address order until the device has none left."""
        for p in range(first, end):
            if self.resident >= self.device_pages:
                return
            self._page_in(p, now)

    def _move_to_host(self, first: int, end: int) -> int:
        """One migrate_vma() of pages ``[first, end)`` (all resident) back to
        system memory; returns the pages moved."""
        for p in range(first, end):
            self._page_out(p)
        return end - first

    def _fault_back(self, p: int) -> None:
        """The device's CPU-fault handler: page ``p`` (resident) migrates back."""
        self._page_out(p)

    def _cpu_access(self, k: int, p: int, write: bool) -> None:
        """Access ``k`` through the CPU path (a CPU access, or a remote one): a page
        on the device faults back first (a CPU fault)."""
        if self.res[p]:
            self.ctr["cpu_faults"] += 1
            self._fault_back(p)

    def _device_write(self, k: int, p: int) -> None:
        """Access ``k`` stores its byte in device memory (page ``p`` is resident):
        nothing to do in a model without bytes."""

    # ------------------------------------------------------------------ the batches
    def _prefetch(self, base: int, req: set[int], pages: list[int]) -> set[int]:
        """Pages the prefetcher adds for one block (``pages``: the entries' pages)."""
        out: set[int] = set()
        if self.prefetch == "sequential":
            for p in pages:
                s = p & ~(SEQ_PAGES - 1)
                out.update(range(s, s + SEQ_PAGES))
        elif self.prefetch == "tree":
            res = self.res
            prefix = [0] * (BLOCK_PAGES + 1)  # occ = resident or in req, taken once
            c = 0
            for o in range(BLOCK_PAGES):
                p = base + o
                if res[p] or p in req:
                    c += 1
                prefix[o + 1] = c
            for p in pages:
                off = p - base
                size = BLOCK_PAGES
                while size >= 2:
                    lo = off & ~(size - 1)
                    if (prefix[lo + size] - prefix[lo]) * 100 > size * TREE_THRESHOLD:
                        out.update(range(base + lo, base + lo + size))
                        break
                    size >>= 1
        return out

    def service(self, now: int) -> None:
        """Service the open batch (``now``: the access that closed it)."""
        entries = self.entries
        if not entries:
            return
        ctr = self.ctr
        mp = self.mp
        res = self.res
        self.batch_id += 1
        bid = self.batch_id
        ctr["fault_batches"] += 1
        ctr["faults_serviced"] += len(entries)
        by_block: dict[int, list[int]] = {}
        for p, _k, _w in entries:
            by_block.setdefault(p // BLOCK_PAGES, []).append(p)
        for b in sorted(by_block):
            pages = by_block[b]
            base = b * BLOCK_PAGES
            # 1. faulted units
            asked: set[int] = set()
            req: set[int] = set()
            for p in pages:
                u = p // mp
                if u in asked:
                    ctr["faults_coalesced"] += 1
                else:
                    asked.add(u)
                    req.update(range(u * mp, (u + 1) * mp))
            # 2. prefetch
            want = req | self._prefetch(base, req, pages) if self.prefetch != "none" else req
            # 3. protection
            self.bmark[b] = bid
            umark = self.umark
            for p in want:
                umark[p // mp] = bid
            # 4. room
            need = sum(1 for p in want if not res[p])
            while self.device_pages - self.resident < need:
                v = self._victim(now)
                if v < 0:
                    break
                self._evict(v)
            if self.device_pages - self.resident < need:
                want = req
            # 5. moves, in address order; the allocator fails once the frames run out
            moved = False
            for first, end in runs(sorted(p for p in want if not res[p])):
                ctr["migrate_calls"] += 1
                self._move_to_device(first, end, now)
                for p in range(first, end):
                    if res[p]:
                        moved = True
                        if p in req:
                            ctr["pages_to_device"] += 1
                        else:
                            ctr["pages_prefetched"] += 1
            # 6. LRU: the most recently migrated-into block goes last
            if moved:
                self.lru.pop(b, None)
                self.lru[b] = None
        for p, k, w in entries:  # the faulting accesses complete
            if res[p]:
                if w:
                    self._device_write(k, p)
            else:
                ctr["remote_accesses"] += 1
                self._cpu_access(k, p, w)
        self.entries = []
        self.in_batch = set()

    # ---------------------------------------------------------------------- accesses
    def access(self, k: int, p: int, proc: int, write: bool) -> None:
        """Run access ``k`` (simulated page ``p``; proc 0 the device, -1 a CPU)."""
        ctr = self.ctr
        ctr["accesses"] += 1
        if proc == 0:
            ctr["device_accesses"] += 1
            if self.res[p]:
                self._hit(k, p, write)
            elif p in self.in_batch:
                self.service(k)
                if self.res[p]:
                    self._hit(k, p, write)
                else:
                    ctr["device_faults"] += 1
                    ctr["remote_accesses"] += 1
                    self._cpu_access(k, p, write)
            else:
                ctr["device_faults"] += 1
                if len(self.entries) >= self.batch_faults:
                    self.service(k)
                self.entries.append((p, k, write))
                self.in_batch.add(p)
        else:
            ctr["cpu_accesses"] += 1
            self.service(k)
            self._cpu_access(k, p, write)

    def _hit(self, k: int, p: int, write: bool) -> None:
        self.ctr["device_hits"] += 1
        u = p // self.mp
        self.last_use[u] = k
        self.uses[u] += 1
        if write:
            self._device_write(k, p)

    def stats(self) -> dict[str, int]:
        """The counters (``resident_pages``: pages on the device now)."""
        out = dict(self.ctr)
        out["resident_pages"] = self.resident
        return out


def simulate_reference(
    addr: Any,
    write: Any,
    proc: Any,
    *,
    device_pages: int,
    migrate_pages: int,
    batch_faults: int,
    prefetch: str,
    evict: str | Callable[..., int],
    seed: int = 0,
    policy: Callable[..., int] | None = None,
) -> dict[str, int]:
    """Replay a trace through the reference driver model; return its counters.

    ``addr``/``write``/``proc`` are the trace's columns (``proc`` 0 = the device,
    -1 = a CPU; ``None`` = all device). ``evict`` is ``"lru"``, ``"fifo"``,
    ``"random"``, ``"user"`` (with ``policy``) or the policy itself, a function
    ``policy(units, last_use, first_use, uses, now) -> int`` that gets int64 arrays.
    """
    if callable(evict):
        policy, evict = evict, "user"
    elif policy is not None:
        evict = "user"
    if evict == "user" and policy is None:
        raise ValueError("evict='user' needs a policy")
    pages, nblocks = page_numbers(addr)
    n = len(pages)
    writes = [bool(w) for w in np.asarray(write, dtype=bool).tolist()]
    procs = [0] * n if proc is None else [int(x) for x in np.asarray(proc).tolist()]
    if len(writes) != n or len(procs) != n:
        raise ValueError("addr, write and proc must have the same length")
    model = UvmModel(
        nblocks,
        device_pages=device_pages,
        migrate_pages=migrate_pages,
        batch_faults=batch_faults,
        prefetch=prefetch,
        evict=evict,
        seed=seed,
        policy=policy,
    )
    step = model.access
    for k in range(n):
        step(k, pages[k], procs[k], writes[k])
    model.service(n)
    return model.stats()
