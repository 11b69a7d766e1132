"""me.simulate: the fault-driven driver model, end to end on the engine's real machine.

Each scenario names the mechanism of docs/workloads.md (and the driver or
simulator it follows) that it checks. The byte-level check here is independent
of the simulation's own shadow copy: it reads the written addresses back
through the process's CPU path and compares them with the last write of each
address, computed from the trace with numpy.
"""

from __future__ import annotations

import gzip
import os

import numpy as np
import pytest
from numba import njit

import migengine as me
from migengine import sim as msim
from tests.helpers import assert_same_state, comparable_state

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
LACKEY = os.path.join(ROOT, "examples", "traces", "stream.lackey.gz")


def _last_writes(tr: me.Trace) -> dict[int, int]:
    """address -> the byte the last write to it stored ((k + 1) & 0xFF, docs/workloads.md)."""
    idx = np.flatnonzero(tr.write)
    last: dict[int, int] = {}
    for k in idx.tolist():
        last[int(tr.addr[k])] = (k + 1) & 0xFF
    return last


def _check_bytes(res: me.SimResult, tr: me.Trace) -> None:
    """Every written address reads back its last value through the CPU path."""
    p = res.process
    for addr, val in _last_writes(tr).items():
        got = p.read(res.sim_address(addr), 1)
        assert got[0] == val, f"trace address {addr:#x}: {got[0]} != {val}"
    res.machine.check()


def _consistent(s: dict) -> None:
    assert s["device_hits"] + s["device_faults"] == s["device_accesses"]
    assert s["device_accesses"] + s["cpu_accesses"] == s["accesses"]
    assert s["faults_serviced"] <= s["device_faults"]
    moved_in = s["pages_to_device"] + s["pages_prefetched"]
    assert moved_in - s["pages_evicted"] - s["cpu_faults"] == s["resident_pages"]
    assert s["resident_pages"] <= s["device_pages"]
    assert s["modelled_s"] == pytest.approx(s["fault_s"] + s["copy_s"], rel=1e-9)


@pytest.mark.parametrize("prefetch", ["none", "sequential", "tree"])
@pytest.mark.parametrize("evict", ["lru", "fifo", "random"])
def test_bytes_survive_every_policy_under_oversubscription(prefetch, evict):
    """Faults, prefetch, eviction and CPU faults back (hmm_devmem_ops.fault) at 3x
    oversubscription: every byte the trace wrote reads back, and m.check() holds."""
    tr = me.Trace.synthetic(
        "hotspot", pages=1536, accesses=30_000, seed=3, write_fraction=0.4, cpu_fraction=0.02
    )
    cfg = me.SimConfig(device_pages=512, prefetch=prefetch, evict=evict, migrate_pages=16)
    res = me.simulate(tr, cfg)
    s = res.stats
    assert s["data_ok"] is True
    assert s["pages_evicted"] > 0 and s["cpu_faults"] > 0 and s["fault_batches"] > 0
    _consistent(s)
    _check_bytes(res, tr)


@pytest.mark.parametrize("host_init", [True, False])
@pytest.mark.parametrize("evict", ["lru", "fifo"])
def test_gathered_bytes_equal_each_calls_own_copy(monkeypatch, host_init, evict):
    """kernels.sim.copies: a fault batch's bytes moved by one engine copy leave every
    stat, batch and copy record, page table, struct page and byte as each
    migrate_vma() call copying its own, as dmirror's alloc_and_copy does. The batches
    evict and move in (each way frees frames the other allocates), fault pages back
    on the CPU, and, without host data, zero-fill first touches; every gathered
    copy of 4 KiB or more takes the engine's parallel path."""
    tr = me.Trace.synthetic(
        "hotspot", pages=1536, accesses=30_000, seed=4, write_fraction=0.4, cpu_fraction=0.02
    )
    engine = me.SimConfig().copy_engine().replace(parallel_min_bytes=4096)
    cfg = me.SimConfig(
        device_pages=512,
        evict=evict,
        prefetch="tree",
        migrate_pages=16,
        host_init=host_init,
        engine=engine,
    )
    gathered = me.simulate(tr, cfg)
    monkeypatch.setattr(msim, "GATHER_COPIES", False)
    per_call = me.simulate(tr, cfg)
    s = gathered.stats
    assert s["data_ok"] is True and s["pages_evicted"] > 0 and s["cpu_faults"] > 0
    keys = [k for k in s if k != "wall_s"]
    assert {k: s[k] for k in keys} == {k: per_call.stats[k] for k in keys}
    np.testing.assert_array_equal(gathered.batches, per_call.batches)
    np.testing.assert_array_equal(gathered.copies, per_call.copies)
    a, b = gathered.machine.state, per_call.machine.state
    assert_same_state(comparable_state(a), comparable_state(b))
    _check_bytes(gathered, tr)


