"""The compiled level never crashes on a bad argument (docs/embedding.md, "Bad arguments").

Each public kernel is called from a user's ``@njit`` function with VMA indices,
ranges, pfns, devices, process ids and arrays out of bounds. Every case must
return its documented code and change nothing: the machine's arrays compare
equal before and after, and ``m.check()`` passes. The cases run in a child
process, one per entry point's group (a crash then fails the test instead of
killing pytest), which prints its results as JSON.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from numba import njit

import migengine as me
from migengine import kernels
from migengine.kernels import handle as khandle
from migengine.kernels import layout as L

ROOT = Path(__file__).resolve().parents[2]
PS = 4096
EINVAL = -22
BIG = 2**40
SEGV = L.FAULT_SEGV


# The functions below are cached and embed the kernels' code, keyed on this file
# only (docs/embedding.md): a child must not run the kernels as they were.
kernels.drop_stale_user_cache(__file__)


# ----------------------------------------------------------------------------- user code
@njit(cache=True)
def _setup(state, v, start, end, src, dst):
    return kernels.migrate_vma_setup(state, v, start, end, src, dst)


@njit(cache=True)
def _setup_flags(state, v, start, end, src, dst, flags, owner, fault_pfn):
    return kernels.migrate_vma_setup_flags(state, v, start, end, src, dst, flags, owner, fault_pfn)


@njit(cache=True)
def _pages(state, v, start, end, src, dst):
    return kernels.migrate_vma_pages(state, v, start, end, src, dst)


@njit(cache=True)
def _finalize(state, v, start, end, src, dst):
    return kernels.migrate_vma_finalize(state, v, start, end, src, dst)


@njit(cache=True)
def _count_alloc(state, vma_index, src, dst, start, end, log):
    log[0] += 1


@njit(cache=True)
def _count_finalize(state, vma_index, src, dst, start, end, log):
    log[1] += 1


@njit  # not cached: it passes callbacks (compiled once per process)
def _callback_form(state, v, start, end, src, dst):
    """kernels.migrate_vma with two callbacks that count their calls."""
    log = np.zeros(2, np.int64)
    ret = kernels.migrate_vma(state, _count_alloc, _count_finalize, v, start, end, src, dst, log)
    return ret, log[0] + log[1]


@njit(cache=True)
def _to_device(state, v, start, end, src, dst, private):
    return kernels.migrate_vma_to_device(state, v, start, end, src, dst, private)


@njit(cache=True)
def _to_system(state, v, start, end, src, dst, private):
    return kernels.migrate_vma_to_system(state, v, start, end, src, dst, private)


@njit(cache=True)
def _give_device_pages(state, src, dst, npages):
    """A driver's alloc_and_copy: a device page for every collected RAM page."""
    lay = state.layout
    for i in range(npages):
        dst[i] = 0
        spfn = kernels.mpfn_to_pfn(state, src[i])
        if (src[i] & lay[L.L_MIGRATE]) == 0 or spfn < 0 or spfn >= state.sys[L.SYS_NR_RAM]:
            continue
        dpfn = kernels.alloc_page(state, True)
        if dpfn >= 0:
            kernels.copy_page(state, dpfn, spfn)
            dst[i] = kernels.migrate_pfn(state, dpfn) | lay[L.L_LOCKED] | (src[i] & lay[L.L_WRITE])


@njit(cache=True)
def _driver(state, which, a, b):
    """One driver helper: 0 put_page(a), 1 unlock_page(a), 2 copy_page(a, b),
    3 migrate_pfn(a) (as int64), 4 mpfn_to_pfn(a as uint64), 5 alloc_page(a != 0)."""
    if which == 0:
        return kernels.put_page(state, a)
    if which == 1:
        return kernels.unlock_page(state, a)
    if which == 2:
        return kernels.copy_page(state, a, b)
    if which == 3:
        return np.int64(kernels.migrate_pfn(state, a))
    if which == 4:
        return kernels.mpfn_to_pfn(state, np.uint64(a))
    return kernels.alloc_page(state, a != 0)


@njit(cache=True)
def _access(state, which, mm_id, addr, buf):
    """0 cpu_read, 1 cpu_write, 2 translate's kind and pfn, 3 find_vma."""
    if which == 0:
        return kernels.cpu_read(state, mm_id, addr, buf), np.int64(0)
    if which == 1:
        return kernels.cpu_write(state, mm_id, addr, buf), np.int64(0)
    if which == 2:
        kind, pfn, _, _ = kernels.translate(state, mm_id, addr)
        return np.int64(kind), pfn
    return kernels.find_vma(state, mm_id, addr), np.int64(0)


