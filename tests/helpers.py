"""Helpers shared by the test modules (import them from ``tests.helpers``).

Page-size-dependent helpers default to 4 KiB pages (``PS``); files that build
machines with smaller pages pass their own ``ps``.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping

import numpy as np
import pytest

import migengine as me
from migengine.kernels.copy import STAT_WALL_S
from migengine.kernels.state import State, write_untouched

PS = 4096
HPAGE = 512  # HPAGE_PMD_NR: a PMD maps 2 MiB of 4 KiB pages
HMM = pytest.mark.parametrize("profile", ["hmm-v25"])


# ---------------------------------------------------------------- pages and mappings
def addr(vma: me.Vma, i: int) -> int:
    return vma.start + i * PS


def pfn_at(p: me.Process, vma: me.Vma, i: int) -> int:
    return p.translate(addr(vma, i)).pfn


def kinds(p: me.Process, vma: me.Vma, ps: int = PS) -> list[str]:
    """Each page's PTE kind ("present", "none", "swap", "device", ...), in order."""
    return [p.translate(vma.start + i * ps).kind for i in range(vma.npages)]


def refs(m: me.Machine, pfn: int) -> tuple[int, int]:
    info = m.page(pfn)
    return info.refcount, info.mapcount


# ---------------------------------------------------------------- page contents
def pattern(i: int, n: int = PS) -> bytes:
    """Page ``i``'s bytes in the scenario tests (``filled``, ``assert_data``)."""
    return bytes((i * 7 + k) % 251 for k in range(n))


