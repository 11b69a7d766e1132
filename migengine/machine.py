"""Machine: the simulated physical memory, its struct pages and its device."""

from __future__ import annotations

from collections import namedtuple

import numpy as np

from migengine._core import MachineCore
from migengine._validate import as_count, as_int, as_uint64, check_fits
from migengine.copyengine import CopyEngine
from migengine.device import Device, device_specs
from migengine.errors import InvariantError, MigengineError, OutOfMemory
from migengine.kernels import driver as kdriver
from migengine.kernels import layout as L
from migengine.kernels import state as kstate
from migengine.kernels import vmscan as kvmscan
from migengine.kernels.check import CHECK_MESSAGES, CHK_LEAK, check_state
from migengine.process import Process

PageInfo = namedtuple(
    "PageInfo",
    "pfn refcount mapcount locked lru pagevec anon file device zero compound free "
    "dirty mlocked pins lazyfree",
)
PageInfo.__doc__ = "One struct page, as the kernel would count it (see Machine.page)."


def _under_migration(flags: int, mapping: int) -> bool:
    """A page a migration in flight holds: locked by the engine (not by
    ``Machine.lock_page``) while it belongs to a mapping, as a collected source
    and a filled destination are between setup and finalize."""
    engine_locked = flags & L.PG_LOCKED and not flags & L.PG_EXT_LOCKED
    return bool(engine_locked) and mapping != L.MAPPING_NONE


class _OwnOwner:
    """The owner cookie of a device given ``owner=None``: its own, equal to no other."""

    def __init__(self, index: int) -> None:
        self.index = index

    def __repr__(self) -> str:
        return f"<owner of device {self.index}>"


