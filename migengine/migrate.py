"""migrate_vma(): the seed's entry point, validated in Python and run compiled.

The passes are compiled kernels; the driver's callbacks run between them, called
from Python whether they are Python callables or ``@njit`` functions, so that:

* a ``dst`` entry the dst check refuses (kernels.dst_check) is reported by an
  :class:`InvalidDstWarning` naming its slot and the reason, besides the
  ``migrate_dst_invalid`` counter;
* a callback that raises leaves a clean machine: after ``alloc_and_copy`` every
  slot fails as one without a destination (sources restored, pages unlocked and
  put back, the destinations given released); after ``finalize_and_map`` the
  struct-page moves of migrate_vma_pages() stand and finalize completes them, as
  4.14 always runs migrate_vma_finalize(); then the exception propagates;
* what a driver cannot do while it holds mmap_sem (``mmap``, ``fork``), or a
  ``put_page`` of a source the migration holds, raises MigengineError in the
  callback (``MachineCore.migrating`` marks it running), and unwinds so.

Called from Python, ``kernels.migrate_vma_pages`` and ``kernels.migrate_vma``
warn about refused entries too (their dispatchers get a Python entry that does,
at the end of this module); from compiled code only the counter moves.
"""

from __future__ import annotations

import inspect
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, NamedTuple

import numba
import numpy as np
from numba.core.errors import NumbaError
from numba.core.registry import CPUDispatcher

from migengine._core import InFlight, MachineCore
from migengine._numba_env import log_threading_layer
from migengine._ops import MigrateOps
from migengine._validate import as_int, mpfn_array
from migengine.errors import MigengineError, MigrateError
from migengine.kernels import device as kdevice
from migengine.kernels import dst_check as kdst
from migengine.kernels import handle as khandle
from migengine.kernels import layout as L
from migengine.kernels import migrate as kmigrate
from migengine.kernels import pages as kpages
from migengine.kernels._jit import KernelDispatcher
from migengine.kernels.device.common import DEV_INDEX_SHIFT
from migengine.process import Vma

__all__ = ["CALLBACK_SIGNATURE", "InvalidDstWarning", "MigrateOps", "Refused", "migrate_vma"]

#: What an ``@njit`` callback must take and return.
CALLBACK_SIGNATURE = "(state, vma_index, src, dst, start, end, private) -> None"
# Refused dst entries named one warning each, per call; the rest are summed up.
MAX_WARNED = 16
# The device's callbacks take ``private`` as an int64 of DEV_* bits and a device index.
_ENGINE_CALLBACKS = frozenset(
    {
        kdevice.device_alloc_and_copy,
        kdevice.device_finalize_and_map,
        kdevice.system_alloc_and_copy,
        kdevice.system_finalize_and_map,
    }
)
_REC_ROWS = [kdst.REC_SLOT, kdst.REC_REASON, kdst.REC_PFN, kdst.REC_OTHER]


class InvalidDstWarning(UserWarning):
    """A ``dst`` entry the dst check refused: its slot was not migrated.

    Attributes: ``slot``, ``reason`` (a ``kernels.dst_check.DST_*`` code),
    ``pfn`` (the frame the entry named) and ``other`` (for a duplicate, the
    slot that keeps the page; else -1).
    """

    def __init__(self, message: str, slot: int, reason: int, pfn: int, other: int) -> None:
        super().__init__(message)
        self.slot, self.reason, self.pfn, self.other = slot, reason, pfn, other


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