@pytest.mark.parametrize("host_init", [True, False])
def test_first_touch_on_the_device_copies_nothing(host_init):
    """migrate_vma_insert_page(): without host data, a first touch creates a zeroed
    device page and copies nothing; with it, every page moved in is a copy."""
    tr = me.Trace.synthetic("sequential", pages=1024, accesses=4096, seed=0)
    res = me.simulate(tr, me.SimConfig(device_pages=2048, host_init=host_init))
    s = res.stats
    assert s["pages_evicted"] == 0
    assert s["pages_to_device"] + s["pages_prefetched"] == 1024
    assert s["bytes_to_device"] == (1024 * 4096 if host_init else 0)
    res.machine.check()


def test_chunked_replay_equals_whole():
    """The replay resumes across chunks (and across a full batch-record array)
    with the same outcome as one pass."""
    tr = me.Trace.synthetic("random", pages=2048, accesses=20_000, seed=5, write_fraction=0.3)
    cfg = me.SimConfig(device_pages=700, migrate_pages=4, batch_faults=8, evict="random", seed=9)
    whole = me.simulate(tr, cfg)
    parts = me.simulate(tr, cfg, chunk_accesses=333)
    keys = [k for k in whole.stats if k != "wall_s"]
    assert {k: whole.stats[k] for k in keys} == {k: parts.stats[k] for k in keys}
    assert len(whole.batches) > 1024  # more than the first record array holds
    np.testing.assert_array_equal(whole.batches, parts.batches)


def test_the_last_batch_grows_a_full_record_array(monkeypatch):
    """The end of the trace services the batch still open, as the driver's last
    fault service; when the record array is full by then, the array grows and
    the service runs: the same batches and stats as with room to spare."""
    import migengine.sim as sim_module
    from migengine.kernels.sim import layout as S

    tr = me.Trace.synthetic("random", pages=2048, accesses=3_000, seed=5, write_fraction=0.3)
    cfg = me.SimConfig(device_pages=700, migrate_pages=4, batch_faults=8)
    roomy = me.simulate(tr, cfg)
    rows = len(roomy.batches)
    grown_at = []
    grow = sim_module._grow_batches

    def watched(sim):
        grown_at.append((len(sim.batches), int(sim.ctr[S.S_ACCESSES]), int(sim.ctr[S.S_NB])))
        return grow(sim)

    monkeypatch.setattr(sim_module, "_FIRST_BATCH_ROWS", rows - 1)
    monkeypatch.setattr(sim_module, "_grow_batches", watched)
    tight = me.simulate(tr, cfg)
    # once, after the whole trace, with its last batch still open
    assert len(grown_at) == 1
    assert grown_at[0][:2] == (rows - 1, len(tr)) and grown_at[0][2] > 0
    keys = [k for k in roomy.stats if k != "wall_s"]
    assert {k: roomy.stats[k] for k in keys} == {k: tight.stats[k] for k in keys}
    np.testing.assert_array_equal(roomy.batches, tight.batches)
    tight.machine.check()


def test_trace_file_is_streamed_in_chunks(tmp_path):
    """A path is read twice in chunks (VA blocks, then the replay): same result."""
    tr = me.Trace.synthetic("strided", pages=1024, accesses=10_000, seed=1, write_fraction=0.5)
    path = tmp_path / "t.npz"
    tr.save(path)
    cfg = me.SimConfig(device_pages=256, prefetch="tree")
    a = me.simulate(tr, cfg)
    b = me.simulate(str(path), cfg, chunk_accesses=1000)
    assert b.trace_name == "t.npz"
    assert {k: v for k, v in a.stats.items() if k != "wall_s"} == {
        k: v for k, v in b.stats.items() if k != "wall_s"
    }


def test_batches_are_grouped_and_capped():
    """uvm_perf_fault_batch_count: a random stream fills batches of batch_faults entries."""
    tr = me.Trace.synthetic("random", pages=4096, accesses=3000, seed=2)
    res = me.simulate(tr, me.SimConfig(device_pages=4096, batch_faults=32, migrate_pages=1))
    b = res.batches
    assert b["faults"].max() == 32
    assert b["faults"].sum() == res.stats["faults_serviced"]
    assert np.all(np.diff(b["t_start_us"]) > 0)
    assert np.all(b["t_end_us"] >= b["t_start_us"])
    assert (b["vablocks"] >= 1).all() and (b["vablocks"] <= 8).all()


