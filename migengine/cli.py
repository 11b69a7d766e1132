"""The ``migengine`` console script (``sim`` and ``sweep`` are in ``cli_sim``, ``cli_sweep``).

``migengine bench`` sweeps the copy engine's chunk size on the built-in
workload (see :mod:`migengine.bench`): it prints a table and writes
``results.json``, ``results.md`` (the same table in Markdown, with the machine
and the command that reproduces it) and ``chunk_sweep.png`` into ``--out``. Any bad flag exits
with status 2 and a one-line message on stderr.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from typing import Any, NoReturn

import numba

from migengine import __version__, bench, cli_sim, cli_sweep
from migengine.bench import thp
from migengine.copyengine import CopyEngine
from migengine.kernels import layout as L

PROG = "migengine"
# A 4 KiB-page workload needs ~8 KiB of memory per page with bytes stored;
# 2**24 pages (64 GiB of process) is far beyond any sensible run on one host.
MAX_PAGES = 1 << 24


BENCH_COMPILES = 205


def _max_threads() -> int:
    """The most threads numba can run (its thread pool size, NUMBA_NUM_THREADS)."""
    return int(numba.config.NUMBA_NUM_THREADS)  # type: ignore[attr-defined]


class _Parser(argparse.ArgumentParser):
    """argparse that reports a bad command line on one line and exits 2."""

    def error(self, message: str) -> NoReturn:
        text = " ".join(message.split())  # argparse messages may wrap; keep one line
        self.exit(2, f"{PROG}: error: {text} (see '{self.prog} --help')\n")


def _int_in(low: int, high: int | None = None):
    def parse(text: str) -> int:
        try:
            value = int(text.replace("_", ""), 0)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
        if value < low or (high is not None and value > high):
            bound = f">= {low}" if high is None else f"between {low} and {high}"
            raise argparse.ArgumentTypeError(f"{value} must be {bound}")
        return value

    return parse


def _chunk_list(text: str) -> list[int]:
    parse = _int_in(1)
    parts = [p.strip() for p in text.split(",")]
    if not all(parts):
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of integers")
    values = [parse(p) for p in parts]
    return sorted(set(values))


def _profile_list(text: str) -> list[str]:
    names = [p.strip() for p in text.split(",")]
    known = sorted(L.PROFILES)
    for name in names:
        if name not in known:
            raise argparse.ArgumentTypeError(f"unknown profile {name!r}; choose from {known}")
    return list(dict.fromkeys(names))  # each once, in the order given


def _fraction(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"{value:g} must be between 0 and 1")
    return value


def _build_parser() -> _Parser:
    parser = _Parser(prog=PROG, description="A simulator of Linux migrate_vma() (HMM).")
    parser.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    b = sub.add_parser(
        "bench",
        help="sweep the copy chunk size on the built-in workload",
        description=(
            "Migrate a fragmented process of --pages pages system->device once per chunk "
            "size and repetition; print a table and write results.json, results.md and "
            "chunk_sweep.png."
        ),
    )
    b.add_argument(
        "--pages",
        type=_int_in(1, MAX_PAGES),
        default=bench.DEFAULT_PAGES,
        help="pages of the process, 4 KiB each (default %(default)s = 256 MiB)",
    )
    b.add_argument(
        "--chunk-pages",
        type=_chunk_list,
        default=list(bench.DEFAULT_CHUNKS),
        metavar="N,N,...",
        help="copy chunk sizes in pages (default "
        + ",".join(str(c) for c in bench.DEFAULT_CHUNKS)
        + ")",
    )
    b.add_argument(
        "--out",
        default="migengine-bench",
        metavar="DIR",
        help="output directory (default %(default)s)",
    )
    b.add_argument(
        "--repeat",
        type=_int_in(1),
        default=bench.DEFAULT_REPEAT,
        help="repetitions; each figure is the best (default %(default)s)",
    )
    b.add_argument(
        "--fragmentation",
        type=_fraction,
        default=bench.DEFAULT_FRAGMENTATION,
        help="fraction of page boundaries physically broken, 0..1 (default %(default)s)",
    )
    b.add_argument(
        "--engine",
        choices=CopyEngine.presets(),
        default=bench.DEFAULT_ENGINE,
        help="copy-engine preset (default %(default)s)",
    )
    b.add_argument(
        "--threads",
        type=_int_in(1, _max_threads()),
        default=None,
        help="numba threads for the copy (default: numba's)",
    )
    b.add_argument(
        "--no-stream",
        action="store_true",
        help="copy every batch through memcpy and the caches (no streaming stores)",
    )
    b.add_argument("--seed", type=_int_in(0), default=0, help="layout seed (default 0)")
    b.add_argument(
        "--profile",
        type=_profile_list,
        default=None,
        metavar="P[,P...]",
        help="kernel profile; several (seed,hmm-v25,modern) run side by side (default hmm-v25)",
    )
    b.add_argument(
        "--passes",
        action="store_true",
        help="also time each migration pass on the metadata-only machine",
    )
    b.add_argument(
        "--thp",
        action="store_true",
        help="run hmm-tests.c's benchmark_thp_migration instead (default profiles: "
        "modern,hmm-v25,seed); writes thp.json and thp.md",
    )
    cli_sim.add_parser(sub, _int_in)
    cli_sweep.add_parser(sub)
    return parser


def _progress(total: int) -> Any:
    """A tqdm bar on stderr, only when stderr is a terminal."""
    if not sys.stderr.isatty():
        return None
    # Imported here for start-up speed (tqdm is only needed on a terminal).
    from tqdm import tqdm

    return tqdm(total=total, desc="bench", unit="rep", file=sys.stderr, leave=False)


def _bench_thp(args: argparse.Namespace) -> int:
    """``migengine bench --thp``: the benchmark_thp_migration replica."""
    profiles = args.profile or list(thp.PROFILES)
    try:
        os.makedirs(args.out, exist_ok=True)
        result = thp.run_thp_benchmark(profiles, progress=_progress)
        bench.write_results(result, os.path.join(args.out, "thp.json"))
        text = thp.format_thp_markdown(result)
        with open(os.path.join(args.out, "thp.md"), "w", encoding="utf-8") as f:
            f.write(text)
    except (OSError, MemoryError, ValueError, RuntimeError) as exc:
        msg = " ".join(str(exc).split()) or type(exc).__name__
        print(f"{PROG}: error: {msg}", file=sys.stderr)
        return 1
    print(text, end="")
    print(f"wrote {os.path.join(args.out, 'thp.json')} and thp.md")
    return 0


def _bench(args: argparse.Namespace) -> int:
    if args.thp:
        return _bench_thp(args)
    profiles = args.profile or ["hmm-v25"]
    config = bench.SweepConfig(
        pages=args.pages,
        chunks=args.chunk_pages,
        repeat=args.repeat,
        fragmentation=args.fragmentation,
        engine=args.engine,
        threads=args.threads,
        stream=not args.no_stream,
        seed=args.seed,
        profile=profiles[0],
        passes=args.passes,
    )
    try:
        os.makedirs(args.out, exist_ok=True)
        # About how many functions a cold bench compiles (shown as progress).
        with bench.compile_notice(expected=BENCH_COMPILES):
            if len(profiles) == 1:
                result = bench.run_sweep(config, progress=_progress)
            else:
                result = bench.run_profiles(config, profiles, progress=_progress)
        bench.write_results(result, os.path.join(args.out, "results.json"))
        bench.write_markdown(result, os.path.join(args.out, "results.md"), out=args.out)
        bench.plot_sweep(result, os.path.join(args.out, "chunk_sweep.png"))
    except (OSError, MemoryError, ValueError, RuntimeError) as exc:
        msg = " ".join(str(exc).split()) or type(exc).__name__
        print(f"{PROG}: error: {msg}", file=sys.stderr)
        return 1
    print(bench.format_comparison(result) if len(profiles) > 1 else bench.format_table(result))
    print(f"wrote {os.path.join(args.out, 'results.json')}, results.md and chunk_sweep.png")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``migengine`` console script; returns the exit status."""
    parser = _build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.error("a command is required: bench, sim or sweep")
    if args.command == "bench":
        return _bench(args)
    if args.command == "sim":
        return cli_sim.run(args, PROG)
    if args.command == "sweep":
        return cli_sweep.run(args, PROG)
    parser.error(f"unknown command {args.command!r}")  # unreachable: argparse checks it


if __name__ == "__main__":
    sys.exit(main())
