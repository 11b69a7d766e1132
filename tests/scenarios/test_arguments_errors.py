"""Scenarios of migrate_vma()'s argument checks and error paths, through the public API.

Each test's docstring names the kernel branch (HMM v25 14/19 as posted = seed,
the 4.14 merge of 14-17/19 = hmm-v25) or the hmm selftest it mirrors. Drivers
are Python callbacks (``me.migrate_vma`` with ``MigrateOps``) or ``m.device.ops``.
Every machine comes from ``make_machine``, so each test ends with ``m.check()``.
"""

from __future__ import annotations

import errno

import numpy as np
import pytest

import migengine as me
from migengine.migrate import InvalidDstWarning
from tests.helpers import (
    PS,
    Driver,
    addr,
    assert_data,
    filled,
    pattern,
    pfn_at,
    snapshot,
)


# ---------------------------------------------------------------- argument checks
@pytest.fixture
def target(make_machine, profile):
    m = make_machine(32, 0, profile=profile)
    p, vma = filled(m, 4)
    return m, p, vma


def expect_einval(m, ops, vma, start, end, src, dst) -> None:
    before = snapshot(m)
    src_before = None if src is None else src.copy()
    with pytest.raises(me.MigrateError) as info:
        me.migrate_vma(ops, vma, start, end, src, dst)
    assert info.value.errno == errno.EINVAL
    assert isinstance(info.value, OSError)
    assert snapshot(m) == before
    if src is not None:
        assert src.tolist() == src_before.tolist()  # checks come before the memset
    m.check()


@pytest.mark.parametrize(
    "flag", ["VM_HUGETLB", "VM_IO", "VM_PFNMAP", "VM_MIXEDMAP", "VM_DONTEXPAND"]
)
def test_einval_for_hugetlb_and_vm_special(make_machine, profile, flag):
    """migrate_vma(): is_vm_hugetlb_page(vma) || (vma->vm_flags & VM_SPECIAL)."""
    m = make_machine(16, 0, profile=profile)
    p = m.new_process()
    vma = p.mmap(2, flags=getattr(me, flag))
    drv = Driver(m)
    src = np.full(2, 7, np.uint64)
    expect_einval(m, drv.ops, vma, vma.start, vma.end, src, np.zeros(2, np.uint64))
    assert drv.calls == []


@pytest.mark.parametrize(
    "bounds",
    [
        (-1, 1),  # start below vm_start
        (0, 5),  # end above vm_end
        (4, 5),  # start at vm_end
        (-2, 0),  # end at vm_start
        (2, 1),  # start > end
        (1, 1),  # start == end
    ],
)
def test_einval_for_ranges_outside_the_vma(target, bounds):
    """migrate_vma(): start outside [vm_start, vm_end), end outside (vm_start, vm_end],
    start >= end."""
    m, p, vma = target
    drv = Driver(m)
    start, end = (vma.start + b * PS for b in bounds)
    src = np.full(8, 7, np.uint64)
    expect_einval(m, drv.ops, vma, start, end, src, np.zeros(8, np.uint64))
    assert drv.calls == []


def test_einval_when_rounding_empties_the_range(target):
    """migrate_vma(): start &= PAGE_MASK; end &= PAGE_MASK; start >= end."""
    m, p, vma = target
    src = np.full(1, 7, np.uint64)
    expect_einval(m, Driver(m).ops, vma, vma.start + 1, vma.start + PS - 1, src, src.copy())


def test_einval_for_missing_arguments(target):
    """migrate_vma(): !vma, !ops, !src, !dst."""
    m, p, vma = target
    ops = Driver(m).ops
    src, dst = np.zeros(4, np.uint64), np.zeros(4, np.uint64)
    expect_einval(m, ops, None, vma.start, vma.end, src, dst)
    expect_einval(m, None, vma, vma.start, vma.end, src, dst)
    expect_einval(m, ops, vma, vma.start, vma.end, None, dst)
    expect_einval(m, ops, vma, vma.start, vma.end, src, None)