class Machine:
    """A simulated machine: RAM frames, then device frames, in one pfn space.

    Args:
        ram_pages: system RAM frames (frame 0 is reserved as the shared zero page).
        device_pages: frames of the machine's device (device-private ZONE_DEVICE
            memory in ``hmm-v25`` and ``modern``, CPU-addressable in ``seed``).
        page_size: bytes per page (a power of two, at least 64).
        store_data: keep real bytes per frame; False keeps metadata only.
        profile: ``"hmm-v25"`` (Linux 4.14, the default), ``"seed"`` (the patch) or
            ``"modern"`` (Linux 6.x migrate_device).
        seed: seeds ``m.rng``, the generator workload helpers draw from; the
            engine itself is deterministic.
        swap_pages: swap slots (default: as many as RAM frames).
    """

    def __init__(
        self,
        ram_pages: int,
        device_pages: int = 0,
        *,
        page_size: int = 4096,
        store_data: bool = True,
        profile: str = "hmm-v25",
        seed: int | None = None,
        swap_pages: int | None = None,
        devices: object = None,
    ) -> None:
        ram = as_count(ram_pages, "ram_pages", minimum=2)
        dev = as_count(device_pages, "device_pages")
        specs = device_specs(devices, dev)
        ps = as_count(page_size, "page_size", minimum=64)
        if ps & (ps - 1):
            raise ValueError(f"page_size must be a power of two, got {ps}")
        if not isinstance(store_data, bool):
            raise TypeError("store_data must be a bool")
        if not isinstance(profile, str) or profile not in L.PROFILES:
            raise ValueError(f"unknown profile {profile!r}; choose one of {sorted(L.PROFILES)}")
        if profile != "modern" and any(spec.kind == "coherent" for spec in specs):
            raise ValueError(
                "kind 'coherent' (MEMORY_DEVICE_COHERENT, v6.0) exists only in the modern profile"
            )
        nswap = ram if swap_pages is None else as_count(swap_pages, "swap_pages")
        engine = CopyEngine()
        self._profile = profile
        profile_id = L.PROFILES[profile]
        # The live state and its VMA layout, shared with the processes and the
        # device: an internal interface, not part of the public API.
        sizes = tuple(spec.pages for spec in specs)
        nframes = ram + sum(sizes)
        # Struct pages, free stacks, dst marks, the copy scratch, then kept bytes.
        need = nframes * (kstate.PAGE_DTYPE.itemsize + 8)
        need += 40 * kstate.copy_scratch_width(sum(sizes))
        need += (nframes + nswap) * ps if store_data else 0
        check_fits(need + nswap * 4, f"a machine of {nframes:,} frames of {ps:,} bytes")
        self.core = MachineCore(
            kstate.new_state(
                ram,
                sum(sizes),
                ps,
                store_data,
                profile_id,
                engine.to_array(),
                nswap,
                device_sizes=sizes,
                device_kinds=tuple(L.DEVICE_KINDS[spec.kind] for spec in specs),
            )
        )
        self._processes: list[Process] = []
        self.rng = np.random.default_rng(seed)
        # One device per row of the device table (state.dev); m.device is the first.
        # Devices given the same owner share its id (state.dev's DEV_OWNER column).
        owners: dict[object, int] = {}
        self._owners = owners
        built = []
        for d, spec in enumerate(specs):
            owner = _OwnOwner(d) if spec.owner is None else spec.owner
            self.core.state.dev[d, L.DEV_OWNER] = owners.setdefault(owner, len(owners))
            built.append(Device(self, self.core, engine, index=d, kind=spec.kind, owner=owner))
        self.devices: tuple[Device, ...] = tuple(built)
        self.device = self.devices[0]

    # ------------------------------------------------------------------ facts
    @property
    def state(self) -> kstate.State:
        """The live flat state (a namedtuple of arrays) for ``@njit`` code.

        Page, frame and counter arrays are fixed; the VMA and page-table arrays
        are reallocated when ``mmap`` or ``fork`` outgrows them, so take
        ``m.state`` again after those.
        """
        return self.core.state

    @property
    def profile(self) -> str:
        return self._profile

    @property
    def kernel(self) -> str:
        """The kernel tree and version the profile follows."""
        return L.KERNELS[L.PROFILES[self._profile]]

    def owner_id(self, owner: object) -> int:
        """``owner``'s int for compiled code (``kernels.migrate_vma_setup_flags``'s
        ``owner``); devices sharing an owner share it. ValueError: no device has it."""
        try:
            return self._owners[owner]
        except (KeyError, TypeError):
            raise ValueError(f"no device of this machine has owner {owner!r}") from None

    @property
    def layout(self) -> L.Layout:
        """The profile's ``MIGRATE_PFN_*`` values as a namedtuple of np.uint64."""
        return L.LAYOUTS[L.PROFILES[self._profile]]

    @property
    def page_size(self) -> int:
        return self.core.page_size

    @property
    def ram_pages(self) -> int:
        return int(self.state.sys[L.SYS_NR_RAM])

    @property
    def device_pages(self) -> int:
        return int(self.state.sys[L.SYS_NR_DEVICE])

    @property
    def nframes(self) -> int:
        return self.ram_pages + self.device_pages

    @property
    def store_data(self) -> bool:
        return self.core.store_data

    @property
    def zero_pfn(self) -> int:
        return int(self.state.sys[L.SYS_ZERO_PFN])

    @property
    def counters(self) -> dict[str, int]:
        """Cumulative vmstat-like counters (a snapshot)."""
        return {name: int(v) for name, v in zip(L.COUNTER_NAMES, self.state.counters, strict=True)}

    def migrate_pfn(self, pfn: int) -> np.uint64:
        """``(pfn << SHIFT) | VALID`` in this machine's layout."""
        p = as_count(pfn, "pfn")
        lay = self.layout
        if p >= 1 << (64 - int(lay.SHIFT)):  # it would wrap in the shift
            raise ValueError(f"pfn {p} does not fit in a migrate pfn (SHIFT {int(lay.SHIFT)})")
        return np.uint64((np.uint64(p) << lay.SHIFT) | lay.VALID)

    def mpfn_to_pfn(self, mpfn: int | np.integer) -> int:
        """The pfn of ``mpfn``, or -1 when VALID is not set."""
        value = np.uint64(as_uint64(mpfn, "mpfn"))
        lay = self.layout
        if not value & lay.VALID:
            return -1
        return int(value >> lay.SHIFT)

    def free_pages(self, device: bool = False) -> int:
        """Free frames of RAM, or of device memory (every device's)."""
        # each pool's stack, and (modern) its free folios kept whole
        if device:
            dev = self.state.dev
            return int(dev[:, L.DEV_FREE].sum() + L.HPAGE_PMD_NR * dev[:, L.DEV_FOLIOS].sum())
        return int(self.state.sys[L.SYS_RAM_FREE] + L.HPAGE_PMD_NR * self.state.sys[L.SYS_FOLIOS])

    def page(self, pfn: int) -> PageInfo:
        """The struct page of ``pfn`` as a PageInfo namedtuple."""
        p = self._pfn(pfn)
        rec = self.state.page[p]
        fresh = kstate.untouched_page(self.state, p)  # its struct page not yet written
        flags, refcount = (int(rec["flags"]), int(rec["refcount"])) if fresh is None else fresh
        mapping = int(rec["mapping"])
        return PageInfo(
            pfn=p,
            refcount=refcount,
            mapcount=int(rec["mapcount"]),
            locked=bool(flags & L.PG_LOCKED),
            lru=bool(flags & L.PG_LRU),
            pagevec=bool(flags & L.PG_PAGEVEC),
            anon=bool(mapping == L.MAPPING_ANON),
            file=bool(mapping == L.MAPPING_FILE),
            device=p >= self.ram_pages,
            zero=bool(flags & L.PG_ZERO),
            compound=bool(flags & (L.PG_HEAD | L.PG_TAIL)),
            free=bool(flags & L.PG_FREE),
            dirty=bool(flags & L.PG_DIRTY),
            mlocked=bool(flags & L.PG_MLOCKED),
            pins=int(rec["pins"]),
            lazyfree=bool(flags & L.PG_LAZYFREE),
        )

    # ------------------------------------------------------------------ others acting on pages
    def _pfn(self, pfn: object) -> int:
        p = as_int(pfn, "pfn")
        if not 0 <= p < self.nframes:
            raise ValueError(f"pfn {p} is outside the machine (0..{self.nframes - 1})")
        return p

    def _flags(self, p: int) -> int:
        """Frame ``p``'s flags, an untouched frame's (kernels.page_alloc) included."""
        fresh = kstate.untouched_page(self.state, p)
        return int(self.state.page["flags"][p]) if fresh is None else fresh[0]

    def _in_use(self, pfn: object, what: str, *, tail_to_head: bool = False) -> int:
        p = self._pfn(pfn)
        flags = self._flags(p)
        if flags & L.PG_FREE:
            raise ValueError(f"cannot {what} pfn {p}: the frame is free")
        if tail_to_head and flags & L.PG_TAIL:
            return p - p % L.HPAGE_PMD_NR  # a THP is an aligned run: its head
        if flags & (L.PG_ZERO | L.PG_TAIL):
            raise ValueError(f"cannot {what} pfn {p}: zero page or compound tail")
        return p

    def pin(self, pfn: int) -> None:
        """Take an extra reference, as get_user_pages() does (on a THP's head
        for any of its pages). ValueError for a free frame or the zero page."""
        kdriver.pin_page(self.state, self._in_use(pfn, "pin", tail_to_head=True))

    def unpin(self, pfn: int) -> None:
        """Drop a pin that ``pin`` or ``p.pin`` took; ValueError if none is held.
        ``p.pin`` of a read-only zero-page mapping pins the zero page, which is
        counted in ``pins`` only: its reference count never frees it."""
        p = self._pfn(pfn)
        if p == self.zero_pfn:
            if self.state.page["pins"][p] <= 0:
                raise ValueError(f"pfn {p} (the zero page) is not pinned")
            self.state.page["pins"][p] -= 1
            return
        p = self._in_use(p, "unpin", tail_to_head=True)
        if self.state.page["pins"][p] <= 0:
            raise ValueError(f"pfn {p} is not pinned")
        kdriver.unpin_page(self.state, p)

    def lock_page(self, pfn: int) -> None:
        """Another thread takes the page lock, so the engine's trylock fails."""
        p = self._in_use(pfn, "lock")
        if self._flags(p) & L.PG_LOCKED:
            raise ValueError(f"pfn {p} is already locked")
        self.state.page["flags"][p] |= L.PG_LOCKED | L.PG_EXT_LOCKED

    def unlock_page(self, pfn: int) -> None:
        p = self._pfn(pfn)
        if not self._flags(p) & L.PG_EXT_LOCKED:
            raise ValueError(f"pfn {p} is not locked by lock_page()")
        self.state.page["flags"][p] &= ~np.uint32(L.PG_LOCKED | L.PG_EXT_LOCKED)

    def isolate_lru_page(self, pfn: int) -> None:
        """Another isolator holds the page off the LRU."""
        p = self._in_use(pfn, "isolate")
        if kdriver.isolate_by_other(self.state, p) != 0:
            raise ValueError(f"pfn {p} is not on the LRU, so it cannot be isolated")

    def putback_lru_page(self, pfn: int) -> None:
        p = self._pfn(pfn)
        if not self._flags(p) & L.PG_EXT_ISOLATED:
            raise ValueError(f"pfn {p} was not isolated by isolate_lru_page()")
        kdriver.putback_by_other(self.state, p)

    def lru_add_drain_all(self) -> None:
        kdriver.lru_add_drain_all(self.state)

    def reclaim(self) -> int:
        """Reclaim the MADV_FREE pages that are still clean, as kswapd would reach
        them (``p.madvise(..., "free")``); returns how many pages it freed. One
        stored to since is kept, and loses its lazy-free mark."""
        self.core.refuse_during_migration("reclaim")
        return int(kvmscan.shrink_lazyfree(self.state))

    # ------------------------------------------------------------------ driver helpers
    def alloc_page(self, device: bool = False) -> int:
        """A fresh page, locked, as a driver's allocator hands it to migrate_vma."""
        if not isinstance(device, bool):
            raise TypeError("device must be a bool")
        pfn = int(kdriver.alloc_page(self.state, device))
        if pfn < 0:
            raise OutOfMemory(f"no free {'device' if device else 'RAM'} page")
        return pfn

    def alloc_folio(self, device: bool = False) -> int:
        """A fresh 2 MiB folio, locked (modern: a device THP or a system THP for
        a ``MIGRATE_PFN_COMPOUND`` destination); returns its head pfn."""
        if not isinstance(device, bool):
            raise TypeError("device must be a bool")
        if not self.state.sys[L.SYS_BEHAVIOUR] & L.B_DEVICE_THP:
            raise ValueError(f"folios (device THP) are modern-profile only, not {self.profile!r}")
        pfn = int(kdriver.alloc_folio(self.state, device))
        if pfn < 0:
            raise OutOfMemory(
                f"no free aligned 2 MiB run of {'device' if device else 'RAM'} frames"
            )
        return pfn

    def put_page(self, pfn: int) -> None:
        """put_page(): drop a reference the caller holds (a page at its free count is freed).

        Raises, before anything changes: ValueError for a mapped page, a page with
        no reference to put, or one whose remaining references are pins (putting
        it would free a page get_user_pages() still holds: ``unpin`` first);
        MigengineError, while a migrate_vma() callback runs, for a source page
        that migration collected (its references are the migration's).
        """
        p = self._in_use(pfn, "put")
        flight = self.core.migrating
        if flight is not None and flight.holds(p):
            raise MigengineError(
                f"cannot put pfn {p} during a migrate_vma() callback: it is a source page "
                "the migration collected, and its references are the migration's"
            )
        rec = self.state.page[p]
        if _under_migration(int(rec["flags"]), int(rec["mapping"])):
            raise MigengineError(
                f"cannot put pfn {p}: it is a page of a migration in flight (a collected "
                "source, or a destination the pages pass filled), locked by the engine "
                "until migrate_vma_finalize()"
            )
        refcount, pins, flags = int(rec["refcount"]), int(rec["pins"]), int(rec["flags"])
        if rec["mapcount"] > 0 or refcount <= 0:
            raise ValueError(f"pfn {p} is mapped or has no reference to put")
        # What others hold (kernels.args.held_refs): pins, the LRU-add batch, another
        # isolator, the page cache, a ZONE_DEVICE page's device (4.14 only, not v6.1).
        held = pins + sum(1 for f in (L.PG_PAGEVEC, L.PG_EXT_ISOLATED) if flags & f)
        held += 1 if flags & L.PG_ZONE_DEVICE and self._profile != "modern" else 0
        held += 1 if int(rec["mapping"]) == L.MAPPING_FILE else 0
        if refcount <= held:
            what = f"{pins} pin(s) (unpin() releases them)" if pins else "others"
            raise ValueError(
                f"cannot put pfn {p}: its remaining references are held by {what}; "
                "putting one would free a page still in use"
            )
        kdriver.put_page(self.state, p)

    def copy_page(self, dst_pfn: int, src_pfn: int) -> None:
        """copy_highpage(): ``src_pfn``'s bytes onto ``dst_pfn``. ValueError for the
        zero page or a free frame on either side."""
        self.core.need_data()
        dst, src = self._pfn(dst_pfn), self._pfn(src_pfn)
        if dst == self.zero_pfn:
            raise ValueError(f"dst_pfn {dst} is the shared zero page, which every zero read maps")
        for what, p in (("dst_pfn", dst), ("src_pfn", src)):
            if self._flags(p) & L.PG_FREE:
                raise ValueError(f"{what} {p} is a free frame: allocate it first")
        if int(kdriver.copy_page(self.state, dst, src)) != 0:  # checked above: never
            raise MigengineError(f"copy_page({dst}, {src}) was refused")

    def frame(self, pfn: int) -> bytes:
        """The frame's contents."""
        self.core.need_data()
        p = self._pfn(pfn)
        ps = self.page_size
        return self.state.data[p * ps : (p + 1) * ps].tobytes()

    # ------------------------------------------------------------------ processes
    def new_process(self) -> Process:
        """A new process with no VMA. Refused (MigengineError) while a migrate_vma()
        callback runs, as ``fork`` (which starts here) and ``mmap`` are."""
        self.core.refuse_during_callback("new_process() or fork()")
        proc = Process(self, self.core, len(self._processes))
        self._processes.append(proc)
        return proc

    @property
    def processes(self) -> tuple[Process, ...]:
        return tuple(self._processes)

    # ------------------------------------------------------------------ invariants
    def check(self) -> None:
        """Raise InvariantError naming the first broken invariant, if any."""
        code, where = check_state(self.state)
        if code != 0:
            at = f"pfn {where}" if code == CHK_LEAK else f"index {where}"
            raise InvariantError(f"{CHECK_MESSAGES[code]} (at {at})")

    def __repr__(self) -> str:
        return (
            f"Machine(ram_pages={self.ram_pages}, device_pages={self.device_pages}, "
            f"page_size={self.page_size}, profile={self._profile!r}, "
            f"store_data={self.store_data})"
        )
