"""One system -> device migration driven pass by pass, for per-pass timings."""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np

from migengine.bench.workload import Workload
from migengine.kernels import collect as kcollect
from migengine.kernels import device as kdevice
from migengine.kernels import finalize as kfinalize
from migengine.kernels import layout as L
from migengine.kernels import pages as kpages
from migengine.kernels import prepare as kprepare
from migengine.kernels import unmap as kunmap

__all__ = ["PASSES", "pass_steps", "time_passes"]

PASSES = ("collect", "prepare", "unmap", "alloc_and_copy", "pages", "finalize_and_map", "finalize")


def pass_steps(workload: Workload) -> list[tuple[str, Callable[[], object]]]:
    """The passes of one system -> device migration, as separate calls.

    Returns ``(name, call)`` pairs in the order ``migrate_vma_to_device``
    runs them (``PASSES``), sharing fresh ``src``/``dst``/``migrate_vma``
    arrays; calling them all in order is one whole migration, ending in the
    same state as ``m.device.migrate_to_device`` (the collect step also bumps
    migrate_vma_setup's two counters, from Python). Uses the pass modules of
    ``migengine.kernels`` (collect, prepare, unmap, pages, finalize).
    """
    st = workload.machine.state
    v, start, end, n = workload.vma.index, workload.vma.start, workload.vma.end, workload.pages
    src = np.zeros(n, np.uint64)
    dst = np.zeros(n, np.uint64)
    mig = np.zeros(L.MIG_FIELDS, np.int64)
    mig[L.MIG_START], mig[L.MIG_END], mig[L.MIG_VMA] = start, end, v

    def collect_pass() -> None:
        st.counters[L.C_MIGRATE_VMA_CALLS] += 1
        kcollect.migrate_vma_collect(st, v, start, end, src, dst, mig)
        st.counters[L.C_MIGRATE_VMA_COLLECTED] += mig[L.MIG_CPAGES]
        # Open the setup window as migrate_vma_setup() does (kernels/args.py): the
        # device's callbacks and the later passes only act inside it.
        st.mig[L.MIG_VMA], st.mig[L.MIG_START], st.mig[L.MIG_END] = v, start, end

    def finalize_pass() -> None:
        kfinalize.migrate_vma_finalize(st, n, src, dst)
        st.mig[L.MIG_END] = st.mig[L.MIG_START]  # the window closes with the migration

    def unmap_pass() -> None:
        kunmap.migrate_vma_unmap(st, src, mig)
        if mig[L.MIG_CPAGES] != n:
            raise RuntimeError(f"only {mig[L.MIG_CPAGES]} of {n} pages survived setup")

    return [
        ("collect", collect_pass),
        ("prepare", lambda: kprepare.migrate_vma_prepare(st, v, src, mig)),
        ("unmap", unmap_pass),
        ("alloc_and_copy", lambda: kdevice.device_alloc_and_copy(st, v, src, dst, start, end, 0)),
        ("pages", lambda: kpages.migrate_vma_pages(st, v, start, n, src, dst)),
        (
            "finalize_and_map",
            lambda: kdevice.device_finalize_and_map(st, v, src, dst, start, end, 0),
        ),
        ("finalize", finalize_pass),
    ]


def time_passes(workload: Workload) -> dict[str, int]:
    """Run one migration pass by pass (:func:`pass_steps`); wall ns of each pass.

    Each pass is one Python call into a compiled kernel; the call overhead
    (~a microsecond) is negligible at benchmark sizes. Reset the workload
    afterwards, as after any migration.
    """
    out: dict[str, int] = {}
    for name, step in pass_steps(workload):
        t0 = time.perf_counter_ns()
        step()
        out[name] = time.perf_counter_ns() - t0
    return out
