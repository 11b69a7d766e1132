"""me.sweep(): every combination of a grid of simulation settings, on a Dask cluster.

Comparable tools fan out whole independent simulations (Accel-Sim job arrays,
gem5 multisim) and gather small per-run records; this does the same on Dask
distributed, so a sweep runs on this machine's cores, on a running scheduler,
or on a SLURM cluster through dask-jobqueue (docs/cluster.md).

Everything is checked before the first run starts: the grid (sweep_grid.expand),
the traces, and the client. Runs are independent tasks; one that raises is a
row with its ``error`` and the sweep goes on.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Collection, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from migengine.sim_config import SimConfig
from migengine.sweep_cluster import connect, execute
from migengine.sweep_grid import (
    Run,
    TraceSpec,
    expand,
    parameters,
    run_key,
    trace_name,
    trace_spec,
)
from migengine.trace import Trace

if TYPE_CHECKING:  # pandas (0.26 s to import) loads only when a frame is made
    import pandas as pd


@dataclasses.dataclass
class Plan:
    """A checked sweep: its runs, its traces and the columns that identify a run."""

    runs: list[Run]
    traces: list[Trace | TraceSpec]
    names: list[str]
    base: SimConfig
    varied: list[str]  # the grid's names, in grid order

    @functools.cached_property
    def key_columns(self) -> list[str]:
        """The columns that identify a run (all of its parameters)."""
        return list(parameters(self.base, "").keys())

    @functools.cached_property
    def _keys(self) -> dict[int, str]:
        cols = self.key_columns
        return {
            r.index: run_key(parameters(r.config, self.names[r.trace]), cols) for r in self.runs
        }

    def key(self, run: Run) -> str:
        return self._keys[run.index]


def plan(
    grid: Mapping[str, Sequence[Any]], trace: Any = None, base: SimConfig | None = None
) -> Plan:
    """Check a sweep and expand its grid; ValueError naming the field for anything wrong."""
    base = SimConfig() if base is None else base
    if not isinstance(base, SimConfig):
        raise ValueError(f"base must be a SimConfig, not {type(base).__name__}")
    if not isinstance(grid, Mapping) or not grid:
        raise ValueError("grid must be a non-empty mapping of field names to lists of values")
    grid = dict(grid)
    if "trace" in grid:
        if trace is not None:
            raise ValueError("give the trace as trace= or as the grid's 'trace' list, not both")
        values = grid["trace"]
        if isinstance(values, (str, bytes, Mapping)) or not isinstance(values, Sequence):
            raise ValueError(f"grid: 'trace' must map to a list of traces, got {values!r}")
        traces = [trace_spec(v, f"grid: trace[{i}]") for i, v in enumerate(values)]
        grid["trace"] = list(range(len(traces)))
    elif trace is None:
        raise ValueError("a sweep needs a trace: trace= or a 'trace' list in the grid")
    else:
        traces = [trace_spec(trace)]
    names = [trace_name(t, i) for i, t in enumerate(traces)]
    runs = expand(grid, base, len(traces))
    return Plan(runs, traces, names, base, list(grid))


def check_client(client: Any) -> Any:
    """None, "serial", "local" (None), a dask Client, or a scheduler address (connected)."""
    if client is None or client == "local":
        return None
    if client == "serial":
        return "serial"
    if isinstance(client, str):
        return connect(client)
    if hasattr(client, "submit") and hasattr(client, "scheduler_info"):
        return client
    raise ValueError(
        "client must be None (a local cluster), 'serial', a scheduler address "
        f"or a dask.distributed.Client, not {type(client).__name__}"
    )


def results_frame(records: Sequence[dict[str, Any]], columns: Sequence[str] = ()) -> pd.DataFrame:
    """Records as a DataFrame in grid order; ``columns`` first."""
    import pandas as pd

    df = pd.DataFrame.from_records(list(records))
    if df.empty:
        return df
    df = df.sort_values("run", kind="stable").reset_index(drop=True)
    first = [c for c in ("run", *columns) if c in df.columns]
    return df[first + [c for c in df.columns if c not in first]]


def run_plan(
    p: Plan,
    client: Any,
    on_record: Callable[[dict[str, Any]], None],
    skip: Collection[str] = (),
) -> int:
    """Run the plan's runs whose keys are not in ``skip``; returns how many ran."""
    todo = [r for r in p.runs if p.key(r) not in skip] if skip else p.runs
    target = check_client(client)
    owned = isinstance(client, str) and target not in (None, "serial")
    try:
        execute(target, todo, p.traces, p.names, p.base, on_record)
    finally:
        if owned:
            target.close()
    return len(todo)


def sweep(
    grid: Mapping[str, Sequence[Any]],
    trace: Any = None,
    base: SimConfig | None = None,
    client: Any = None,
    *,
    progress: bool = False,
) -> pd.DataFrame:
    """Simulate every combination of ``grid`` and return one DataFrame row per run.

    Arguments:
        grid: maps names to lists of values. A name is a :class:`SimConfig`
            field, ``"engine.<parameter>"`` (a :class:`CopyEngine` parameter of
            the run's engine, such as ``"engine.chunk_pages"``) or ``"trace"``.
        trace: the trace every run replays: a :class:`Trace`, a trace file's
            path, or a pattern table ``{"pattern", "pages", "accesses", "seed",
            ...}`` each worker generates. Not given when the grid has ``trace``.
        base: the settings the grid changes (default ``SimConfig()``).
        client: None starts a local Dask cluster (one single-threaded worker
            process per core) for this sweep; a ``dask.distributed.Client``
            runs it on that cluster; a scheduler address connects to it;
            ``"serial"`` runs it in this process.
        progress: show a progress bar (tqdm) on stderr.

    Returns:
        A DataFrame in grid order: ``run``, the grid's names, every other
        parameter (``trace``, every SimConfig field, ``engine`` and every
        ``engine.<parameter>``), the run's stats, ``error`` (None, or the
        message of a run that raised) and where it ran (``host``, ``pid``,
        versions). Where a run ran does not change its stats (``wall_s`` aside).

    Raises:
        ValueError: before anything runs, for an empty grid, an unknown name,
            a bad value (naming the field), a bad trace, or an unreachable
            scheduler.
    """
    p = plan(grid, trace, base)
    records: list[dict[str, Any]] = []
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(p.runs), desc="sweep", unit="run")

    def collect(record: dict[str, Any]) -> None:
        records.append(record)
        if bar is not None:
            bar.update(1)

    try:
        run_plan(p, client, collect)
    finally:
        if bar is not None:
            bar.close()
    return results_frame(records, p.varied)
