"""migrate_vma(): the seed's entry point, validated in Python and run compiled."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
from numba.core.registry import CPUDispatcher

from migengine._numba_env import log_threading_layer
from migengine._ops import MigrateOps
from migengine._validate import as_int, mpfn_array
from migengine.errors import MigrateError
from migengine.kernels import driver as kdriver
from migengine.kernels import handle as khandle
from migengine.kernels import layout as L
from migengine.kernels import migrate_vma as kernels_migrate_vma
from migengine.kernels import (
    migrate_vma_finalize,
    migrate_vma_pages,
    migrate_vma_setup,
)
from migengine.process import Vma

__all__ = ["MigrateOps", "migrate_vma"]


def _is_compiled(fn: object) -> bool:
    return isinstance(fn, CPUDispatcher)


def _check_ops(ops: object) -> tuple[Callable[..., Any], Callable[..., Any], bool]:
    if not isinstance(ops, MigrateOps):
        raise TypeError(f"ops must be a MigrateOps, not {type(ops).__name__}")
    a, f = ops.alloc_and_copy, ops.finalize_and_map
    if not callable(a) or not callable(f):
        raise TypeError("both MigrateOps callbacks must be callable")
    compiled = _is_compiled(a), _is_compiled(f)
    if compiled[0] != compiled[1]:
        raise TypeError("MigrateOps mixes an @njit callback with a Python one")
    return a, f, compiled[0]


def _check_range(vma: Vma, start: int, end: int) -> int:
    """The kernel's EINVAL checks on the VMA and range; returns npages.

    Done in Python from the Vma's own fields: a compiled check would unbox the
    whole state (~2 us) just to read three numbers.
    """
    if vma.flags & (L.VM_HUGETLB | L.VM_SPECIAL):
        raise MigrateError(f"migrate_vma: VMA flags {vma.flags:#x} are hugetlb or VM_SPECIAL")
    ps = vma.process.machine.page_size
    s, e = start - start % ps, end - end % ps
    if not (vma.start <= s < vma.end and vma.start < e <= vma.end and s < e):
        raise MigrateError(
            f"migrate_vma: range [{start:#x}, {end:#x}) is not inside "
            f"[{vma.start:#x}, {vma.end:#x}) or is empty after rounding to pages"
        )
    return (e - s) // ps


def _prepare_fast_path() -> Callable[..., int]:
    """The fast path's dispatcher, loaded (or compiled) for its one signature.

    Compiling is then switched off, so arrays of any other type raise TypeError
    at the call instead of compiling a variant; the caller falls back to the
    validating path for those.
    """
    entry = khandle.migrate_vma_to_device_at
    entry.compile(khandle.FAST_SIGNATURE.args)
    entry.disable_compile()
    log_threading_layer()
    return entry


def _fast_to_device(*args: Any) -> int:
    """Stands in for the fast path until its first use, then replaces itself."""
    global _fast_to_device
    _fast_to_device = _prepare_fast_path()
    return _fast_to_device(*args)


def migrate_vma(
    ops: MigrateOps | None,
    vma: Vma | None,
    start: int,
    end: int,
    src: np.ndarray | None,
    dst: np.ndarray | None,
    private: Any = None,
) -> int:
    """migrate_vma() - migrate a range of memory inside a VMA.

    The kernel's argument checks raise MigrateError (errno EINVAL); malformed
    arguments raise TypeError or ValueError; both before any state changes.
    Returns 0, also when nothing migrated. Neither callback runs when no page
    was collected.
    """
    # Fast path for the device's own ops: one compiled call that validates as it
    # goes (kernels.handle). Whatever it refuses (-EINVAL, arrays of another
    # type, an address past int64) has changed nothing and goes on to the checks
    # below, which raise the precise error. Addresses must be exact ints here:
    # numba would truncate a float to the int64 signature.
    if private is None and type(vma) is Vma and type(start) is int and type(end) is int:
        m = vma.process.machine
        if ops is m.device.ops:
            try:
                if _fast_to_device(m.core.handle, vma.index, start, end, src, dst) == 0:
                    return 0
            except (TypeError, OverflowError):
                pass
    if vma is None:
        raise MigrateError("migrate_vma: vma is NULL")
    if ops is None or src is None or dst is None:
        raise MigrateError("migrate_vma: ops, src and dst must all be given")
    if not isinstance(vma, Vma):
        raise TypeError(f"vma must be a Vma, not {type(vma).__name__}")
    s, e = as_int(start, "start"), as_int(end, "end")
    alloc, fin, compiled = _check_ops(ops)
    npages = _check_range(vma, s, e)
    src = mpfn_array(src, "src", npages)
    dst = mpfn_array(dst, "dst", npages)
    if np.may_share_memory(src, dst):
        raise ValueError("src and dst must not overlap")
    m = vma.process.machine
    if ops is m.device.ops:
        return m.device.run_ops(vma, s, e, src, dst, private)
    if compiled:
        return int(kernels_migrate_vma(m.state, alloc, fin, vma.index, s, e, src, dst, private))
    return _migrate_vma_python(alloc, fin, vma, s, e, src, dst, private)


def _migrate_vma_python(
    alloc: Callable[..., Any],
    fin: Callable[..., Any],
    vma: Vma,
    start: int,
    end: int,
    src: np.ndarray,
    dst: np.ndarray,
    private: Any,
) -> int:
    """Compiled passes with Python callbacks between them.

    A callback that raises, or hands back a destination no driver may use,
    does not leave pages locked and unmapped: the pipeline completes (the bad
    slots are simply not migrated) and the error is raised afterwards.
    """
    st = vma.process.machine.state
    ps = vma.process.machine.page_size
    s, e = start - start % ps, end - end % ps
    npages = (e - s) // ps
    if migrate_vma_setup(st, vma.index, s, e, src, dst) <= 0:
        return 0
    src_ro = src.view()
    src_ro.flags.writeable = False
    error: BaseException | None = None
    try:
        alloc(vma, src_ro, dst, s, e, private)
    except BaseException as exc:
        # A driver that failed part-way is in no state to hand pages over: abort
        # every slot (finalize then restores each source and frees each dst given).
        error = exc
        src[:npages] &= ~vma.process.machine.layout.MIGRATE
    bad = int(kdriver.validate_dst(st, src, dst, npages))
    migrate_vma_pages(st, vma.index, s, e, src, dst)
    dst_ro = dst.view()
    dst_ro.flags.writeable = False
    if error is None:
        try:
            fin(vma, src_ro, dst_ro, s, e, private)
        except BaseException as exc:
            error = exc
    migrate_vma_finalize(st, vma.index, s, e, src, dst)
    if error is not None:
        raise error
    if bad >= 0:
        raise ValueError(
            f"alloc_and_copy set dst[{bad}] to a page a driver cannot hand over "
            "(free, unlocked, mapped, already used, or the source itself); "
            "that slot was not migrated"
        )
    return 0
