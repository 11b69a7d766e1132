"""MIGRATE_PFN_* layouts, migrate_pfn / mpfn_to_pfn, and packaging of the compiled level."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import migengine as me
from migengine.kernels import layout as L

REPO = Path(__file__).resolve().parents[2]

# The public contract's table, written out bit by bit so a shifted flag cannot hide behind the
# engine's own constants.
EXPECTED = {
    "hmm-v25": dict(
        VALID=1, MIGRATE=2, LOCKED=4, WRITE=8, DEVICE=16, ERROR=32, SHIFT=6, COMPOUND=0
    ),
    "seed": dict(VALID=1, MIGRATE=2, LOCKED=4, WRITE=8, DEVICE=0, ERROR=16, SHIFT=5, COMPOUND=0),
}
FIELDS = ("VALID", "MIGRATE", "LOCKED", "WRITE", "DEVICE", "ERROR", "SHIFT", "COMPOUND")


@pytest.mark.parametrize("profile_name", sorted(EXPECTED))
def test_machine_layout_matches_the_profile_table(profile_name: str) -> None:
    """include/linux/migrate.h: v25-14 (seed) and v4.14 (hmm-v25) MIGRATE_PFN_* values."""
    m = me.Machine(4, 0, profile=profile_name)
    lay = m.layout
    assert lay._fields == FIELDS
    for name, value in EXPECTED[profile_name].items():
        field = getattr(lay, name)
        assert type(field) is np.uint64, name
        assert int(field) == value, name


def test_module_constants_are_the_hmm_v25_values_as_uint64() -> None:
    """The public contract: me.MIGRATE_PFN_* carry the 4.14 (hmm-v25) layout."""
    for name, value in EXPECTED["hmm-v25"].items():
        if name == "COMPOUND":
            continue  # api.md's module constants are the seven 4.14 names
        const = getattr(me, f"MIGRATE_PFN_{name}")
        assert type(const) is np.uint64, name
        assert const.dtype == np.uint64
        assert int(const) == value, name


@pytest.mark.parametrize("profile_name", sorted(EXPECTED))
def test_flags_are_distinct_bits_below_the_shift(profile_name: str) -> None:
    """Every flag is one bit under SHIFT, so a pfn never collides with a flag."""
    lay = me.Machine(4, 0, profile=profile_name).layout
    flags = [int(getattr(lay, f)) for f in FIELDS if f != "SHIFT" and int(getattr(lay, f))]
    assert all(f & (f - 1) == 0 for f in flags)
    assert len(set(flags)) == len(flags)
    assert max(flags) < 1 << int(lay.SHIFT)


def _machine(profile_name: str) -> me.Machine:
    return me.Machine(4, 0, profile=profile_name, store_data=False)


MACHINES = {name: _machine(name) for name in EXPECTED}
PROFILE = st.sampled_from(sorted(EXPECTED))


@given(profile_name=PROFILE, pfn=st.integers(0, (1 << 58) - 1))
def test_migrate_pfn_round_trips(profile_name: str, pfn: int) -> None:
    """migrate_pfn(pfn) = (pfn << SHIFT) | VALID and migrate_pfn_to_page() inverts it."""
    m = MACHINES[profile_name]
    lay = m.layout
    mpfn = m.migrate_pfn(pfn)
    assert type(mpfn) is np.uint64
    assert int(mpfn) == (pfn << int(lay.SHIFT)) | int(lay.VALID)
    assert m.mpfn_to_pfn(mpfn) == pfn


@given(
    profile_name=PROFILE,
    pfn=st.integers(0, (1 << 58) - 1),
    flags=st.sets(st.sampled_from(["MIGRATE", "LOCKED", "WRITE", "DEVICE", "ERROR"])),
)
def test_flags_do_not_change_the_pfn(profile_name: str, pfn: int, flags: set[str]) -> None:
    """The driver ORs LOCKED/WRITE into dst and the core ORs MIGRATE/DEVICE into src:
    the pfn must read back unchanged."""
    m = MACHINES[profile_name]
    lay = m.layout
    mpfn = m.migrate_pfn(pfn)
    for f in flags:
        mpfn |= getattr(lay, f)
    assert m.mpfn_to_pfn(mpfn) == pfn
    assert m.mpfn_to_pfn(int(mpfn)) == pfn


@given(profile_name=PROFILE, word=st.integers(0, (1 << 64) - 1))
def test_mpfn_without_valid_has_no_page(profile_name: str, word: int) -> None:
    """migrate_pfn_to_page() is NULL unless VALID: MIGRATE-only holes, ERROR, 0."""
    m = MACHINES[profile_name]
    lay = m.layout
    value = np.uint64(word) & ~lay.VALID
    assert m.mpfn_to_pfn(value) == -1
    assert m.mpfn_to_pfn(value | lay.VALID) == int(value >> lay.SHIFT)


def test_named_holes_and_error_have_no_page() -> None:
    """The slot values the core and drivers write without VALID."""
    for name in EXPECTED:
        m = MACHINES[name]
        lay = m.layout
        for value in (0, lay.MIGRATE, lay.ERROR, lay.MIGRATE | lay.WRITE | lay.LOCKED):
            assert m.mpfn_to_pfn(value) == -1


@pytest.mark.parametrize("bad", [-1, 1.0, "3", None, np.float64(2.0)])
def test_migrate_pfn_rejects_non_pfns(bad: object) -> None:
    m = MACHINES["hmm-v25"]
    with pytest.raises((TypeError, ValueError)):
        m.migrate_pfn(bad)  # type: ignore[arg-type]


@pytest.mark.parametrize("bad", [1.5, "0x41", None])
def test_mpfn_to_pfn_rejects_non_integers(bad: object) -> None:
    m = MACHINES["seed"]
    with pytest.raises(TypeError):
        m.mpfn_to_pfn(bad)  # type: ignore[arg-type]


@pytest.mark.parametrize("profile_name", sorted(EXPECTED))
def test_compiled_helpers_agree_with_the_python_ones(profile_name: str) -> None:
    """kernels.migrate_pfn / mpfn_to_pfn read the layout from m.state; a pfn past
    the machine is refused at the compiled level (0, -1), which the Python helpers
    (pure encodings) leave to the kernel's checks."""
    from migengine import kernels

    m = MACHINES[profile_name]
    for pfn in (0, 1, 3):
        mpfn = kernels.migrate_pfn(m.state, pfn)
        assert int(mpfn) == int(m.migrate_pfn(pfn))
        assert kernels.mpfn_to_pfn(m.state, mpfn) == pfn
    for pfn in (4, 12345, (1 << 40) + 7):  # the machine has 4 frames
        assert kernels.migrate_pfn(m.state, pfn) == 0
        assert kernels.mpfn_to_pfn(m.state, m.migrate_pfn(pfn)) == -1
    assert kernels.mpfn_to_pfn(m.state, m.layout.MIGRATE) == -1


