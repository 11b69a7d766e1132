"""``migengine sim``: replay a trace through the fault-driven driver model.

It prints a table of the run's statistics and writes results.json, run.png and
timeline.json (Chrome trace events, for ui.perfetto.dev) into ``--out``. A bad
flag, a missing file or a malformed trace exits non-zero with one line on stderr.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

from migengine.copyengine import CopyEngine
from migengine.errors import MigengineError
from migengine.kernels.sim.layout import EVICT_IDS, PREFETCH_IDS
from migengine.sim import simulate
from migengine.sim_config import SimConfig
from migengine.trace import Trace
from migengine.trace_synthetic import PATTERNS

#: Runs with at least this many accesses show a progress bar (on a terminal).
PROGRESS_MIN_ACCESSES = 1 << 22


def add_parser(sub: Any, int_in: Any) -> None:
    """Add the ``sim`` subcommand to the ``migengine`` parser's subparsers."""
    s = sub.add_parser(
        "sim",
        help="replay a trace through the UVM-style fault-driven driver model",
        description=(
            "Replay --trace FILE (CSV, .npz or valgrind lackey text, also gzipped) or a "
            "synthetic --pattern through me.simulate; print a table and write "
            "results.json, run.png and timeline.json into --out."
        ),
    )
    src = s.add_mutually_exclusive_group(required=True)
    src.add_argument("--trace", metavar="FILE", help="trace file")
    src.add_argument("--pattern", choices=sorted(PATTERNS), help="synthetic access pattern")
    s.add_argument("--pages", type=int_in(1, 1 << 24), default=8192, help="pattern: pages")
    s.add_argument(
        "--accesses", type=int_in(0, 1 << 34), default=1_000_000, help="pattern: accesses"
    )
    s.add_argument("--seed", type=int_in(0), default=0, help="pattern and policy seed")
    s.add_argument("--device-pages", type=int_in(1), default=4096, help="device memory, pages")
    s.add_argument(
        "--migrate-pages", type=int_in(1, 512), default=16, help="pages per migration unit"
    )
    s.add_argument("--batch-faults", type=int_in(1), default=256, help="faults per batch")
    s.add_argument("--prefetch", choices=sorted(PREFETCH_IDS), default="none")
    s.add_argument("--evict", choices=sorted(EVICT_IDS), default="lru")
    s.add_argument("--engine", choices=CopyEngine.presets(), default="pcie3-uvm")
    s.add_argument("--preset", choices=SimConfig.presets(), help="published cost preset")
    s.add_argument("--profile", choices=("hmm-v25", "seed"), default="hmm-v25")
    s.add_argument("--no-data", action="store_true", help="metadata only (no bytes kept)")
    s.add_argument("--out", default="migengine-sim", metavar="DIR", help="output directory")


def _progress_bar(total_hint: int) -> tuple[Any, Any]:
    if not sys.stderr.isatty() or total_hint < PROGRESS_MIN_ACCESSES:
        return None, None
    from tqdm import tqdm  # only needed on a terminal

    bar = tqdm(total=total_hint, desc="sim", unit="acc", unit_scale=True, file=sys.stderr)

    def update(done: int, total: int) -> None:
        bar.total = total
        bar.update(done - bar.n)

    return bar, update


def format_table(stats: dict[str, Any]) -> str:
    """The run's statistics, one per line, aligned."""
    rows = []
    for key, value in stats.items():
        if isinstance(value, float):
            text = f"{value:.6g}"
        elif isinstance(value, int) and not isinstance(value, bool):
            text = f"{value:,}"
        else:
            text = str(value)
        rows.append((key, text))
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k:<{width}}  {v:>16}" for k, v in rows)


def run(args: argparse.Namespace, prog: str) -> int:
    """Run ``migengine sim``; returns the exit status."""
    try:
        fields = dict(
            device_pages=args.device_pages,
            migrate_pages=args.migrate_pages,
            batch_faults=args.batch_faults,
            prefetch=args.prefetch,
            evict=args.evict,
            engine=args.engine,
            profile=args.profile,
            store_data=not args.no_data,
            seed=args.seed,
        )
        if args.preset:
            preset = SimConfig.preset(args.preset)
            for key in ("engine", "fault_us", "batch_us"):
                fields[key] = getattr(preset, key)
        cfg = SimConfig(**fields)
        if args.trace is not None:
            if not os.path.isfile(args.trace):
                raise FileNotFoundError(f"no such trace file: {args.trace}")
            source: Any = args.trace
            hint = os.path.getsize(args.trace) // 16
        else:
            source = Trace.synthetic(
                args.pattern, pages=args.pages, accesses=args.accesses, seed=args.seed
            )
            hint = len(source)
        bar, update = _progress_bar(hint)
        try:
            res = simulate(source, cfg, name=args.pattern or None, progress=update)
        finally:
            if bar is not None:
                bar.close()
        paths = res.save(args.out)
    except (OSError, MemoryError, ValueError, TypeError, MigengineError) as exc:
        msg = " ".join(str(exc).split()) or type(exc).__name__
        print(f"{prog}: error: {msg}", file=sys.stderr)
        return 1
    print(format_table(res.stats))
    print("wrote " + ", ".join(str(p) for p in paths.values()))
    return 0
