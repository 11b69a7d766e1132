"""The plain metadata sweeps (kernels.parallel, kernels.device) against the kernel's per-slot steps.

An hmm-v25 or modern migration takes only *plain* slots by their net effect
(on threads when it is large) and everything else in slot order afterwards.
That must not change anything: here a process of several PMD extents is
built in a random state (fragmented faults, forks, pins, foreign locks and
isolations, swapped-out pages, pages already on the device, holes, a THP,
pages left in an LRU-add batch), and the device's migrate_vma runs there and
back twice on identical copies of the state: with the per-slot steps alone
(``plain_min_pages`` out of reach, one thread: the oracle), with the plain
sweeps on one thread, and with them forced parallel (``parallel_min_pages=1``).
Every array of the state must come out identical.
"""

from __future__ import annotations

import numba
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import migengine as me
from migengine import kernels
from migengine.kernels import _indices as I
from migengine.kernels.check import check_state
from migengine.kernels.copy import STAT_DESCRIPTORS
from migengine.kernels.state import State
from tests.helpers import assert_same_state, comparable_state, copy_state

PS = 64  # a PMD extent is 512 pages of 64 bytes: several extents stay cheap
EXTENT = 512
SCRATCH = ("sweep_info", "sweep_mig", "sweep_counters", "mig", "copy_scratch", "engine")