def test_units_coalesce_faults():
    """Faults on two pages of one migration unit in one batch move the unit once."""
    base = 0x40000000
    addr = np.array([base, base + 4096, base + 2 * 4096, base + 3 * 4096], np.uint64)
    tr = me.Trace(addr, np.zeros(4, bool))
    res = me.simulate(tr, me.SimConfig(device_pages=64, migrate_pages=4))
    s = res.stats
    assert (s["device_faults"], s["faults_serviced"], s["faults_coalesced"]) == (4, 4, 3)
    assert s["pages_to_device"] == 4 and s["fault_batches"] == 1


def test_tree_prefetch_cuts_streaming_faults_tenfold():
    """NVIDIA's density tree (threshold 51%) against on-demand 4 KiB migration on a
    streaming trace: at least 10x fewer device faults (UVM-Smart reports 36-85x
    for its tree prefetcher on its benchmarks)."""
    tr = me.Trace.synthetic("sequential", pages=8192, accesses=65_536, seed=0)
    base = me.SimConfig(device_pages=4096, migrate_pages=1, store_data=False)
    none = me.simulate(tr, base).stats["device_faults"]
    tree = me.simulate(tr, base.replace(prefetch="tree")).stats["device_faults"]
    assert none == 8192
    assert none >= 10 * tree


def test_sc21_preset_reproduces_the_batch_cost_line():
    """Allen & Ge (SC21): a batch costs about 30 us plus 1.25 us per KB moved. The
    preset's batches lie on that line: fit it and compare."""
    tr = me.Trace.synthetic("random", pages=4096, accesses=20_000, seed=4)
    cfg = me.SimConfig.preset("sc21", device_pages=1024, migrate_pages=16, store_data=False)
    b = me.simulate(tr, cfg).batches
    assert len(b) > 50 and b["bytes"].max() > 200_000
    slope, intercept = np.polyfit(b["bytes"] / 1000.0, b["t_end_us"] - b["t_start_us"], 1)
    assert intercept == pytest.approx(30.0, rel=0.005)
    assert slope == pytest.approx(1.25, rel=0.005)


def test_uvm_smart_preset_charges_45us_per_fault_and_the_pcie_curve():
    """UVM-Smart: 45 us per far fault; a 4 KiB transfer takes 1.758947 us in its logs."""
    addr = np.array([0x40000000], np.uint64)
    res = me.simulate(me.Trace(addr, [False]), me.SimConfig.preset("uvm-smart", device_pages=8))
    s = res.stats
    assert s["fault_s"] == pytest.approx(45e-6)
    assert s["copy_s"] == pytest.approx(1.758947e-6, rel=0.005)


def test_lru_evicts_the_least_recently_migrated_block():
    """NVIDIA's root-chunk LRU: ordered by migration into the block, not by access."""
    mb2 = 1 << 21
    blocks = [0x40000000 + i * mb2 for i in range(3)]
    # A, B fill the device; A is accessed again (a hit: no LRU change); C evicts A.
    seq = [blocks[0], blocks[1], blocks[0], blocks[2]]
    tr = me.Trace(np.array(seq, np.uint64), np.zeros(4, bool))
    res = me.simulate(tr, me.SimConfig(device_pages=1024, migrate_pages=512, evict="lru"))
    p = res.process
    assert p.translate(res.sim_address(blocks[0])).kind != "device"
    assert p.translate(res.sim_address(blocks[1])).kind == "device"
    assert res.stats["device_hits"] == 1 and res.stats["pages_evicted"] == 512


@njit
def _newest_first(units, last_use, first_use, uses, now):
    return np.argmax(first_use)


def test_user_policy_is_called_and_obeyed():
    """An @njit policy picks the victim: newest-first keeps the oldest unit resident."""
    mb2 = 1 << 21
    addr = np.array([0x40000000 + i * mb2 for i in range(4)], np.uint64)
    tr = me.Trace(addr, np.zeros(4, bool))
    cfg = me.SimConfig(device_pages=1024, migrate_pages=512, batch_faults=1, evict=_newest_first)
    res = me.simulate(tr, cfg)
    p = res.process
    kinds = [p.translate(res.sim_address(int(a))).kind for a in addr]
    assert kinds == ["device", "present", "present", "device"]
    assert res.stats["evictions"] == 2