def test_kernels_is_the_repos_kernels_directory_installed_as_a_subpackage() -> None:
    """pyproject.toml maps kernels/ to migengine.kernels (no top-level 'kernels')."""
    import migengine.kernels as kernels

    assert kernels.__name__ == "migengine.kernels"
    assert Path(kernels.__file__).resolve().parent == REPO / "kernels"
    assert kernels.layout.__name__ == "migengine.kernels.layout"
    assert "kernels" not in sys.modules


def test_importing_migengine_compiles_nothing() -> None:
    """The public contract: nothing compiles at import time; every dispatcher is still empty."""
    script = textwrap.dedent(
        """
        import sys
        from numba.core.dispatcher import Dispatcher
        import migengine
        import migengine.kernels

        assert migengine.kernels.migrate_vma_setup.signatures == []
        compiled = []
        seen = 0
        for name, module in list(sys.modules.items()):
            if not name.startswith("migengine"):
                continue
            for attr, obj in vars(module).items():
                if isinstance(obj, Dispatcher):
                    seen += 1
                    if obj.signatures:
                        compiled.append(f"{name}.{attr}")
        print("dispatchers-seen:", seen)
        print("dispatchers-with-signatures:", sorted(compiled))
        print("top-level-kernels:", "kernels" in sys.modules)
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=300, cwd=REPO
    )
    assert out.returncode == 0, out.stderr
    seen = int(out.stdout.split("dispatchers-seen:")[1].split()[0])
    assert seen > 20  # the scan really walked the compiled modules
    assert "dispatchers-with-signatures: []" in out.stdout
    assert "top-level-kernels: False" in out.stdout


@pytest.mark.parametrize("page_size", [4096, 16384])
def test_frames_start_on_page_boundaries(page_size: int) -> None:
    """Physical frames are page-aligned, so a frame's first byte starts a cache line and
    the copy engine's streaming stores write whole lines (kernels.state.page_aligned_zeros)."""
    m = me.Machine(ram_pages=8, device_pages=4, page_size=page_size, swap_pages=2)
    for name in ("data", "swap_data"):
        arr = getattr(m.state, name)
        assert arr.ctypes.data % page_size == 0, name
        assert arr.size > 0 and not arr.any(), name
    m.check()


def test_struct_pages_are_cache_line_aligned_32_byte_records() -> None:
    """Two struct pages per 64-byte line, none spanning two (kernels.state.PAGE_DTYPE):
    the sweeps of a large migration are bound by this traffic."""
    m = me.Machine(ram_pages=64, device_pages=64)
    assert m.state.page.dtype.itemsize == 32
    assert m.state.page.ctypes.data % 64 == 0
    assert m.state.page.shape == (128,)
    m.check()


def test_a_pte_table_past_what_rmap_can_name_is_refused() -> None:
    """page["rmap"] is int32: an mmap that would grow the PTE level past
    MAX_PTE_SLOTS raises before anything is reallocated or mapped."""
    m = me.Machine(ram_pages=8, device_pages=4)
    p = m.new_process()
    before = m.state
    with pytest.raises(ValueError, match="PTE slots"):
        p.mmap(L.MAX_PTE_SLOTS + 1)
    assert m.state is before and int(m.state.sys[L.SYS_NR_VMAS]) == 0
    m.check()


def test_a_fork_whose_page_tables_would_not_fit_makes_no_child(monkeypatch) -> None:
    """The PTE-slot cap is checked for the whole child before any of it exists."""
    m = me.Machine(ram_pages=64, device_pages=8)
    p = m.new_process()
    p.mmap(40)
    p.mmap(40)
    monkeypatch.setattr(L, "MAX_PTE_SLOTS", 120)  # the parent's 80 fit, a child's 80 more do not
    with pytest.raises(ValueError, match="PTE slots"):
        p.fork()
    assert len(m.processes) == 1 and int(m.state.sys[L.SYS_NR_VMAS]) == 2
    m.check()