pytestmark = pytest.mark.skipif(
    numba.config.NUMBA_NUM_THREADS < 2, reason="needs two numba threads to run anything in parallel"
)
# The profiles the fast paths serve (kernels._indices.FAST_PATH_*): each writes
# the net effect of its own behaviour bits.
FAST = pytest.mark.parametrize("profile", ["hmm-v25", "modern"])
# The property tests over disturbed processes (_world): few, slow examples.
DISTURBED = settings(
    max_examples=25,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


# Not a divisor of a PMD extent: a run crossing a thread's edge is chunked from
# where it started, not from the edge (kernels.copy.stitch_descriptors).
CHUNK = 7


# The three ways to run a migration: the kernel's per-slot steps (the oracle),
# the plain sweeps on this thread, and the plain sweeps on two threads.
MODES = {
    "per-slot": me.CopyEngine(CHUNK, threads=1, plain_min_pages=2**40),
    "plain, one thread": me.CopyEngine(CHUNK, threads=1, parallel_min_pages=1, plain_min_pages=1),
    "plain, two threads": me.CopyEngine(CHUNK, threads=2, parallel_min_pages=1, plain_min_pages=1),
}


def _descriptors(s: State) -> np.ndarray:
    """The last engine batch's descriptors, (src, dst, len) rows."""
    ndesc = int(s.copy_stats[STAT_DESCRIPTORS])
    return s.copy_scratch[[I.COPY_DESC_SRC, I.COPY_DESC_DST, I.COPY_DESC_LEN], :ndesc].T.copy()


def _comparable(s: State) -> dict[str, np.ndarray]:
    """The state without its scratch arrays, wall time zeroed."""
    return comparable_state(s, drop=SCRATCH)


def _perturb(data: st.DataObject, m: me.Machine, p: me.Process, vma: me.Vma) -> None:
    """Make some slots anything but plain."""
    n = vma.npages
    picks = data.draw(st.lists(st.integers(0, n - 1), max_size=24), label="pages to disturb")
    for k in picks:
        addr = vma.start + k * PS
        op = data.draw(st.sampled_from(["pin", "lock", "isolate", "swap", "device", "none"]))
        tr = p.translate(addr)
        if op == "swap" and tr.kind == "present":
            try:
                p.swap_out(addr)
            except (ValueError, me.MigengineError):
                pass  # not swappable (a THP, a locked page...)
        elif op == "device" and tr.kind == "present":
            m.device.migrate_to_device(p, addr, addr + PS)
        elif tr.kind == "present" and tr.pfn > 0 and op != "none":
            try:
                {"pin": m.pin, "lock": m.lock_page, "isolate": m.isolate_lru_page}[op](tr.pfn)
            except ValueError:
                pass  # already held that way


def _world(
    data: st.DataObject, make_machine, profile: str
) -> tuple[me.Machine, me.Process, me.Vma, bool]:
    extents = data.draw(st.integers(2, 4), label="extents")
    npages = extents * EXTENT + data.draw(st.integers(0, EXTENT - 1), label="extra pages")
    m = make_machine(npages + 700, npages + 64, page_size=PS, swap_pages=64, profile=profile)
    p = m.new_process()
    if data.draw(st.booleans(), label="a THP first"):
        thp = p.mmap(EXTENT, thp=True)
        p.populate(thp.start, thp.end)
    vma = p.mmap(npages)
    runs = data.draw(st.integers(1, 40), label="fault runs")
    cuts = sorted(set(data.draw(st.lists(st.integers(1, npages - 1), max_size=runs))))
    bounds = [0, *cuts, npages]
    pieces = list(zip(bounds[:-1], bounds[1:], strict=True))
    order = data.draw(st.permutations(pieces), label="fault order")
    for lo, hi in order:
        if data.draw(st.integers(0, 9), label="hole?") > 0:  # leave a few holes
            p.populate(vma.start + lo * PS, vma.start + hi * PS)
    m.lru_add_drain_all()
    if data.draw(st.booleans(), label="fork"):
        p.fork()
    _perturb(data, m, p, vma)
    if data.draw(st.booleans(), label="a batch left undrained"):
        p.write(vma.start + data.draw(st.integers(0, npages - 1)) * PS, b"x")
    m.check()
    return m, p, vma, data.draw(st.booleans(), label="whole VMA")


@DISTURBED
@FAST
@given(data=st.data())
def test_parallel_sweeps_equal_the_serial_ones(make_machine, profile, data):
    """migrate_vma_to_device / _to_system with the plain sweeps, on one thread
    and on two, == with the per-slot steps: page tables, struct pages, free
    stacks (order included), rmap, mirror, LRU batches, counters, copy stats
    and data."""
    m, p, vma, whole = _world(data, make_machine, profile)
    lo, hi = 0, vma.npages
    if not whole:
        lo = data.draw(st.integers(0, min(EXTENT - 1, vma.npages - 2 * EXTENT)), label="first page")
        hi = data.draw(st.integers(lo + 2 * EXTENT, vma.npages), label="end page")
    _assert_parallel_equals_serial(m, vma, vma.start + lo * PS, vma.start + hi * PS)


def _assert_parallel_equals_serial(m: me.Machine, vma: me.Vma, start: int, end: int) -> bool:
    """To the device, back, and to the device again, on copies of ``m.state``
    in each of MODES: all end in the same state. Returns whether the setup of
    the first migration found every slot plain and the device took the batch
    as a whole (mig[MIG_RESERVED]), which one thread and two agree on."""
    outcome = {}
    for mode, engine in MODES.items():
        s = copy_state(m.state)
        s.engine[:] = engine.to_array()
        n = (end - start) // PS
        src, dst = np.zeros(n, np.uint64), np.zeros(n, np.uint64)
        to_dev = kernels.migrate_vma_to_device(s, vma.index, start, end, src, dst, 0)
        reserved = s.mig[I.MIG_RESERVED]
        descriptors = _descriptors(s)
        back = kernels.migrate_vma_to_system(s, vma.index, start, end, src, dst, 0)
        again = kernels.migrate_vma_to_device(s, vma.index, start, end, src, dst, 0)
        assert check_state(s)[0] == 0, f"invariant {check_state(s)} broken ({mode})"
        outcome[mode] = (to_dev, back, again, src, dst, _comparable(s), reserved, descriptors)
    oracle = outcome.pop("per-slot")
    assert oracle[6] == 0  # the per-slot steps never take the batch as a whole
    for mode, got in outcome.items():
        assert oracle[:3] == got[:3], mode
        np.testing.assert_array_equal(oracle[3], got[3], err_msg=mode)
        np.testing.assert_array_equal(oracle[4], got[4], err_msg=mode)
        assert_same_state(oracle[5], got[5])
        np.testing.assert_array_equal(oracle[7], got[7], err_msg=f"first descriptors ({mode})")
    one, two = outcome["plain, one thread"][6], outcome["plain, two threads"][6]
    assert one == two
    return bool(two)


@DISTURBED
@FAST
@given(data=st.data())
def test_small_migrations_equal_the_per_slot_steps(make_machine, profile, data):
    """A migration of a few pages (a fault-driven driver's unit) takes the plain
    sweeps on this thread, and the reserved path when all its slots are plain:
    the same outcome as the per-slot steps, anywhere in a disturbed process."""
    m, p, vma, _ = _world(data, make_machine, profile)
    n = data.draw(st.integers(1, 64), label="pages")
    lo = data.draw(st.integers(0, vma.npages - n), label="first page")
    _assert_parallel_equals_serial(m, vma, vma.start + lo * PS, vma.start + (lo + n) * PS)


def _way_back_world(data: st.DataObject, make_machine, profile: str):
    """A process mostly on device 0, some of it on device 1 (another owner),
    with device pages then disturbed: shared by a fork, pinned, locked by
    another thread, faulted back by a CPU write; some pages never faulted."""
    npages = data.draw(st.integers(1, 2 * EXTENT + 40), label="pages")
    devices = [me.DeviceSpec(npages + 8), me.DeviceSpec(64)]
    m = make_machine(2 * npages + 700, page_size=PS, profile=profile, devices=devices)
    p = m.new_process()
    vma = p.mmap(npages)
    holes = set(data.draw(st.lists(st.integers(0, npages - 1), max_size=6), label="holes"))
    for k in range(npages):
        if k not in holes:
            p.populate(vma.start + k * PS, vma.start + (k + 1) * PS, write=k % 3 == 0)
    m.lru_add_drain_all()
    other = data.draw(st.lists(st.integers(0, npages - 1), max_size=8), label="on device 1")
    for k in other:
        if p.translate(vma.start + k * PS).kind == "present":
            m.devices[1].migrate_to_device(p, vma.start + k * PS, vma.start + (k + 1) * PS)
    m.device.migrate_to_device(p, vma.start, vma.end)
    if data.draw(st.booleans(), label="fork"):
        p.fork()
    picks = data.draw(st.lists(st.integers(0, npages - 1), max_size=12), label="pages to disturb")
    for k in picks:
        addr = vma.start + k * PS
        op = data.draw(st.sampled_from(["pin", "lock", "write"]), label="how")
        tr = p.translate(addr)
        if tr.kind != "device":
            continue
        try:
            if op == "write":
                p.write(addr, b"w")
            else:
                {"pin": m.pin, "lock": m.lock_page}[op](tr.pfn)
        except (ValueError, me.MigengineError):
            pass  # already locked, or a pinned or locked page cannot fault back
    m.check()
    return m, vma


@DISTURBED
@FAST
@given(data=st.data())
def test_the_way_back_equals_the_per_slot_steps(make_machine, profile, data):
    """migrate_vma_to_system: the setup takes plain device-private entries by
    their net effect (kernels.parallel.setup, _setup_plain_device_slot) and
    stops at the first other slot: a page of another device (modern: another
    pgmap owner, not selected; 4.14: collected all the same), a device page
    mapped twice after a fork, pinned or locked, a page faulted back to RAM,
    a hole. One thread and two == the per-slot steps, state and returns."""
    m, vma = _way_back_world(data, make_machine, profile)
    lo = data.draw(st.integers(0, vma.npages - 1), label="first page")
    hi = data.draw(st.integers(lo + 1, vma.npages), label="end page")
    outcome = {}
    for mode, engine in MODES.items():
        s = copy_state(m.state)
        s.engine[:] = engine.to_array()
        src, dst = np.zeros(hi - lo, np.uint64), np.zeros(hi - lo, np.uint64)
        start, end = vma.start + lo * PS, vma.start + hi * PS
        back = kernels.migrate_vma_to_system(s, vma.index, start, end, src, dst, 0)
        assert check_state(s)[0] == 0, f"invariant {check_state(s)} broken ({mode})"
        outcome[mode] = (back, src, dst, _comparable(s))
    oracle = outcome.pop("per-slot")
    for mode, got in outcome.items():
        assert oracle[0] == got[0], mode
        np.testing.assert_array_equal(oracle[1], got[1], err_msg=mode)
        np.testing.assert_array_equal(oracle[2], got[2], err_msg=mode)
        assert_same_state(oracle[3], got[3])


@FAST
def test_the_way_back_takes_the_plain_sweep(make_machine, profile):
    """The comparison above is not vacuous: a process wholly on the device
    comes back with every slot taken by the plain sweep (SW_DEVICE), on one
    thread and on two, and the batch is not taken for a to-device one
    (MIG_ALL_PLAIN stays 0)."""
    for engine in list(MODES.values())[1:]:
        m = make_machine(2 * EXTENT + 64, 2 * EXTENT, page_size=PS, profile=profile)
        p = m.new_process()
        vma = p.mmap(2 * EXTENT)
        p.populate(vma.start, vma.end)
        m.lru_add_drain_all()
        m.device.engine = engine
        m.device.migrate_to_device(p, vma.start, vma.end)
        assert m.device.migrate_to_system(p, vma.start, vma.end) == vma.npages
        info = m.state.sweep_info
        used = 2 if engine.threads == 2 else 1
        assert info[:used, I.SW_DEVICE].sum() == vma.npages
        assert (info[:used, I.SW_STOP] == info[:used, I.SW_END]).all()
        assert m.state.mig[I.MIG_ALL_PLAIN] == 0
        assert all(p.translate(vma.start + k * PS).kind == "present" for k in range(vma.npages))


@FAST
def test_an_all_plain_migration_equals_the_serial_one(make_machine, profile):
    """The reserved path (kernels.device.reserve, device.finish.finish_reserved):
    the device's threads name each slot's device page after an all-plain setup,
    the finish threads allocate it with the rest of the slot's net effect. A
    fully faulted process with some pages written (dirty), on one thread and on
    two == the generic per-slot steps, data included."""
    m = make_machine(3 * EXTENT + 64, 3 * EXTENT, page_size=PS, profile=profile)
    p = m.new_process()
    vma = p.mmap(3 * EXTENT)
    p.populate(vma.start, vma.end)
    for k in range(0, vma.npages, 7):
        p.write(vma.start + k * PS, bytes([k % 251]) * PS)
    m.lru_add_drain_all()
    m.check()
    assert _assert_parallel_equals_serial(m, vma, vma.start, vma.end)  # the reserved path ran


@pytest.mark.parametrize(
    ("case", "reserved"),
    [
        ("range starts and ends inside PMD extents", True),
        ("device pool one page short", False),
        ("allocation failure injected", False),
        ("a pinned page in the second thread's slots", False),
    ],
)
@FAST
def test_the_reserved_path_runs_only_when_it_holds(make_machine, profile, case, reserved):
    """kernels.device.reserve.try_reserved: the device names its pages only after
    an all-plain setup, with a frame for every slot and no failure injected; when
    a setup thread stops early (a pinned page) the allocation runs slot by slot.
    Either way the plain sweeps' state == the per-slot steps' one."""
    npages = 3 * EXTENT
    device = npages - 1 if case.startswith("device pool") else npages
    m = make_machine(npages + 64, device, page_size=PS, profile=profile)
    p = m.new_process()
    vma = p.mmap(npages)
    p.populate(vma.start, vma.end)
    m.lru_add_drain_all()
    start, end = vma.start, vma.end
    if case.startswith("range"):
        start, end = vma.start + 37 * PS, vma.end - 5 * PS
    elif case.startswith("allocation"):
        m.device.fail_alloc(1)
    elif case.startswith("a pinned"):
        m.pin(p.translate(vma.start + (2 * EXTENT + 3) * PS).pfn)
    m.check()
    assert _assert_parallel_equals_serial(m, vma, start, end) == reserved


@FAST
def test_a_plain_migration_really_runs_in_parallel(make_machine, profile):
    """The comparison above is not vacuous: on a plain process every thread of
    the setup and finish sweeps gets to the end of its slots, and the setup
    device takes the batch as a whole (kernels.device.reserve, mig[MIG_RESERVED])."""
    m = make_machine(3 * EXTENT + 64, 3 * EXTENT, page_size=PS, profile=profile)
    p = m.new_process()
    vma = p.mmap(3 * EXTENT)
    p.populate(vma.start, vma.end)
    m.lru_add_drain_all()
    m.device.engine = me.CopyEngine(threads=2, parallel_min_pages=1)
    assert m.device.migrate_to_device(p, vma.start, vma.end) == vma.npages
    base = int(m.state.vma["pte_base"][vma.index])
    assert (m.state.mirror[0, base : base + vma.npages] >= 0).all()  # what the count claims
    info = m.state.sweep_info  # as the finish sweep left it
    assert info[0, I.SW_END] > info[0, I.SW_FIRST] and info[1, I.SW_END] > info[1, I.SW_FIRST]
    assert (info[:2, I.SW_STOP] == info[:2, I.SW_END]).all()  # each thread did all its slots
    assert m.state.mig[I.MIG_RESERVED] == 1