def test_lackey_trace_replays_end_to_end():
    """The real valgrind lackey trace in examples/traces replays with every byte intact."""
    tr = me.Trace.read(LACKEY)
    assert len(tr) > 10_000 and tr.write.any()
    res = me.simulate(tr, me.SimConfig(device_pages=256, prefetch="tree"))
    assert res.stats["data_ok"] is True and res.stats["device_faults"] > 0
    _check_bytes(res, tr[:0])
    sample = me.Trace(tr.addr[-5000:], tr.write[-5000:])
    _check_bytes(me.simulate(sample, me.SimConfig(device_pages=64)), sample)


def test_save_writes_the_three_files(tmp_path):
    tr = me.Trace.synthetic("hotspot", pages=1024, accesses=5000, seed=0, cpu_fraction=0.01)
    res = me.simulate(tr, me.SimConfig(device_pages=256), name="hotspot")
    paths = res.save(tmp_path / "out")
    for key in ("results", "plot", "timeline"):
        assert os.path.getsize(paths[key]) > 0
    import json

    with open(paths["results"]) as f:
        data = json.load(f)
    assert data["stats"]["device_faults"] == res.stats["device_faults"]
    with open(paths["timeline"]) as f:
        events = json.load(f)["traceEvents"]
    assert any(e.get("ph") == "X" for e in events)


# ----------------------------------------------------------------------------- bad input
@pytest.mark.parametrize(
    ("fields", "match"),
    [
        ({"device_pages": 0}, "device_pages"),
        ({"device_pages": -5}, "device_pages"),
        ({"migrate_pages": 3}, "migrate_pages"),
        ({"migrate_pages": 1024}, "migrate_pages"),
        ({"device_pages": 8, "migrate_pages": 16}, "device_pages"),
        ({"evict": "lfu"}, "evict"),
        ({"prefetch": "tbn"}, "prefetch"),
        ({"engine": "nvlink"}, "engine"),
        ({"fault_us": -1.0}, "fault_us"),
        ({"batch_us": float("nan")}, "batch_us"),
        ({"profile": "modern2"}, "profile"),
    ],
)
def test_bad_config_raises_valueerror_naming_the_field(fields, match):
    with pytest.raises(ValueError, match=match):
        me.SimConfig(**fields)


@pytest.mark.parametrize(
    ("fields", "match"),
    [({"store_data": 1}, "store_data"), ({"batch_faults": 2.5}, "batch_faults")],
)
def test_bad_config_types_raise_typeerror(fields, match):
    with pytest.raises(TypeError, match=match):
        me.SimConfig(**fields)


def test_a_plain_function_is_not_a_policy():
    with pytest.raises(TypeError, match="@njit"):
        me.SimConfig(evict=lambda *a: 0)


@njit
def _two_args(units, now):
    return 0


@njit
def _returns_float(units, last_use, first_use, uses, now):
    return 0.5


@njit
def _out_of_range(units, last_use, first_use, uses, now):
    return len(units)


TINY = me.Trace(np.array([0x40000000 + i * 4096 for i in range(40)], np.uint64), [False] * 40)


@pytest.mark.parametrize("policy", [_two_args, _returns_float])
def test_policy_with_the_wrong_signature_is_refused_before_the_run(policy):
    with pytest.raises(ValueError, match=r"policy\(units, last_use, first_use, uses, now\)"):
        me.simulate(TINY, me.SimConfig(device_pages=16, migrate_pages=1, evict=policy))


def test_policy_returning_no_position_raises_valueerror():
    with pytest.raises(ValueError, match="returned 4"):
        me.simulate(
            TINY,
            me.SimConfig(device_pages=4, migrate_pages=1, batch_faults=1, evict=_out_of_range),
        )


def test_address_outside_user_space_is_refused():
    tr = me.Trace(np.array([0x1000, 1 << 47], np.uint64), [False, True])
    with pytest.raises(ValueError, match="access 1: address 0x800000000000"):
        me.simulate(tr, me.SimConfig(device_pages=16))


def test_not_a_trace_or_config():
    with pytest.raises(TypeError, match="Trace or a path"):
        me.simulate([1, 2, 3], me.SimConfig())
    with pytest.raises(TypeError, match="SimConfig"):
        me.simulate(TINY, {"device_pages": 4})


def test_malformed_trace_file_names_the_line(tmp_path):
    path = tmp_path / "bad.csv.gz"
    with gzip.open(path, "wt") as f:
        f.write("addr,op\n0x1000,r\n0x2000,x\n")
    with pytest.raises(ValueError, match="line 3"):
        me.simulate(str(path), me.SimConfig(device_pages=16))
