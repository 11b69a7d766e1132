"""Plumbing shared by the bench/ suites: their sizes and their command line.

Imported as ``_support`` (bench/ is on ``sys.path`` both under pytest and
when a suite runs as a script, as for ``peers``).
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Sequence

from migengine.bench import DEFAULT_FRAGMENTATION, DEFAULT_PAGES


def bench_full() -> bool:
    """True when ``MIGENGINE_BENCH_FULL=1``: bench/ runs at its real sizes."""
    return os.environ.get("MIGENGINE_BENCH_FULL", "") == "1"


def bench_sizes(full: Sequence[int], smoke: Sequence[int]) -> list[int]:
    """The page counts a bench/ suite runs: ``full`` or the tiny smoke ones."""
    return list(full if bench_full() else smoke)


def script_parser(doc: str) -> argparse.ArgumentParser:
    """The command line shared by the bench/ scripts that run the built-in workload."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--pages", type=int, default=DEFAULT_PAGES)
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--fragmentation", type=float, default=DEFAULT_FRAGMENTATION)
    return parser
