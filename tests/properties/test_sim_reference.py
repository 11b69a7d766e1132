"""``me.simulate`` against the pure-Python reference driver model (tests/reference/uvm_model.py).

Both sides are written from docs/workloads.md, independently: hypothesis draws small
traces (1-4 VA blocks far apart, sequential, strided, random and clustered segments,
some writes, some CPU accesses) and configurations (every prefetcher, every eviction
order, two user policies, units of 1 to 512 pages, batches of 1 to 300 faults,
devices from one unit to ~1500 pages), and every residency counter of the compiled
run must equal the model's, with the run's own machine passing ``check()``.

The scenarios below check single rules of the spec with values worked out by hand.
"""

from __future__ import annotations

import os

import numpy as np
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from numba import njit

import migengine as me
from migengine.sim import SimConfig, simulate
from tests.reference.uvm_model import COUNTERS, simulate_reference

# VA blocks far apart (and one next to another), so packing them is exercised.
BLOCK_BASES = (0x7F0000000000, 0x10000000, 0x10200000, 0x3FE00000)
PAGE = 4096
MIGRATE_PAGES = (1, 2, 16, 64, 512)


@njit
def oldest_first_use(units, last_use, first_use, uses, now):  # pragma: no cover - compiled
    """User policy: the unit that became resident first (FIFO by another route)."""
    return np.argmin(first_use)


@njit
def fewest_uses(units, last_use, first_use, uses, now):  # pragma: no cover - compiled
    """User policy: the unit with the fewest device hits since it became resident."""
    return np.argmin(uses)


@njit
def past_the_end(units, last_use, first_use, uses, now):  # pragma: no cover - compiled
    """An invalid policy: a position one past the last unit."""
    return len(units)


@njit
def minus_one(units, last_use, first_use, uses, now):  # pragma: no cover - compiled
    """An invalid policy: a negative position."""
    return -1


POLICIES = {"oldest_first_use": oldest_first_use, "fewest_uses": fewest_uses}


# ================================================================================ traces
def make_trace(segments, nblocks, seed):
    """The trace's columns from hypothesis-drawn segments.

    A segment is (block, kind, start, length, stride, write_every, cpu_every): ``kind``
    0 walks pages ``start + i * stride`` (mod 512), 1 draws pages uniformly, 2 draws
    pages within 24 of ``start``. Every ``write_every``-th access writes and every
    ``cpu_every``-th is a CPU access (0: none). Byte offsets are random.
    """
    rng = np.random.default_rng(seed)
    bases = BLOCK_BASES[:nblocks]
    addr: list[int] = []
    write: list[bool] = []
    proc: list[int] = []
    for block, kind, start, length, stride, write_every, cpu_every in segments:
        if kind == 0:
            pages = [(start + i * stride) % 512 for i in range(length)]
        elif kind == 1:
            pages = rng.integers(0, 512, length).tolist()
        else:
            pages = np.clip(start + rng.integers(-24, 25, length), 0, 511).tolist()
        offsets = rng.integers(0, PAGE, length).tolist()
        base = bases[block % nblocks]
        for i, (p, off) in enumerate(zip(pages, offsets, strict=True)):
            addr.append(base + p * PAGE + off)
            write.append(bool(write_every) and i % write_every == 0)
            proc.append(-1 if cpu_every and i % cpu_every == cpu_every - 1 else 0)
    return (
        np.array(addr, dtype=np.uint64),
        np.array(write, dtype=bool),
        np.array(proc, dtype=np.int8),
    )


segment = st.tuples(
    st.integers(0, 3),  # block
    st.integers(0, 2),  # kind
    st.integers(0, 511),  # start
    st.integers(1, 400),  # length
    st.sampled_from((1, 1, 1, 2, -1, 5)),  # stride
    st.sampled_from((0, 1, 3, 7)),  # write_every
    st.sampled_from((0, 0, 0, 5, 40)),  # cpu_every
)


BUILTIN_EVICT = st.sampled_from(("lru", "fifo", "random"))