def malformed_calls(vma: me.Vma, ops: me.MigrateOps) -> dict[str, tuple]:
    ok = np.zeros(4, np.uint64)
    read_only = np.zeros(4, np.uint64)
    read_only.flags.writeable = False
    strided = np.zeros(8, np.uint64)[::2]
    return {
        "int64 src": (ops, vma, vma.start, vma.end, np.zeros(4, np.int64), ok),
        "float dst": (ops, vma, vma.start, vma.end, ok, np.zeros(4, np.float64)),
        "list src": (ops, vma, vma.start, vma.end, [0, 0, 0, 0], ok),
        "short src": (ops, vma, vma.start, vma.end, np.zeros(3, np.uint64), ok),
        "short dst": (ops, vma, vma.start, vma.end, ok, np.zeros(2, np.uint64)),
        "read-only dst": (ops, vma, vma.start, vma.end, ok, read_only),
        "non-contiguous src": (ops, vma, vma.start, vma.end, strided, ok),
        "2-D src": (ops, vma, vma.start, vma.end, np.zeros((4, 1), np.uint64), ok),
        "overlapping src/dst": (ops, vma, vma.start, vma.end, ok, ok),
        "float start": (ops, vma, float(vma.start), vma.end, ok, np.zeros(4, np.uint64)),
        "str end": (ops, vma, vma.start, str(vma.end), ok, np.zeros(4, np.uint64)),
        "ops not MigrateOps": ((ops[0], ops[1]), vma, vma.start, vma.end, ok, ok.copy()),
        "uncallable op": (me.MigrateOps(1, 2), vma, vma.start, vma.end, ok, ok.copy()),
        "vma not a Vma": (ops, "vma", vma.start, vma.end, ok, ok.copy()),
    }


MALFORMED = [
    "int64 src",
    "float dst",
    "list src",
    "short src",
    "short dst",
    "read-only dst",
    "non-contiguous src",
    "2-D src",
    "overlapping src/dst",
    "float start",
    "str end",
    "ops not MigrateOps",
    "uncallable op",
    "vma not a Vma",
]


@pytest.mark.parametrize("case", MALFORMED)
def test_malformed_arguments_change_nothing(target, case):
    """The public contract: malformed arguments are TypeError/ValueError, raised before
    any change."""
    m, p, vma = target
    drv = Driver(m)
    args = malformed_calls(vma, drv.ops)[case]
    before = snapshot(m)
    with pytest.raises((TypeError, ValueError)) as info:
        me.migrate_vma(*args)
    assert not isinstance(info.value, me.MigrateError)
    assert snapshot(m) == before
    assert drv.calls == []
    m.check()
    assert_data(p, vma, range(4))


@pytest.mark.parametrize(
    "call",
    [
        lambda p, v: p.mmap(1, prot="wx"),
        lambda p, v: p.mmap(1, kind="hugetlbfs"),
        lambda p, v: p.mmap(1, flags=1 << 40),
        lambda p, v: p.mmap(1.5),
        lambda p, v: p.mmap(1, addr=v.start),  # overlaps
        lambda p, v: p.read(float(v.start), 4),
        lambda p, v: p.write(v.start, "text"),
        lambda p, v: p.translate(str(v.start)),
        lambda p, v: p.populate(v.start, None),
        lambda p, v: p.machine.pin(10**6),
        lambda p, v: p.machine.page(-1),
        lambda p, v: p.machine.lock_page(0),  # the zero page
    ],
)
def test_malformed_process_calls_change_nothing(target, call):
    """Bad kind/prot/flags/addresses are TypeError/ValueError with no state change."""
    m, p, vma = target
    before = snapshot(m)
    with pytest.raises((TypeError, ValueError)):
        call(p, vma)
    assert snapshot(m) == before
    m.check()


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(profile="hmm-v24"),
        dict(profile=None),
        dict(page_size=1000),
        dict(store_data="yes"),
        dict(device_pages=-1),
    ],
)
def test_malformed_machine_arguments(kwargs):
    with pytest.raises((TypeError, ValueError)):
        me.Machine(16, **kwargs)


def test_access_outside_every_vma_is_a_segfault(target):
    """A load or store with no VMA (or against prot) raises SegFault, changing nothing."""
    m, p, vma = target
    ro = p.mmap(1, prot="none")
    before = snapshot(m)
    for call in (
        lambda: p.read(vma.end + 16 * PS, 1),
        lambda: p.write(vma.start - PS, b"x"),
        lambda: p.read(ro.start, 1),
        lambda: p.write(ro.start, b"x"),
    ):
        with pytest.raises(me.SegFault):
            call()
        assert snapshot(m) == before


