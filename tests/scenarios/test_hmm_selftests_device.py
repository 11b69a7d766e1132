"""The device's own accesses (dev.read, dev.write, dev.snapshot), after hmm-tests.c.

Each test is named after the case of tools/testing/selftests/mm/hmm-tests.c it
mirrors, scaled down (small pages, fewer of them), with the selftests' fill
(``ptr[i] = i`` as int32) compared byte for byte and ``m.check()`` after every
operation. Both profiles are 4.14 (hmm-v25 and the seed patch): where a 4.14
outcome differs from what the modern selftest asserts, the test asserts the
4.14 one and says why. The machine has one device, so the hmm2 (two-device)
parts of a case are left out.
"""

from __future__ import annotations

from functools import partial

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import migengine as me
from tests import helpers

PS = 256
THP_NR = 512  # pages per PMD extent
BOTH = pytest.mark.parametrize("profile", ["hmm-v25", "seed"])
pattern = partial(helpers.selftest_pattern, ps=PS)

ZERO_R = me.HMM_DMIRROR_PROT_ZERO | me.HMM_DMIRROR_PROT_READ
FIXTURE = HealthCheck.function_scoped_fixture  # make_machine checks each machine it built
OFFSETS = st.integers(0, 12 * PS - 1)
SIZES = st.integers(1, 3 * PS)


def machine(make_machine, profile: str, ram: int = 512, dev: int = 128) -> me.Machine:
    return make_machine(ram, dev, page_size=PS, profile=profile)


def at(vma: me.Vma, i: int) -> int:
    return vma.start + i * PS


def local_device_code(m: me.Machine) -> int:
    """A page of this device: device-private in hmm-v25, CPU-addressable device
    memory (the uapi's "coherent" code) in seed."""
    if m.profile == "hmm-v25":
        return int(me.HMM_DMIRROR_PROT_DEV_PRIVATE_LOCAL)
    return int(me.HMM_DMIRROR_PROT_DEV_COHERENT_LOCAL)


def kinds(p: me.Process, vma: me.Vma) -> list[str]:
    return helpers.kinds(p, vma, ps=PS)


# ------------------------------------------------------------------ reads


@BOTH
def test_anon_read(make_machine, profile):
    """hmm-tests.c: anon_read - page 0 untouched (pte_none), page 1 mapped to the
    zero page by a CPU read (the selftest's mprotect(PROT_READ) + read), the rest
    ``i``: one device read faults the whole range in (faults 1) and sees zeros in
    pages 0-1 and the data elsewhere; the CPU's data is unchanged."""
    m = machine(make_machine, profile)
    p = m.new_process()
    vma = p.mmap(16)
    data = pattern(16)
    p.write(at(vma, 2), data[2 * PS :])
    assert p.read(at(vma, 1), PS) == bytes(PS)
    m.check()

    got = m.device.read(p, vma.start, 16 * PS)
    m.check()
    assert got == bytes(2 * PS) + data[2 * PS :]
    assert m.device.last_faults == 1
    # Page 0's read fault mapped the zero page, as a CPU read would.
    assert p.translate(vma.start).kind == "zero"
    assert all(m.device.mirrored(p, at(vma, i)) >= 0 for i in range(16))
    assert p.read(vma.start, 16 * PS) == bytes(2 * PS) + data[2 * PS :]
    # A second read is served from the mirror: no fault.
    assert m.device.read(p, at(vma, 3) + 5, 100) == data[3 * PS + 5 : 3 * PS + 105]
    assert m.device.last_faults == 0
    m.check()


@BOTH
def test_anon_read_prot(make_machine, profile):
    """hmm-tests.c: anon_read_prot - fill the buffer, mprotect() it PROT_NONE: a
    device read fails (dmirror: -EFAULT, here SegFault), changes nothing and
    mirrors nothing; made readable again, the CPU sees the data.

    In 4.14 a snapshot of the PROT_NONE range reports NONE for each page:
    hmm_vma_get_pfns() walked it without HMM_PFN_READ; later kernels report
    HMM_DMIRROR_PROT_ERROR there."""
    m = machine(make_machine, profile)
    p = m.new_process()
    vma = p.mmap(4)
    data = pattern(4)
    p.write(vma.start, data)
    p.mprotect(vma.start, vma.end, "none")
    with pytest.raises(me.SegFault):
        m.device.read(p, vma.start, 4 * PS)
    m.check()
    assert all(m.device.mirrored(p, at(vma, i)) == -1 for i in range(4))
    assert kinds(p, vma) == ["present"] * 4  # the PTEs stay: PROT_NONE is the VMA's
    with pytest.raises(me.SegFault):
        p.read(vma.start, 1)
    p.mprotect(vma.start, vma.end, "r")
    assert p.read(vma.start, 4 * PS) == data
    m.check()