@njit(cache=True)
def _fault(state, v, addr, write):
    return kernels.handle_mm_fault(state, v, addr, write)


@njit(cache=True)
def _populate(state, v, start, end, write):
    return kernels.populate(state, v, start, end, write)


@njit(cache=True)
def _device_fault(state, v, addr):
    return kernels.device_fault(state, v, addr)


@njit(cache=True)
def _callback(state, which, v, src, dst, start, end, private):
    """One device callback called directly: 0 device_alloc_and_copy,
    1 device_finalize_and_map, 2 system_alloc_and_copy, 3 system_finalize_and_map."""
    if which == 0:
        kernels.device_alloc_and_copy(state, v, src, dst, start, end, private)
    elif which == 1:
        kernels.device_finalize_and_map(state, v, src, dst, start, end, private)
    elif which == 2:
        kernels.system_alloc_and_copy(state, v, src, dst, start, end, private)
    else:
        kernels.system_finalize_and_map(state, v, src, dst, start, end, private)


@njit(cache=True)
def _ranges(state, which, mm_id, start, end, private):
    """0 migrate_to_device, 1 migrate_to_system, 2 evict."""
    if which == 0:
        return kernels.migrate_to_device(state, mm_id, start, end)
    if which == 1:
        return kernels.migrate_to_system(state, mm_id, start, end, private)
    return kernels.evict(state)


@njit(cache=True)
def _device_range(state, which, src, dst, start_pfn, npages):
    """0 migrate_device_range, 1 migrate_device_pfns, 2 migrate_device_pages,
    3 migrate_device_finalize, 4 migrate_device_coherent_folio(start_pfn)."""
    if which == 0:
        return kernels.migrate_device_range(state, src, start_pfn, npages)
    if which == 1:
        return kernels.migrate_device_pfns(state, src)
    if which == 2:
        return kernels.migrate_device_pages(state, src, dst)
    if which == 3:
        return kernels.migrate_device_finalize(state, src, dst)
    return kernels.migrate_device_coherent_folio(state, start_pfn)


@njit(cache=True)
def _device_range_i64(state, src, start_pfn, npages):
    return kernels.migrate_device_range(state, src, start_pfn, npages)


# ----------------------------------------------------------------------------- the child
def _u64(n: int) -> np.ndarray:
    return np.zeros(n, np.uint64)


def _snapshot(m: me.Machine) -> dict[str, np.ndarray]:
    st = m.state
    return {name: np.array(arr, copy=True) for name, arr in zip(st._fields, st, strict=True)}


# Scratch the checks write as they go (kernels.args.src_sound's and the dst
# check's marks): it holds no state, so a refused call may leave it changed.
SCRATCH = ("dst_mark",)


def _changed(before: dict[str, np.ndarray], m: me.Machine) -> list[str]:
    now = _snapshot(m)
    return [
        name
        for name, arr in before.items()
        if name not in SCRATCH and not np.array_equal(arr, now[name])
    ]


