"""More driver mistakes: a driver that writes ``src``, or drops a lock or a
reference a migration in flight holds, through ``me.migrate_vma``, the split
API or the compiled helpers. 4.14 trusts its driver (each of these corrupts
memory there); the engine leaves a clean machine and says what went wrong.
Every machine is checked at teardown (``make_machine``), and every byte is
read back.
"""

from __future__ import annotations

import numpy as np
import pytest
from numba import njit

import migengine as me
from migengine import kernels
from migengine.kernels import layout as L
from tests.helpers import assert_data, filled

NPAGES = 4


# Cached functions here embed the kernels' code but are keyed on this file only
# (numba #1833): drop them when the kernels changed.
kernels.drop_stale_user_cache(__file__)


@njit(cache=True)
def _alloc_then_scribble_src(state, vma_index, src, dst, start, end, private):
    """A device page for slot 0, then a driver bug: src[0] overwritten."""
    lay = state.layout
    d = kernels.alloc_page(state, True)
    kernels.copy_page(state, d, kernels.mpfn_to_pfn(state, src[0]))
    dst[0] = kernels.migrate_pfn(state, d) | lay[L.L_LOCKED] | (src[0] & lay[L.L_WRITE])
    src[0] = np.uint64(0xFFFFFFFFFFFFFFFF)


@njit(cache=True)
def _nothing(state, vma_index, src, dst, start, end, private):
    pass


@njit(cache=True)
def _drop_a_source(state, vma_index, src, dst, start, end, private):
    """A driver bug: unlock and put the page of slot 0, which the migration holds.
    The helpers refuse (-EBUSY); ``private`` collects what they returned."""
    pfn = kernels.mpfn_to_pfn(state, src[0])
    private[0] = kernels.unlock_page(state, pfn)
    private[1] = kernels.put_page(state, pfn)


@njit(cache=True)
def _scribble_src_in_finalize(state, vma_index, src, dst, start, end, private):
    src[1] = np.uint64(0)


@pytest.mark.parametrize("profile", ["hmm-v25", "seed"])
def test_an_njit_callback_that_writes_src_is_undone(make_machine, profile):
    """src is the migration's record of what it collected: an @njit
    alloc_and_copy that overwrites it (a pfn past the machine here, which the
    passes would index with) gets MigengineError; the migration is unwound
    from the engine's copy of the record, as if no slot had a destination."""
    m = make_machine(64, 16, profile=profile)
    p, vma = filled(m, NPAGES)
    src, dst = np.zeros(NPAGES, np.uint64), np.zeros(NPAGES, np.uint64)
    ops = me.MigrateOps(_alloc_then_scribble_src, _nothing)
    with pytest.raises(me.MigengineError, match=r"alloc_and_copy callback wrote src\[0\]"):
        me.migrate_vma(ops, vma, vma.start, vma.end, src, dst)
    assert {p.translate(vma.start + i * 4096).kind for i in range(NPAGES)} == {"present"}
    assert m.free_pages(device=True) == 16  # the destination was put back
    assert_data(p, vma, range(NPAGES))
    m.check()


def test_an_njit_finalize_and_map_that_writes_src_is_completed(make_machine):
    """Past the pages pass the moves stand: finalize runs from the record."""
    m = make_machine(64, 16)
    p, vma = filled(m, NPAGES)
    src, dst = np.zeros(NPAGES, np.uint64), np.zeros(NPAGES, np.uint64)
    ops = me.MigrateOps(kernels.device_alloc_and_copy, _scribble_src_in_finalize)
    with pytest.raises(me.MigengineError, match=r"finalize_and_map callback wrote src\[1\]"):
        me.migrate_vma(ops, vma, vma.start, vma.end, src, dst, 0)
    assert {p.translate(vma.start + i * 4096).kind for i in range(NPAGES)} == {"device"}
    assert_data(p, vma, range(NPAGES))
    m.check()


@pytest.mark.parametrize("profile", ["hmm-v25", "seed"])
def test_compiled_helpers_leave_a_migration_s_pages_alone(make_machine, profile):
    """kernels.unlock_page and kernels.put_page refuse (-EBUSY) a page a
    migration in flight holds: its lock and references are the migration's."""
    m = make_machine(64, 16, profile=profile)
    p, vma = filled(m, NPAGES)
    got = np.zeros(2, np.int64)
    src, dst = np.zeros(NPAGES, np.uint64), np.zeros(NPAGES, np.uint64)
    me.migrate_vma(me.MigrateOps(_drop_a_source, _nothing), vma, vma.start, vma.end, src, dst, got)
    assert got.tolist() == [-16, -16]
    assert_data(p, vma, range(NPAGES))
    m.check()


