"""``migengine sweep GRID.toml --out DIR``: a grid of simulations, resumable, on Dask.

GRID.toml has ``trace = "PATH"`` or a ``[trace]`` table (``pattern``, ``pages``,
``accesses``, ``seed`` and the pattern's parameters), a ``[base]`` table of
SimConfig fields, a ``[grid]`` table of lists, and optionally a ``[plot]``
table (``stat``, ``x``, ``y``, ``kind``) that the flags override. Relative
trace paths are taken from GRID.toml's folder.

It writes DIR/results.parquet as runs finish and DIR/summary.png at the end,
prints a table, and closes with how many runs ran. A run already in
DIR/results.parquet without an error is not run again (its row is kept as it
was); a failed one is run again. Exit status: 0, or 1 for a bad grid, file or
scheduler (one line on stderr, nothing run) and when a run failed.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

from migengine.errors import MigengineError
from migengine.sim_config import SimConfig
from migengine.sweep_grid import resolve_path, run_key
from migengine.sweep_output import (
    PLOT,
    RESULTS,
    Checkpoint,
    format_summary,
    plot_kind,
    plot_summary,
    read_results,
)
from migengine.sweeps import Plan, plan, run_plan

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

_TOP = ("trace", "base", "grid", "plot")
_PLOT = ("stat", "x", "y", "kind")
SUMMARY_STATS = (
    "device_faults",
    "pages_to_device",
    "pages_prefetched",
    "pages_evicted",
    "modelled_s",
    "wall_s",
)


def add_parser(sub: Any) -> None:
    """Add the ``sweep`` subcommand to the ``migengine`` parser's subparsers."""
    s = sub.add_parser(
        "sweep",
        help="run a grid of simulations (resumable) on a Dask cluster",
        description=(
            "Run every combination of GRID.toml's [grid] over its [base] and trace; write "
            "DIR/results.parquet (one row per run) and DIR/summary.png. Runs already in "
            "DIR/results.parquet are not run again."
        ),
    )
    s.add_argument("grid", metavar="GRID.toml", help="the sweep's grid file")
    s.add_argument("--out", required=True, metavar="DIR", help="output directory")
    s.add_argument(
        "--scheduler",
        default="local",
        metavar="local|serial|ADDRESS",
        help="local: a LocalCluster of one worker per core (default); serial: this "
        "process; ADDRESS: a running Dask scheduler (tcp://host:8786)",
    )
    s.add_argument("--stat", help="the stat the summary plot shows (default modelled_s)")
    s.add_argument("--x", help="the plot's first parameter (default: the grid's first)")
    s.add_argument("--y", help="its second (default: the grid's second, if any)")
    s.add_argument("--plot", choices=("heatmap", "lines"), help="plot kind")


def _table(doc: dict[str, Any], key: str) -> dict[str, Any]:
    value = doc.get(key, {})
    if not isinstance(value, dict):
        raise ValueError(f"[{key}] must be a table, got {value!r}")
    return value


def load_grid(path: str) -> tuple[Plan, dict[str, Any]]:
    """Read GRID.toml into a checked plan and its [plot] table; ValueError names the fault."""
    try:
        with open(path, "rb") as f:
            doc = tomllib.load(f)
    except tomllib.TOMLDecodeError as exc:
        raise ValueError(f"{path}: {exc}") from None
    unknown = sorted(set(doc) - set(_TOP))
    if unknown:
        raise ValueError(f"{path}: unknown key(s) {', '.join(unknown)}; expected {_TOP}")
    root = Path(path).resolve().parent
    trace = doc.get("trace")
    if isinstance(trace, str):
        trace = resolve_path(trace, root)
    grid = _table(doc, "grid")
    if isinstance(grid.get("trace"), list):
        grid["trace"] = [resolve_path(t, root) if isinstance(t, str) else t for t in grid["trace"]]
    try:
        base = SimConfig(**_table(doc, "base"))
    except TypeError as exc:
        raise ValueError(f"{path}: [base]: {exc}") from None
    except ValueError as exc:
        raise ValueError(f"{path}: [base]: {exc}") from None
    plot = _table(doc, "plot")
    bad = sorted(set(plot) - set(_PLOT))
    if bad:
        raise ValueError(f"{path}: [plot]: unknown key(s) {', '.join(bad)}; expected {_PLOT}")
    try:
        return plan(grid, trace, base), plot
    except ValueError as exc:
        raise ValueError(f"{path}: {exc}") from None