class _World:
    """A machine with written pages, two of them on the device, and a second VMA."""

    def __init__(self, profile: str = "hmm-v25", store_data: bool = True) -> None:
        self.m = me.Machine(64, 16, profile=profile, store_data=store_data)
        self.p = self.m.new_process()
        self.vma = self.p.mmap(8)
        self.other = self.p.mmap(4)
        self.data = bytes((i * 37 + i // PS) & 0xFF for i in range(6 * PS)) if store_data else b""
        if store_data:
            self.p.write(self.vma.start, self.data)
        else:
            self.p.populate(self.vma.start, self.vma.start + 6 * PS)
        self.m.device.migrate_to_device(self.p, self.vma.start, self.vma.start + 2 * PS)
        self.results: list[list[Any]] = []

    @property
    def state(self) -> Any:
        return self.m.state

    def nr_vmas(self) -> int:
        return int(self.state.sys[L.SYS_NR_VMAS])

    def pfn(self, page: int) -> int:
        return self.p.translate(self.vma.start + page * PS).pfn

    def free_pfn(self, device: bool = False) -> int:
        lo, hi = (self.m.ram_pages, self.m.nframes) if device else (1, self.m.ram_pages)
        return next(pfn for pfn in range(lo, hi) if self.m.page(pfn).free)

    def case(self, name: str, want: Any, fn: Callable[..., Any], *args: Any) -> None:
        """One bad call ``fn(*args)``: it must return ``want``, change nothing, and
        leave the machine consistent."""
        self._run(name, want, fn, args, check=True)

    def case_mid(self, name: str, want: Any, fn: Callable[..., Any], *args: Any) -> None:
        """As case(), in the middle of a migration (pages locked and unmapped,
        which check() reports), so without the check."""
        self._run(name, want, fn, args, check=False)

    def _run(self, name: str, want: Any, fn: Callable[..., Any], args: tuple, check: bool) -> None:
        before = _snapshot(self.m)
        got = _plain(fn(*args))
        error = None
        if check:
            try:
                self.m.check()
            except me.InvariantError as exc:
                error = str(exc)
        self.results.append([name, got, want, _changed(before, self.m), error])

    def expect(self, name: str, want: Any, got: Any) -> None:
        """A good call's result (it may change the machine)."""
        self.results.append([name, _plain(got), want, [], None])

    def finish(self) -> None:
        """The process still reads what it wrote, and the machine is consistent."""
        self.m.check()
        if self.data:
            assert self.p.read(self.vma.start, len(self.data)) == self.data


def _plain(got: Any) -> Any:
    """A result as JSON has it: tuples as lists of ints, numpy scalars as ints."""
    if isinstance(got, tuple | list):
        return [_plain(x) for x in got]
    if isinstance(got, np.integer):
        return int(got)
    return got


def _bad_ranges(w: _World) -> list[tuple[str, int, int, int, int]]:
    """(name, vma index, start, end, slots) the migrate entry points refuse."""
    v, s, e = w.vma.index, w.vma.start, w.vma.end
    return [
        ("vma -1", -1, s, e, 8),
        ("vma 2**40", BIG, s, e, 8),
        ("vma past the last", w.nr_vmas(), s, e, 8),
        ("start below the vma", v, s - PS, e, 9),
        ("end past the vma", v, s, e + PS, 9),
        ("reversed", v, e - PS, s, 8),
        ("empty", v, s, s, 8),
        ("start -1", v, -1, e, 8),
        ("start 2**62", v, 2**62, 2**62 + PS, 8),
        ("end 2**62", v, s, 2**62, 8),
        ("short arrays", v, s, e, 7),
    ]


def _group_setup(w: _World) -> None:
    """migrate_vma_setup, migrate_vma (callbacks), migrate_vma_to_device/_system
    and the Python layer's migrate_vma_to_device_at."""
    st, handle = w.state, w.m.core.handle
    for name, v, s, e, n in _bad_ranges(w):
        w.case(f"setup: {name}", EINVAL, _setup, st, v, s, e, _u64(n), _u64(n))
        args = (st, v, s, e, _u64(n), _u64(n), 1, 0, -1)
        w.case(f"setup_flags: {name}", EINVAL, _setup_flags, *args)
        no_call = [EINVAL, 0]  # and no callback ran
        w.case(f"migrate_vma: {name}", no_call, _callback_form, st, v, s, e, _u64(n), _u64(n))
        w.case(f"to_device: {name}", EINVAL, _to_device, st, v, s, e, _u64(n), _u64(n), 0)
        w.case(f"to_system: {name}", EINVAL, _to_system, st, v, s, e, _u64(n), _u64(n), 0)
        at = khandle.migrate_vma_to_device_at
        w.case(f"migrate_vma_to_device_at: {name}", EINVAL, at, handle, v, s, e, _u64(n), _u64(n))
    v, s, e = w.vma.index, w.vma.start, w.vma.end
    both, wide = _u64(8), _u64(12)
    w.case("setup: short src", EINVAL, _setup, st, v, s, e, _u64(7), _u64(8))
    w.case("setup: short dst", EINVAL, _setup, st, v, s, e, _u64(8), _u64(7))
    w.case("setup: src is dst", EINVAL, _setup, st, v, s, e, both, both)
    w.case("setup: overlapping", EINVAL, _setup, st, v, s, e, wide[:8], wide[4:])
    ints = np.zeros(8, np.int64)
    w.case("setup: int64 arrays", EINVAL, _setup, st, v, s, e, ints, ints.copy())
    flag_args = (1, 0, -1)
    w.case("setup_flags: int64 arrays", EINVAL, _setup_flags, st, v, s, e, ints, ints, *flag_args)
    w.case("setup_flags: src is dst", EINVAL, _setup_flags, st, v, s, e, both, both, *flag_args)
    for private, label in ((1 << 8, "device 1 of 1"), (-1, "-1"), (BIG, "2**40")):
        for entry, fn in (("to_device", _to_device), ("to_system", _to_system)):
            w.case(f"{entry}: private {label}", EINVAL, fn, st, v, s, e, _u64(8), _u64(8), private)
    w.finish()


def _open_window(
    w: _World, start_page: int, npages: int, vma: me.Vma | None = None
) -> tuple[np.ndarray, np.ndarray, int]:
    """migrate_vma_setup() over pages [start_page, +npages) of the VMA (``w.vma``
    by default), with the driver's destinations filled in; returns src, dst and
    cpages."""
    vma = w.vma if vma is None else vma
    st, v = w.state, vma.index
    s = vma.start + start_page * PS
    src, dst = _u64(npages), _u64(npages)
    cpages = _setup(st, v, s, s + npages * PS, src, dst)
    if cpages > 0:
        _give_device_pages(st, src, dst, npages)
    return src, dst, int(cpages)


def _group_split(w: _World) -> None:
    """migrate_vma_pages / migrate_vma_finalize: bad arguments, calls outside the
    range setup collected, out of order or twice; and nested migrations, which
    they must still let finish."""
    st, v, other = w.state, w.vma.index, w.other.index
    s = w.vma.start + 2 * PS
    e = s + 2 * PS
    calls = (("pages", _pages), ("finalize", _finalize))
    for entry, fn in calls:
        w.case(f"{entry}: before any setup", EINVAL, fn, st, v, s, e, _u64(2), _u64(2))
    src, dst, cpages = _open_window(w, 2, 2)
    w.expect("setup of [2, 4)", 2, cpages)
    bad = [
        ("vma -1", -1, s, e, 2),
        ("vma 2**40", BIG, s, e, 2),
        ("vma past the last", w.nr_vmas(), s, e, 2),
        ("another vma", other, w.other.start, w.other.start + 2 * PS, 2),
        ("end past setup's", v, s, e + PS, 3),
        ("end short of setup's", v, s, e - PS, 2),
        ("start past setup's", v, s + PS, e, 2),
        ("start before setup's", v, s - PS, e, 3),
        ("end past the vma", v, s, w.vma.end + PS, 8),
        ("reversed", v, e, s, 2),
        ("start -1", v, -1, e, 2),
    ]
    for entry, fn in calls:
        for name, bv, bs, be, n in bad:
            w.case_mid(f"{entry}: {name}", EINVAL, fn, st, bv, bs, be, _u64(n), _u64(n))
        w.case_mid(f"{entry}: short src", EINVAL, fn, st, v, s, e, src[:1], dst)
        w.case_mid(f"{entry}: short dst", EINVAL, fn, st, v, s, e, src, dst[:1])
        w.case_mid(f"{entry}: src is dst", EINVAL, fn, st, v, s, e, src, src)
    # A src the caller wrote after setup (4.14 trusts it and indexes struct
    # page with it): a pfn past the machine, random bits, a free frame, and
    # a page setup never locked are refused by both calls.
    lay = w.m.layout
    valid, shift = int(lay.VALID), int(lay.SHIFT)
    scribbles = [
        ("src pfn past the machine", (BIG << shift) | valid),
        ("src random bits", 0xDEADBEEFCAFEF00D | valid),
        ("src names a free frame", (w.free_pfn() << shift) | valid | int(lay.MIGRATE)),
        ("src names an unlocked page", (w.pfn(5) << shift) | valid | int(lay.MIGRATE)),
    ]
    for entry, fn in calls:
        for name, word in scribbles:
            bad_src = src.copy()
            bad_src[1] = np.uint64(word)
            w.case_mid(f"{entry}: {name}", EINVAL, fn, st, v, s, e, bad_src, dst)
    w.expect("pages of the window", 0, _pages(st, v, s, e, src, dst))
    w.expect("finalize of the window", 0, _finalize(st, v, s, e, src, dst))
    w.case("finalize twice", EINVAL, _finalize, st, v, s, e, src, dst)
    w.case("pages after finalize", EINVAL, _pages, st, v, s, e, src, dst)
    moved = [w.p.translate(a).pfn >= w.m.ram_pages for a in (s, s + PS)]
    w.expect("[2, 4) moved to the device", [True, True], moved)
    # A setup that collected nothing (a pinned page) opens no window.
    pfn = w.pfn(4)
    w.m.pin(pfn)
    src, dst, cpages = _open_window(w, 4, 1)
    w.expect("setup of a pinned page", 0, cpages)
    one = (v, w.vma.start + 4 * PS, w.vma.start + 5 * PS)
    w.case("pages after nothing collected", EINVAL, _pages, st, *one, src, dst)
    w.case("finalize after nothing collected", EINVAL, _finalize, st, *one, src, dst)
    w.m.unpin(pfn)
    # Nor does a setup refused with -22 after a finished migration.
    w.case("setup refused", EINVAL, _setup, st, v, s, e, _u64(1), _u64(1))
    w.case("pages after a refused setup", EINVAL, _pages, st, v, s, e, _u64(2), _u64(2))
    _nested(w)
    w.finish()


def _nested(w: _World) -> None:
    """Migrations nested in an open one (what a callback may run): a whole
    migration, a device fault, and a setup that collects nothing. The outer
    one's pages and finalize still run, and the data survives."""
    st, v = w.state, w.vma.index
    w.p.write(w.other.start, b"pinned")
    w.m.lru_add_drain_all()
    pinned = w.p.translate(w.other.start).pfn
    w.m.pin(pinned)
    outer = (v, w.vma.start + 4 * PS, w.vma.start + 6 * PS)
    src, dst, cpages = _open_window(w, 4, 2)
    w.expect("outer setup", 2, cpages)
    inner_src, inner_dst, inner = _open_window(w, 6, 2)  # two holes
    w.expect("inner setup", 0 if w.m.profile == "seed" else 2, inner)
    if inner > 0:
        rng = (v, w.vma.start + 6 * PS, w.vma.end)
        w.expect("inner pages", 0, _pages(st, *rng, inner_src, inner_dst))
        w.expect("inner finalize", 0, _finalize(st, *rng, inner_src, inner_dst))
    buf = np.zeros(PS, np.uint8)
    w.expect("a device fault inside", 0, kernels.cpu_read(st, w.p.pid, w.vma.start, buf))
    w.expect("a setup collecting nothing inside", 0, _open_window(w, 0, 1, w.other)[2])
    w.expect("outer pages", 0, _pages(st, *outer, src, dst))
    w.expect("outer finalize", 0, _finalize(st, *outer, src, dst))
    w.case("outer finalize twice", EINVAL, _finalize, st, *outer, src, dst)
    w.m.unpin(pinned)


def _group_driver(w: _World) -> None:
    """alloc_page, put_page, unlock_page, copy_page, migrate_pfn, mpfn_to_pfn."""
    st, m = w.state, w.m
    zero, free, mapped = m.zero_pfn, w.free_pfn(), w.pfn(3)
    device_mapped = w.pfn(0)  # hmm-v25: a device entry; seed: a present device page
    pinned = w.pfn(4)
    m.lru_add_drain_all()
    m.pin(pinned)
    for pfn, label in (
        (-1, "-1"),
        (BIG, "2**40"),
        (m.nframes, "nframes"),
        (free, "a free RAM frame"),
        (w.free_pfn(device=True), "a free device frame"),
        (zero, "the zero page"),
        (mapped, "a mapped page"),
        (device_mapped, "a mapped device page"),
        (pinned, "a pinned page"),
    ):
        w.case(f"put_page: {label}", EINVAL, _driver, st, 0, pfn, 0)
    m.unpin(pinned)
    for pfn, label in ((-1, "-1"), (BIG, "2**40"), (free, "a free frame")):
        w.case(f"unlock_page: {label}", EINVAL, _driver, st, 1, pfn, 0)
    locked_by_other = w.pfn(5)
    m.lock_page(locked_by_other)
    w.case("unlock_page: locked by another", EINVAL, _driver, st, 1, locked_by_other, 0)
    m.unlock_page(locked_by_other)
    page = _driver(st, 5, 0, 0)  # a driver's page, to copy onto
    free = w.free_pfn()
    for dst_pfn, src_pfn, label in (
        (-1, mapped, "dst -1"),
        (BIG, mapped, "dst 2**40"),
        (m.nframes, mapped, "dst nframes"),
        (page, -1, "src -1"),
        (page, BIG, "src 2**40"),
        (page, m.nframes, "src nframes"),
        (zero, mapped, "onto the zero page"),
        (free, mapped, "onto a free frame"),
    ):
        w.case(f"copy_page: {label}", EINVAL, _driver, st, 2, dst_pfn, src_pfn)
    for pfn, label in ((-1, "-1"), (BIG, "2**40"), (m.nframes, "nframes")):
        w.case(f"migrate_pfn: {label}", 0, _driver, st, 3, pfn, 0)
    shift, valid = int(m.layout.SHIFT), int(m.layout.VALID)
    for pfn, label in ((BIG, "2**40"), (m.nframes, "nframes")):
        mpfn = int(np.int64(np.uint64((pfn << shift) | valid)))
        w.case(f"mpfn_to_pfn: pfn {label}", -1, _driver, st, 4, mpfn, 0)
    w.case("mpfn_to_pfn: every bit", -1, _driver, st, 4, -1, 0)
    # The calls that returned None in version 1 return 0 now.
    w.expect("copy_page: good", 0, _driver(st, 2, page, mapped))
    w.expect("copy_page: onto itself", 0, _driver(st, 2, page, page))
    w.expect("unlock_page: good", 0, _driver(st, 1, page, 0))
    w.expect("put_page: good", 0, _driver(st, 0, page, 0))
    w.expect("put_page: freed it", True, m.page(page).free)
    w.case("put_page: that page again", EINVAL, _driver, st, 0, page, 0)
    got = [_driver(st, 5, 1, 0) for _ in range(m.free_pages(device=True) + 1)]
    w.expect("alloc_page: -1 when the device is full", -1, got[-1])
    for pfn in got[:-1]:
        _driver(st, 1, pfn, 0)
        _driver(st, 0, pfn, 0)
    w.finish()


def _group_cpu(w: _World) -> None:
    """cpu_read, cpu_write, translate, find_vma, handle_mm_fault, populate."""
    st, v, s, e, pid = w.state, w.vma.index, w.vma.start, w.vma.end, w.p.pid
    buf = np.zeros(64, np.uint8)
    for mm_id, addr, label in (
        (-1, s, "mm -1"),
        (BIG, s, "mm 2**40"),
        (pid + 1, s, "no such process"),
        (pid, -1, "addr -1"),
        (pid, 2**62, "addr 2**62"),
        (pid, w.other.end + 64 * PS, "past every vma"),
    ):
        w.case(f"cpu_read: {label}", [SEGV, 0], _access, st, 0, mm_id, addr, buf)
        w.case(f"cpu_write: {label}", [SEGV, 0], _access, st, 1, mm_id, addr, buf)
        w.case(f"translate: {label}", [kernels.TR_NONE, -1], _access, st, 2, mm_id, addr, buf)
        w.case(f"find_vma: {label}", [-1, 0], _access, st, 3, mm_id, addr, buf)
    strided = np.zeros(128, np.uint8)
    for view, label in ((strided[::2], "a strided buffer"), (strided[::-1], "a reversed one")):
        for which, entry in ((0, "cpu_read"), (1, "cpu_write")):
            w.case(f"{entry}: {label}", [EINVAL, 0], _access, st, which, pid, e - 8, view)
    for bad_v, addr, label in (
        (-1, s, "vma -1"),
        (BIG, s, "vma 2**40"),
        (w.nr_vmas(), s, "vma past the last"),
        (v, e, "addr at the vma's end"),
        (v, s - 1, "addr below the vma"),
        (v, -(2**62), "addr -2**62"),
    ):
        for write in (False, True):
            w.case(f"handle_mm_fault: {label}, write={write}", SEGV, _fault, st, bad_v, addr, write)
    for bad_v, bs, be, label in (
        (-1, s, e, "vma -1"),
        (BIG, s, e, "vma 2**40"),
        (w.nr_vmas(), s, e, "vma past the last"),
        (v, s, e + PS, "end past the vma"),
        (v, s - PS, e, "start below the vma"),
        (v, e, s, "reversed"),
        (v, s, 2**62, "end 2**62"),
    ):
        w.case(f"populate: {label}", [SEGV, bs], _populate, st, bad_v, bs, be, True)
    w.finish()
    bare = _World(w.m.profile, store_data=False)
    for which, entry in ((0, "cpu_read"), (1, "cpu_write")):
        name = f"{entry}: a machine without bytes"
        bare.case(name, [EINVAL, 0], _access, bare.state, which, bare.p.pid, bare.vma.start, buf)
    bare.finish()
    w.results += bare.results


def _group_device(w: _World) -> None:
    """The device callbacks called directly, device_fault, migrate_to_device /
    _system (and their handle entries), evict."""
    st, v, s, e, pid = w.state, w.vma.index, w.vma.start, w.vma.end, w.p.pid
    names = ("device_alloc_and_copy", "device_finalize_and_map")
    names += ("system_alloc_and_copy", "system_finalize_and_map")
    for which, entry in enumerate(names):
        w.case(
            f"{entry}: outside a migration",
            None,
            _callback,
            st,
            which,
            v,
            _u64(8),
            _u64(8),
            s,
            e,
            0,
        )
    src, dst, cpages = _open_window(w, 2, 2)  # a window: the callbacks' own checks
    w.expect("setup", 2, cpages)
    ws, we = s + 2 * PS, s + 4 * PS
    for which, entry in enumerate(names):
        for label, args in (
            ("vma -1", (-1, src, dst, ws, we, 0)),
            ("vma 2**40", (BIG, src, dst, ws, we, 0)),
            ("end past setup's", (v, _u64(3), _u64(3), ws, we + PS, 0)),
            ("reversed", (v, src, dst, we, ws, 0)),
            ("short src", (v, src[:1], dst, ws, we, 0)),
            ("private: device 1 of 1", (v, src, dst, ws, we, 1 << 8)),
            ("private -1", (v, src, dst, ws, we, -1)),
        ):
            w.case_mid(f"{entry}: {label}", None, _callback, st, which, *args)
    w.expect("pages", 0, _pages(st, v, ws, we, src, dst))
    w.expect("finalize", 0, _finalize(st, v, ws, we, src, dst))
    for bad_v, addr, label in (
        (-1, s, "vma -1"),
        (BIG, s, "vma 2**40"),
        (w.nr_vmas(), s, "vma past the last"),
        (v, e, "addr past the vma"),
        (v, -1, "addr -1"),
    ):
        w.case(f"device_fault: {label}", SEGV, _device_fault, st, bad_v, addr)
    handle, gap = w.m.core.handle, w.other.end
    for mm_id, rs, re, label in (
        (-1, s, e, "mm -1"),
        (BIG, s, e, "mm 2**40"),
        (pid + 1, s, e, "no such process"),
        (pid, w.other.start, gap + PS, "runs into a gap"),
        (pid, gap, gap + PS, "only a gap"),
        (pid, e, s, "reversed"),
        (pid, -(2**62), s, "from -2**62"),
    ):
        w.case(f"migrate_to_device: {label}", EINVAL, _ranges, st, 0, mm_id, rs, re, 0)
        w.case(f"migrate_to_system: {label}", EINVAL, _ranges, st, 1, mm_id, rs, re, 0)
        at = khandle.migrate_to_device_at
        w.case(f"migrate_to_device_at: {label}", EINVAL, at, handle, mm_id, rs, re, 0)
        at = khandle.migrate_to_system_at
        w.case(f"migrate_to_system_at: {label}", EINVAL, at, handle, mm_id, rs, re, 0)
    for d in (1, -1):
        at = khandle.migrate_to_device_at
        w.case(f"migrate_to_device_at: device {d}", EINVAL, at, handle, pid, s, e, d)
        at = khandle.migrate_to_system_at
        w.case(f"migrate_to_system_at: device {d}", EINVAL, at, handle, pid, s, e, d)
    for private, label in ((1 << 8, "device 1 of 1"), (-1, "-1")):
        w.case(f"migrate_to_system: private {label}", EINVAL, _ranges, st, 1, pid, s, e, private)
    w.expect("evict", 4, _ranges(st, 2, 0, 0, 0, 0))
    w.finish()


def _group_device_range(w: _World) -> None:
    """migrate_device_range / _pfns / _pages / _finalize / _coherent_folio: only the
    modern profile has them (-22 elsewhere); frames outside one device, a pfn
    listed twice, arrays of another type or length, and src/dst naming pages
    no device-range migration collected are -22 there too."""
    st, m = w.state, w.m
    dev = m.device
    first, n = dev.first_pfn, dev.npages
    for start, count, label in (
        (first, n, "the whole device" if m.profile != "modern" else None),
        (first - 1, 2, "starts in RAM"),
        (first, n + 1, "runs past the device"),
        (first + n, 1, "past every frame"),
        (first, 0, "no pages"),
        (first, -1, "-1 pages"),
        (-(2**40), 4, "pfn -2**40"),
        (2**40, 4, "pfn 2**40"),
    ):
        if label is not None:
            w.case(
                f"range: {label}", EINVAL, _device_range, st, 0, _u64(n + 4), _u64(1), start, count
            )
    w.case("range: short src", EINVAL, _device_range, st, 0, _u64(n - 1), _u64(1), first, n)
    ints = np.zeros(n, np.int64)
    w.case("range: int64 src", EINVAL, _device_range_i64, st, ints, first, n)
    frozen = _u64(n)
    frozen.flags.writeable = False
    w.case("range: read-only src", EINVAL, _device_range_i64, st, frozen, first, n)
    for pfns, label in (
        ([first, first], "a pfn twice"),
        ([1], "a RAM pfn"),
        ([m.nframes], "past every frame"),
        ([2**63], "2**63"),
    ):
        src = np.array(pfns, np.uint64)
        w.case(f"pfns: {label}", EINVAL, _device_range, st, 1, src, _u64(1), 0, 0)
    locked = w.pfn(0)  # a device page the device mapped: locked by nobody
    bogus = np.array([m.migrate_pfn(locked) | m.layout.MIGRATE, 0], np.uint64)
    for which, label in ((2, "pages"), (3, "finalize")):
        w.case(
            f"{label}: unlocked src page", EINVAL, _device_range, st, which, bogus, _u64(2), 0, 0
        )
        w.case(f"{label}: short dst", EINVAL, _device_range, st, which, _u64(2), _u64(1), 0, 0)
        both = _u64(2)
        w.case(f"{label}: src is dst", EINVAL, _device_range, st, which, both, both, 0, 0)
    for pfn, label in ((1, "a RAM page"), (locked, "a private page"), (-1, "-1"), (2**40, "2**40")):
        w.case(f"coherent_folio: {label}", EINVAL, _device_range, st, 4, _u64(1), _u64(1), pfn, 0)
    # Inside an open migrate_vma_setup() window: the device forms are refused, and
    # finalize with destinations no finalize may put is refused too (every profile).
    wsrc, wdst, wcp = _open_window(w, 4, 2)
    w.expect("window: setup", 2, wcp)
    v, ws = w.vma.index, w.vma.start + 4 * PS
    for which, label in ((2, "pages"), (3, "finalize")):
        w.case_mid(f"{label} in a window", EINVAL, _device_range, st, which, wsrc, wdst, 0, 0)
    for label, bad in (
        ("dst past every frame", np.array([(2**40 << 6) | 1, wdst[1]], np.uint64)),
        ("dst a mapped page", np.array([m.migrate_pfn(w.pfn(2)), wdst[1]], np.uint64)),
        ("dst a source", np.array([wsrc[0] | 1, wdst[1]], np.uint64)),
        ("dst twice", np.array([wdst[0], wdst[0]], np.uint64)),
    ):
        w.case_mid(f"vma finalize: {label}", EINVAL, _finalize, st, v, ws, ws + 2 * PS, wsrc, bad)
    twice = np.array([wsrc[0], wsrc[0]], np.uint64)
    w.case_mid("vma finalize: src twice", EINVAL, _finalize, st, v, ws, ws + 2 * PS, twice, wdst)
    _pages(st, v, ws, ws + 2 * PS, wsrc, wdst)
    w.expect("window: finalize", 0, _finalize(st, v, ws, ws + 2 * PS, wsrc, wdst))
    if m.profile == "modern":
        src = _u64(n)
        w.expect("range: the whole device", 0, _device_range(st, 0, src, _u64(1), first, n))
        one = np.array([src[0], 0], np.uint64)
        dup = np.array([src[0], src[0]], np.uint64)
        bad_dst = np.array([(2**40 << 6) | 1, 0], np.uint64)
        mapped = np.array([m.migrate_pfn(w.pfn(3)), 0], np.uint64)
        for label, a, b in (
            ("src twice", dup, _u64(2)),
            ("dst past every frame", one, bad_dst),
            ("dst a mapped page", one, mapped),
            ("dst the source", one, np.array([src[0], 0], np.uint64)),
        ):
            w.case_mid(f"finalize: {label}", EINVAL, _device_range, st, 3, a, b, 0, 0)
        w.case_mid("pages: src twice", EINVAL, _device_range, st, 2, dup, _u64(2), 0, 0)
        dst = np.zeros(n, np.uint64)  # no destination: every page is restored
        w.expect("pages: no destination", 0, _device_range(st, 2, src, dst, 0, 0))
        w.expect("finalize", 0, _device_range(st, 3, src, dst, 0, 0))
        w.case("finalize again", EINVAL, _device_range, st, 3, src, dst, 0, 0)
    w.finish()


GROUPS: dict[str, Callable[[_World], None]] = {
    "device_range": _group_device_range,
    "setup": _group_setup,
    "split": _group_split,
    "driver": _group_driver,
    "cpu": _group_cpu,
    "device": _group_device,
}


def _child(group: str) -> None:
    """Run one group in each profile; print [[profile, case, got, want, changed,
    check error], ...] as the last line."""
    out = []
    for profile in ("hmm-v25", "seed", "modern"):
        w = _World(profile)
        GROUPS[group](w)
        out += [[profile, *r] for r in w.results]
    print(json.dumps(out))


# ----------------------------------------------------------------------------- the tests
@pytest.mark.parametrize("group", list(GROUPS))
def test_bad_arguments_return_their_code_and_change_nothing(group: str) -> None:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    code = f"from tests.interfaces.test_compiled_bad_input import _child; _child({group!r})"
    run = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=900
    )
    assert run.returncode == 0, f"exit status {run.returncode}:\n{run.stderr[-3000:]}"
    results = json.loads(run.stdout.strip().splitlines()[-1])
    assert len(results) > 10
    wrong = [r for r in results if r[2] != r[3] or r[4] or r[5]]
    assert not wrong, "\n".join(
        f"{profile} {name}: got {got}, want {want}, changed {changed}, check {error}"
        for profile, name, got, want, changed, error in wrong
    )