def check_range(vma: Vma, start: int, end: int) -> int:
    """The kernel's EINVAL checks on the VMA and range; returns npages.

    Done in Python from the Vma's own fields: a compiled check would unbox the
    whole state (~2 us) just to read three numbers.
    """
    if vma.flags & (L.VM_HUGETLB | L.VM_SPECIAL):
        raise MigrateError(f"migrate_vma: VMA flags {vma.flags:#x} are hugetlb or VM_SPECIAL")
    modern = vma.process.machine.profile == "modern"
    ps = vma.process.machine.page_size
    if modern and vma.flags & L.VM_DAX:
        raise MigrateError("migrate_vma: a DAX VMA (vma_is_dax(), refused since v5.4)")
    if modern and (end - start) // ps <= 0:
        raise MigrateError(f"migrate_vma: [{start:#x}, {end:#x}) is less than a page (v5.4)")
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
    arguments raise TypeError or ValueError (an ``@njit`` callback that cannot
    take ``CALLBACK_SIGNATURE``'s arguments too); all before any state changes.
    Returns 0, also when nothing migrated. Neither callback runs when no page
    was collected. A refused ``dst`` entry is warned about (InvalidDstWarning)
    after the call completes; an exception from a callback propagates once the
    migration is unwound (see the module docstring).
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
    npages = check_range(vma, s, e)
    src = mpfn_array(src, "src", npages)
    dst = mpfn_array(dst, "dst", npages)
    if np.may_share_memory(src, dst):
        raise ValueError("src and dst must not overlap")
    m = vma.process.machine
    if alloc is kdevice.device_alloc_and_copy and fin is kdevice.device_finalize_and_map:
        # The devices' ops are the same functions on every machine: they run on
        # the VMA's machine, as the cached pipeline of the device whose ops they
        # are (of its first device for another machine's), unless ``private``
        # names one.
        dev = next((d for d in m.devices if d.ops is ops), m.device)
        bits = _device_private(m, private, dev.index)
        return m.device.run_ops(vma, s, e, src, dst, bits)
    if compiled:
        if alloc in _ENGINE_CALLBACKS or fin in _ENGINE_CALLBACKS:
            private = _device_private(m, private)
        for fn, role in ((alloc, "alloc_and_copy"), (fin, "finalize_and_map")):
            _check_callback(fn, role, m.state, vma.index, src, dst, s, e, private)
    refused = _run(alloc, fin, compiled, vma, s, e, src, dst, private)
    warn_refused(refused, "migrate_vma", stacklevel=2)
    return 0


def _device_private(m: Any, private: Any, default: int = 0) -> int:
    """``private`` for the device's callbacks: DEV_* bits and a device of this
    machine (None is device ``default``, no flags). ValueError otherwise."""
    if private is None:
        return default << DEV_INDEX_SHIFT
    bits = as_int(private, "private")
    if not 0 <= bits >> DEV_INDEX_SHIFT < len(m.devices):
        raise ValueError(
            f"private {bits:#x} names device {bits >> DEV_INDEX_SHIFT}; this machine has "
            f"{len(m.devices)} (kernels.device.DEV_* bits, device index from bit "
            f"{DEV_INDEX_SHIFT})"
        )
    return bits


# (callback, _type_key(private)) pairs already typed for the callback signature.
_TYPED: set[tuple[Any, Any]] = set()


def _type_key(value: Any) -> Any:
    """What numba's type of ``value`` depends on, cheaply for an array (numba.typeof
    of an array from Python takes microseconds)."""
    if type(value) is np.ndarray:
        f = value.flags
        return (value.dtype.str, value.ndim, f.c_contiguous, f.f_contiguous, f.writeable, f.aligned)
    try:
        return numba.typeof(value)
    except ValueError as exc:
        raise TypeError(f"private must be a value numba can type: {exc}") from None


def _check_callback(fn: Any, role: str, *args: Any) -> None:
    """TypeError, before anything changes, unless the ``@njit`` callback ``fn``
    compiles for the arguments migrate_vma() will pass it (``CALLBACK_SIGNATURE``)."""
    key = (fn, _type_key(args[-1]))
    if key in _TYPED:
        return
    private_type = numba.typeof(args[-1])
    name = getattr(fn, "__name__", repr(fn))
    try:
        inspect.signature(fn.py_func).bind(*args)
    except TypeError:
        raise TypeError(
            f"the @njit {role} callback {name}{inspect.signature(fn.py_func)} must take "
            f"{CALLBACK_SIGNATURE}"
        ) from None
    try:
        fn.compile(tuple(numba.typeof(a) for a in args))
    except NumbaError as exc:
        first = next((ln.strip() for ln in str(exc).splitlines() if ln.strip()), "")
        raise TypeError(
            f"the @njit {role} callback {name} does not compile for migrate_vma's "
            f"arguments {CALLBACK_SIGNATURE}, with private of type {private_type}: {first}"
        ) from exc
    _TYPED.add(key)


def _run(
    alloc: Callable[..., Any],
    fin: Callable[..., Any],
    compiled: bool,
    vma: Vma,
    start: int,
    end: int,
    src: np.ndarray,
    dst: np.ndarray,
    private: Any,
) -> Refused:
    """The compiled passes with the callbacks between them; returns the refused
    dst entries (:func:`_refused`). Python callbacks get ``(vma, src, dst, start,
    end, private)`` with ``src`` (and, for finalize_and_map, ``dst``) read-only;
    ``@njit`` ones ``(state, vma_index, src, dst, start, end, private)``."""
    m = vma.process.machine
    core: MachineCore = m.core
    ps = m.page_size
    s, e = start - start % ps, end - end % ps
    npages = (e - s) // ps
    v = vma.index
    if kmigrate.migrate_vma_setup(m.state, v, s, e, src, dst) <= 0:
        return Refused([], 0)
    src_ro = src.view()
    src_ro.flags.writeable = False
    dst_ro = dst.view()
    dst_ro.flags.writeable = False
    lay = m.layout
    error: BaseException | None = None
    # src is the migration's record of what it collected: an @njit callback
    # could write it (Python ones get it read-only), so the record is kept.
    record = src[:npages].copy()
    try:
        with _in_callback(core, InFlight(src, npages, lay.VALID, lay.MIGRATE, lay.SHIFT)):
            if compiled:
                alloc(m.state, v, src, dst, s, e, private)
            else:
                alloc(vma, src_ro, dst, s, e, private)
        error = _wrote_src(src, record, "alloc_and_copy")
    except BaseException as exc:
        error = exc
    if error is not None:
        # As if no slot had a destination: finalize restores every source and
        # puts back (frees) every sound destination the driver handed over.
        src[:npages] = record & ~lay.MIGRATE
    before = int(m.state.counters[L.C_MIGRATE_DST_INVALID])
    kpages.migrate_vma_pages(m.state, v, s, npages, src, dst)  # not the warning entry
    refused = refused_since(m.state, before)
    if error is None:
        record = src[:npages].copy()
        try:
            with _in_callback(core, InFlight(src, npages, lay.VALID, lay.MIGRATE, lay.SHIFT)):
                if compiled:
                    fin(m.state, v, src, dst, s, e, private)
                else:
                    fin(vma, src_ro, dst_ro, s, e, private)
            error = _wrote_src(src, record, "finalize_and_map")
        except BaseException as exc:
            error = exc  # past the pages pass the moves stand: finalize completes them
        src[:npages] = record
    done = kmigrate.migrate_vma_finalize(m.state, v, s, e, src, dst)
    if done is not None and done < 0:  # its range is the one setup opened: never
        raise MigengineError(f"migrate_vma_finalize refused the migration's own range ({done})")
    if error is not None:
        if hasattr(error, "add_note"):  # Python 3.11+
            for warning in _warnings(refused, "migrate_vma"):
                error.add_note(str(warning))
        if isinstance(error, NumbaError):
            raise TypeError(
                f"an @njit callback does not compile for {CALLBACK_SIGNATURE}; the "
                "migration was unwound"
            ) from error
        raise error
    return refused


def _wrote_src(src: np.ndarray, record: np.ndarray, role: str) -> MigengineError | None:
    """The error for an ``@njit`` callback that wrote ``src``, or None."""
    changed = np.flatnonzero(src[: record.shape[0]] != record)
    if changed.size == 0:
        return None
    return MigengineError(
        f"the {role} callback wrote src[{int(changed[0])}] ({changed.size} entries in all): "
        "src is the migration's record of the pages it collected, for the driver to read; "
        "the engine finished the migration from its own copy of it"
    )


@contextmanager
def _in_callback(core: MachineCore, flight: InFlight) -> Iterator[None]:
    """Marks a migrate_vma() callback as running on the machine's core."""
    saved, core.migrating = core.migrating, flight
    try:
        yield
    finally:
        core.migrating = saved


class Refused(NamedTuple):
    """The dst entries one pages pass refused: ``total`` of them, the first
    MAX_WARNED as ``(slot, reason, pfn, other)`` records."""

    records: list[tuple[int, int, int, int]]
    total: int


def refused_since(st: Any, before: int) -> Refused:
    """What the last pages pass refused, from the counter (``before`` it ran) and
    the pass's records in the copy scratch."""
    n = int(st.counters[L.C_MIGRATE_DST_INVALID]) - before
    if n <= 0:
        return Refused([], 0)
    k = min(n, MAX_WARNED, st.copy_scratch.shape[1])
    rows = st.copy_scratch[_REC_ROWS, :k]
    return Refused([(int(a), int(b), int(c), int(d)) for a, b, c, d in rows.T], n)


def _warnings(refused: Refused, what: str) -> list[InvalidDstWarning]:
    """One warning per recorded entry, and one for the rest if there are more."""
    out = []
    for slot, reason, pfn, other in refused.records:
        why = kdst.DST_REASONS[reason]
        if reason == kdst.DST_DUPLICATE:
            why += f" (slot {other} keeps it)"
        message = (
            f"{what}: dst[{slot}] (pfn {pfn}) refused: {why}; slot {slot} was not "
            "migrated, as one without a destination"
        )
        out.append(InvalidDstWarning(message, slot, reason, pfn, other))
    more = refused.total - len(refused.records)
    if more > 0:
        message = f"{what}: {more} more dst entries refused (m.counters['migrate_dst_invalid'])"
        out.append(InvalidDstWarning(message, -1, kdst.DST_OK, -1, -1))
    return out


def warn_refused(refused: Refused, what: str, stacklevel: int) -> None:
    """Warn about each refused entry; ``stacklevel`` as the caller would pass it."""
    for warning in _warnings(refused, what):
        warnings.warn(warning, stacklevel=stacklevel + 1)


class _ReportsRefusedDst:
    """The Python entry of a public split-API kernel: warns about the dst entries
    the call refused (the counter moves in compiled code too)."""

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        st = args[0] if args else kwargs.get("state")
        counters = getattr(st, "counters", None)
        before = int(counters[L.C_MIGRATE_DST_INVALID]) if counters is not None else None
        ret = super().__call__(*args, **kwargs)  # type: ignore[misc]
        if before is not None:
            name = self.py_func.__name__  # type: ignore[attr-defined]
            warn_refused(refused_since(st, before), f"kernels.{name}", stacklevel=2)
        return ret


class _ReportingKernel(_ReportsRefusedDst, KernelDispatcher):
    pass


class _ReportingNjit(_ReportsRefusedDst, CPUDispatcher):
    pass


# Called from Python, kernels.migrate_vma_pages and kernels.migrate_vma warn as
# me.migrate_vma does; from compiled code they are the same functions.
kmigrate.migrate_vma_pages.__class__ = _ReportingKernel
kmigrate.migrate_vma.__class__ = _ReportingNjit