@st.composite
def configs(draw, evict=BUILTIN_EVICT):
    """SimConfig keyword arguments (``evict`` a name or a POLICIES key)."""
    mp = draw(st.sampled_from(MIGRATE_PAGES))
    return dict(
        device_pages=draw(st.one_of(st.just(mp), st.integers(mp, 1500))),
        migrate_pages=mp,
        batch_faults=draw(st.one_of(st.sampled_from((1, 2, 256)), st.integers(1, 300))),
        prefetch=draw(st.sampled_from(("none", "sequential", "tree"))),
        evict=draw(evict),
        seed=draw(st.integers(0, 2**32)),
    )


def run_both(addr, write, proc, cfg, store_data=False):
    """Run the engine and the model; return both counter dicts (and check the machine)."""
    kwargs = dict(cfg)
    if kwargs["evict"] in POLICIES:
        kwargs["evict"] = POLICIES[kwargs["evict"]]
    res = simulate(me.Trace(addr, write, proc), SimConfig(store_data=store_data, **kwargs))
    res.machine.check()
    ref = simulate_reference(addr, write, proc, **kwargs)
    return {k: res.stats[k] for k in COUNTERS}, ref


def assert_same(addr, write, proc, cfg, store_data):
    """Every counter of the engine's run equals the model's; events for the statistics."""
    got, want = run_both(addr, write, proc, cfg, store_data)
    n = len(addr)
    event(f"accesses {'<100' if n < 100 else '<1000' if n < 1000 else '>=1000'}")
    event(f"evictions {'0' if not want['evictions'] else '>0'}")
    event(f"remote accesses {'0' if not want['remote_accesses'] else '>0'}")
    event(f"cpu faults {'0' if not want['cpu_faults'] else '>0'}")
    diff = {k: (got[k], want[k]) for k in COUNTERS if got[k] != want[k]}
    assert not diff, f"engine vs model (engine, model): {diff} for {cfg}"


SETTINGS = dict(deadline=None, suppress_health_check=[HealthCheck.too_slow])
# SIMREF_EXAMPLES=5000 for a long local hunt (the user-policy test runs a tenth of it).
_EXAMPLES = int(os.environ.get("SIMREF_EXAMPLES", "800"))


@settings(max_examples=_EXAMPLES, **SETTINGS)
@given(
    segments=st.lists(segment, min_size=1, max_size=20),
    nblocks=st.integers(1, 4),
    trace_seed=st.integers(0, 2**32),
    cfg=configs(),
    store_data=st.booleans(),
)
def test_builtin_policies_match_model(segments, nblocks, trace_seed, cfg, store_data):
    """lru, fifo and random eviction, every prefetcher: every counter equals the model's."""
    addr, write, proc = make_trace(segments, nblocks, trace_seed)
    assert_same(addr, write, proc, cfg, store_data)


