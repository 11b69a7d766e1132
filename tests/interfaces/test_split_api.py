"""The split API from Python: ``me.MigrateVma`` and ``me.migrate_vma_setup`` /
``_pages`` / ``_finalize``, in the 4.14 profiles the passes of migrate_vma()
split where it calls its callbacks (a driver fills ``dst`` in between)."""

from __future__ import annotations

import numpy as np
import pytest

import migengine as me
from tests.helpers import PS, addr, assert_data, filled


def fill_dst(m: me.Machine, args: me.MigrateVma) -> list[int]:
    """A driver between setup and pages: a locked device page per collected
    page, the data copied, ``dst = pfn | VALID | LOCKED`` (+ WRITE)."""
    lay, given = m.layout, []
    for i in range(args.npages):
        src = int(args.src[i])
        if not src & int(lay.MIGRATE) or not src & int(lay.VALID):
            continue
        pfn = m.alloc_page(device=True)
        m.copy_page(pfn, m.mpfn_to_pfn(src))
        args.dst[i] = m.migrate_pfn(pfn) | lay.LOCKED | (src & int(lay.WRITE))
        given.append(pfn)
    return given


def test_split_api_migrates_to_device(make_machine, profile):
    m = make_machine(128, 32, profile=profile)
    p, vma = filled(m, 8)
    src, dst = np.zeros(8, np.uint64), np.zeros(8, np.uint64)
    args = me.MigrateVma(vma, vma.start, vma.end, src, dst)
    assert me.migrate_vma_setup(args) == 0
    assert (args.npages, args.cpages) == (8, 8)
    given = fill_dst(m, args)
    me.migrate_vma_pages(args)
    me.migrate_vma_finalize(args)
    assert [p.translate(addr(vma, i)).pfn for i in range(8)] == given
    assert m.counters["pgmigrate_success"] == 8
    assert_data(p, vma, range(8))
    with pytest.raises(ValueError, match="already finalized"):
        me.migrate_vma_finalize(args)
    m.check()


@pytest.mark.parametrize(
    "kwargs",
    [
        {"flags": me.MIGRATE_VMA_SELECT_DEVICE_PRIVATE},
        {"flags": me.MIGRATE_VMA_SELECT_SYSTEM | me.MIGRATE_VMA_SELECT_COMPOUND},
        {"pgmap_owner": "gpu"},
        {"fault_page": 3},
    ],
)
def test_later_kernels_selection_is_refused(make_machine, profile, kwargs):
    """4.14 has no selection: the flags must keep their defaults."""
    m = make_machine(64, 8, profile=profile)
    p, vma = filled(m, 2)
    args = me.MigrateVma(
        vma, vma.start, vma.end, np.zeros(2, np.uint64), np.zeros(2, np.uint64), **kwargs
    )
    with pytest.raises(ValueError):
        me.migrate_vma_setup(args)
    assert m.counters["migrate_vma_calls"] == 0
    m.check()


def test_split_api_bad_input(make_machine):
    m = make_machine(64, 8)
    p, vma = filled(m, 2)
    z = np.zeros(2, np.uint64)
    with pytest.raises(me.MigrateError):
        me.migrate_vma_setup(me.MigrateVma(None, vma.start, vma.end, z, z.copy()))
    with pytest.raises(me.MigrateError):
        me.migrate_vma_setup(me.MigrateVma(vma, vma.end, vma.end + PS, z, z.copy()))
    with pytest.raises(TypeError):
        me.migrate_vma_setup(me.MigrateVma(vma, vma.start, vma.end, z.astype(np.int64), z))
    with pytest.raises(ValueError):
        me.migrate_vma_setup(me.MigrateVma(vma, vma.start, vma.end, z, z))  # overlap
    with pytest.raises(TypeError):
        me.migrate_vma_setup((vma, vma.start, vma.end, z, z.copy()))
    args = me.MigrateVma(vma, vma.start, vma.end, z, z.copy())
    with pytest.raises(ValueError, match="has not run"):
        me.migrate_vma_pages(args)
    assert m.counters["migrate_vma_calls"] == 0
    assert_data(p, vma, range(2))
    m.check()


def test_refused_dst_warns_under_its_name(make_machine):
    """A dst naming a free frame fails its slot, with an InvalidDstWarning."""
    m = make_machine(64, 8)
    p, vma = filled(m, 1)
    args = me.MigrateVma(vma, vma.start, vma.end, np.zeros(1, np.uint64), np.zeros(1, np.uint64))
    me.migrate_vma_setup(args)
    free = m.ram_pages + 3  # a device frame nobody allocated
    args.dst[0] = m.migrate_pfn(free) | m.layout.LOCKED
    with pytest.warns(me.InvalidDstWarning, match="migrate_vma_pages: dst\\[0\\]"):
        me.migrate_vma_pages(args)
    me.migrate_vma_finalize(args)
    assert p.translate(vma.start).kind == "present"
    assert_data(p, vma, [0])
    m.check()


def test_nothing_collected(make_machine):
    """seed: a range of holes collects nothing (cpages 0); pages and finalize
    then have nothing to do."""
    m = make_machine(64, 8, profile="seed")
    p = m.new_process()
    vma = p.mmap(4)
    args = me.MigrateVma(vma, vma.start, vma.end, np.zeros(4, np.uint64), np.zeros(4, np.uint64))
    me.migrate_vma_setup(args)
    assert (args.npages, args.cpages) == (4, 0)
    me.migrate_vma_pages(args)
    me.migrate_vma_finalize(args)
    m.check()
