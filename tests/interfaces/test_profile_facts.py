"""What a machine says about its profile: m.kernel, m.layout.COMPOUND, m.owner_id, and
kernels.migrate_vma_setup_flags, whose v5.9+ arguments the 4.14-era profiles ignore."""

from __future__ import annotations

import numpy as np
import pytest

import migengine as me
from migengine import kernels
from tests.helpers import assert_same_state, comparable_state, copy_state
from tests.interfaces.test_compiled_bad_input import _setup, _setup_flags

PS = 4096


def test_kernel_names_the_tree_each_profile_follows() -> None:
    seed = me.Machine(64, 16, profile="seed").kernel
    v25 = me.Machine(64, 16, profile="hmm-v25").kernel
    assert "HMM v25 14/19" in seed and "as posted" in seed
    assert "Linux 4.14" in v25 and seed != v25


@pytest.mark.parametrize("profile", ["seed", "hmm-v25"])
def test_layout_has_no_compound_before_the_device_thp_series(profile: str) -> None:
    lay = me.Machine(64, 16, profile=profile).layout
    assert lay.COMPOUND == np.uint64(0) and isinstance(lay.COMPOUND, np.uint64)
    assert lay._fields[-1] == "COMPOUND" and me.HMM_V25_LAYOUT.COMPOUND == 0


def test_owner_ids_follow_the_owners() -> None:
    shared = ("gpu", 0)
    m = me.Machine(
        64,
        devices=[me.DeviceSpec(8, owner=shared), me.DeviceSpec(8), me.DeviceSpec(8, owner=shared)],
    )
    a, b, c = m.devices
    assert m.owner_id(shared) == m.owner_id(a.owner) == m.owner_id(c.owner)
    assert m.owner_id(b.owner) != m.owner_id(shared)
    assert int(m.state.dev[1, kernels.layout.DEV_OWNER]) == m.owner_id(b.owner)
    for bad in ("nobody", None, ["unhashable"]):
        with pytest.raises(ValueError, match="no device of this machine has owner"):
            m.owner_id(bad)
    m.check()


def _machine(profile: str) -> tuple[me.Machine, me.Vma]:
    m = me.Machine(256, 64, profile=profile)
    p = m.new_process()
    v = p.mmap(32)
    p.write(v.start, bytes(range(256)) * 64)  # 16 pages populated, 16 holes after them
    m.device.migrate_to_device(p, v.start + 4 * PS, v.start + 8 * PS)
    return m, v


@pytest.mark.parametrize("profile", ["seed", "hmm-v25"])
@pytest.mark.parametrize(("flags", "owner", "fault_pfn"), [(1, 0, -1), (0, 7, 12345), (15, -3, 0)])
def test_setup_flags_is_setup_in_the_4_14_profiles(profile, flags, owner, fault_pfn) -> None:
    """seed and hmm-v25 predate the flags, the owner and the fault page: whatever
    they hold, migrate_vma_setup_flags collects, prepares and unmaps exactly as
    migrate_vma_setup (same count, same src, same machine state afterwards)."""
    results = []
    for fn, extra in ((_setup, ()), (_setup_flags, (flags, owner, fault_pfn))):
        m, v = _machine(profile)
        src, dst = np.zeros(32, np.uint64), np.zeros(32, np.uint64)
        cpages = fn(m.state, v.index, v.start, v.end, src, dst, *extra)
        results.append((cpages, src.copy(), comparable_state(copy_state(m.state))))
        # finish the migration with no destination, so the machine is whole again
        kernels.migrate_vma_pages(m.state, v.index, v.start, v.end, src, dst)
        kernels.migrate_vma_finalize(m.state, v.index, v.start, v.end, src, dst)
        m.check()
    (c0, s0, st0), (c1, s1, st1) = results
    assert c0 == c1 > 0
    np.testing.assert_array_equal(s0, s1)
    assert_same_state(st0, st1)
