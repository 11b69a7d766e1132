"""The modern profile (Linux 6.x mm/migrate_device.c), branch by branch.

Each test names the kernel branch it mirrors and the commit where modern
differs from 4.14, and runs the same scenario in hmm-v25 where the contrast is
the point. Data is compared byte for byte; make_machine runs ``m.check()`` on
every machine when the test ends.
"""

from __future__ import annotations

import numpy as np
import pytest

import migengine as me
from migengine import kernels
from tests.helpers import PS, addr, assert_data, filled

BOTH = pytest.mark.parametrize("profile", ["modern", "hmm-v25"])
SYSTEM = me.MIGRATE_VMA_SELECT_SYSTEM
PRIVATE = me.MIGRATE_VMA_SELECT_DEVICE_PRIVATE


def arrays(n: int) -> tuple[np.ndarray, np.ndarray]:
    return np.zeros(n, np.uint64), np.zeros(n, np.uint64)


def setup(vma: me.Vma, start: int, end: int, **kw) -> me.MigrateVma:
    src, dst = arrays((end - start) // PS)
    args = me.MigrateVma(vma, start, end, src, dst, **kw)
    assert me.migrate_vma_setup(args) == 0
    return args


def finish(m: me.Machine, args: me.MigrateVma, device: bool = True) -> list[int]:
    """A driver: a destination for each collected page (a zeroed one for a
    hole), ``dst = pfn | VALID`` (+ WRITE), then pages and finalize."""
    lay, given = m.layout, []
    for i in range(args.npages):
        s = int(args.src[i])
        if not s & int(lay.MIGRATE):
            continue
        pfn = m.alloc_page(device=device)
        if s & int(lay.VALID):
            m.copy_page(pfn, m.mpfn_to_pfn(s))
        args.dst[i] = m.migrate_pfn(pfn) | lay.LOCKED | (s & int(lay.WRITE))
        given.append(pfn)
    me.migrate_vma_pages(args)
    me.migrate_vma_finalize(args)
    return given


def on_device(m: me.Machine, npages: int) -> tuple[me.Process, me.Vma]:
    p, vma = filled(m, npages)
    assert m.device.migrate_to_device(p, vma.start, vma.end) == npages
    return p, vma


# ------------------------------------------------------------------ the profile
def test_layout_and_kernel():
    """include/linux/migrate.h: LOCKED gone in v5.16 (ab09243aa95a), DEVICE and
    ERROR in v5.4, COMPOUND at bit 4 with the 2025 device-THP series."""
    m = me.Machine(16, 4, profile="modern")
    assert m.layout == (1, 2, 0, 8, 0, 0, 6, 16)
    assert m.layout.COMPOUND == 1 << 4
    assert "6." in m.kernel and "migrate_device" in m.kernel
    assert m.migrate_pfn(5) == (5 << 6) | 1
    m.check()


@BOTH
def test_free_device_page_refcount(make_machine, profile):
    """v6.1 "mm: free device private pages have zero refcount" (ef233450898f):
    free 0, allocated 1 and locked, mapped 1 per mapping; 4.14 keeps one more."""
    m = make_machine(32, 8, profile=profile)
    base = 0 if profile == "modern" else 1
    first = m.device.first_pfn
    assert m.page(first).refcount == base
    pfn = m.alloc_page(device=True)
    assert (m.page(pfn).refcount, m.page(pfn).locked) == (base + 1, True)
    p, vma = on_device(m, 2)
    dpfn = p.translate(vma.start).pfn
    assert (m.page(dpfn).refcount, m.page(dpfn).mapcount) == (base + 1, 1)
    m.put_page(pfn)
    assert m.page(pfn).free and m.page(pfn).refcount == base


@BOTH
def test_lru_batch_size(make_machine, profile):
    """mm/swap.c: 4.14's PAGEVEC_SIZE 14 against the folio batch of 31
    (9cecde80aae0 "mm: increase folio batch size", v6.9): faulted pages wait in
    the batch until an add fills it."""
    m = make_machine(128, 0, profile=profile)
    p, vma = filled(m, 20)
    waiting = sum(m.page(p.translate(addr(vma, i)).pfn).pagevec for i in range(20))
    assert waiting == (20 if profile == "modern" else 20 - 14)


# ------------------------------------------------------------------ collect
@BOTH
def test_unlockable_page_dropped_in_collect(make_machine, profile):
    """migrate_vma_collect_pmd(): since ab09243aa95a a page that does not trylock
    gives src = 0 and is not counted; 4.14 counted it and prepare failed it."""
    m = make_machine(64, 16, profile=profile)
    p, vma = filled(m, 4)
    locked = p.translate(addr(vma, 1)).pfn
    m.lock_page(locked)
    args = setup(vma, vma.start, vma.end)
    assert args.src[1] == 0
    assert args.cpages == 3
    assert m.counters["migrate_vma_collected"] == (3 if profile == "modern" else 4)
    finish(m, args)
    assert p.translate(addr(vma, 1)).kind == "present"
    m.unlock_page(locked)
    assert_data(p, vma, range(4))


@BOTH
def test_holes_only_in_anonymous_vmas(make_machine, profile):
    """migrate_vma_collect_hole(): 0744f2807a4f (v5.9) collects holes only in an
    anonymous VMA; 4.14 collected them anywhere and insert_page refused."""
    m = make_machine(64, 16, profile=profile)
    p = m.new_process()
    shm = p.mmap(4, kind="shmem")
    args = setup(shm, shm.start, shm.end)
    want = 0 if profile == "modern" else int(m.layout.MIGRATE)
    assert [int(x) for x in args.src] == [want] * 4
    anon = p.mmap(4)
    args = setup(anon, anon.start, anon.end)
    assert [int(x) for x in args.src] == [int(m.layout.MIGRATE)] * 4
    assert args.cpages == 4
    finish(m, args)
    assert [p.translate(addr(anon, i)).kind for i in range(4)] == ["device"] * 4


def test_zero_page_needs_select_system(make_machine):
    """migrate_vma_collect_pmd(): the zero pfn is a hole only with SELECT_SYSTEM;
    without it vm_normal_page() gives no page and the slot is 0."""
    m = make_machine(64, 16, profile="modern")
    p = m.new_process()
    vma = p.mmap(2)
    p.read(vma.start, 2 * PS)  # zero-page PTEs
    assert setup(vma, vma.start, vma.end, flags=PRIVATE).src.tolist() == [0, 0]
    args = setup(vma, vma.start, vma.end, flags=SYSTEM)
    assert args.src.tolist() == [int(m.layout.MIGRATE)] * 2
    finish(m, args)


def test_selection_flags_and_owner(make_machine):
    """migrate_vma_collect_pmd(): a device-private entry is collected only with
    SELECT_DEVICE_PRIVATE and its pgmap owner (v5.7 src_owner, v5.9 flags,
    5143192cd410); a system page only with SELECT_SYSTEM. hmm-tests.c
    migrate_mixed: dev0's SYSTEM-only migration does not take dev1's page."""
    m = make_machine(
        64, profile="modern", devices=[me.DeviceSpec(8, owner="a"), me.DeviceSpec(8, owner="b")]
    )
    b = m.devices[1]
    p, vma = filled(m, 4)
    assert b.migrate_to_device(p, addr(vma, 0), addr(vma, 2)) == 2
    args = setup(vma, vma.start, vma.end, flags=SYSTEM)
    assert args.src[:2].tolist() == [0, 0] and args.cpages == 2
    finish(m, args, device=False)  # the system pages move to other system pages
    args = setup(vma, vma.start, vma.end, flags=PRIVATE, pgmap_owner="a")
    assert args.src.tolist() == [0, 0, 0, 0] and args.cpages == 0
    args = setup(vma, vma.start, vma.end, flags=PRIVATE, pgmap_owner="b")
    assert args.cpages == 2 and args.src[2:].tolist() == [0, 0]
    given = finish(m, args, device=False)
    assert [p.translate(addr(vma, i)).pfn for i in range(2)] == given
    assert b.free_pages() == 8
    assert_data(p, vma, range(4))


def test_maybe_pinned_anon_exclusive_page_is_not_collected(make_machine):
    """migrate_vma_collect_pmd(): folio_try_share_anon_rmap_pte() fails for a
    possibly pinned anon-exclusive page (v5.19/v6.0): the PTE is put back after
    a flush, src = 0, not counted."""
    m = make_machine(64, 16, profile="modern")
    p, vma = filled(m, 2)
    pinned = p.pin(addr(vma, 0))
    flushes = m.counters["tlb_flush"]
    args = setup(vma, vma.start, vma.end)
    assert args.src[0] == 0 and args.cpages == 1
    assert m.counters["tlb_flush"] >= flushes + 1
    assert p.translate(addr(vma, 0)).pfn == pinned
    finish(m, args)
    m.unpin(pinned)
    assert_data(p, vma, range(2))


@BOTH
def test_device_entry_write_bit(make_machine, profile):
    """Collect's migration entry for a device-private page: 4.14 read pte_write()
    of a swap PTE (never set), so the page came back read-only; "mm/migrate:
    properly preserve write attribute in special migrate entry" (v4.17) fixed it."""
    m = make_machine(64, 16, profile=profile)
    p, vma = on_device(m, 1)
    assert p.read(vma.start, PS) == bytes((k % 251) for k in range(PS))
    assert p.translate(vma.start).writable == (profile == "modern")


def test_dax_vma_is_refused(make_machine):
    """migrate_vma_setup(): vma_is_dax() is EINVAL since v5.4; 4.14 took it."""
    m = make_machine(64, 16, profile="modern")
    p, vma = filled(m, 2, flags=me.VM_DAX)
    with pytest.raises(me.MigrateError, match="DAX"):
        me.migrate_vma_setup(me.MigrateVma(vma, vma.start, vma.end, *arrays(2)))
    src, dst = arrays(2)
    ret = kernels.migrate_vma_setup_flags(
        m.state, vma.index, vma.start, vma.end, src, dst, SYSTEM, -1, -1
    )
    assert ret == -22
    assert m.counters["migrate_vma_calls"] == 0
    old = make_machine(64, 16, profile="hmm-v25")
    p, vma = filled(old, 2, flags=me.VM_DAX)
    args = setup(vma, vma.start, vma.end)
    assert args.cpages == 2
    finish(old, args)


# ------------------------------------------------------------------ fault_page
def test_cpu_fault_holds_the_device_page(make_machine):
    """do_swap_page(): a reference (16ce101db85d, v6.1) and the lock (1afaeb8293c9,
    v6.15) on the device page, passed as fault_page; collect takes it without a
    trylock, check_page and folio_migrate_mapping count the extra reference, and
    after migrate_to_ram() the fault drops both: the device page is freed."""
    m = make_machine(64, 16, profile="modern")
    p, vma = on_device(m, 2)
    dpfn = p.translate(vma.start).pfn
    assert p.read(vma.start, PS) == bytes((k % 251) for k in range(PS))
    info = m.page(dpfn)
    assert info.free and info.refcount == 0 and not info.locked
    assert m.device.counters["faults"] == 1
    assert p.translate(vma.start).kind == "present"
    assert p.translate(addr(vma, 1)).kind == "device"


def test_fault_on_a_locked_device_page_retries(make_machine):
    """do_swap_page() since v6.15: a device page locked elsewhere makes the fault
    wait and retry; nothing migrates while the lock is held."""
    m = make_machine(64, 16, profile="modern")
    p, vma = on_device(m, 1)
    dpfn = p.translate(vma.start).pfn
    m.lock_page(dpfn)
    with pytest.raises(me.MigengineError):
        p.read(vma.start, PS)
    assert p.translate(vma.start).kind == "device"
    assert m.page(dpfn).refcount == 1
    m.unlock_page(dpfn)
    assert_data(p, vma, range(1))


@pytest.mark.parametrize("case", ["ram", "unlocked", "elsewhere"])
def test_bad_fault_page(make_machine, case):
    """migrate_vma_setup(): fault_page must be a locked device-private page
    (v6.1, v6.15); the engine also asks that it be mapped in the range."""
    m = make_machine(64, 16, profile="modern")
    p, vma = on_device(m, 2)
    dpfn = [p.translate(addr(vma, i)).pfn for i in range(2)]
    fault = {"ram": 3, "unlocked": dpfn[0], "elsewhere": dpfn[1]}[case]
    if case == "elsewhere":
        m.lock_page(fault)
    src, dst = arrays(1)
    calls = m.counters["migrate_vma_calls"]
    args = me.MigrateVma(
        vma,
        vma.start,
        vma.start + PS,
        src,
        dst,
        flags=PRIVATE,
        pgmap_owner=m.device.owner,
        fault_page=fault,
    )
    with pytest.raises(me.MigrateError):
        me.migrate_vma_setup(args)
    owner = m.owner_id(m.device.owner)
    ret = kernels.migrate_vma_setup_flags(
        m.state, vma.index, vma.start, vma.start + PS, src, dst, PRIVATE, owner, fault
    )
    assert ret == -22
    assert m.counters["migrate_vma_calls"] == calls
    if case == "elsewhere":
        m.unlock_page(fault)


def test_bad_flags_and_owner(make_machine):
    """Selection flags outside MIGRATE_VMA_SELECT_* and an owner no device has:
    ValueError from Python, -22 from the compiled setup, nothing changed."""
    m = make_machine(64, 16, profile="modern")
    p, vma = filled(m, 2)
    with pytest.raises(ValueError):
        me.migrate_vma_setup(me.MigrateVma(vma, vma.start, vma.end, *arrays(2), flags=1 << 4))
    with pytest.raises(ValueError):
        me.migrate_vma_setup(me.MigrateVma(vma, vma.start, vma.end, *arrays(2), pgmap_owner="x"))
    src, dst = arrays(2)
    for flags, owner in ((1 << 4, -1), (-1, -1), (SYSTEM, 12345)):
        ret = kernels.migrate_vma_setup_flags(
            m.state, vma.index, vma.start, vma.end, src, dst, flags, owner, -1
        )
        assert ret == -22
    assert m.counters["migrate_vma_calls"] == 0
    assert_data(p, vma, range(2))


# ------------------------------------------------------------------ finalize, notifier
@BOTH
def test_only_the_target_goes_to_the_lru(make_machine, profile):
    """migrate_device_finalize(): since 41cddf83d8b0 (2025) a migrated source is
    put, and freed at once; 4.14 put it back through the LRU-add batch, where it
    waits until the batch drains."""
    m = make_machine(64, 16, profile=profile)
    p, vma = filled(m, 4)
    src = [p.translate(addr(vma, i)).pfn for i in range(4)]
    m.device.migrate_to_device(p, vma.start, vma.end)
    freed = [m.page(pfn).free for pfn in src]
    assert freed == [profile == "modern"] * 4
    m.lru_add_drain_all()
    assert all(m.page(pfn).free for pfn in src)


@BOTH
def test_own_migration_keeps_the_mirror(make_machine, profile):
    """dmirror_interval_invalidate(): MMU_NOTIFY_MIGRATE carries the owner since
    998427b3ad2c (v5.9) and dmirror skips its own migrations, so a page that
    stays behind keeps its mirror entry; 4.14's notifier had no owner."""
    m = make_machine(64, 16, profile=profile)
    p, vma = filled(m, 2)
    dev = m.device
    dev.read(p, vma.start, 2 * PS)
    pinned = p.pin(addr(vma, 1))
    # It counts the pages the device maps: the one kept mirror entry too.
    assert dev.migrate_to_device(p, vma.start, vma.end) == (2 if profile == "modern" else 1)
    assert p.translate(addr(vma, 1)).pfn == pinned
    slot = int(m.state.vma["pte_base"][vma.index]) + 1
    assert (m.state.mirror[dev.index, slot] >= 0) == (profile == "modern")
    assert dev.read(p, addr(vma, 1), PS) == bytes((7 + k) % 251 for k in range(PS))
    m.unpin(pinned)


def test_migrate_vma_runs_the_modern_passes(make_machine):
    """me.migrate_vma in modern: setup with SELECT_SYSTEM and no owner, the
    callbacks where 4.14 called them, dst without LOCKED (it is 0)."""
    m = make_machine(64, 16, profile="modern")
    p, vma = filled(m, 3)
    seen = []

    def alloc_and_copy(v, src, dst, start, end, private):
        for i in range(3):
            pfn = m.alloc_page(device=True)
            m.copy_page(pfn, m.mpfn_to_pfn(int(src[i])))
            dst[i] = m.migrate_pfn(pfn) | (int(src[i]) & int(m.layout.WRITE))

    def finalize_and_map(v, src, dst, start, end, private):
        seen.append([int(s) & int(m.layout.MIGRATE) for s in src])

    ops = me.MigrateOps(alloc_and_copy, finalize_and_map)
    src, dst = arrays(3)
    assert me.migrate_vma(ops, vma, vma.start, vma.end, src, dst) == 0
    assert seen == [[int(m.layout.MIGRATE)] * 3]
    assert [p.translate(addr(vma, i)).kind for i in range(3)] == ["device"] * 3
    assert_data(p, vma, range(3))