@BOTH
def test_anon_read_multiple(make_machine, profile):
    """hmm-tests.c: anon_read_multiple - ten rounds of a CPU fill with ``i + c``
    and a device read: each round's CPU stores reuse the pages (no COW), so the
    mirror stays valid and the device sees each round's data (the selftest
    expects faults 1 every round: it opens a fresh mirror; here only the first
    read faults)."""
    m = machine(make_machine, profile)
    p = m.new_process()
    vma = p.mmap(12)
    for c in range(10):
        data = pattern(12, base=c)
        p.write(vma.start, data)
        m.check()
        assert m.device.read(p, vma.start, 12 * PS) == data
        assert m.device.last_faults == (1 if c == 0 else 0)
        m.check()


# ------------------------------------------------------------------ writes


@BOTH
def test_anon_write(make_machine, profile):
    """hmm-tests.c: anon_write - a device write of ``i`` into a fresh anonymous
    buffer: one range fault (write faults allocate every page), then the CPU
    sees ``i``."""
    m = machine(make_machine, profile)
    p = m.new_process()
    vma = p.mmap(16)
    data = pattern(16)
    m.device.write(p, vma.start, data)
    m.check()
    assert m.device.last_faults == 1
    assert kinds(p, vma) == ["present"] * 16
    assert all(p.translate(at(vma, i)).writable for i in range(16))
    assert p.read(vma.start, 16 * PS) == data
    assert list(m.device.snapshot(p, vma.start, vma.end)) == [me.HMM_DMIRROR_PROT_WRITE] * 16
    m.check()


@BOTH
def test_anon_write_prot(make_machine, profile):
    """hmm-tests.c: anon_write_prot - PROT_READ mapping: a device read of one page
    works (the zero page, faults 1); a device write fails (dmirror: -EPERM, here
    SegFault) and memory stays zero. After mprotect(PROT_READ | PROT_WRITE) the
    device write works (faults 1), the zero-page mapping is replaced, and the
    CPU sees the data."""
    m = machine(make_machine, profile)
    p = m.new_process()
    vma = p.mmap(8, prot="r")
    assert m.device.read(p, vma.start, PS) == bytes(PS)
    assert m.device.last_faults == 1
    m.check()
    with pytest.raises(me.SegFault):
        m.device.write(p, vma.start, pattern(8))
    m.check()
    snap = m.device.snapshot(p, vma.start, vma.end)
    assert list(snap) == [ZERO_R] + [me.HMM_DMIRROR_PROT_NONE] * 7
    assert p.read(vma.start, 8 * PS) == bytes(8 * PS)
    p.mprotect(vma.start, vma.end, "rw")
    m.device.write(p, vma.start, pattern(8))
    assert m.device.last_faults == 1
    assert p.translate(vma.start).kind == "present"  # the zero page was replaced
    assert p.read(vma.start, 8 * PS) == pattern(8)
    m.check()


@BOTH
@pytest.mark.parametrize("thp", [False, True], ids=["small", "thp"])
@pytest.mark.parametrize("migrate", [False, True], ids=["no-migrate", "migrate"])
def test_anon_write_child(make_machine, profile, migrate, thp):
    """hmm-tests.c: anon_write_child - the parent fills ``i`` (and, with
    ``migrate``, moves the buffer to the device), forks; the child sees ``i``,
    then device-writes ``-i``: the write faults break COW in the child (in
    hmm-v25 a read-only shared device-private entry is faulted back to RAM
    first, as 4.14's walk sends a write to it to handle_mm_fault()), so the child
    sees ``-i`` and the parent still ``i``."""
    npages = THP_NR if thp else 32
    m = machine(make_machine, profile, ram=4 * npages + 64, dev=npages + 8)
    parent = m.new_process()
    vma = parent.mmap(npages, thp=thp)
    data = pattern(npages)
    parent.write(vma.start, data)
    if migrate:
        assert m.device.migrate_to_device(parent, vma.start, vma.end) == npages
    m.check()
    child = parent.fork()
    m.check()
    assert child.read(vma.start, npages * PS) == data
    m.check()
    minus = pattern(npages, sign=-1)
    m.device.write(child, vma.start, minus)
    m.check()
    assert child.read(vma.start, npages * PS) == minus
    assert parent.read(vma.start, npages * PS) == data
    m.check()


