"""The compiled level of the public contract: every ``migengine.kernels``
function called from users' own ``@njit`` code, with no Python in the loop.

The user driver below is the one docs/embedding.md shows; a test keeps the two
identical.
"""

from __future__ import annotations

import inspect
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as hs
from numba import njit, types
from numba.core.dispatcher import Dispatcher

import migengine as me
from migengine import kernels
from migengine.kernels import TR_DEVICE, TR_NONE, TR_PRESENT, TR_ZERO
from migengine.kernels import layout as L

PS = 4096
EINVAL = -22
DOC = Path(__file__).resolve().parents[2] / "docs" / "embedding.md"


# Cached functions here embed the kernels' code but are keyed on this file only
# (numba #1833): drop them when the kernels changed.
kernels.drop_stale_user_cache(__file__)


# ----------------------------------------------------------------------------- the user driver
# docs/embedding.md: begin user driver
@njit(cache=True)
def copy_to_device(state, vma_index, start, end, src, dst, budget):
    """Migrate at most ``budget`` pages of [start, end) to device memory.

    A driver's own policy around the split form: it allocates one device page
    per collected page that has data and is not on the device already, copies
    it with copy_page, and stops at ``budget`` or when device memory runs out.
    Holes and zero pages stay where they are. Returns the pages moved or -22.
    """
    cpages = kernels.migrate_vma_setup(state, vma_index, start, end, src, dst)
    if cpages <= 0:
        return cpages  # -22, or nothing collected
    lay = state.layout
    nr_ram = state.sys[L.SYS_NR_RAM]
    npages = (end - start) // state.sys[L.SYS_PAGE_SIZE]
    dst[:npages] = 0  # the seed's collect leaves dst of collected pages as passed in
    given = 0
    for i in range(npages):
        spfn = kernels.mpfn_to_pfn(state, src[i])
        if (src[i] & lay[L.L_MIGRATE]) == 0 or spfn < 0 or spfn >= nr_ram:
            continue  # not collected, a hole, or already device memory
        if given == budget:
            break
        dpfn = kernels.alloc_page(state, True)  # locked, as migrate_vma wants it
        if dpfn < 0:
            break  # device memory is full: the rest stays in system memory
        kernels.copy_page(state, dpfn, spfn)
        dst[i] = kernels.migrate_pfn(state, dpfn) | lay[L.L_LOCKED] | (src[i] & lay[L.L_WRITE])
        given += 1
    kernels.migrate_vma_pages(state, vma_index, start, end, src, dst)
    moved = 0
    for i in range(npages):
        # Here a real driver would map dst[i] in its own page table.
        if (src[i] & lay[L.L_MIGRATE]) != 0 and kernels.mpfn_to_pfn(state, dst[i]) >= 0:
            moved += 1
    kernels.migrate_vma_finalize(state, vma_index, start, end, src, dst)
    return moved


@njit(cache=True)
def copy_range_to_device(state, vma_index, start, end, block_pages):
    """The user's own loop: migrate [start, end) block by block; returns pages moved."""
    ps = state.sys[L.SYS_PAGE_SIZE]
    src = np.zeros(block_pages, np.uint64)
    dst = np.zeros(block_pages, np.uint64)
    moved = 0
    for addr in range(start, end, block_pages * ps):
        stop = min(addr + block_pages * ps, end)
        moved += copy_to_device(state, vma_index, addr, stop, src, dst, block_pages)
    return moved


# docs/embedding.md: end user driver


