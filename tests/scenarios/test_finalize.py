"""Scenarios of migrate_vma_finalize(), through the public API: slots left without a
destination, or with an error one, are restored.

Each test's docstring names the kernel branch (HMM v25 14/19 as posted = seed,
the 4.14 merge of 14-17/19 = hmm-v25) or the hmm selftest it mirrors. Drivers
are Python callbacks (``me.migrate_vma`` with ``MigrateOps``) or ``m.device.ops``.
Every machine comes from ``make_machine``, so each test ends with ``m.check()``.
"""

from __future__ import annotations

import numpy as np

import migengine as me
from tests.helpers import (
    Driver,
    addr,
    assert_data,
    filled,
    pfn_at,
)


# ---------------------------------------------------------------- no destination
def test_slot_without_destination(make_machine, profile):
    """pages: no dst page -> hmm-v25 clears MIGRATE (17/19); the seed keeps it (14/19
    just skips the slot). Either way finalize restores the source."""
    m = make_machine(32, 0, profile=profile)
    p, vma = filled(m, 2)
    old = pfn_at(p, vma, 1)
    drv = Driver(m, want=lambda i, s: i == 0)
    drv.run(vma)
    kept = bool(drv.src_at_finalize[1] & m.layout.MIGRATE)
    assert kept == (profile == "seed")
    assert p.translate(addr(vma, 1)) == me.Pte("present", old, True, False)
    assert pfn_at(p, vma, 0) == drv.given[0]
    assert m.counters["pgmigrate_success"] == 1
    assert_data(p, vma, range(2))


def test_error_dst_restores_the_page(make_machine, profile):
    """2.7: dst = MIGRATE_PFN_ERROR has no VALID, so the core sees no destination
    and restores the source (a device entry in hmm-v25, read-only there: its
    migration entry was, as 4.14 makes it for a device-private page)."""
    m = make_machine(32, 4, profile=profile)
    p, vma = filled(m, 1)
    assert m.device.migrate_to_device(p, vma.start, vma.end) == 1
    dev = pfn_at(p, vma, 0)
    kind = p.translate(vma.start).kind

    def error_out(vma_, src, dst, start, end, private):
        dst[0] = m.layout.ERROR

    src = np.zeros(1, np.uint64)
    dst = np.zeros(1, np.uint64)
    me.migrate_vma(me.MigrateOps(error_out, lambda *a: None), vma, vma.start, vma.end, src, dst)
    lay = m.layout
    if profile == "hmm-v25":
        assert src[0] & lay.DEVICE  # 16/19: collected from a device-private entry
    assert m.mpfn_to_pfn(src[0]) == dev
    assert p.translate(vma.start) == me.Pte(kind, dev, profile == "seed", False)
    assert_data(p, vma, [0])