@BOTH
def test_anon_write_child_shared(make_machine, profile):
    """hmm-tests.c: anon_write_child_shared - a MAP_SHARED anonymous (shmem)
    buffer: after fork the child's device write of ``-i`` is seen by the parent
    (no COW)."""
    m = machine(make_machine, profile)
    parent = m.new_process()
    vma = parent.mmap(16, kind="shmem")
    parent.write(vma.start, pattern(16))
    child = parent.fork()
    m.check()
    minus = pattern(16, sign=-1)
    m.device.write(child, vma.start, minus)
    m.check()
    assert parent.read(vma.start, 16 * PS) == minus
    assert child.read(vma.start, 16 * PS) == minus
    m.check()


@BOTH
def test_anon_write_huge(make_machine, profile):
    """hmm-tests.c: anon_write_huge - a PMD-aligned THP region: the device write
    faults a THP in (faults 1), the data lands in it, and the snapshot reports
    every page WRITE|PMD."""
    m = machine(make_machine, profile, ram=2 * THP_NR + 64)
    p = m.new_process()
    vma = p.mmap(THP_NR, thp=True)
    data = pattern(THP_NR)
    m.device.write(p, vma.start, data)
    m.check()
    assert m.device.last_faults == 1
    assert p.translate(vma.start).huge
    assert p.read(vma.start, THP_NR * PS) == data
    snap = m.device.snapshot(p, vma.start, vma.end)
    assert set(snap.tolist()) == {me.HMM_DMIRROR_PROT_WRITE | me.HMM_DMIRROR_PROT_PMD}
    m.check()


@BOTH
def test_anon_write_huge_zero(make_machine, profile):
    """(anon_read on a THP region, then a CPU store.) A device read maps the huge
    zero page (snapshot ZERO|READ|PMD) and mirrors it; the CPU store that
    replaces it with a THP invalidates the device's entries, and the next device
    read sees the new data."""
    m = machine(make_machine, profile, ram=2 * THP_NR + 64)
    p = m.new_process()
    vma = p.mmap(THP_NR, thp=True)
    assert m.device.read(p, vma.start, THP_NR * PS) == bytes(THP_NR * PS)
    m.check()
    snap = m.device.snapshot(p, vma.start, vma.end)
    assert set(snap.tolist()) == {ZERO_R | me.HMM_DMIRROR_PROT_PMD}
    p.write(at(vma, 3), b"\x07" * PS)
    m.check()
    assert m.device.read(p, at(vma, 3), PS) == b"\x07" * PS
    m.check()


# ------------------------------------------------------------------ files


@BOTH
def test_file_read(make_machine, profile):
    """hmm-tests.c: file_read - the device reads a shared file mapping holding
    ``i`` (faults 1). The selftest writes the file with write(2) and maps it
    read-only; here the data is stored through a read-write mapping (there is no
    write(2)), and a read-only mapping of the (zero-filled) file is read too:
    its page-cache pages are READ, not ZERO."""
    m = machine(make_machine, profile)
    p = m.new_process()
    vma = p.mmap(16, kind="file")
    data = pattern(16)
    p.write(vma.start, data)
    assert m.device.read(p, vma.start, 16 * PS) == data
    assert m.device.last_faults == 1
    m.check()
    ro = p.mmap(4, kind="file", prot="r")
    assert m.device.read(p, ro.start, 4 * PS) == bytes(4 * PS)
    assert list(m.device.snapshot(p, ro.start, ro.end)) == [me.HMM_DMIRROR_PROT_READ] * 4
    m.check()


@BOTH
def test_file_write(make_machine, profile):
    """hmm-tests.c: file_write - the device writes ``i`` into a shared file
    mapping; the CPU sees it, and so does another process sharing the file (the
    selftest's pread())."""
    m = machine(make_machine, profile)
    p = m.new_process()
    vma = p.mmap(16, kind="file")
    data = pattern(16)
    m.device.write(p, vma.start, data)
    m.check()
    assert p.read(vma.start, 16 * PS) == data
    other = p.fork()
    assert other.read(vma.start, 16 * PS) == data
    m.check()


# ------------------------------------------------------------------ snapshot