def _machine_with_data(make_machine, profile, npages, written, ram=64, device=16):
    """A process with ``npages`` mapped and the first ``written`` pages written."""
    m = make_machine(ram, device, profile=profile)
    p = m.new_process()
    vma = p.mmap(npages)
    data = bytes((i * 37 + i // PS) & 0xFF for i in range(written * PS))
    if written:
        p.write(vma.start, data)
    return m, p, vma, data


def _on_device(m, p, addr):
    pte = p.translate(addr)
    kind = "device" if m.profile == "hmm-v25" else "present"
    return pte.kind == kind and pte.pfn >= m.ram_pages


def test_user_split_driver_migrates_with_its_own_policy(make_machine, profile):
    """migrate.h split form (setup / pages / finalize) driven from user @njit code:
    the driver's budget decides which collected pages get a destination."""
    m, p, vma, data = _machine_with_data(make_machine, profile, 8, 6)
    before = m.counters["pgmigrate_success"]
    src = np.zeros(8, np.uint64)
    dst = np.zeros(8, np.uint64)
    moved = copy_to_device(m.state, vma.index, vma.start, vma.end, src, dst, 4)
    assert moved == 4
    assert m.counters["pgmigrate_success"] - before == 4
    assert [_on_device(m, p, vma.start + i * PS) for i in range(8)] == [True] * 4 + [False] * 4
    assert p.translate(vma.start + 4 * PS).kind == "present"  # over budget: stays
    assert p.translate(vma.start + 7 * PS).kind == "none"  # a hole is not filled
    assert m.free_pages(device=True) == 16 - 4
    assert p.read(vma.start, len(data)) == data  # hmm-v25: faults the pages back


def test_user_loop_migrates_until_device_memory_runs_out(make_machine, profile):
    """The driver's own loop over blocks; alloc_page returning -1 ends a block early
    and the pages without a destination stay mapped (migrate_vma_pages skips them)."""
    m, p, vma, data = _machine_with_data(make_machine, profile, 24, 24, ram=64, device=10)
    moved = copy_range_to_device(m.state, vma.index, vma.start, vma.end, 4)
    assert moved == 10
    assert m.free_pages(device=True) == 0
    assert sum(_on_device(m, p, vma.start + i * PS) for i in range(24)) == 10
    assert p.read(vma.start, len(data)) == data


def test_user_driver_skips_pages_already_on_the_device(make_machine, profile):
    """A second pass over migrated pages: hmm-v25 collects device-private pages
    (MIGRATE_PFN_DEVICE) and seed collects the CPU-addressable device pages;
    the driver gives them no destination, so nothing moves twice."""
    m, p, vma, data = _machine_with_data(make_machine, profile, 4, 4)
    src = np.zeros(4, np.uint64)
    dst = np.zeros(4, np.uint64)
    assert copy_to_device(m.state, vma.index, vma.start, vma.end, src, dst, 4) == 4
    pfns = [p.translate(vma.start + i * PS).pfn for i in range(4)]
    assert copy_to_device(m.state, vma.index, vma.start, vma.end, src, dst, 4) == 0
    assert [p.translate(vma.start + i * PS).pfn for i in range(4)] == pfns
    assert p.read(vma.start, len(data)) == data


# ----------------------------------------------------------------------------- argument checks
@njit  # not cached: it passes callbacks to kernels.migrate_vma (compiled once per process)
def _every_entry_point(state, v, start, end, src, dst, log):
    """Each migrate entry point with the same arguments, from user code."""
    return (
        copy_to_device(state, v, start, end, src, dst, 8),
        kernels.migrate_vma_setup(state, v, start, end, src, dst),
        kernels.migrate_vma_setup_flags(state, v, start, end, src, dst, 1, 0, -1),
        kernels.migrate_vma(state, _count_alloc, _count_finalize, v, start, end, src, dst, log),
        kernels.migrate_vma_to_device(state, v, start, end, src, dst, 0),
        kernels.migrate_vma_to_system(state, v, start, end, src, dst, 0),
    )


@njit(cache=True)
def _count_alloc(state, vma_index, src, dst, start, end, log):
    log[0] += 1


@njit(cache=True)
def _count_finalize(state, vma_index, src, dst, start, end, log):
    log[1] += 1


@njit  # not cached: typing it must reach the pipeline's own dispatcher
def _constant_flags(state, v, start, end, src, dst):
    there = kernels.migrate_vma_to_device(state, v, start, end, src, dst, 0)
    back = kernels.migrate_vma_to_system(state, v, start, end, src, dst, 1)
    return there, back


def test_constant_arguments_share_the_compiled_pipeline(make_machine):
    """Literal flags (``0``, ``1``) reach the one int64 body of the device pipeline:
    the entry points pass their scalars on as np.int64, where a literal would have
    compiled the whole pipeline again for each value."""
    m = make_machine(16, 8)
    p = m.new_process()
    vma = p.mmap(4)
    p.populate(vma.start, vma.end)
    src = np.zeros(4, np.uint64)
    dst = np.zeros(4, np.uint64)
    assert _constant_flags(m.state, vma.index, vma.start, vma.end, src, dst) == (0, 4)
    body = kernels.device.run_driver  # the entry points and their wrappers are inlined into it
    assert body.signatures, "typing _constant_flags must have resolved the pipeline's body"
    for sig in body.signatures:
        assert sig[2:5] == (types.int64,) * 3 and sig[-1] == types.int64, sig


def _bad_calls(m, p):
    """(name, vma index, start, end, slots) of calls migrate_vma() rejects with EINVAL."""
    vma = p.mmap(4)
    io = p.mmap(4, flags=me.VM_IO)
    huge = p.mmap(4, flags=me.VM_HUGETLB)
    s, e = vma.start, vma.end
    return [
        ("no such vma", m.state.sys[L.SYS_NR_VMAS], s, e, 4),
        ("negative vma", -1, s, e, 4),
        ("VM_IO", io.index, io.start, io.end, 4),
        ("hugetlb", huge.index, huge.start, huge.end, 4),
        ("start below the vma", vma.index, s - PS, e, 8),
        ("end past the vma", vma.index, s, e + PS, 8),
        ("start == end", vma.index, s, s, 4),
        ("start > end", vma.index, e - PS, s, 4),
        ("equal after rounding down", vma.index, s + 100, s + 200, 4),
        ("src shorter than the range", vma.index, s, e, 3),
    ]


def test_every_entry_point_returns_einval_and_changes_nothing(make_machine, profile):
    """migrate_vma() sanity checks (vma NULL, VM_SPECIAL / hugetlb, range outside
    the VMA or empty after rounding) plus the compiled level's short array:
    -EINVAL before anything is touched, and no callback runs."""
    m = make_machine(64, 16, profile=profile)
    p = m.new_process()
    calls = _bad_calls(m, p)
    p.populate(p.vmas()[0].start, p.vmas()[0].end)
    counters = m.counters
    ptes = m.state.pte.copy()
    for name, v, start, end, slots in calls:
        src = np.zeros(slots, np.uint64)
        dst = np.zeros(max(slots, 8), np.uint64)
        log = np.zeros(2, np.int64)
        ret = _every_entry_point(m.state, v, start, end, src, dst, log)
        assert ret == (EINVAL,) * 6, name
        assert log.tolist() == [0, 0], name
    assert m.counters == counters
    assert np.array_equal(m.state.pte, ptes)


# ----------------------------------------------------------------------------- callbacks
@njit(cache=True)
def _system_alloc_and_copy(state, vma_index, src, dst, start, end, private):
    """A user callback: move every collected page with data to a fresh RAM page
    (a NUMA-style CPU-to-CPU migration). ``private`` is the user's log array."""
    private[0] += 1
    lay = state.layout
    for i in range((end - start) // state.sys[L.SYS_PAGE_SIZE]):
        spfn = kernels.mpfn_to_pfn(state, src[i])
        if (src[i] & lay[L.L_MIGRATE]) == 0 or spfn < 0:
            continue
        dpfn = kernels.alloc_page(state, False)
        kernels.copy_page(state, dpfn, spfn)
        dst[i] = kernels.migrate_pfn(state, dpfn) | lay[L.L_LOCKED] | (src[i] & lay[L.L_WRITE])
        private[2] += 1


@njit(cache=True)
def _record_finalize(state, vma_index, src, dst, start, end, private):
    private[1] += 1
    lay = state.layout
    for i in range((end - start) // state.sys[L.SYS_PAGE_SIZE]):
        if (src[i] & lay[L.L_MIGRATE]) != 0 and kernels.mpfn_to_pfn(state, dst[i]) >= 0:
            private[3] += 1


@njit
def _migrate_with_user_callbacks(state, v, start, end, src, dst, log):
    return kernels.migrate_vma(
        state, _system_alloc_and_copy, _record_finalize, v, start, end, src, dst, log
    )


def test_kernels_migrate_vma_runs_user_callbacks(make_machine, profile):
    """migrate_vma() with a driver's ops: alloc_and_copy then finalize_and_map, each
    once, with ``private`` passed through; the pages move to the new frames."""
    m, p, vma, data = _machine_with_data(make_machine, profile, 4, 4)
    old = [p.translate(vma.start + i * PS).pfn for i in range(4)]
    src = np.zeros(4, np.uint64)
    dst = np.zeros(4, np.uint64)
    log = np.zeros(4, np.int64)
    assert _migrate_with_user_callbacks(m.state, vma.index, vma.start, vma.end, src, dst, log) == 0
    assert log.tolist() == [1, 1, 4, 4]
    new = [p.translate(vma.start + i * PS) for i in range(4)]
    assert all(t.kind == "present" and t.pfn not in old for t in new)
    # The migrated sources wait in the driver CPU's LRU-add batch (4.14
    # putback_lru_page()), which frees them when it drains.
    m.lru_add_drain_all()
    assert all(m.page(pfn).free for pfn in old)
    assert p.read(vma.start, len(data)) == data


def test_kernels_migrate_vma_skips_callbacks_when_nothing_is_collected(make_machine, profile):
    """migrate_vma(): 'if (!migrate.cpages) return 0' - a pinned page fails the
    prepare/unmap check, cpages drops to 0 and neither callback runs."""
    m, p, vma, data = _machine_with_data(make_machine, profile, 1, 1)
    pfn = p.translate(vma.start).pfn
    m.pin(pfn)
    src = np.zeros(1, np.uint64)
    dst = np.zeros(1, np.uint64)
    log = np.zeros(4, np.int64)
    assert _migrate_with_user_callbacks(m.state, vma.index, vma.start, vma.end, src, dst, log) == 0
    assert log.tolist() == [0, 0, 0, 0]
    assert p.translate(vma.start).pfn == pfn
    m.unpin(pfn)
    assert p.read(vma.start, PS) == data


def test_migrate_vma_from_python_takes_njit_callbacks(make_machine, profile):
    """The public contract: me.migrate_vma accepts MigrateOps built from @njit callbacks and runs
    kernels.migrate_vma on m.state."""
    m, p, vma, data = _machine_with_data(make_machine, profile, 2, 2)
    log = np.zeros(4, np.int64)
    ops = me.MigrateOps(_system_alloc_and_copy, _record_finalize)
    src = np.zeros(2, np.uint64)
    dst = np.zeros(2, np.uint64)
    assert me.migrate_vma(ops, vma, vma.start, vma.end, src, dst, log) == 0
    assert log.tolist() == [1, 1, 2, 2]
    assert p.read(vma.start, len(data)) == data


@njit
def _device_round_trip(state, v, start, end, src, dst):
    """The device's own callbacks through kernels.migrate_vma, both directions."""
    to_device = kernels.migrate_vma(
        state,
        kernels.device_alloc_and_copy,
        kernels.device_finalize_and_map,
        v,
        start,
        end,
        src,
        dst,
        0,
    )
    mapped = 0
    slot0 = state.vma["pte_base"][v] + (start - state.vma["start"][v]) // PS
    for i in range((end - start) // PS):
        mapped += 1 if state.mirror[0, slot0 + i] >= 0 else 0
    back = kernels.migrate_vma(
        state,
        kernels.system_alloc_and_copy,
        kernels.system_finalize_and_map,
        v,
        start,
        end,
        src,
        dst,
        0,
    )
    return to_device, mapped, back


def test_device_callbacks_through_kernels_migrate_vma(make_machine, profile):
    """lib/test_hmm.c: dmirror_migrate_alloc_and_copy / finalize_and_map passed to
    migrate_vma(): holes get zero-filled device pages in hmm-v25 (17/19), the
    mirror maps every migrated page; the system routine brings them back."""
    m, p, vma, data = _machine_with_data(make_machine, profile, 6, 4)
    src = np.zeros(6, np.uint64)
    dst = np.zeros(6, np.uint64)
    to_device, mapped, back = _device_round_trip(m.state, vma.index, vma.start, vma.end, src, dst)
    assert (to_device, back) == (0, 0)
    assert mapped == (6 if profile == "hmm-v25" else 4)  # seed: holes give src = 0
    assert all(m.device.mirrored(p, vma.start + i * PS) == -1 for i in range(6))
    assert all(p.translate(vma.start + i * PS).pfn < m.ram_pages for i in range(4))
    assert p.read(vma.start, 6 * PS) == data + bytes(2 * PS)
    m.lru_add_drain_all()  # seed puts its CPU-addressable device pages back like RAM
    assert m.free_pages(device=True) == 16


# ----------------------------------------------------------------------------- CPU side
@njit(cache=True)
def _cpu_session(state, pid, addr, payload, out):
    """Write, translate, read back, from user code."""
    wrote = kernels.cpu_write(state, pid, addr, payload)
    kind, pfn, writable, huge = kernels.translate(state, pid, addr)
    read = kernels.cpu_read(state, pid, addr, out)
    return wrote, kind, pfn, writable, huge, read


def test_cpu_write_read_translate_from_njit(make_machine, profile):
    """handle_mm_fault() write fault on pte_none -> a new anon page, across a page
    boundary; translate() walks the table; cpu_read() sees the bytes."""
    m = make_machine(64, 16, profile=profile)
    p = m.new_process()
    vma = p.mmap(4)
    payload = np.frombuffer(bytes(range(256)) * 20, np.uint8).copy()  # 5120 bytes
    out = np.zeros(payload.size, np.uint8)
    addr = vma.start + PS - 1000  # straddles pages 0 and 1
    wrote, kind, pfn, writable, huge, read = _cpu_session(m.state, p.pid, addr, payload, out)
    assert (wrote, read) == (L.FAULT_OK, L.FAULT_OK)
    assert (kind, writable, huge) == (TR_PRESENT, True, False)
    assert pfn == p.translate(addr).pfn
    assert out.tobytes() == payload.tobytes()
    assert p.read(addr, payload.size) == payload.tobytes()


@njit(cache=True)
def _read_status(state, pid, addr, n):
    buf = np.zeros(n, np.uint8)
    status = kernels.cpu_read(state, pid, addr, buf)
    kind, pfn, _, _ = kernels.translate(state, pid, addr)
    return status, kind, pfn, buf


def test_cpu_read_of_untouched_page_maps_the_zero_page(make_machine, profile):
    """do_anonymous_page() read fault: the shared zero page, mapped read-only."""
    m = make_machine(64, 16, profile=profile)
    p = m.new_process()
    vma = p.mmap(2)
    status, kind, pfn, buf = _read_status(m.state, p.pid, vma.start + 8, 64)
    assert (status, kind, pfn) == (L.FAULT_OK, TR_ZERO, m.zero_pfn)
    assert not buf.any()


def test_cpu_faults_outside_vmas_and_against_prot_are_segv(make_machine, profile):
    """No VMA, or a store to a read-only VMA: SIGSEGV (FAULT_SEGV), nothing mapped."""
    m = make_machine(64, 16, profile=profile)
    p = m.new_process()
    ro = p.mmap(1, prot="r")
    payload = np.ones(8, np.uint8)
    out = np.zeros(8, np.uint8)
    wrote, kind, _, _, _, read = _cpu_session(m.state, p.pid, ro.end + PS, payload, out)
    assert (wrote, kind, read) == (L.FAULT_SEGV, TR_NONE, L.FAULT_SEGV)
    wrote, kind, _, _, _, read = _cpu_session(m.state, p.pid, ro.start, payload, out)
    assert wrote == L.FAULT_SEGV
    assert read == L.FAULT_OK and not out.any()  # reading it is allowed: the zero page


@njit(cache=True)
def _touch_device_page(state, pid, v, addr, buf):
    """Migrate one page to the device, then read it from the CPU."""
    src = np.zeros(1, np.uint64)
    dst = np.zeros(1, np.uint64)
    kernels.migrate_vma_to_device(state, v, addr, addr + PS, src, dst, 0)
    before, _, _, _ = kernels.translate(state, pid, addr)
    status = kernels.cpu_read(state, pid, addr, buf)
    after, pfn, _, _ = kernels.translate(state, pid, addr)
    return before, status, after, pfn


def test_cpu_read_of_device_page_faults_it_back(make_machine):
    """hmm-v25 do_swap_page() on a device-private entry: the device's fault handler
    (migrate_to_ram) migrates it back and the load sees the data."""
    m, p, vma, data = _machine_with_data(make_machine, "hmm-v25", 1, 1)
    buf = np.zeros(PS, np.uint8)
    faults = m.device.counters["faults"]
    before, status, after, pfn = _touch_device_page(m.state, p.pid, vma.index, vma.start, buf)
    assert (before, status, after) == (TR_DEVICE, L.FAULT_OK, TR_PRESENT)
    assert pfn < m.ram_pages
    assert m.device.counters["faults"] == faults + 1
    assert buf.tobytes() == data


def test_cpu_read_of_device_page_is_sigbus_when_fault_back_fails(make_machine):
    """hmm-v25 migrate_vma_pages on a device source whose driver wrote
    dst = MIGRATE_PFN_ERROR: the entry is restored and the access gets SIGBUS."""
    m, p, vma, data = _machine_with_data(make_machine, "hmm-v25", 1, 1)
    src = np.zeros(1, np.uint64)
    dst = np.zeros(1, np.uint64)
    assert kernels.migrate_vma_to_device(m.state, vma.index, vma.start, vma.end, src, dst, 0) == 0
    m.device.fail_alloc(1)
    buf = np.zeros(PS, np.uint8)
    status = kernels.cpu_read(m.state, p.pid, vma.start, buf)
    assert status == L.FAULT_SIGBUS
    assert p.translate(vma.start).kind == "device"
    assert kernels.cpu_read(m.state, p.pid, vma.start, buf) == L.FAULT_OK
    assert buf.tobytes() == data


# ----------------------------------------------------------------------------- helpers
@njit(cache=True)
def _helpers(state, src_pfn):
    """alloc_page / copy_page / migrate_pfn / mpfn_to_pfn / unlock_page / put_page."""
    lay = state.layout
    a = kernels.alloc_page(state, False)
    kernels.copy_page(state, a, src_pfn)
    mpfn = kernels.migrate_pfn(state, a)
    back = kernels.mpfn_to_pfn(state, mpfn)
    no_valid = kernels.mpfn_to_pfn(state, mpfn & ~lay[L.L_VALID])
    locked = (state.page["flags"][a] & L.PG_LOCKED) != 0
    refs = state.page["refcount"][a]
    return a, mpfn, back, no_valid, locked, refs


@njit(cache=True)
def _release(state, pfn):
    kernels.unlock_page(state, pfn)
    kernels.put_page(state, pfn)


def test_driver_helpers_from_njit(make_machine, profile):
    """The helpers a driver needs: a locked fresh page with one reference,
    copy_highpage(), migrate_pfn() and back, and put_page() freeing it."""
    m, p, vma, data = _machine_with_data(make_machine, profile, 1, 1)
    src_pfn = p.translate(vma.start).pfn
    free = m.free_pages()
    a, mpfn, back, no_valid, locked, refs = _helpers(m.state, src_pfn)
    assert m.free_pages() == free - 1
    assert mpfn == int(m.migrate_pfn(a))
    assert (back, no_valid, locked, refs) == (a, -1, True, 1)
    assert m.frame(a) == data
    _release(m.state, a)
    assert m.page(a).free and m.free_pages() == free


def test_alloc_page_returns_minus_one_when_memory_is_exhausted(make_machine, profile):
    """The allocator fails with -1 (the driver's NULL page) once the pool is empty;
    device pages return to the device's free list on put_page()."""
    m = make_machine(8, 2, profile=profile)
    st = m.state
    got = [kernels.alloc_page(st, True) for _ in range(3)]
    assert got[2] == -1 and all(pfn >= m.ram_pages for pfn in got[:2])
    for pfn in got[:2]:
        _release(st, pfn)
    assert m.free_pages(device=True) == 2


# ----------------------------------------------------------------------------- the device
@njit(cache=True)
def _device_lifecycle(state, pid, v, start, end):
    """find_vma, populate, migrate_to_device, migrate_vma_to_system,
    migrate_to_system and evict, all from one user function."""
    found = kernels.find_vma(state, pid, start + PS)
    populated, _ = kernels.populate(state, v, start, end, True)
    mapped = kernels.migrate_to_device(state, pid, start, end)
    src = np.zeros(1, np.uint64)
    dst = np.zeros(1, np.uint64)
    one = kernels.migrate_vma_to_system(state, v, start, start + PS, src, dst, 0)
    rest = kernels.migrate_to_system(state, pid, start, start + 2 * PS, 0)
    again = kernels.migrate_to_device(state, pid, start, end)
    evicted = kernels.evict(state)
    return found, populated, mapped, one, rest, again, evicted


def test_device_lifecycle_from_njit(make_machine, profile):
    """lib/test_hmm.c flow (migrate to device, back, again, then driver removal),
    all in compiled code; counts as the device reports them."""
    m = make_machine(64, 16, profile=profile)
    p = m.new_process()
    vma = p.mmap(4)
    got = _device_lifecycle(m.state, p.pid, vma.index, vma.start, vma.end)
    found, populated, mapped, one, rest, again, evicted = got
    assert (found, populated, mapped) == (vma.index, L.FAULT_OK, 4)
    assert (one, rest) == (1, 1)  # the first page was already home for migrate_to_system
    # The two pages still on the device leave its mirror when the second migration
    # unmaps them (hmm-v25: collect's mmu notifier; seed: try_to_unmap()'s), so
    # the device reports the two it moved; all four are on the device for evict.
    assert (again, evicted) == (2, 4)
    m.lru_add_drain_all()  # seed puts its CPU-addressable device pages back like RAM
    assert m.free_pages(device=True) == 16
    assert all(p.translate(vma.start + i * PS).pfn < m.ram_pages for i in range(4))


@njit(cache=True)
def _evict_by_pfn(state, first, npages, src, dst):
    """A driver evicting its memory by pfn (dmirror_device_evict_chunk, modern):
    collect the device's frames, give each collected page a system page with
    its data, then pages and finalize. Returns the pages collected."""
    ret = kernels.migrate_device_range(state, src, first, npages)
    if ret < 0:
        return ret
    lay = state.layout
    n = 0
    for i in range(npages):
        dst[i] = 0
        if (src[i] & lay[L.L_MIGRATE]) == 0:
            continue
        rpfn = kernels.alloc_page(state, False)
        kernels.copy_page(state, rpfn, kernels.mpfn_to_pfn(state, src[i]))
        dst[i] = kernels.migrate_pfn(state, rpfn)
        n += 1
    kernels.migrate_device_pages(state, src, dst)
    kernels.migrate_device_finalize(state, src, dst)
    return n


@njit(cache=True)
def _device_range_odds(state, pfns, coherent):
    """migrate_device_pfns() of a pfn list, then finalize without destinations
    (every page is restored), and migrate_device_coherent_folio() of ``coherent``."""
    if kernels.migrate_device_pfns(state, pfns) < 0:
        return np.int64(-1)
    none = np.zeros(pfns.shape[0], np.uint64)
    kernels.migrate_device_pages(state, pfns, none)
    kernels.migrate_device_finalize(state, pfns, none)
    return kernels.migrate_device_coherent_folio(state, coherent)


def test_device_range_from_njit(make_machine):
    """The modern device-range API from users' compiled code: a device's pages
    evicted by pfn from every process (a forked child too), data intact; a pfn
    list restored in place; a long-term pin's migration of a coherent page."""
    specs = [me.DeviceSpec(8), me.DeviceSpec(4, "coherent")]
    m = make_machine(64, devices=specs, profile="modern")
    p = m.new_process()
    vma = p.mmap(4)
    data = bytes(range(256)) * (4 * PS // 256)
    p.write(vma.start, data)
    m.device.migrate_to_device(p, vma.start, vma.start + 3 * PS)
    child = p.fork()
    dev = m.device
    src, dst = np.zeros(8, np.uint64), np.zeros(8, np.uint64)
    assert _evict_by_pfn(m.state, dev.first_pfn, dev.npages, src, dst) == 3
    assert dev.free_pages() == 8
    assert p.read(vma.start, 4 * PS) == data and child.read(vma.start, 4 * PS) == data
    coherent = m.devices[1]
    coherent.migrate_to_device(p, vma.start, vma.start + 2 * PS)
    first = p.translate(vma.start).pfn
    pfns = np.array([first, first + 1], np.uint64)
    assert _device_range_odds(m.state, pfns, first) == 0  # moved to RAM
    assert p.translate(vma.start).pfn < m.ram_pages
    assert p.translate(vma.start + PS).pfn == first + 1  # restored in place
    assert p.read(vma.start, 4 * PS) == data


@njit(cache=True)
def _fault_and_resolve(state, v, addr, write):
    return kernels.handle_mm_fault(state, v, addr, write)


@njit(cache=True)
def _device_fault(state, v, addr):
    return kernels.device_fault(state, v, addr)


def test_handle_mm_fault_and_device_fault_from_njit(make_machine):
    """handle_mm_fault() write fault on pte_none installs a writable page; the
    device's migrate_to_ram handler, called directly, brings a device page home."""
    m = make_machine(64, 16)
    p = m.new_process()
    vma = p.mmap(2)
    assert _fault_and_resolve(m.state, vma.index, vma.start, True) == L.FAULT_OK
    pte = p.translate(vma.start)
    assert (pte.kind, pte.writable) == ("present", True)
    m.device.migrate_to_device(p, vma.start, vma.start + PS)
    assert p.translate(vma.start).kind == "device"
    assert _device_fault(m.state, vma.index, vma.start + 123) == L.FAULT_OK
    assert p.translate(vma.start).kind == "present"
    assert m.device.counters["faults"] == 1


# ----------------------------------------------------------------------------- a property
_OPS = hs.lists(
    hs.tuples(hs.sampled_from(["driver", "write", "home"]), hs.integers(0, 7), hs.integers(1, 8)),
    min_size=1,
    max_size=12,
)


@settings(max_examples=30, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ops=_OPS, profile=hs.sampled_from(["hmm-v25", "seed"]))
def test_user_driver_keeps_every_byte(make_machine, ops, profile):
    """Any interleaving of the user driver, CPU stores and migrate_to_system leaves
    the process reading exactly what it wrote, and the machine consistent."""
    m = make_machine(48, 6, profile=profile)
    p = m.new_process()
    vma = p.mmap(8)
    model = bytearray(8 * PS)
    src = np.zeros(8, np.uint64)
    dst = np.zeros(8, np.uint64)
    for step, (op, first, count) in enumerate(ops):
        start = vma.start + first * PS
        end = min(vma.end, start + count * PS)
        if op == "driver":
            assert copy_to_device(m.state, vma.index, start, end, src, dst, count) >= 0
        elif op == "write":
            chunk = bytes([step + 1]) * (end - start - 7)
            p.write(start + 7, chunk)
            model[start + 7 - vma.start : end - vma.start] = chunk
        else:
            m.device.migrate_to_system(p, start, end)
        m.check()
    assert p.read(vma.start, 8 * PS) == bytes(model)


# ----------------------------------------------------------------------------- the API surface
def test_every_compiled_api_name_is_exercised_from_njit():
    """The contract's compiled level is callable from user code: each public kernel is
    called (or passed as a callback) inside one of this file's @njit functions."""
    used: set[str] = set()
    for obj in list(globals().values()):
        if isinstance(obj, Dispatcher):
            used |= set(re.findall(r"kernels\.(\w+)", inspect.getsource(obj.py_func)))
    public = {name for name in kernels.__all__ if isinstance(getattr(kernels, name), Dispatcher)}
    assert len(public) >= 20
    assert public - used == set()


def test_docs_show_the_tested_driver():
    """docs/embedding.md prints exactly the driver these tests run."""
    source = Path(__file__).read_text()
    begin = source.index("# docs/embedding.md: begin user driver\n")
    end = source.index("# docs/embedding.md: end user driver")
    driver = source[begin:end].split("\n", 1)[1].strip()
    assert driver in DOC.read_text()


def test_a_new_process_runs_cached_and_fresh_user_code(make_machine):
    """A second process: a new @njit function passing the device's callbacks to
    kernels.migrate_vma compiles and runs against the cached kernels (it must
    not need anything the first process set up), and the split-form driver,
    which takes no callbacks, loads from the cache without compiling."""
    m, p, vma, _ = _machine_with_data(make_machine, "hmm-v25", 4, 4)
    src = np.zeros(4, np.uint64)
    dst = np.zeros(4, np.uint64)
    copy_to_device(m.state, vma.index, vma.start, vma.end, src, dst, 4)  # writes the cache
    child = f"""
import json, sys
sys.path.insert(0, {str(Path(__file__).resolve().parents[2])!r})
import numpy as np, migengine as me
from numba import njit
from migengine import kernels
from tests.interfaces.test_embedding import copy_to_device

@njit
def fresh(state, v, start, end, src, dst):
    return kernels.migrate_vma(state, kernels.device_alloc_and_copy,
                               kernels.device_finalize_and_map, v, start, end, src, dst, 0)

m = me.Machine(64, 16); p = m.new_process(); v = p.mmap(8); p.populate(v.start, v.end)
src = np.zeros(4, np.uint64); dst = np.zeros(4, np.uint64)
ret = fresh(m.state, v.index, v.start, v.start + 4 * 4096, src, dst)
moved = copy_to_device(m.state, v.index, v.start + 4 * 4096, v.end, src, dst, 4)
kinds = [p.translate(v.start + i * 4096).kind for i in range(8)]
st = copy_to_device.stats
print(json.dumps([ret, moved, kinds, sum(st.cache_hits.values()), sum(st.cache_misses.values())]))
"""
    out = subprocess.run(
        [sys.executable, "-c", child], capture_output=True, text=True, env=os.environ, timeout=900
    )
    assert out.returncode == 0, out.stderr[-2000:]
    ret, moved, kinds, hits, misses = json.loads(out.stdout.strip().splitlines()[-1])
    assert (ret, moved, kinds) == (0, 4, ["device"] * 8)
    assert (hits, misses) == (1, 0)


@njit
def _folio_round(state, device):
    """kernels.alloc_folio, then its unlock and put (the folio goes back whole)."""
    head = kernels.alloc_folio(state, device)
    if head < 0:
        return head, np.int64(-1)
    kernels.unlock_page(state, head)
    return head, kernels.put_page(state, head)


@pytest.mark.parametrize("profile", ["modern", "hmm-v25"])
def test_alloc_folio_hands_out_an_aligned_locked_folio_in_modern(make_machine, profile):
    """kernels.alloc_folio: a 512-aligned device folio in modern (a dst with
    MIGRATE_PFN_COMPOUND), -1 in a profile without device THP."""
    m = make_machine(1024, 1024, profile=profile)
    head, put = _folio_round(m.state, True)
    if profile != "modern":
        assert head == -1
        return
    assert head >= m.ram_pages and head % 512 == 0 and put == 0
    assert m.free_pages(device=True) == 1024
    with pytest.raises(ValueError, match="modern"):
        make_machine(64, 8).alloc_folio()
