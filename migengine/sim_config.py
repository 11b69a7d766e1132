"""SimConfig: the parameters of one fault-driven simulation, validated up front.

Every field is a keyword with a default; an unknown name or a bad value raises
``TypeError``/``ValueError`` naming the field before anything runs. Presets
bundle published cost parameters with their sources (:meth:`SimConfig.preset`).
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from typing import Any

from migengine.copyengine import CopyEngine
from migengine.kernels import layout as L
from migengine.kernels.sim.layout import EVICT_IDS, PREFETCH_IDS

#: Pages per 2 MiB VA block at 4 KiB pages: the largest migration unit.
MAX_MIGRATE_PAGES = 512

_PRESETS: dict[str, dict[str, Any]] = {
    # UVM-Smart (Ganguly et al., ISCA'19; DebashisGanguly/gpgpu-sim_UVMSmart): 4 KiB
    # on-demand faults, far-fault latency 66,645 cycles at 1,481 MHz = 45 us, the
    # PCIe 3.0 transfer curve of gmmu_t::calculate_transfer_time().
    "uvm-smart": {"engine": "pcie3-uvm", "fault_us": 45.0, "batch_us": 0.0, "migrate_pages": 1},
    # Allen & Ge, SC21 (tallendev/uvm-eval): a batch of 256 costs about 30 us plus
    # 1.25 us per KB migrated on a Titan V, PCIe 3, driver 460.
    "sc21": {"engine": "uvm-sc21", "fault_us": 0.0, "batch_us": 30.0, "batch_faults": 256},
}


def _is_njit(obj: object) -> bool:
    return callable(obj) and hasattr(obj, "py_func") and hasattr(obj, "nopython_signatures")


@dataclasses.dataclass(frozen=True)
class SimConfig:
    """One simulation's parameters.

    Attributes:
        device_pages: device memory in pages (int > 0).
        profile: the engine's kernel profile (``"hmm-v25"``, ``"seed"`` or ``"modern"``).
        migrate_pages: pages per migration unit, a power of two from 1 to 512
            (4 KiB to 2 MiB at 4 KiB pages). A fault moves its whole unit.
        batch_faults: fault entries per batch (NVIDIA's uvm_perf_fault_batch_count, 256).
        prefetch: ``"none"``, ``"sequential"`` (UVM-Smart's sequential-local:
            the 64 KiB block around each faulted page) or ``"tree"`` (NVIDIA's
            density tree over the 2 MiB block, threshold 51%).
        evict: ``"lru"`` (2 MiB VA blocks, least recently migrated into, as
            NVIDIA's root-chunk LRU), ``"fifo"`` or ``"random"`` (migration
            units), or an ``@njit`` function ``policy(units, last_use,
            first_use, uses, now) -> int`` choosing among resident units.
        engine: a :class:`CopyEngine` or a preset name. A name gets
            ``chunk_pages=512`` (physically contiguous runs coalesce up to
            2 MiB, as a DMA of a VA block would); the engine picks its
            threads, so a fault batch's gathered copy of ``parallel_min_bytes``
            or more runs on all of numba's (one in a sweep's worker).
        fault_us: fixed cost per fault entry serviced and per CPU fault, us.
        batch_us: fixed cost per batch, us.
        store_data: keep and check real bytes (every write stores one byte).
        host_init: the trace's pages start in host memory, written before the
            run (data the host copied into managed memory, as UVM-Smart
            assumes), so every move to the device copies. False leaves them
            unpopulated: the device's first touch creates a zeroed page
            without a copy (first touch on the GPU).
        seed: seeds the random eviction policy.
    """

    device_pages: int = 4096
    profile: str = "hmm-v25"
    migrate_pages: int = 16
    batch_faults: int = 256
    prefetch: str = "none"
    evict: Any = "lru"
    engine: Any = "pcie3-uvm"
    fault_us: float = 45.0
    batch_us: float = 0.0
    store_data: bool = True
    host_init: bool = True
    seed: int = 0

    def __post_init__(self) -> None:
        for name, low in (("device_pages", 1), ("batch_faults", 1), ("seed", 0)):
            object.__setattr__(self, name, _int_field(name, getattr(self, name), low))
        mp = _int_field("migrate_pages", self.migrate_pages, 1)
        object.__setattr__(self, "migrate_pages", mp)
        if mp > MAX_MIGRATE_PAGES or mp & (mp - 1):
            raise ValueError(
                f"SimConfig.migrate_pages must be a power of two from 1 to "
                f"{MAX_MIGRATE_PAGES}, got {mp}"
            )
        if self.device_pages < mp:
            raise ValueError(
                f"SimConfig.device_pages ({self.device_pages}) must hold one migration "
                f"unit (migrate_pages={mp})"
            )
        _choice("profile", self.profile, sorted(L.PROFILES))
        _choice("prefetch", self.prefetch, sorted(PREFETCH_IDS))
        if isinstance(self.evict, str):
            _choice("evict", self.evict, sorted(EVICT_IDS))
        elif not _is_njit(self.evict):
            raise TypeError(
                "SimConfig.evict must be a policy name or an @njit function "
                "policy(units, last_use, first_use, uses, now) -> int, "
                f"not {type(self.evict).__name__}"
            )
        if isinstance(self.engine, str):
            _choice("engine", self.engine, list(CopyEngine.presets()))
        elif not isinstance(self.engine, CopyEngine):
            raise TypeError(
                f"SimConfig.engine must be a CopyEngine or a preset name, "
                f"not {type(self.engine).__name__}"
            )
        for name in ("fault_us", "batch_us"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, numbers.Real):
                raise TypeError(f"SimConfig.{name} must be a number, not {type(value).__name__}")
            if not math.isfinite(value) or value < 0:
                raise ValueError(f"SimConfig.{name} must be finite and >= 0, got {value}")
            object.__setattr__(self, name, float(value))
        for name in ("store_data", "host_init"):
            if not isinstance(getattr(self, name), bool):
                raise TypeError(
                    f"SimConfig.{name} must be True or False, not {getattr(self, name)!r}"
                )

    @classmethod
    def fields(cls) -> tuple[str, ...]:
        """The field names, in order."""
        return tuple(f.name for f in dataclasses.fields(cls))

    @classmethod
    def presets(cls) -> tuple[str, ...]:
        return tuple(sorted(_PRESETS))

    @classmethod
    def preset(cls, name: str, **overrides: Any) -> SimConfig:
        """A configuration with published costs; ``overrides`` replace fields.

        ``"uvm-smart"``: UVM-Smart's GTX 1080 Ti model (DebashisGanguly/
        gpgpu-sim_UVMSmart): 4 KiB faults, 45 us per far fault (66,645 cycles
        at 1,481 MHz), the ``pcie3-uvm`` transfer curve.
        ``"sc21"``: Allen & Ge, SC21 (tallendev/uvm-eval): about 30 us per
        batch plus 1.25 us per KB migrated (the ``uvm-sc21`` engine).
        """
        if name not in _PRESETS:
            raise ValueError(f"unknown SimConfig preset {name!r}; choose one of {cls.presets()}")
        kwargs = dict(_PRESETS[name])
        kwargs.update(overrides)
        return cls(**kwargs)

    def replace(self, **changes: Any) -> SimConfig:
        """A copy with some fields changed (validated again); unknown names raise ValueError."""
        unknown = sorted(set(changes) - set(self.fields()))
        if unknown:
            raise ValueError(f"not SimConfig fields: {', '.join(unknown)}")
        return dataclasses.replace(self, **changes)

    def copy_engine(self) -> CopyEngine:
        """The engine the run uses (a preset name resolved as the class docstring says)."""
        if isinstance(self.engine, CopyEngine):
            return self.engine
        return CopyEngine.preset(self.engine, chunk_pages=MAX_MIGRATE_PAGES)

    def to_dict(self) -> dict[str, Any]:
        """The fields as JSON values (the engine's parameters; a user policy by name)."""
        out = {f: getattr(self, f) for f in self.fields()}
        if not isinstance(self.evict, str):
            out["evict"] = f"user:{getattr(self.evict, '__name__', 'policy')}"
        eng = self.copy_engine()
        out["engine"] = {
            "name": self.engine if isinstance(self.engine, str) else None,
            **{k: getattr(eng, k) for k in CopyEngine.FIELDS},
        }
        return out


def _int_field(name: str, value: Any, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"SimConfig.{name} must be an int, not {type(value).__name__}")
    value = int(value)
    if value < low:
        raise ValueError(f"SimConfig.{name} must be >= {low}, got {value}")
    return value


def _choice(name: str, value: Any, allowed: list[str]) -> None:
    if not isinstance(value, str) or value not in allowed:
        raise ValueError(f"SimConfig.{name} must be one of {allowed}, got {value!r}")