def selftest_pattern(npages: int, base: int = 0, sign: int = 1, *, ps: int) -> bytes:
    """The hmm selftests' buffer: int32 ``ptr[i] = sign * (i + base)``, ``ps // 4``
    values per page (a different fill from ``pattern``)."""
    values = sign * (np.arange(npages * (ps // 4), dtype=np.int64) + base)
    return values.astype(np.int32).tobytes()


def filled(m: me.Machine, npages: int, **mmap_kw) -> tuple[me.Process, me.Vma]:
    """A process with one VMA whose page i holds pattern(i)."""
    p = m.new_process()
    vma = p.mmap(npages, **mmap_kw)
    for i in range(npages):
        p.write(addr(vma, i), pattern(i))
    return p, vma


def assert_in_batch(m: me.Machine, pfn: int) -> None:
    """4.14's putback_lru_page() is lru_cache_add() then put_page(): the page waits
    in the putting CPU's LRU-add batch, off the LRU and unlocked, until it drains."""
    info = m.page(pfn)
    assert info.pagevec and not info.lru and not info.locked, info


def assert_freed_by_drain(m: me.Machine, pfns: list[int]) -> None:
    """A migrated source's last reference is the LRU-add batch's (4.14
    putback_lru_page()): it stays allocated, held by the batch alone, and is free
    once the batch drains (here: lru_add_drain_all())."""
    for pfn in pfns:
        info = m.page(pfn)
        assert info.free or (info.pagevec and info.refcount == 1 and not info.mapcount), info
    m.lru_add_drain_all()
    assert all(m.page(pfn).free for pfn in pfns)


def assert_data(p: me.Process, vma: me.Vma, pages: range | list[int]) -> None:
    for i in pages:
        assert p.read(addr(vma, i), PS) == pattern(i), f"page {i}"


def thp_machine(make_machine, profile) -> me.Machine:
    # RAM for one aligned 512-page run (frame 0 is the zero page) plus spares.
    return make_machine(2 * HPAGE + 64, 0, profile=profile)


# ---------------------------------------------------------------- a Python driver
class Driver:
    """A Python migrate_vma_ops: allocate, copy (zero-fill holes), set dst.

    ``want(i, src_i)`` picks the slots to give a destination; ``hook(driver, src)``
    runs inside alloc_and_copy first (someone acting during the migration).
    """

    def __init__(
        self,
        m: me.Machine,
        *,
        device: bool = False,
        want: Callable[[int, np.uint64], bool] | None = None,
        hook: Callable[[Driver, np.ndarray], None] | None = None,
    ) -> None:
        self.m = m
        self.device = device
        self.want = want or (lambda i, s: True)
        self.hook = hook
        self.calls: list[str] = []
        self.given: dict[int, int] = {}
        self.src_at_alloc: np.ndarray | None = None
        self.src_at_finalize: np.ndarray | None = None
        self.dst_at_finalize: np.ndarray | None = None
        self.ops = me.MigrateOps(self.alloc_and_copy, self.finalize_and_map)

    def alloc_and_copy(self, vma, src, dst, start, end, private) -> None:
        self.calls.append("alloc_and_copy")
        assert not src.flags.writeable  # the core passes src read-only
        self.src_at_alloc = src.copy()
        if self.hook is not None:
            self.hook(self, src)
        m, lay = self.m, self.m.layout
        for i in range((end - start) // PS):
            if not src[i] & lay.MIGRATE or not self.want(i, src[i]):
                continue
            pfn = m.alloc_page(device=self.device)
            spfn = m.mpfn_to_pfn(src[i])
            m.copy_page(pfn, spfn if spfn >= 0 else m.zero_pfn)
            dst[i] = m.migrate_pfn(pfn) | lay.LOCKED | (src[i] & lay.WRITE)
            self.given[i] = pfn

    def finalize_and_map(self, vma, src, dst, start, end, private) -> None:
        self.calls.append("finalize_and_map")
        self.src_at_finalize = src.copy()
        self.dst_at_finalize = dst.copy()

    def run(self, vma: me.Vma, start: int | None = None, end: int | None = None) -> np.ndarray:
        start = vma.start if start is None else start
        end = vma.end if end is None else end
        n = (end - start) // PS
        src = np.zeros(n, np.uint64)
        dst = np.zeros(n, np.uint64)
        assert me.migrate_vma(self.ops, vma, start, end, src, dst) == 0
        return src


# ---------------------------------------------------------------- whole states
def snapshot(m: me.Machine) -> dict[str, tuple]:
    """A deep copy of every array of the flat state (field by field for struct
    arrays: their alignment padding holds no state and is not copied reliably),
    without ``dst_mark``: scratch the argument checks write as they go."""
    out: dict[str, tuple] = {}
    for name, arr in zip(m.state._fields, m.state, strict=True):
        if name == "dst_mark":
            continue
        for field in arr.dtype.names or (None,):
            col = arr if field is None else arr[field]
            out[f"{name}.{field}"] = (col.dtype.str, col.shape, copy.deepcopy(col).tobytes())
    return out


def written_state(m: me.Machine) -> State:
    """A copy of ``m``'s state with its untouched frames written as the free
    frames they are (kernels.state.write_untouched), for reading it whole."""
    st = copy_state(m.state)
    write_untouched(st)
    return st


def copy_state(state: State) -> State:
    """An independent copy of every array of a flat state."""
    return State(*(arr.copy() for arr in state))


def comparable_state(s: State, *, drop: tuple[str, ...] = ()) -> dict[str, np.ndarray]:
    """The state's arrays by field name, without the fields in ``drop`` and with
    the copy's measured wall time zeroed (it differs from run to run)."""
    out = {name: arr for name, arr in zip(State._fields, s, strict=True) if name not in drop}
    stats = s.copy_stats.copy()
    stats[STAT_WALL_S] = 0.0
    out["copy_stats"] = stats
    return out


def assert_same_state(a: Mapping[str, np.ndarray], b: Mapping[str, np.ndarray]) -> None:
    """Field by field equality of two ``comparable_state`` results."""
    for name, arr in a.items():
        np.testing.assert_array_equal(arr, b[name], err_msg=f"state.{name} differs")
