"""numba's run-time environment as the Python layer sees it.

The threading layer (logged once, reported with the thread count), a context
manager that sets the thread count for a block, and a notice printed when numba
really compiles. Used by the device, ``migrate_vma`` and the bench; imports
nothing from migengine.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Iterator
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
    """Reports numba's compiles as they happen: which function, how many so far.

    numba sends ``numba:compile`` only when it really compiles, not when it
    loads a function from its on-disk cache, so a warm run prints nothing. On a
    terminal the line is rewritten in place; in a log, one line every
    ``LOG_EVERY`` functions.
    """

    LOG_EVERY = 25

    def __init__(self, stream: TextIO, expected: int | None = None) -> None:
        self._out = stream
        self._expected = expected
        self._tty = bool(getattr(stream, "isatty", lambda: False)())
        self._t0 = 0.0
        self.fired = False
        self.done = 0

    def _status(self, name: str) -> str:
        of = f" of about {self._expected}" if self._expected else ""
        elapsed = time.monotonic() - self._t0
        return f"migengine: compiling kernels: {self.done}{of} done, {elapsed:.0f} s ({name})"

    def on_start(self, event: nb_event.Event) -> None:
        if not self.fired:
            self.fired = True
            self._t0 = time.monotonic()
            print(
                "migengine: compiling the numba kernels (first run only; cached afterwards)",
                file=self._out,
            )

    def on_end(self, event: nb_event.Event) -> None:
        self.done += 1
        name = getattr(event.data.get("dispatcher"), "__qualname__", "")
        if self._tty:
            print("\r" + self._status(name)[:110].ljust(110), end="", file=self._out)
        elif self.done % self.LOG_EVERY == 0:
            print(self._status(name), file=self._out)
        self._out.flush()

    def close(self) -> None:
        if self.fired:
            end = "\n" if self._tty else ""
            elapsed = time.monotonic() - self._t0
            print(
                f"{end}migengine: compiled {self.done} functions in {elapsed:.0f} s",
                file=self._out,
            )
            self._out.flush()


@contextmanager
def compile_notice(
    stream: TextIO | None = None, expected: int | None = None
) -> Iterator[CompileListener]:
    """Within the block, report what numba compiles and how far it has got.

    ``expected``: about how many functions a cold run of the block compiles
    (shown as "N of about M"); None shows the count alone.
    """
    listener = CompileListener(sys.stderr if stream is None else stream, expected)
    with nb_event.install_listener("numba:compile", listener):
        try:
            yield listener
        finally:
            listener.close()