def test_putting_a_filled_destination_in_finalize_and_map_is_refused(make_machine, profile):
    """m.put_page of a destination the pages pass filled (locked, mapped to
    the migration) raises MigengineError in the callback; the migration still
    completes, then the error propagates."""
    m = make_machine(64, 16, profile=profile)
    p, vma = filled(m, NPAGES)
    lay = m.layout

    def alloc(vma_, src, dst, start, end, private):
        for i in range(NPAGES):
            d = m.alloc_page(device=True)
            m.copy_page(d, m.mpfn_to_pfn(src[i]))
            dst[i] = m.migrate_pfn(d) | lay.LOCKED | (src[i] & lay.WRITE)

    def fin(vma_, src, dst, start, end, private):
        m.put_page(m.mpfn_to_pfn(dst[0]))

    src, dst = np.zeros(NPAGES, np.uint64), np.zeros(NPAGES, np.uint64)
    with pytest.raises(me.MigengineError, match="migration in flight"):
        me.migrate_vma(me.MigrateOps(alloc, fin), vma, vma.start, vma.end, src, dst)
    assert_data(p, vma, range(NPAGES))
    m.check()


def test_split_api_src_written_after_setup(make_machine, profile):
    """The split API keeps the core's record too: pages refuses a src written
    since setup (nothing changed); finalize finishes from the record, puts it
    back in src, and says so."""
    m = make_machine(64, 16, profile=profile)
    p, vma = filled(m, NPAGES)
    args = me.MigrateVma(
        vma, vma.start, vma.end, np.zeros(NPAGES, np.uint64), np.zeros(NPAGES, np.uint64)
    )
    me.migrate_vma_setup(args)
    saved = args.src.copy()
    args.src[0] = np.uint64(2**64 - 1)
    with pytest.raises(ValueError, match="src was written"):
        me.migrate_vma_pages(args)
    with pytest.raises(ValueError, match="finished from the core's record"):
        me.migrate_vma_finalize(args)
    assert np.array_equal(args.src, saved)
    with pytest.raises(ValueError, match="finalized"):
        me.migrate_vma_pages(args)
    assert_data(p, vma, range(NPAGES))
    m.check()


def test_copy_page_refuses_free_frames(make_machine):
    m = make_machine(64, 16)
    p, vma = filled(m, 1)
    page = p.translate(vma.start).pfn
    free = m.ram_pages + 5  # a device frame nobody allocated
    for dst, src in ((free, page), (page, free)):
        with pytest.raises(ValueError, match="free frame"):
            m.copy_page(dst, src)
    assert_data(p, vma, [0])


def test_sizes_past_this_machine_s_memory_are_value_errors():
    """A machine or a trace larger than RAM is refused before numpy allocates."""
    for kwargs in ({"ram_pages": 2**40}, {"ram_pages": 16, "swap_pages": 2**50}):
        with pytest.raises(ValueError, match="GiB"):
            me.Machine(**kwargs)
    with pytest.raises(ValueError, match="GiB"):
        me.Trace.synthetic("random", pages=10, accesses=2**40)
    tr = me.Trace.synthetic("random", pages=10, accesses=100)
    with pytest.raises(ValueError, match="chunk_accesses"):
        me.simulate(tr, me.SimConfig(device_pages=64), chunk_accesses=-1)


def test_compiled_split_api_refuses_arrays_of_another_type(make_machine):
    """kernels.migrate_vma_setup/_pages/_finalize with a float64 or a read-only
    src compile to -22 (numba would not type the passes' bit operations on them)."""
    m = make_machine(64, 16)
    p, vma = filled(m, 2)
    dst = np.zeros(2, np.uint64)
    ro = np.zeros(2, np.uint64)
    ro.flags.writeable = False
    for src in (np.zeros(2, np.float64), ro):
        for fn in (
            kernels.migrate_vma_setup,
            kernels.migrate_vma_pages,
            kernels.migrate_vma_finalize,
        ):
            assert fn(m.state, vma.index, vma.start, vma.end, src, dst) == -22
    assert m.counters["migrate_vma_calls"] == 0
    assert_data(p, vma, range(2))
