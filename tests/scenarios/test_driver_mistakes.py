"""Driver mistakes: what a buggy driver can hand migrate_vma(), and what is left after.

4.14 trusts its driver: a ``dst`` naming a free frame, the zero page, a page of
someone else or one page twice corrupts memory, and a driver that fails midway
or forks its own process under mmap_sem does not exist there. The engine checks
every ``dst`` entry before the pages pass (kernels.dst_check: an unsound entry
fails its slot as one without a destination, its page untouched, counted in
``migrate_dst_invalid`` and warned about), unwinds a callback that raises, and
refuses what a driver holding mmap_sem cannot do. Each scenario is named after
the driver bug it mirrors; every machine is checked (``m.check()``) at teardown
by the ``make_machine`` fixture, and every byte is read back.
"""

from __future__ import annotations

import re
import warnings

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from numba import njit

import migengine as me
from migengine import kernels
from migengine.kernels import dst_check as kdst
from migengine.kernels import layout as L
from migengine.migrate import CALLBACK_SIGNATURE, InvalidDstWarning
from tests.helpers import HPAGE, PS, assert_data, filled, pfn_at

NPAGES = 4
BAD = 1  # the slot a mistake lands in
DEVICE = [pytest.param(True, id="to-device"), pytest.param(False, id="to-ram")]
DRIVERS = ["python", "njit"]
FUZZ = settings(
    deadline=None, max_examples=25, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


# ---------------------------------------------------------------- the drivers
def python_ops(m: me.Machine, device: bool, words: dict[int, int]) -> me.MigrateOps:
    """A Python driver: a fresh locked page with the data for every MIGRATE slot,
    except that slot ``i`` gets the word ``words[i]`` instead."""

    def alloc_and_copy(vma, src, dst, start, end, private):
        for i in range((end - start) // PS):
            if i in words:
                dst[i] = words[i]
            elif src[i] & m.layout.MIGRATE:
                pfn = m.alloc_page(device=device)
                spfn = m.mpfn_to_pfn(src[i])
                m.copy_page(pfn, spfn if spfn >= 0 else m.zero_pfn)
                dst[i] = m.migrate_pfn(pfn) | m.layout.LOCKED | (src[i] & m.layout.WRITE)

    return me.MigrateOps(alloc_and_copy, lambda *args: None)


# Cached functions here embed the kernels' code but are keyed on this file only
# (numba #1833): drop them when the kernels changed.
kernels.drop_stale_user_cache(__file__)


@njit(cache=True)
def _njit_alloc(state, vma_index, src, dst, start, end, private):
    """The same driver compiled: ``private[0]`` 1 for device pages, ``private[1 + i]``
    a word for slot i (0: allocate and copy as a driver does)."""
    lay = state.layout
    device = private[0] != 0
    for i in range((end - start) // state.sys[L.SYS_PAGE_SIZE]):
        if private[i + 1] != 0:
            dst[i] = private[i + 1]
            continue
        if (src[i] & lay[L.L_MIGRATE]) == 0:
            continue
        dpfn = kernels.alloc_page(state, device)
        spfn = kernels.mpfn_to_pfn(state, src[i])
        kernels.copy_page(state, dpfn, spfn if spfn >= 0 else state.sys[L.SYS_ZERO_PFN])
        dst[i] = kernels.migrate_pfn(state, dpfn) | lay[L.L_LOCKED] | (src[i] & lay[L.L_WRITE])


@njit(cache=True)
def _njit_nothing(state, vma_index, src, dst, start, end, private):
    pass


@njit(cache=True)
def _njit_alloc_then_raise(state, vma_index, src, dst, start, end, private):
    _njit_alloc(state, vma_index, src, dst, start, end, private)
    raise RuntimeError("driver bug in alloc_and_copy")


@njit(cache=True)
def _njit_finalize_raises(state, vma_index, src, dst, start, end, private):
    raise RuntimeError("driver bug in finalize_and_map")


def njit_private(device: bool, words: dict[int, int], n: int = NPAGES) -> np.ndarray:
    private = np.zeros(n + 1, np.uint64)
    private[0] = int(device)
    for i, word in words.items():
        private[i + 1] = word
    return private


def run(m, vma, driver: str, device: bool, words: dict[int, int]) -> np.ndarray:
    """me.migrate_vma over the whole VMA with the Python or the compiled driver."""
    src, dst = np.zeros(vma.npages, np.uint64), np.zeros(vma.npages, np.uint64)
    if driver == "python":
        me.migrate_vma(python_ops(m, device, words), vma, vma.start, vma.end, src, dst)
    else:
        ops = me.MigrateOps(_njit_alloc, _njit_nothing)
        private = njit_private(device, words, vma.npages)
        me.migrate_vma(ops, vma, vma.start, vma.end, src, dst, private)
    return dst


def world(make_machine, profile, npages: int = NPAGES):
    """A process with ``npages`` filled pages, another with a THP, and the LRU-add
    batches drained (so the migration's own drain changes no bystander)."""
    m = make_machine(2 * HPAGE + 64, 32, profile=profile)
    p, vma = filled(m, npages)
    other = m.new_process()
    huge = other.mmap(HPAGE, thp=True)
    other.populate(huge.start, huge.end)
    assert other.translate(huge.start).huge
    m.lru_add_drain_all()
    return m, p, vma, other, huge


def snapshot(m: me.Machine, pfn: int) -> tuple[me.PageInfo, bytes]:
    return m.page(pfn), m.frame(pfn)


# ---------------------------------------------------------------- one unsound entry
def _free_frame(m, p, vma, other, huge, device):
    pfn = m.ram_pages - 1  # the allocator hands out the lowest frame first
    assert m.page(pfn).free
    return pfn, None


def _zero_page(m, p, vma, other, huge, device):
    return m.zero_pfn, None


def _past_the_machine(m, p, vma, other, huge, device):
    return m.nframes + 3, None


def _unlocked_page(m, p, vma, other, huge, device):
    pfn = m.alloc_page(device=device)
    m.pin(pfn)  # held by the pin, so the unlocked page is no leak
    kernels.unlock_page(m.state, pfn)

    def cleanup():
        m.unpin(pfn)
        m.put_page(pfn)

    return pfn, cleanup


def _another_process_page(m, p, vma, other, huge, device):
    q = m.new_process()
    v = q.mmap(1)
    mine = b"someone else's"
    q.write(v.start, mine)
    m.lru_add_drain_all()
    pfn = q.translate(v.start).pfn
    m.lock_page(pfn)  # locked, even: by its owner, not by the driver

    def cleanup():
        m.unlock_page(pfn)
        assert q.read(v.start, len(mine)) == mine

    return pfn, cleanup


def _thp_tail(m, p, vma, other, huge, device):
    return other.translate(huge.start).pfn + 7, None


MISTAKES = {
    # use after free: the driver put (or never allocated) the page it names
    "driver_hands_over_a_free_frame": (_free_frame, kdst.DST_FREE),
    # the page every zero read maps, which a copy would change for everyone
    "driver_hands_over_the_zero_page": (_zero_page, kdst.DST_ZERO_PAGE),
    # a garbled pfn: migrate_pfn_to_page() past the end of the memmap
    "driver_names_a_pfn_past_the_machine": (_past_the_machine, kdst.DST_OUT_OF_RANGE),
    # the driver forgot lock_page() on its new page
    "driver_forgets_to_lock_its_page": (_unlocked_page, kdst.DST_NOT_LOCKED),
    # a page another process maps (and someone else holds locked)
    "driver_hands_over_another_process_page": (_another_process_page, kdst.DST_IN_USE),
    # a 4 KiB slot given a piece of a transparent huge page
    "driver_hands_over_a_thp_tail": (_thp_tail, kdst.DST_WRONG_KIND),
}


@pytest.mark.parametrize("driver", DRIVERS)
@pytest.mark.parametrize("device", DEVICE)
@pytest.mark.parametrize("mistake", sorted(MISTAKES))
def test_an_unsound_dst_fails_its_slot_and_leaves_the_page_alone(
    make_machine, profile, driver, device, mistake
):
    setup, reason = MISTAKES[mistake]
    m, p, vma, other, huge = world(make_machine, profile)
    old = [pfn_at(p, vma, i) for i in range(NPAGES)]
    pfn, cleanup = setup(m, p, vma, other, huge, device)
    before = snapshot(m, pfn) if pfn < m.nframes else None
    counted = m.counters["migrate_dst_invalid"]
    word = int(m.migrate_pfn(pfn) | m.layout.LOCKED)
    with pytest.warns(InvalidDstWarning, match=rf"dst\[{BAD}\] \(pfn {pfn}\)") as caught:
        dst = run(m, vma, driver, device, {BAD: word})
    [warning] = [w.message for w in caught if isinstance(w.message, InvalidDstWarning)]
    assert (warning.slot, warning.reason, warning.pfn) == (BAD, reason, pfn)
    assert m.counters["migrate_dst_invalid"] == counted + 1
    assert dst[BAD] == 0  # dropped: the slot had no destination
    if before is not None:
        assert snapshot(m, pfn) == before
    assert pfn_at(p, vma, BAD) == old[BAD]  # not migrated
    assert all(pfn_at(p, vma, i) != old[i] for i in range(NPAGES) if i != BAD)
    assert not any(m.page(x).locked for x in old)
    m.check()
    assert_data(p, vma, range(NPAGES))
    if cleanup is not None:
        cleanup()


@pytest.mark.parametrize("driver", DRIVERS)
@pytest.mark.parametrize("device", DEVICE)
def test_driver_hands_the_same_page_to_two_slots(make_machine, profile, driver, device):
    """One page named twice: the first slot takes it, the second fails as one
    without a destination (no page ends up holding two slots' mappings)."""
    m, p, vma, *_ = world(make_machine, profile)
    old = [pfn_at(p, vma, i) for i in range(NPAGES)]
    page = m.alloc_page(device=device)
    m.copy_page(page, old[0])
    word = int(m.migrate_pfn(page) | m.layout.LOCKED | m.layout.WRITE)
    with pytest.warns(InvalidDstWarning, match=rf"dst\[{BAD}\].*slot 0 keeps it") as caught:
        run(m, vma, driver, device, {0: word, BAD: word})
    [warning] = [w.message for w in caught if isinstance(w.message, InvalidDstWarning)]
    assert (warning.slot, warning.reason, warning.other) == (BAD, kdst.DST_DUPLICATE, 0)
    assert m.counters["migrate_dst_invalid"] == 1
    assert pfn_at(p, vma, 0) == page
    assert pfn_at(p, vma, BAD) == old[BAD]
    assert m.page(page).mapcount == 1
    m.check()
    assert_data(p, vma, range(NPAGES))


@pytest.mark.parametrize("driver", DRIVERS)
def test_driver_names_the_slots_own_source(make_machine, profile, driver):
    """The source page itself as its destination (locked, but by the migration):
    in use, so refused; the page is restored where it was."""
    m, p, vma, *_ = world(make_machine, profile)
    old = pfn_at(p, vma, BAD)
    word = int(m.migrate_pfn(old) | m.layout.LOCKED)
    with pytest.warns(InvalidDstWarning, match="in use"):
        run(m, vma, driver, False, {BAD: word})
    assert pfn_at(p, vma, BAD) == old
    assert not m.page(old).locked
    m.check()
    assert_data(p, vma, range(NPAGES))


@pytest.mark.parametrize("driver", DRIVERS)
def test_a_ram_page_for_a_system_page_is_a_numa_migration_not_a_mistake(
    make_machine, profile, driver
):
    """4.14's pages pass accepts a system destination for any source (the NUMA
    case migrate_vma also serves), so a RAM page for a RAM page is sound."""
    m, p, vma, *_ = world(make_machine, profile)
    old = [pfn_at(p, vma, i) for i in range(NPAGES)]
    with warnings.catch_warnings():
        warnings.simplefilter("error", InvalidDstWarning)
        run(m, vma, driver, False, {})
    assert m.counters["migrate_dst_invalid"] == 0
    assert all(pfn_at(p, vma, i) != old[i] and pfn_at(p, vma, i) < m.ram_pages for i in range(4))
    assert_data(p, vma, range(NPAGES))


def test_a_driver_that_puts_its_own_page_before_handing_it_over(make_machine, profile):
    """Use after free inside the driver: it put_page()s a destination it already
    wrote into dst. The freed frame is refused and the slot stays."""
    m, p, vma, *_ = world(make_machine, profile)
    old = pfn_at(p, vma, BAD)
    ops = python_ops(m, True, {})

    def alloc_then_put(vma_, src, dst, start, end, private):
        ops.alloc_and_copy(vma_, src, dst, start, end, private)
        page = m.mpfn_to_pfn(dst[BAD])
        kernels.unlock_page(m.state, page)
        m.put_page(page)

    src, dst = np.zeros(NPAGES, np.uint64), np.zeros(NPAGES, np.uint64)
    with pytest.warns(InvalidDstWarning, match="free"):
        me.migrate_vma(
            me.MigrateOps(alloc_then_put, ops.finalize_and_map), vma, vma.start, vma.end, src, dst
        )
    assert pfn_at(p, vma, BAD) == old
    m.check()
    assert_data(p, vma, range(NPAGES))


# ---------------------------------------------------------------- random bits in dst
def _word(m: me.Machine, pfns: list[int]) -> st.SearchStrategy[int]:
    """Garbage, or a VALID word naming one of ``pfns`` or a pfn past the machine,
    with random flag bits."""
    shift = int(m.layout.SHIFT)
    flags = st.integers(0, (1 << shift) - 1)
    named = st.one_of(st.sampled_from(pfns), st.integers(m.nframes, (1 << (64 - shift)) - 1))
    valid = st.builds(lambda pfn, f: (pfn << shift) | f | 1, named, flags)
    # Garbage never names an in-machine frame with VALID: such a word may name the
    # frame the driver allocates for a later slot, which is then a sound
    # destination (the first slot keeps it), not garbage. ``valid`` covers naming.
    vbit = int(m.layout.VALID)
    garbage = st.integers(0, 2**64 - 1).filter(
        lambda w: not (w & vbit) or (w >> shift) >= m.nframes
    )
    return st.one_of(garbage, valid)


@FUZZ
@given(data=st.data())
def test_random_bits_in_dst_from_a_python_driver(make_machine, profile, data):
    """Whatever a Python driver writes in dst, pages it did not allocate do not
    change, every VALID word naming one is refused, and the data is intact."""
    m = make_machine(48, 16, profile=profile)
    p, vma = filled(m, 6)
    m.lru_add_drain_all()
    sources = [pfn_at(p, vma, i) for i in range(6)]
    everyone = list(range(m.nframes))
    words = {
        i: data.draw(_word(m, everyone), label=f"dst[{i}]")
        for i in range(6)
        if data.draw(st.booleans(), label=f"garbage in slot {i}")
    }
    given_pages: set[int] = set()  # the driver's pages still in dst
    touched: set[int] = set()  # every page the driver allocated
    written: dict[int, int] = {}
    ops = python_ops(m, data.draw(st.booleans(), label="device"), {})

    def alloc_and_copy(vma_, src, dst, start, end, private):
        ops.alloc_and_copy(vma_, src, dst, start, end, private)
        touched.update(m.mpfn_to_pfn(x) for x in dst if x)
        for i in range(6):
            if i in words:
                if dst[i]:  # the driver's own page for this slot: release it
                    kernels.unlock_page(m.state, m.mpfn_to_pfn(dst[i]))
                    m.put_page(m.mpfn_to_pfn(dst[i]))
                    dst[i] = 0
            elif dst[i]:
                given_pages.add(m.mpfn_to_pfn(dst[i]))
        for i, word in words.items():
            if m.mpfn_to_pfn(word) not in given_pages:  # not another slot's own page
                dst[i] = written[i] = word

    bystanders = {
        pfn: snapshot(m, pfn)
        for word in words.values()
        if 0 <= (pfn := m.mpfn_to_pfn(word)) < m.nframes and pfn not in sources
    }
    src, dst = np.zeros(6, np.uint64), np.zeros(6, np.uint64)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        me.migrate_vma(
            me.MigrateOps(alloc_and_copy, ops.finalize_and_map), vma, vma.start, vma.end, src, dst
        )
    refused = sum(1 for w in written.values() if w & int(m.layout.VALID))
    assert m.counters["migrate_dst_invalid"] == refused
    assert sorted(w.message.slot for w in caught if w.category is InvalidDstWarning) == sorted(
        i for i, w in written.items() if w & int(m.layout.VALID)
    )
    for pfn, before in bystanders.items():
        if pfn not in touched:
            assert snapshot(m, pfn) == before, pfn
    m.check()
    assert_data(p, vma, range(6))


@FUZZ
@given(data=st.data())
def test_random_bits_in_dst_from_an_njit_driver(make_machine, profile, data):
    """The compiled driver's words: garbage, the zero page, the sources, pfns past
    the machine. None is sound; each is refused and nothing else changes."""
    m = make_machine(48, 16, profile=profile)
    p, vma = filled(m, 6)
    m.lru_add_drain_all()
    sources = [pfn_at(p, vma, i) for i in range(6)]
    words = {
        i: data.draw(_word(m, [m.zero_pfn, *sources]), label=f"dst[{i}]")
        for i in range(6)
        if data.draw(st.booleans(), label=f"garbage in slot {i}")
    }
    zero = snapshot(m, m.zero_pfn)
    with warnings.catch_warnings(record=True):
        warnings.simplefilter("always")
        run(m, vma, "njit", data.draw(st.booleans(), label="device"), words)
    valid = [i for i, w in words.items() if w & int(m.layout.VALID)]
    assert m.counters["migrate_dst_invalid"] == len(valid)
    assert all(pfn_at(p, vma, i) == sources[i] for i in valid)
    assert snapshot(m, m.zero_pfn)[1] == zero[1]
    m.check()
    assert_data(p, vma, range(6))


# ---------------------------------------------------------------- the split API
@njit
def _own_split_pipeline(state, v, start, end, src, dst, private):
    """A driver's own compiled migrate_vma over the split API."""
    if kernels.migrate_vma_setup(state, v, start, end, src, dst) <= 0:
        return
    _njit_alloc(state, v, src, dst, start, end, private)
    kernels.migrate_vma_pages(state, v, start, end, src, dst)
    kernels.migrate_vma_finalize(state, v, start, end, src, dst)


@njit
def _own_callback_pipeline(state, v, start, end, src, dst, private):
    return kernels.migrate_vma(state, _njit_alloc, _njit_nothing, v, start, end, src, dst, private)


@pytest.mark.parametrize("pipeline", [_own_split_pipeline, _own_callback_pipeline])
def test_a_compiled_driver_s_zero_page_dst_is_refused_and_counted(make_machine, profile, pipeline):
    """From the driver's own @njit code (the split API or kernels.migrate_vma) the
    same check runs; compiled code cannot warn, the counter tells."""
    m, p, vma, *_ = world(make_machine, profile)
    old = pfn_at(p, vma, BAD)
    private = njit_private(True, {BAD: int(m.migrate_pfn(m.zero_pfn) | m.layout.LOCKED)})
    src, dst = np.zeros(NPAGES, np.uint64), np.zeros(NPAGES, np.uint64)
    pipeline(m.state, vma.index, vma.start, vma.end, src, dst, private)
    assert m.counters["migrate_dst_invalid"] == 1
    assert pfn_at(p, vma, BAD) == old
    m.check()
    assert_data(p, vma, range(NPAGES))


def test_the_split_api_called_from_python_warns(make_machine, profile):
    """kernels.migrate_vma_setup / _pages / _finalize driven from Python: the
    pages step warns about the entry it refused."""
    m, p, vma, *_ = world(make_machine, profile)
    old = pfn_at(p, vma, BAD)
    src, dst = np.zeros(NPAGES, np.uint64), np.zeros(NPAGES, np.uint64)
    st_ = m.state
    assert kernels.migrate_vma_setup(st_, vma.index, vma.start, vma.end, src, dst) == NPAGES
    private = njit_private(False, {BAD: int(m.migrate_pfn(m.nframes + 1))})
    _njit_alloc(st_, vma.index, src, dst, vma.start, vma.end, private)
    with pytest.warns(InvalidDstWarning, match=rf"kernels.migrate_vma_pages: dst\[{BAD}\]"):
        kernels.migrate_vma_pages(st_, vma.index, vma.start, vma.end, src, dst)
    kernels.migrate_vma_finalize(st_, vma.index, vma.start, vma.end, src, dst)
    assert pfn_at(p, vma, BAD) == old
    m.check()
    assert_data(p, vma, range(NPAGES))
    src, dst = np.zeros(NPAGES, np.uint64), np.zeros(NPAGES, np.uint64)
    with pytest.warns(InvalidDstWarning, match=r"kernels.migrate_vma: dst\[2\]"):
        private = njit_private(True, {2: int(m.migrate_pfn(m.zero_pfn))})
        kernels.migrate_vma(
            st_, _njit_alloc, _njit_nothing, vma.index, vma.start, vma.end, src, dst, private
        )
    m.check()
    assert_data(p, vma, range(NPAGES))


# ---------------------------------------------------------------- callbacks that raise
def _raising_ops(m, kind: str, position: str):
    if kind == "njit":
        alloc = _njit_alloc_then_raise if position == "alloc_and_copy" else _njit_alloc
        fin = _njit_finalize_raises if position == "finalize_and_map" else _njit_nothing
        return me.MigrateOps(alloc, fin), njit_private(True, {})
    ops = python_ops(m, True, {})

    def alloc(*args):
        ops.alloc_and_copy(*args)
        if position == "alloc_and_copy":
            raise RuntimeError("driver bug in alloc_and_copy")

    def fin(*args):
        raise RuntimeError("driver bug in finalize_and_map")

    return me.MigrateOps(
        alloc, fin if position == "finalize_and_map" else ops.finalize_and_map
    ), None


@pytest.mark.parametrize("kind", DRIVERS)
@pytest.mark.parametrize("position", ["alloc_and_copy", "finalize_and_map"])
def test_a_driver_callback_that_raises_leaves_a_clean_machine(
    make_machine, profile, kind, position
):
    """An exception out of alloc_and_copy unwinds as if no slot had a destination
    (sources restored, the pages given freed); out of finalize_and_map, the moves
    of the pages pass stand and finalize completes them (4.14 always runs
    migrate_vma_finalize after the callback). Either way the error propagates."""
    m, p, vma, *_ = world(make_machine, profile)
    old = [pfn_at(p, vma, i) for i in range(NPAGES)]
    free = m.free_pages(device=True)
    ops, private = _raising_ops(m, kind, position)
    src, dst = np.zeros(NPAGES, np.uint64), np.zeros(NPAGES, np.uint64)
    with pytest.raises(RuntimeError, match=f"driver bug in {position}"):
        me.migrate_vma(ops, vma, vma.start, vma.end, src, dst, private)
    now = [pfn_at(p, vma, i) for i in range(NPAGES)]  # before a read faults them back
    moved = m.counters["pgmigrate_success"]
    assert not any(m.page(pfn).locked for pfn in old + now)
    if position == "alloc_and_copy":
        assert (now, moved) == (old, 0)
        assert m.free_pages(device=True) == free
    else:
        assert all(pfn >= m.ram_pages for pfn in now)
        assert moved == NPAGES
    m.check()
    assert_data(p, vma, range(NPAGES))


# ---------------------------------------------------------------- re-entrancy
def _fork(m, p, src):
    p.fork()


def _mmap(m, p, src):
    p.mmap(5000)  # past the page tables' capacity: the state would be reallocated


def _new_process(m, p, src):
    m.new_process()


def _put_a_source(m, p, src):
    m.put_page(m.mpfn_to_pfn(src[0]))


REENTRANT = {
    "driver_forks_its_process_under_mmap_sem": _fork,
    "driver_mmaps_under_mmap_sem": _mmap,
    "driver_starts_a_process_mid_migration": _new_process,
    "driver_puts_a_source_page_it_does_not_own": _put_a_source,
}


@pytest.mark.parametrize("position", ["alloc_and_copy", "finalize_and_map"])
@pytest.mark.parametrize("action", sorted(REENTRANT))
def test_a_driver_cannot_fork_mmap_or_put_a_source_from_a_callback(
    make_machine, profile, position, action
):
    """The driver holds mmap_sem: fork and mmap (which take it for writing) are
    refused with MigengineError, as is putting a reference the migration holds;
    the migration then unwinds like any raising callback."""
    m, p, vma, *_ = world(make_machine, profile)
    old = [pfn_at(p, vma, i) for i in range(NPAGES)]
    processes, vmas = len(m.processes), len(p.vmas())
    ops = python_ops(m, True, {})

    def act(vma_, src, dst, start, end, private):
        if position == "alloc_and_copy":
            ops.alloc_and_copy(vma_, src, dst, start, end, private)
        REENTRANT[action](m, p, src)

    callbacks = (
        (act, ops.finalize_and_map) if position == "alloc_and_copy" else (ops.alloc_and_copy, act)
    )
    src, dst = np.zeros(NPAGES, np.uint64), np.zeros(NPAGES, np.uint64)
    with pytest.raises(me.MigengineError, match=r"migrate_vma\(\) callback"):
        me.migrate_vma(me.MigrateOps(*callbacks), vma, vma.start, vma.end, src, dst)
    assert (len(m.processes), len(p.vmas())) == (processes, vmas)
    now = [pfn_at(p, vma, i) for i in range(NPAGES)]  # before a read faults them back
    m.check()
    assert_data(p, vma, range(NPAGES))
    assert now == old if position == "alloc_and_copy" else all(x >= m.ram_pages for x in now)
    p.fork()  # and all of it works again once migrate_vma() has returned
    p.mmap(1)


# ---------------------------------------------------------------- bad Python input
def test_device_callbacks_in_a_migrate_ops_of_ones_own(make_machine, profile):
    """me.MigrateOps(kernels.device_alloc_and_copy, kernels.device_finalize_and_map)
    with the default private=None: the device's pipeline, as with m.device.ops."""
    m, p, vma, *_ = world(make_machine, profile)
    ops = me.MigrateOps(kernels.device_alloc_and_copy, kernels.device_finalize_and_map)
    src, dst = np.zeros(NPAGES, np.uint64), np.zeros(NPAGES, np.uint64)
    assert me.migrate_vma(ops, vma, vma.start, vma.end, src, dst) == 0
    assert all(pfn_at(p, vma, i) >= m.ram_pages for i in range(NPAGES))
    assert_data(p, vma, range(NPAGES))


def test_another_machines_device_ops_run_on_the_vmas_machine(make_machine, profile):
    m, p, vma, *_ = world(make_machine, profile)
    m2 = make_machine(16, 8, profile=profile)
    counters = m2.counters
    src, dst = np.zeros(NPAGES, np.uint64), np.zeros(NPAGES, np.uint64)
    assert me.migrate_vma(m2.device.ops, vma, vma.start, vma.end, src, dst) == 0
    assert m.device.counters["calloc"] == NPAGES
    assert m2.counters == counters
    assert_data(p, vma, range(NPAGES))


def test_private_naming_a_device_the_machine_lacks_is_a_value_error(make_machine, profile):
    m, p, vma, *_ = world(make_machine, profile)
    counters = m.counters
    src, dst = np.zeros(NPAGES, np.uint64), np.zeros(NPAGES, np.uint64)
    for ops in (m.device.ops, me.MigrateOps(kernels.system_alloc_and_copy, _njit_nothing)):
        with pytest.raises(ValueError, match="names device 3"):
            me.migrate_vma(ops, vma, vma.start, vma.end, src, dst, 3 << 8)
    assert m.counters == counters


@njit
def _python_style_callback(vma, src, dst, start, end, private):
    pass


@njit
def _callback_wanting_an_array(state, vma_index, src, dst, start, end, private):
    private[0] = 1


@pytest.mark.parametrize(
    "alloc", [_python_style_callback, _callback_wanting_an_array], ids=["six-args", "bad-types"]
)
def test_an_njit_callback_with_the_wrong_signature_is_a_type_error(make_machine, profile, alloc):
    m, p, vma, *_ = world(make_machine, profile)
    counters, ptes = m.counters, m.state.pte.copy()
    src, dst = np.zeros(NPAGES, np.uint64), np.zeros(NPAGES, np.uint64)
    ops = me.MigrateOps(alloc, _njit_nothing)
    with pytest.raises(TypeError, match=re.escape(CALLBACK_SIGNATURE)):
        me.migrate_vma(ops, vma, vma.start, vma.end, src, dst)
    assert m.counters == counters and np.array_equal(m.state.pte, ptes)


def test_extreme_copy_engine_values_act_as_the_largest_sensible_ones(make_machine, profile):
    """chunk_pages=2**63-1 once wrapped to a negative int64 in the kernel array,
    i.e. one-page descriptors; every count now saturates instead."""
    n = 64
    descriptors = {}
    for chunk in (16, n, 2**63 - 1):
        m = make_machine(128, n, profile=profile)
        p, vma = filled(m, n)
        m.device.engine = me.CopyEngine(chunk_pages=chunk, threads=2**63 - 1)
        assert m.device.migrate_to_device(p, vma.start, vma.end) == n
        descriptors[chunk] = m.device.copy_stats["descriptors"]
        assert_data(p, vma, range(n))
    assert descriptors[2**63 - 1] == descriptors[n] <= descriptors[16]
    m = make_machine(128, n, profile=profile)
    p, vma = filled(m, n)
    huge = 2**63 - 1
    m.device.engine = me.CopyEngine(
        parallel_min_bytes=huge,
        parallel_min_pages=huge,
        stream_min_bytes=huge,
        plain_min_pages=huge,
    )
    assert m.device.migrate_to_device(p, vma.start, vma.end) == n
    assert_data(p, vma, range(n))


@pytest.mark.parametrize("device", DEVICE)
def test_put_page_refuses_to_free_a_pinned_page(make_machine, profile, device):
    """get_user_pages() holds the page: the driver's put of a reference it does
    not have is a ValueError, before anything changes."""
    m = make_machine(16, 4, profile=profile)
    pfn = m.alloc_page(device=device)
    m.pin(pfn)
    m.put_page(pfn)  # the allocation's reference: fine
    before = snapshot(m, pfn)
    with pytest.raises(ValueError, match="pin"):
        m.put_page(pfn)
    assert snapshot(m, pfn) == before
    kernels.unlock_page(m.state, pfn)
    m.unpin(pfn)
    assert m.page(pfn).free
