"""The built-in benchmark workload: a fragmented process, resettable.

The workload is one process with ``pages`` private anonymous pages, populated
(written) so every page is present, whose physical frames are fragmented as
on a long-running system, migrated system -> device with ``m.device``.

Fragmentation method (see :func:`fragmented_runs`): the virtual range is cut
into runs by breaking exactly ``round(fragmentation * (pages - 1))`` of the
``pages - 1`` boundaries between neighbouring pages, chosen at random; the
runs are then faulted in a random order. The allocator hands out the lowest
free frame first, so each run gets physically contiguous frames, and the runs
land in physical memory in shuffled order, as they do when a process faults
its memory in over time on a system whose free lists are scrambled. The
fraction of page boundaries that are physically broken is then
``fragmentation`` (up to the rare chance that two shuffled runs land next to
each other in order; the measured value is reported as ``break_fraction``).
Source runs are therefore ``1 / fragmentation`` pages long on average, and
the device side (a fresh free list) is contiguous.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np

from migengine.copyengine import CopyEngine
from migengine.kernels import layout as L
from migengine.kernels.state import write_untouched
from migengine.machine import Machine

__all__ = [
    "DEFAULT_FRAGMENTATION",
    "DEFAULT_PAGES",
    "EXTRA_RAM_PAGES",
    "Workload",
    "copyto_baseline",
    "fragmented_runs",
]

DEFAULT_PAGES = 65_536  # 256 MiB of 4 KiB pages
DEFAULT_FRAGMENTATION = 0.1  # one broken boundary in ten: runs of 10 pages on average
# RAM beyond the process: the shared zero page and a little free memory.
EXTRA_RAM_PAGES = 64
# Arrays a reset leaves alone: the frame bytes (their contents do not change
# the timing, and restoring 2 x 256 MiB per repetition would dominate) and the
# engine parameters (each chunk size sets its own).
_NOT_SNAPSHOTTED = ("data", "swap_data", "engine")


def fragmented_runs(pages: int, fragmentation: float, rng: np.random.Generator) -> np.ndarray:
    """Cut ``pages`` virtual pages into runs and return them in fault order.

    Exactly ``round(fragmentation * (pages - 1))`` of the boundaries between
    neighbouring pages become run boundaries. Returns an int64 array of shape
    ``(nruns, 2)`` holding ``[first_page, end_page)`` per run, rows in a random
    order: the order in which the runs are faulted in.
    """
    if not 0.0 <= fragmentation <= 1.0:
        raise ValueError(f"fragmentation must be in [0, 1], got {fragmentation}")
    nbreaks = int(round(fragmentation * max(pages - 1, 0)))
    cuts = np.sort(rng.choice(np.arange(1, pages), size=nbreaks, replace=False))
    starts = np.concatenate(([0], cuts)).astype(np.int64)
    ends = np.concatenate((cuts, [pages])).astype(np.int64)
    runs = np.stack((starts, ends), axis=1)
    return runs[rng.permutation(len(runs))]


class Workload:
    """A machine holding the benchmark process, resettable to its built state.

    Arguments:
        pages: pages of the process (and of device memory).
        fragmentation: fraction of page boundaries physically broken.
        store_data: False builds a metadata-only machine.
        seed: seeds the layout; machines with equal arguments are identical.
        profile: the machine's kernel profile.
        machine_factory: builds the Machine (tests pass one that checks it).
    """

    def __init__(
        self,
        pages: int,
        *,
        fragmentation: float = DEFAULT_FRAGMENTATION,
        store_data: bool = True,
        seed: int = 0,
        profile: str = "hmm-v25",
        machine_factory: Callable[..., Machine] = Machine,
    ) -> None:
        self.pages = pages
        self.fragmentation = fragmentation
        self.machine = machine_factory(
            pages + EXTRA_RAM_PAGES, pages, store_data=store_data, profile=profile, seed=seed
        )
        self.process = self.machine.new_process()
        self.vma = self.process.mmap(pages)
        self.runs = fragmented_runs(pages, fragmentation, np.random.default_rng(seed))
        ps = self.machine.page_size
        for first, end in self.runs:
            self.process.populate(self.vma.start + int(first) * ps, self.vma.start + int(end) * ps)
        # Steady state: nothing left in a per-CPU LRU-add batch, so prepare never
        # has to call lru_add_drain_all() inside the timed migration.
        self.machine.lru_add_drain_all()
        self.built_break_fraction = self.break_fraction()
        # Every frame written now, as a machine was built before its frames were
        # written lazily: a timed migration onto device frames never handed out
        # would otherwise pay their first write (kernels.page_alloc) every round.
        write_untouched(self.machine.state)
        self._state = self.machine.state
        # State is a namedtuple: _fields is its documented field list, not a private name.
        self._snapshot = {
            name: arr.copy()
            for name, arr in zip(self._state._fields, self._state, strict=True)
            if name not in _NOT_SNAPSHOTTED
        }

    @property
    def nbytes(self) -> int:
        return self.pages * self.machine.page_size

    def reset(self) -> None:
        """Restore the state the workload had right after it was built."""
        st = self.machine.state
        if st is not self._state:
            raise RuntimeError("the machine's tables were reallocated; rebuild the workload")
        for name, saved in self._snapshot.items():
            np.copyto(getattr(st, name), saved)

    def set_engine(self, engine: CopyEngine) -> None:
        self.machine.device.engine = engine

    def migrate(self) -> int:
        """Migrate the whole process to the device; returns the wall time in ns."""
        p, vma = self.process, self.vma
        t0 = time.perf_counter_ns()
        mapped = self.machine.device.migrate_to_device(p, vma.start, vma.end)
        elapsed = time.perf_counter_ns() - t0
        if mapped != self.pages:
            raise RuntimeError(f"the device maps {mapped} of {self.pages} pages after migrating")
        return elapsed

    def source_pfns(self) -> np.ndarray:
        """The frames behind the process's pages, in virtual order (-1: not present)."""
        st = self.machine.state
        base = int(st.vma[self.vma.index]["pte_base"])
        ptes = st.pte[base : base + self.pages]
        present = (ptes & L.PTE_KIND_MASK) == L.PTE_PRESENT
        pfns = (ptes >> L.PTE_PFN_SHIFT).astype(np.int64)
        return np.where(present, pfns, -1)

    def break_fraction(self) -> float:
        """Fraction of neighbouring virtual pages whose frames are not adjacent."""
        pfns = self.source_pfns()
        if pfns.size < 2:
            return 0.0
        return float(np.mean(np.diff(pfns) != 1))


def copyto_baseline(workload: Workload) -> Callable[[], int]:
    """A timed ``np.copyto`` of the migration's bytes between the same memory.

    Source: the RAM frames right after the zero page, where the process's
    pages live; destination: the first device frames, where the migration
    puts them (the device free list hands out the lowest frame first). Call
    it while the process is in RAM (after building or :meth:`Workload.reset`):
    then it only reads the process's frames and writes free device frames,
    so the machine is untouched. Returns a function that copies once and
    returns the wall time in ns.
    """
    m = workload.machine
    if not m.store_data:
        raise ValueError("the copyto baseline needs a machine that stores data")
    ps = m.page_size
    n = workload.nbytes
    src_lo = (m.zero_pfn + 1) * ps
    dst_lo = m.ram_pages * ps
    data = m.state.data
    src = data[src_lo : src_lo + n]
    dst = data[dst_lo : dst_lo + n]

    def run() -> int:
        t0 = time.perf_counter_ns()
        np.copyto(dst, src)
        return time.perf_counter_ns() - t0

    return run
