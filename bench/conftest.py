"""Fixtures of the bench/ suites.

By default (``--benchmark-disable`` in the project's addopts) every benchmark
runs once as a smoke test at tiny sizes; ``MIGENGINE_BENCH_FULL=1`` selects
the real sizes, e.g.::

    MIGENGINE_BENCH_FULL=1 pytest bench/ --benchmark-enable --benchmark-group-by=group

Every machine a benchmark builds is restored to its built state and checked
with ``m.check()`` when the test ends.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest
from _support import bench_full

from migengine import bench


@pytest.fixture
def make_workload() -> Iterator[Callable[..., bench.Workload]]:
    """``make_workload(pages, **kwargs)`` builds a :class:`migengine.bench.Workload`;
    at teardown each one is reset and must pass ``m.check()``."""
    built: list[bench.Workload] = []

    def factory(pages: int, **kwargs: object) -> bench.Workload:
        work = bench.Workload(pages, **kwargs)  # type: ignore[arg-type]
        built.append(work)
        return work

    yield factory
    for work in built:
        work.reset()
        work.machine.check()


@pytest.fixture
def rounds() -> int:
    """Timed rounds per benchmark (best of them is what to compare)."""
    return 7 if bench_full() else 1
