"""Bad input to the Python API gets the documented exception before anything changes.

Each case is one the hardening review found escaping as numba's OverflowError, a
wrapped value, a silently accepted flag or a huge allocation; every machine is
checked (``m.check()``) at teardown by the ``make_machine`` fixture.
"""

from __future__ import annotations

import numpy as np
import pytest

import migengine as me
from migengine.kernels import layout as L


@pytest.fixture
def world(make_machine):
    m = make_machine(64, 16)
    p = m.new_process()
    vma = p.mmap(4)
    p.populate(vma.start, vma.end)
    return m, p, vma


def test_values_past_64_bits_are_value_errors(world):
    m, p, vma = world
    with pytest.raises(ValueError, match="64 bits"):
        p.read(2**63, 4)
    with pytest.raises(ValueError, match="64 bits"):
        m.device.fail_alloc(2**63)
    with pytest.raises(ValueError, match="64 bits"):
        me.Machine(64, page_size=2**63)
    with pytest.raises(ValueError, match="unsigned 64-bit"):
        m.mpfn_to_pfn(-1)
    assert m.mpfn_to_pfn(2**64 - 1) == (2**64 - 1) >> int(m.layout.SHIFT)


def test_migrate_pfn_refuses_a_pfn_that_would_wrap(world):
    m, _, _ = world
    shift = int(m.layout.SHIFT)
    with pytest.raises(ValueError, match="does not fit"):
        m.migrate_pfn(1 << (64 - shift))  # 2**58 in hmm-v25: it wrapped to pfn 0
    top = (1 << (64 - shift)) - 1
    assert m.mpfn_to_pfn(m.migrate_pfn(top)) == top


def test_populate_takes_a_bool(world):
    _, p, vma = world
    with pytest.raises(TypeError, match="write must be True or False"):
        p.populate(vma.start, vma.end, write="no")
    p.populate(vma.start, vma.end, write=np.bool_(False))


def test_copy_page_refuses_the_zero_page(world):
    """A copy onto the shared zero page would change every zero read, new mmaps too."""
    m, p, vma = world
    q = m.new_process()
    fresh = q.mmap(1)
    assert q.read(fresh.start, 8) == bytes(8)  # a read fault maps the zero page
    zero = q.translate(fresh.start)
    assert zero.kind == "zero"
    p.write(vma.start, b"not zero")
    with pytest.raises(ValueError, match="zero page"):
        m.copy_page(zero.pfn, p.translate(vma.start).pfn)
    assert q.read(fresh.start, 8) == bytes(8)


def test_a_huge_read_faults_where_the_mapping_ends_without_allocating_it(world):
    m, p, vma = world
    p.write(vma.start, b"abc")
    with pytest.raises(me.SegFault, match=f"{vma.end:#x}"):
        p.read(vma.start, 10**12)
    assert p.read(vma.start, 3) == b"abc"


def test_the_device_takes_only_a_process_of_its_machine(world):
    """migrate_to_device(None, ...) once escaped as an AttributeError."""
    m, p, vma = world
    for call in (m.device.migrate_to_device, m.device.migrate_to_system):
        with pytest.raises(TypeError, match="must be a Process"):
            call(None, vma.start, vma.end)
    with pytest.raises(TypeError, match="must be a Process"):
        m.device.mirrored(None, vma.start)


def test_an_mmap_ending_past_the_address_space_is_a_value_error(world):
    """An end past int64 once escaped as numpy's OverflowError, after a file
    mapping had taken its page-cache slots."""
    m, p, vma = world
    used = int(m.state.sys[L.SYS_PCACHE_USED])
    for kind in ("anon", "file"):
        with pytest.raises(ValueError, match="past the address space"):
            p.mmap(4, kind=kind, addr=2**63 - m.page_size)
    assert int(m.state.sys[L.SYS_PCACHE_USED]) == used
    assert len(p.vmas()) == 1