def _done_keys(existing: Any, p: Plan) -> tuple[set[str], Any]:
    """Keys of the finished runs on disk, and the rows to keep (failed runs of this plan go)."""
    if existing is None or existing.empty:
        return set(), existing
    cols = p.key_columns
    if not set(cols) <= set(existing.columns):
        return set(), existing
    mine = {p.key(r) for r in p.runs}
    keys = [run_key(rec, cols) for rec in existing[cols].to_dict("records")]
    failed = existing["error"].notna().to_numpy() if "error" in existing else None
    keep, done = [], set()
    for i, k in enumerate(keys):
        bad = failed is not None and bool(failed[i])
        if not bad:
            done.add(k)
        keep.append(not (bad and k in mine))
    return done, existing[keep].reset_index(drop=True)


def _plot_choice(args: argparse.Namespace, plot: dict[str, Any], p: Plan) -> tuple[Any, ...]:
    """The summary plot's stat, x, y and kind (flags over [plot] over defaults); the
    parameters and the kind are checked before anything runs (the stat names a result
    column, known only after the runs)."""
    stat = args.stat or plot.get("stat", "modelled_s")
    x = args.x or plot.get("x", p.varied[0])
    y = args.y or plot.get("y", p.varied[1] if len(p.varied) > 1 else None)
    kind = args.plot or plot.get("kind")
    for name in (x, y):
        if name is not None and name not in p.key_columns:
            raise ValueError(f"plot: {name!r} is not a run parameter ({', '.join(p.key_columns)})")
    return stat, x, y, plot_kind(kind, y)


def run(args: argparse.Namespace, prog: str) -> int:
    """Run ``migengine sweep``; returns the exit status."""
    try:
        p, plot = load_grid(args.grid)
        stat, x, y, kind = _plot_choice(args, plot, p)
        os.makedirs(args.out, exist_ok=True)
        existing = read_results(args.out)
        done, kept = _done_keys(existing, p)
        todo = sum(1 for r in p.runs if p.key(r) not in done)
        ckpt = Checkpoint(args.out, kept)
        bar = None
        if todo:
            from tqdm import tqdm

            bar = tqdm(
                total=todo,
                desc="sweep",
                unit="run",
                file=sys.stderr,
                disable=not sys.stderr.isatty(),
            )

        def on_record(record: dict[str, Any]) -> None:
            ckpt.add(record)
            if bar is not None:
                bar.update(1)

        try:
            ran = run_plan(p, args.scheduler, on_record, skip=done)
        finally:
            if bar is not None:
                bar.close()
            ckpt.flush()
        df = ckpt.frame()
        mine = {p.key(r) for r in p.runs}
        rows = df[
            [run_key(rec, p.key_columns) in mine for rec in df[p.key_columns].to_dict("records")]
        ]
        plot_path = plot_summary(rows, stat, x, y, Path(args.out) / PLOT, kind=kind)
    except KeyboardInterrupt:
        print(f"{prog}: interrupted; finished runs are in {args.out}/{RESULTS}", file=sys.stderr)
        return 130
    except (OSError, MemoryError, ValueError, TypeError, MigengineError) as exc:
        msg = " ".join(str(exc).split()) or type(exc).__name__
        print(f"{prog}: error: {msg}", file=sys.stderr)
        return 1
    print(format_summary(rows, p.varied, SUMMARY_STATS))
    failed = int(rows["error"].notna().sum()) if "error" in rows else 0
    print(
        f"ran {ran} of {len(p.runs)} runs ({len(p.runs) - ran} already in "
        f"{Path(args.out) / RESULTS}); {failed} failed; wrote {Path(args.out) / RESULTS} "
        f"and {plot_path}"
    )
    return 1 if failed else 0
