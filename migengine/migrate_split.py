"""The split API of later kernels (``struct migrate_vma``): ``MigrateVma``,
``migrate_vma_setup``, ``migrate_vma_pages``, ``migrate_vma_finalize``.

In seed and hmm-v25 the three calls are 4.14's passes split where
migrate_vma() calls its callbacks: setup is collect, prepare and unmap, pages
is migrate_vma_pages() and finalize is migrate_vma_finalize(). In modern they
are Linux 6.x's, with the selection flags, ``pgmap_owner`` and ``fault_page``
(kernels.migrate_vma_setup_flags). The driver allocates, copies and fills
``dst`` between setup and pages, as a callback would. Each call validates in
Python and runs the compiled kernel of the same name (``migengine.kernels``).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from migengine._validate import as_int, mpfn_array
from migengine.errors import MigrateError
from migengine.kernels import layout as L
from migengine.kernels import migrate as kmigrate
from migengine.kernels._jit import KernelDispatcher
from migengine.migrate import check_range, refused_since, warn_refused
from migengine.process import Vma

__all__ = [
    "MIGRATE_VMA_SELECT_COMPOUND",
    "MIGRATE_VMA_SELECT_DEVICE_COHERENT",
    "MIGRATE_VMA_SELECT_DEVICE_PRIVATE",
    "MIGRATE_VMA_SELECT_SYSTEM",
    "MigrateVma",
    "migrate_vma_finalize",
    "migrate_vma_pages",
    "migrate_vma_setup",
]

# enum migrate_vma_direction (include/linux/migrate.h, v5.9 and later).
MIGRATE_VMA_SELECT_SYSTEM = L.MIGRATE_VMA_SELECT_SYSTEM
MIGRATE_VMA_SELECT_DEVICE_PRIVATE = L.MIGRATE_VMA_SELECT_DEVICE_PRIVATE
MIGRATE_VMA_SELECT_DEVICE_COHERENT = L.MIGRATE_VMA_SELECT_DEVICE_COHERENT
MIGRATE_VMA_SELECT_COMPOUND = L.MIGRATE_VMA_SELECT_COMPOUND


class MigrateVma:
    """``struct migrate_vma``: the range, the arrays and the selection, and after
    setup ``npages`` (the range's pages) and ``cpages`` (the pages collected)."""

    def __init__(
        self,
        vma: Vma | None,
        start: int,
        end: int,
        src: np.ndarray | None,
        dst: np.ndarray | None,
        *,
        flags: int = MIGRATE_VMA_SELECT_SYSTEM,
        pgmap_owner: Any = None,
        fault_page: int | None = None,
    ) -> None:
        self.vma, self.start, self.end, self.src, self.dst = vma, start, end, src, dst
        self.flags, self.pgmap_owner, self.fault_page = flags, pgmap_owner, fault_page
        self.npages = 0
        self.cpages = 0
        self._open = False  # setup collected pages that pages/finalize still owe
        self._record = np.zeros(0, np.uint64)  # src as the core last left it
        self._arrays = (self._record, self._record)  # src, dst as setup checked them

    def __repr__(self) -> str:
        return (
            f"MigrateVma(start={self.start:#x}, end={self.end:#x}, npages={self.npages}, "
            f"cpages={self.cpages}, flags={self.flags:#x})"
        )


def _args(args: object) -> MigrateVma:
    if not isinstance(args, MigrateVma):
        raise TypeError(f"args must be a MigrateVma, not {type(args).__name__}")
    return args


def migrate_vma_setup(args: MigrateVma) -> int:
    """migrate_vma_setup(): collect, prepare and unmap ``[args.start, args.end)``.

    Returns 0 and sets ``args.npages`` and ``args.cpages``. The kernel's EINVAL
    checks raise MigrateError; malformed arguments TypeError or ValueError; in
    seed and hmm-v25, ``flags`` other than MIGRATE_VMA_SELECT_SYSTEM, a
    ``pgmap_owner`` or a ``fault_page`` (selection came with later kernels)
    ValueError; all before anything changes. modern also raises MigrateError
    for a DAX VMA and a ``fault_page`` that is not a locked device-private
    page mapped in the range, and ValueError for unknown flags or an owner no
    device has.
    """
    a = _args(args)
    if a.vma is None:
        raise MigrateError("migrate_vma_setup: vma is NULL")
    if not isinstance(a.vma, Vma):
        raise TypeError(f"vma must be a Vma, not {type(a.vma).__name__}")
    if a.src is None or a.dst is None:
        raise MigrateError("migrate_vma_setup: src and dst must both be given")
    m = a.vma.process.machine
    flags = as_int(a.flags, "flags")
    modern = m.profile == "modern"
    if not modern and (
        flags != MIGRATE_VMA_SELECT_SYSTEM or a.pgmap_owner is not None or a.fault_page is not None
    ):
        raise ValueError(
            "flags, pgmap_owner and fault_page are the later kernels' selection; in the "
            f"{m.profile} profile flags must be MIGRATE_VMA_SELECT_SYSTEM and the others None"
        )
    if flags & ~L.MIGRATE_VMA_SELECT_ALL or flags < 0:
        raise ValueError(f"flags {flags:#x}: not MIGRATE_VMA_SELECT_* bits")
    owner = L.OWNER_NONE if a.pgmap_owner is None else m.owner_id(a.pgmap_owner)
    fault = -1 if a.fault_page is None else as_int(a.fault_page, "fault_page")
    if a._open:
        raise ValueError("migrate_vma_setup: this MigrateVma's migration is still open")
    s, e = as_int(a.start, "start"), as_int(a.end, "end")
    npages = check_range(a.vma, s, e)
    src = mpfn_array(a.src, "src", npages)
    dst = mpfn_array(a.dst, "dst", npages)
    if np.may_share_memory(src, dst):
        raise ValueError("src and dst must not overlap")
    m.core.refuse_during_callback("migrate_vma_setup()")
    if modern:
        _check_modern(a.vma, s, npages, fault)
    cpages = int(
        kmigrate.migrate_vma_setup_flags(m.state, a.vma.index, s, e, src, dst, flags, owner, fault)
    )
    if cpages < 0:  # checked above: only a VMA unmapped since
        raise MigrateError(f"migrate_vma_setup: the kernel refused the range ({cpages})")
    a.npages, a.cpages, a._open = npages, cpages, cpages > 0
    a._record = src[:npages].copy()
    a._arrays = (src, dst)
    return 0


def _check_modern(vma: Vma, start: int, npages: int, fault: int) -> None:
    """modern migrate_vma_setup()'s EINVAL checks of its later fields, in Python
    with the kernel's reasons (kernels.migrate.setup_fields_ok() repeats them)."""
    m = vma.process.machine
    if vma.flags & L.VM_DAX:
        raise MigrateError("migrate_vma_setup: a DAX VMA (vma_is_dax())")
    if fault == -1:
        return
    if not 0 <= fault < m.state.page.shape[0]:
        raise MigrateError(f"migrate_vma_setup: fault_page {fault} is no frame of the machine")
    owner = next((d for d in m.devices if d.first_pfn <= fault < d.first_pfn + d.npages), None)
    if owner is None or owner.kind != "private":
        raise MigrateError(f"migrate_vma_setup: fault_page {fault} is not device-private")
    if not m.page(fault).locked:
        raise MigrateError(f"migrate_vma_setup: fault_page {fault} is not locked")
    st = m.state
    first = int(st.vma["pte_base"][vma.index]) + (start - vma.start) // m.page_size
    slot = int(st.page["rmap"][fault])
    while slot >= 0:  # its reverse map: the entries that map it
        if first <= slot < first + npages:
            return
        slot = int(st.pte_next[slot])
    raise MigrateError(f"migrate_vma_setup: fault_page {fault} is not mapped in the range")


def _src_written(a: MigrateVma) -> bool:
    """The driver wrote ``src`` since the core last did (src is the core's)."""
    return not np.array_equal(a._arrays[0][: a.npages], a._record)


def _continue(a: MigrateVma, what: str) -> tuple[Any, int, int, int] | None:
    """(machine, VMA index, start, end) of the migration setup opened, or None
    when setup collected nothing (nothing to do); ValueError before setup or
    after finalize."""
    if not isinstance(a.vma, Vma) or a.npages == 0:
        raise ValueError(f"{what}: migrate_vma_setup() has not run on these args")
    if not a._open:
        if a.cpages > 0:
            raise ValueError(f"{what}: this migration is already finalized")
        return None
    ps = a.vma.process.machine.page_size
    s = int(a.start) - int(a.start) % ps
    return a.vma.process.machine, a.vma.index, s, s + a.npages * ps


def migrate_vma_pages(args: MigrateVma) -> None:
    """migrate_vma_pages(): move the struct-page state of every slot the driver
    gave a destination. A ``dst`` entry the engine refuses fails its slot and
    warns (``me.InvalidDstWarning``); a ``src`` written since setup raises
    ValueError with nothing changed. Nothing to do when setup collected nothing."""
    a = _args(args)
    opened = _continue(a, "migrate_vma_pages")
    if opened is None:
        return
    m, v, s, e = opened
    if _src_written(a):
        raise ValueError(
            "migrate_vma_pages: src was written since migrate_vma_setup(); it is the core's "
            "record of the pages collected (nothing changed: restore it, or finalize)"
        )
    call = (m.state, v, s, e, *a._arrays)
    before = int(m.state.counters[L.C_MIGRATE_DST_INVALID])
    # The dispatcher's own call: its Python entry would warn under its kernels. name.
    ret = int(KernelDispatcher.__call__(kmigrate.migrate_vma_pages, *call))
    if ret < 0:
        raise ValueError("migrate_vma_pages: the migration was finished already")
    a._record = a._arrays[0][: a.npages].copy()
    warn_refused(refused_since(m.state, before), "migrate_vma_pages", stacklevel=2)


def migrate_vma_finalize(args: MigrateVma) -> None:
    """migrate_vma_finalize(): remap every slot (the new page, or the old one where
    the move failed), unlock and release. Nothing to do when setup collected
    nothing; a second call raises ValueError."""
    a = _args(args)
    opened = _continue(a, "migrate_vma_finalize")
    if opened is None:
        return
    m, v, s, e = opened
    written = _src_written(a)
    if written:
        a._arrays[0][: a.npages] = a._record  # finish from the core's record, then say so
    ret = int(kmigrate.migrate_vma_finalize(m.state, v, s, e, *a._arrays))
    if ret < 0:
        raise ValueError("migrate_vma_finalize: the migration was finished already")
    a._open = False
    if written:
        raise ValueError(
            "migrate_vma_finalize: src was written since the core last did; the migration "
            "was finished from the core's record, which src holds again"
        )