# ---------------------------------------------------------------- errors
def test_out_of_memory_on_a_write_fault(make_machine, profile):
    """A write fault with no free frame raises OutOfMemory; the machine stays sound."""
    m = make_machine(6, 0, profile=profile)  # five usable frames besides the zero page
    p = m.new_process()
    vma = p.mmap(8)
    for i in range(5):
        p.write(addr(vma, i), pattern(i))
    assert m.free_pages() == 0
    with pytest.raises(me.OutOfMemory):
        p.write(addr(vma, 5), b"no room")
    m.check()
    assert p.translate(addr(vma, 5)).kind == "none"
    with pytest.raises(me.OutOfMemory):
        m.alloc_page()
    with pytest.raises(me.OutOfMemory):
        m.alloc_page(device=True)  # no device memory at all
    assert_data(p, vma, range(5))


def test_out_of_memory_inside_alloc_and_copy(make_machine, profile):
    """A driver that runs out of memory midway: OutOfMemory propagates, the
    migration completes for nothing and every page is back in place."""
    m = make_machine(6, 0, profile=profile)
    p, vma = filled(m, 3)
    old = [pfn_at(p, vma, i) for i in range(3)]
    drv = Driver(m)
    with pytest.raises(me.OutOfMemory):
        drv.run(vma)
    m.check()
    assert [pfn_at(p, vma, i) for i in range(3)] == old
    assert m.free_pages() == 2
    assert_data(p, vma, range(3))


def test_callback_raising_before_any_dst_restores_everything(make_machine, profile):
    """A Python alloc_and_copy() that raises: the passes still run to the end (no
    page left locked or unmapped), then the exception propagates."""
    m = make_machine(32, 0, profile=profile)
    p, vma = filled(m, 2)
    old = [pfn_at(p, vma, i) for i in range(2)]

    def boom(vma_, src, dst, start, end, private):
        raise RuntimeError("driver bug")

    fin = []
    ops = me.MigrateOps(boom, lambda *a: fin.append(1))
    with pytest.raises(RuntimeError, match="driver bug"):
        me.migrate_vma(ops, vma, vma.start, vma.end, np.zeros(2, np.uint64), np.zeros(2, np.uint64))
    m.check()
    assert fin == []
    assert [pfn_at(p, vma, i) for i in range(2)] == old
    assert all(not m.page(pfn).locked for pfn in old)
    assert_data(p, vma, range(2))


def test_callback_raising_after_filling_dst_restores_everything(make_machine, profile):
    """A Python alloc_and_copy() that raises after filling some dst: the failed call
    must not migrate anything (pages restored), the dst pages are freed, and the
    error propagates."""
    m = make_machine(32, 0, profile=profile)
    p, vma = filled(m, 2)
    old = [pfn_at(p, vma, i) for i in range(2)]
    free = m.free_pages()

    def first_slot_then_fail(i: int, src_i: np.uint64) -> bool:
        if i > 0:
            raise RuntimeError("midway")
        return True

    drv = Driver(m, want=first_slot_then_fail)
    with pytest.raises(RuntimeError, match="midway"):
        drv.run(vma)
    m.check()
    assert 0 in drv.given
    assert [pfn_at(p, vma, i) for i in range(2)] == old
    assert m.page(drv.given[0]).free
    assert m.free_pages() == free
    assert_data(p, vma, range(2))


def test_invalid_destination_is_dropped_and_reported(make_machine, profile):
    """A dst naming the source page itself is no valid destination: the slot is not
    migrated, the others are, and an InvalidDstWarning names it after the call
    completes (tests/scenarios/test_driver_mistakes.py has the other mistakes)."""
    m = make_machine(32, 0, profile=profile)
    p, vma = filled(m, 2)
    old1 = pfn_at(p, vma, 1)

    drv = Driver(m, want=lambda i, s: i == 0)
    src, dst = np.zeros(2, np.uint64), np.zeros(2, np.uint64)

    def alloc(vma_, s, d, start, end, private):
        drv.alloc_and_copy(vma_, s, d, start, end, private)
        d[1] = m.migrate_pfn(old1) | m.layout.LOCKED  # the source itself

    ops = me.MigrateOps(alloc, drv.finalize_and_map)
    with pytest.warns(InvalidDstWarning, match=r"dst\[1\]"):
        me.migrate_vma(ops, vma, vma.start, vma.end, src, dst)
    m.check()
    assert pfn_at(p, vma, 0) == drv.given[0]
    assert pfn_at(p, vma, 1) == old1
    assert_data(p, vma, range(2))