@BOTH
def test_snapshot(make_machine, profile):
    """hmm-tests.c: snapshot (hmm2) - one page of each kind, snapshot without
    faulting (nothing changes), every code checked:

    ===  ===============================  ===================================
    0    PROT_NONE                        NONE (4.14; modern kernels: ERROR)
    1    no VMA                           ERROR
    2    zero page, read-only VMA         ZERO|READ
    3    page-cache page, read-only VMA   READ
    4    written anonymous page           WRITE
    5    migrated to this device          DEV_PRIVATE_LOCAL|WRITE (hmm-v25),
                                          DEV_COHERENT_LOCAL|WRITE (seed: CPU-
                                          addressable device memory)
    6    untouched                        NONE
    7    swapped out                      NONE (a snapshot faults nothing)
    8    zero page, read-write VMA        ZERO|READ
    ===  ===============================  ===================================

    The selftest's page 6 (on a second device) needs two devices; the machine
    has one."""
    m = machine(make_machine, profile)
    p = m.new_process()
    base = 0x4000_0000
    none = p.mmap(1, prot="none", addr=base)
    ro = p.mmap(1, prot="r", addr=base + 2 * PS)
    fro = p.mmap(1, prot="r", kind="file", addr=base + 3 * PS)
    rw = p.mmap(5, addr=base + 4 * PS)
    assert p.read(ro.start, 1) == b"\0"
    assert p.read(fro.start, 1) == b"\0"
    data = pattern(5)
    p.write(rw.start, data[: 2 * PS])
    p.write(at(rw, 3), data[3 * PS : 4 * PS])
    assert m.device.migrate_to_device(p, at(rw, 1), at(rw, 2)) == 1
    p.swap_out(at(rw, 3))
    assert p.read(at(rw, 4), 1) == b"\0"
    m.check()
    before = [p.translate(base + i * PS) for i in range(9)]

    snap = m.device.snapshot(p, none.start, rw.end)
    m.check()
    expected = [
        me.HMM_DMIRROR_PROT_NONE,
        me.HMM_DMIRROR_PROT_ERROR,
        ZERO_R,
        me.HMM_DMIRROR_PROT_READ,
        me.HMM_DMIRROR_PROT_WRITE,
        local_device_code(m) | me.HMM_DMIRROR_PROT_WRITE,
        me.HMM_DMIRROR_PROT_NONE,
        me.HMM_DMIRROR_PROT_NONE,
        ZERO_R,
    ]
    assert snap.dtype == np.uint8
    assert snap.tolist() == [int(c) for c in expected]
    assert [p.translate(base + i * PS) for i in range(9)] == before
    # The device reads its own page in place: nothing moves back to RAM.
    assert m.device.read(p, at(rw, 1), PS) == data[PS : 2 * PS]
    assert p.translate(at(rw, 1)) == before[5]
    assert m.device.read(p, at(rw, 3), PS) == data[3 * PS : 4 * PS]  # swapped back in
    m.check()


def test_snapshot_read_only_device_entry(make_machine):
    """hmm-v25: after fork a device-private page is mapped read-only in both
    processes (DEV_PRIVATE_LOCAL|READ); a device read leaves it on the device
    (4.14 reports device entries in place), a device write in the child faults
    it back to RAM and breaks COW there, while the parent's stays on the
    device."""
    m = machine(make_machine, "hmm-v25")
    p = m.new_process()
    vma = p.mmap(2)
    data = pattern(2)
    p.write(vma.start, data)
    assert m.device.migrate_to_device(p, vma.start, vma.end) == 2
    child = p.fork()
    code = me.HMM_DMIRROR_PROT_DEV_PRIVATE_LOCAL | me.HMM_DMIRROR_PROT_READ
    assert m.device.snapshot(child, vma.start, vma.end).tolist() == [code, code]
    assert m.device.read(child, vma.start, 2 * PS) == data
    assert [k for k in kinds(child, vma)] == ["device", "device"]
    m.check()
    m.device.write(child, vma.start, b"\x01" * PS)
    m.check()
    assert m.device.snapshot(child, vma.start, vma.end).tolist()[0] == me.HMM_DMIRROR_PROT_WRITE
    assert child.read(vma.start, 2 * PS) == b"\x01" * PS + data[PS:]
    assert p.read(vma.start, 2 * PS) == data
    m.check()


# ------------------------------------------------------------------ byte ranges


