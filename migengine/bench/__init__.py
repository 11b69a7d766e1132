"""The built-in benchmark behind ``migengine bench`` and the ``bench/`` suites.

- :mod:`~migengine.bench.workload`: the fragmented process (:class:`Workload`),
  its layout (:func:`fragmented_runs`) and the ``np.copyto`` baseline;
- :mod:`~migengine.bench.passes`: one migration driven pass by pass;
- :mod:`~migengine.bench.protocol`: the chunk-size sweep (:func:`run_sweep`)
  and its measurement protocol, and :func:`run_profiles` (profiles side by side);
- :mod:`~migengine.bench.environment`: the machine and software facts recorded;
- :mod:`~migengine.bench.report`: the printed table, ``results.json``,
  ``results.md`` and the plot.

Every name is re-exported here, so ``from migengine import bench;
bench.run_sweep(...)`` works. ``python -m migengine.bench RESULTS.json``
regenerates ``results.md`` from an existing ``results.json``.
"""

from migengine._numba_env import compile_notice, threading_info
from migengine.bench.environment import run_metadata
from migengine.bench.passes import PASSES, pass_steps, time_passes
from migengine.bench.protocol import (
    DEFAULT_CHUNKS,
    DEFAULT_ENGINE,
    DEFAULT_REPEAT,
    META_PAIRS,
    SweepConfig,
    run_profiles,
    run_sweep,
)
from migengine.bench.report import (
    format_comparison,
    format_comparison_markdown,
    format_markdown,
    format_table,
    plot_comparison,
    plot_sweep,
    regenerate_markdown,
    reproduce_command,
    write_markdown,
    write_results,
)
from migengine.bench.workload import (
    DEFAULT_FRAGMENTATION,
    DEFAULT_PAGES,
    EXTRA_RAM_PAGES,
    Workload,
    copyto_baseline,
    fragmented_runs,
)

__all__ = [
    "DEFAULT_CHUNKS",
    "DEFAULT_ENGINE",
    "DEFAULT_FRAGMENTATION",
    "DEFAULT_PAGES",
    "DEFAULT_REPEAT",
    "EXTRA_RAM_PAGES",
    "META_PAIRS",
    "PASSES",
    "SweepConfig",
    "Workload",
    "compile_notice",
    "copyto_baseline",
    "format_comparison",
    "format_comparison_markdown",
    "format_markdown",
    "format_table",
    "fragmented_runs",
    "pass_steps",
    "plot_comparison",
    "plot_sweep",
    "regenerate_markdown",
    "reproduce_command",
    "run_metadata",
    "run_profiles",
    "run_sweep",
    "threading_info",
    "time_passes",
    "write_markdown",
    "write_results",
]
