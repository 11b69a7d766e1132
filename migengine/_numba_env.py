"""numba's run-time environment as the Python layer sees it.

The threading layer (logged once, reported with the thread count), a context
manager that sets the thread count for a block, and a notice printed when numba
really compiles. Used by the device, ``migrate_vma`` and the bench; imports
nothing from migengine.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TextIO

import numba
from numba.core import event as nb_event

__all__ = ["compile_notice", "log", "log_threading_layer", "numba_threads", "threading_info"]

log = logging.getLogger("migengine")
_threading_logged = False


def log_threading_layer() -> None:
    """Log numba's threading layer once, after the first parallel copy ran.

    The layer is chosen silently (tbb, then omp, then workqueue) and workqueue
    costs ~50x more per parallel region, so say which one loaded.
    """
    global _threading_logged
    if _threading_logged:
        return
    try:
        layer = numba.threading_layer()
    except ValueError:
        # No parallel region yet. Say so once rather than paying for this
        # exception on every small (serial-copy) migration.
        _threading_logged = True
        log.debug("numba threading layer not started yet (only serial copies so far)")
        return
    _threading_logged = True
    log.info("numba threading layer: %s, %d threads", layer, numba.get_num_threads())
    if layer == "workqueue":
        log.warning("workqueue threading layer: parallel copies pay ~75 us per region")


def threading_info() -> dict[str, Any]:
    """numba's threading layer and thread count (launching the layer if needed)."""
    threads = numba.get_num_threads()  # launches the thread pool, so the layer is known
    layer: str
    try:
        layer = numba.threading_layer()
    except ValueError:
        layer = "unknown"
    return {"threading_layer": layer, "threads": threads}


@contextmanager
def numba_threads(threads: int | None) -> Iterator[None]:
    """Run the block with numba's thread count set to ``threads`` (None: unchanged)."""
    if threads is None:
        yield
        return
    previous = numba.get_num_threads()
    numba.set_num_threads(threads)
    try:
        yield
    finally:
        numba.set_num_threads(previous)


class CompileListener(nb_event.Listener):
    """Says once, on the first real compile (cache loads send no event)."""

    def __init__(self, say: Callable[[], None]) -> None:
        self._say = say
        self.fired = False

    def on_start(self, event: nb_event.Event) -> None:
        if not self.fired:
            self.fired = True
            self._say()

    def on_end(self, event: nb_event.Event) -> None:
        pass


@contextmanager
def compile_notice(stream: TextIO | None = None) -> Iterator[CompileListener]:
    """Within the block, print one line when numba first compiles something.

    numba sends a ``numba:compile`` event only when it really compiles, not
    when it loads a function from its on-disk cache, so the line appears on a
    first run (or after the sources changed) and not otherwise.
    """

    def say() -> None:
        out = sys.stderr if stream is None else stream
        print(
            "migengine: compiling numba kernels (first run only, cached afterwards; "
            "this can take a few minutes)...",
            file=out,
        )
        out.flush()

    listener = CompileListener(say)
    with nb_event.install_listener("numba:compile", listener):
        yield listener