@BOTH
@settings(deadline=None, max_examples=25, suppress_health_check=[FIXTURE])
@given(ops=st.lists(st.tuples(st.booleans(), OFFSETS, SIZES), max_size=12))
def test_device_and_cpu_accesses_agree(make_machine, profile, ops):
    """Any mix of device and CPU stores at unaligned offsets: the device and the
    CPU read the same bytes as a plain bytearray model, and check() passes."""
    m = machine(make_machine, profile)
    p = m.new_process()
    vma = p.mmap(12)
    model = bytearray(12 * PS)
    for k, (device, off, n) in enumerate(ops):
        n = min(n, 12 * PS - off)
        chunk = bytes((k * 31 + j) % 256 for j in range(n))
        if device:
            m.device.write(p, vma.start + off, chunk)
        else:
            p.write(vma.start + off, chunk)
        model[off : off + n] = chunk
        m.check()
    assert m.device.read(p, vma.start, 12 * PS) == bytes(model)
    assert p.read(vma.start, 12 * PS) == bytes(model)
    m.check()


# ------------------------------------------------------------------ bad input


@BOTH
def test_read_bad_input(make_machine, profile):
    """dev.read refuses, before changing anything: no VMA, a negative or
    non-integer address or count, another object than a process; a machine
    without bytes raises MigengineError, as p.read does."""
    m = machine(make_machine, profile)
    p = m.new_process()
    vma = p.mmap(4)
    data = pattern(4)
    p.write(vma.start, data)
    with pytest.raises(me.SegFault):
        m.device.read(p, vma.end, 1)
    with pytest.raises(me.SegFault):  # runs past the end: nothing faulted first
        m.device.read(p, vma.start, 5 * PS)
    with pytest.raises(ValueError):
        m.device.read(p, -1, 1)
    with pytest.raises(ValueError):
        m.device.read(p, vma.start, -1)
    with pytest.raises(TypeError):
        m.device.read(p, float(vma.start), 1)
    with pytest.raises(TypeError):
        m.device.read(None, vma.start, 1)
    assert m.device.read(p, vma.start, 0) == b""
    assert all(m.device.mirrored(p, at(vma, i)) == -1 for i in range(4))
    assert p.read(vma.start, 4 * PS) == data
    m.check()
    bare = make_machine(64, 8, page_size=PS, profile=profile, store_data=False)
    q = bare.new_process()
    w = q.mmap(2)
    with pytest.raises(me.MigengineError):
        bare.device.read(q, w.start, 1)
    with pytest.raises(me.MigengineError):
        bare.device.write(q, w.start, b"x")
    assert bare.device.snapshot(q, w.start, w.end).tolist() == [0, 0]
    bare.check()


@BOTH
def test_write_bad_input(make_machine, profile):
    """dev.write refuses, before changing anything: no VMA, a read-only or
    PROT_NONE VMA (the store would fault: SegFault), data that is not bytes."""
    m = machine(make_machine, profile)
    p = m.new_process()
    vma = p.mmap(4)
    ro = p.mmap(2, prot="r", addr=vma.end)
    data = pattern(4)
    p.write(vma.start, data)
    with pytest.raises(me.SegFault):
        m.device.write(p, ro.end + PS, b"x")
    with pytest.raises(me.SegFault):  # the read-write part is not written either
        m.device.write(p, vma.start, bytes(6 * PS))
    with pytest.raises(TypeError):
        m.device.write(p, vma.start, "text")
    with pytest.raises(ValueError):
        m.device.write(p, -PS, b"x")
    m.check()
    assert p.read(vma.start, 4 * PS) == data
    assert p.read(ro.start, 2 * PS) == bytes(2 * PS)
    assert all(m.device.mirrored(p, at(vma, i)) == -1 for i in range(4))
    m.check()


@BOTH
def test_snapshot_bad_input(make_machine, profile):
    """dev.snapshot refuses an unaligned, empty or reversed range (ValueError) and
    a range outside every VMA (SegFault)."""
    m = machine(make_machine, profile)
    p = m.new_process()
    vma = p.mmap(4)
    for s, e in ((vma.start + 1, vma.end), (vma.start, vma.end - 1), (vma.end, vma.start)):
        with pytest.raises(ValueError):
            m.device.snapshot(p, s, e)
    with pytest.raises(ValueError):
        m.device.snapshot(p, vma.start, vma.start)
    with pytest.raises(me.SegFault):
        m.device.snapshot(p, vma.end + 16 * PS, vma.end + 20 * PS)
    with pytest.raises(TypeError):
        m.device.snapshot("p", vma.start, vma.end)
    m.check()