@settings(max_examples=max(_EXAMPLES // 10, 10), **SETTINGS)
@given(
    segments=st.lists(segment, min_size=1, max_size=10),
    nblocks=st.integers(1, 4),
    trace_seed=st.integers(0, 2**32),
    cfg=configs(evict=st.sampled_from(sorted(POLICIES))),
    store_data=st.booleans(),
)
def test_user_policies_match_model(segments, nblocks, trace_seed, cfg, store_data):
    """A user's @njit policy sees the same units, first_use and uses as the model's."""
    addr, write, proc = make_trace(segments, nblocks, trace_seed)
    assert_same(addr, write, proc, cfg, store_data)


# ============================================================================= scenarios
def stream(npages, base=0x10000000, proc=0):
    """One device (or CPU) read per page, pages 0..npages-1 of the block at ``base``."""
    addr = np.arange(npages, dtype=np.uint64) * PAGE + np.uint64(base)
    return addr, np.zeros(npages, bool), np.full(npages, proc, np.int8)


def both(addr, write, proc, **cfg):
    """The engine's counters, after checking that the model agrees on every one."""
    cfg.setdefault("seed", 0)
    got, want = run_both(addr, write, proc, cfg, store_data=True)
    assert got == want
    return got


def test_sequential_stream_on_demand():
    """One access per page over one block, 4 KiB units, no prefetch: every page faults.

    256 faults fill the first batch, the 257th closes it; the rest is serviced at the
    end: 2 batches, each one run (one migrate_vma()) of 256 pages.
    """
    s = both(
        *stream(512),
        device_pages=1024,
        migrate_pages=1,
        batch_faults=256,
        prefetch="none",
        evict="lru",
    )
    assert s["device_faults"] == 512 and s["device_hits"] == 0
    assert s["fault_batches"] == 2 and s["faults_serviced"] == 512
    assert s["pages_to_device"] == 512 and s["pages_prefetched"] == 0
    assert s["migrate_calls"] == 2 and s["resident_pages"] == 512


def test_sequential_stream_units_coalesce():
    """16-page units, batches of 256: 16 units per batch, the other 240 entries coalesce."""
    s = both(
        *stream(512),
        device_pages=1024,
        migrate_pages=16,
        batch_faults=256,
        prefetch="none",
        evict="lru",
    )
    assert s["device_faults"] == 512 and s["faults_coalesced"] == 2 * 240
    assert s["pages_to_device"] == 512 and s["fault_batches"] == 2


def test_sequential_prefetcher_stream():
    """The 64 KiB prefetcher with batches of one: two faults per 16-page block.

    Page 16j faults and waits; page 16j+1 faults too (it is not resident yet), which
    services the batch {16j}: the 64 KiB block [16j, 16j+16) moves (1 page to the device,
    15 prefetched) and page 16j+1 joins the next batch, which adds nothing. Pages
    16j+2..16j+15 hit. So 32 * 2 = 64 faults, 64 batches, 32 pages in, 480 prefetched.
    """
    s = both(
        *stream(512),
        device_pages=1024,
        migrate_pages=1,
        batch_faults=1,
        prefetch="sequential",
        evict="lru",
    )
    assert s["device_faults"] == 64 and s["device_hits"] == 448
    assert s["fault_batches"] == 64
    assert s["pages_to_device"] == 32 and s["pages_prefetched"] == 480


def test_tree_prefetcher_stream():
    """The density tree (51%) with batches of one over a sequential stream: 26 faults.

    With batches of one, the entry for page q is serviced when the next fault arrives
    (that access has already faulted, so it faults even if the service brings its page
    in). Serviced with [0, r) resident plus q, the largest region around q with
    count * 100 > size * 51 is prefetched.
    - Pages 0, 1, 2, 3 fault: servicing {0} (1 of [0,2)) and {1} ([0,2) full, [0,4) 2/4
      = 50%) prefetch nothing; servicing {2} at page 3's fault (3/4 > 51%) brings in
      page 3 and [0, 4) is resident. 4 faults, pages 0, 1, 2 moved as faulted.
    - With [0, 2^j) resident, pages 2^j, 2^j+1, ... fault until the serviced count
      2^j + c passes 51% of 2^(j+1), i.e. c > 0.02 * 2^j; the page that closes that
      batch faults too. c = 1 for 2^j = 4, 8, 16, 32 (faults 4,5 / 8,9 / 16,17 /
      32,33); c = 2 for 64 (faults 64..66); c = 3 for 128 (faults 128..131).
    - 2^j = 256 needs 262 of 512. On the way the small regions fill: servicing {257}
      gives [256,258) (nothing new), {258} gives [256,260) at 3/4 (259 comes in, but its
      access already faulted), {259} nothing, {260} gives [256,264) at 5/8 (261..263
      come in, 261's access already faulted), and {261}, closed by page 264's fault,
      sees 264 > 261.12 and brings in the block. Faults 256..261 and 264: 7.
    Total 4 + 2*4 + 3 + 4 + 7 = 26 faults (486 hits), 26 batches. Pages moved as
    faulted pages: 0, 1, 2; 4, 8, 16, 32; 64, 65; 128..130; 256, 257, 258, 260: 16 to
    the device, 496 prefetched.
    """
    s = both(
        *stream(512),
        device_pages=1024,
        migrate_pages=1,
        batch_faults=1,
        prefetch="tree",
        evict="lru",
    )
    assert s["device_faults"] == 26 and s["device_hits"] == 486
    assert s["fault_batches"] == 26
    assert s["pages_to_device"] == 16 and s["pages_prefetched"] == 496


def test_tree_prefetcher_half_block_is_not_enough():
    """A batch of the first 256 pages fills [0, 256) but 256/512 is not above 51%: the
    other half faults too (512 faults, nothing prefetched)."""
    s = both(
        *stream(512),
        device_pages=1024,
        migrate_pages=1,
        batch_faults=256,
        prefetch="tree",
        evict="lru",
    )
    assert s["device_faults"] == 512 and s["pages_prefetched"] == 0


def test_outstanding_fault_is_serviced_then_replayed():
    """Case 2: a second access to a page whose fault is in the open batch services the
    batch and replays as a hit."""
    addr = np.array([0x10000000, 0x10000008], np.uint64)
    s = both(
        addr,
        np.array([False, True]),
        np.zeros(2, np.int8),
        device_pages=16,
        migrate_pages=1,
        batch_faults=256,
        prefetch="none",
        evict="lru",
    )
    assert s["device_faults"] == 1 and s["device_hits"] == 1 and s["fault_batches"] == 1


def test_no_frame_left_is_a_remote_access():
    """One device frame, two faults in one batch, then page 1 again.

    The batch (pages 0 and 1) is serviced at the third access: nothing can be evicted,
    so want = req, one migrate_vma() over [0, 2) moves page 0 and fails page 1. The
    replay of page 1 is a remote access (a fault too); its batch entry completes
    remotely as well: 3 faults, 2 remote accesses, 1 page in.
    """
    addr = np.array([0, PAGE, PAGE], np.uint64) + np.uint64(0x10000000)
    s = both(
        addr,
        np.zeros(3, bool),
        np.zeros(3, np.int8),
        device_pages=1,
        migrate_pages=1,
        batch_faults=256,
        prefetch="none",
        evict="lru",
    )
    assert s["device_faults"] == 3 and s["remote_accesses"] == 2
    assert s["pages_to_device"] == 1 and s["migrate_calls"] == 1


def test_lru_evicts_least_recently_migrated_block():
    """2 MiB units on a device of one block: A, B, A, B... each block move evicts the
    other one, and a hit on A does not make A recently used.

    Accesses: A (fault), B (fault; services {A}: A in), A (hit), end: services {B}:
    no room, evict A (512 pages, one run), B in.
    """
    addr = np.array([0x10000000, 0x7F0000000000, 0x10000000], np.uint64)
    s = both(
        addr,
        np.zeros(3, bool),
        np.zeros(3, np.int8),
        device_pages=512,
        migrate_pages=512,
        batch_faults=1,
        prefetch="none",
        evict="lru",
    )
    assert s["device_faults"] == 2 and s["device_hits"] == 1
    assert s["evictions"] == 1 and s["pages_evicted"] == 512
    assert s["pages_to_device"] == 1024 and s["migrate_calls"] == 3
    assert s["resident_pages"] == 512


def test_cpu_access_faults_a_device_page_back():
    """A CPU access services the open batch first, then faults the page back from the
    device (one CPU fault); the page is no longer resident."""
    addr = np.array([0x10000000, 0x10000010], np.uint64)
    s = both(
        addr,
        np.array([True, True]),
        np.array([0, -1], np.int8),
        device_pages=16,
        migrate_pages=1,
        batch_faults=256,
        prefetch="none",
        evict="lru",
    )
    assert s["device_faults"] == 1 and s["cpu_accesses"] == 1 and s["cpu_faults"] == 1
    assert s["pages_to_device"] == 1 and s["resident_pages"] == 0


@pytest.mark.parametrize("write", [False, True])
def test_cpu_access_without_store_data(write):
    """store_data=False only drops the bytes: a CPU access still runs the CPU path (one
    CPU access, no CPU fault: the page was never on the device)."""
    addr = np.array([0x10000000], np.uint64)
    res = simulate(
        me.Trace(addr, np.array([write]), np.array([-1], np.int8)),
        SimConfig(device_pages=1, migrate_pages=1, store_data=False),
    )
    res.machine.check()
    assert res.stats["cpu_accesses"] == 1 and res.stats["cpu_faults"] == 0


@pytest.mark.parametrize("policy", [past_the_end, minus_one])
def test_user_policy_out_of_range_raises(policy):
    """A policy that returns len(units) or -1 is refused with ValueError (both sides)."""
    addr, write, proc = stream(64)
    cfg = SimConfig(device_pages=16, migrate_pages=1, batch_faults=16, evict=policy)
    with pytest.raises(ValueError):
        simulate(me.Trace(addr, write, proc), cfg)
    with pytest.raises(ValueError):
        simulate_reference(
            addr,
            write,
            proc,
            device_pages=16,
            migrate_pages=1,
            batch_faults=16,
            prefetch="none",
            evict=policy,
        )
