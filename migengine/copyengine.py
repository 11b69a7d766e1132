"""The copy engine's Python face: validated parameters, presets and the model.

A :class:`CopyEngine` describes how a batch of migrated pages is copied and
how long a real engine would have taken. Kernels never see this object; they
take its :meth:`CopyEngine.to_array` form, a float64 array in the
``ENG_*`` layout of :mod:`migengine.kernels.copy`, so they stay cacheable.

Example::

    eng = CopyEngine.preset("ptdma-4ch")
    eng.model_time_s([16] * 64)            # 64 descriptors of 16 pages
    eng.model_ns(64 << 10)                 # one descriptor of 64 KiB, in ns
"""

import math
from numbers import Integral, Real
from typing import Any

import numpy as np

from migengine.kernels import layout as L
from migengine.kernels.copy import (
    DEFAULT_PAR_MIN_BYTES,
    DEFAULT_PAR_MIN_PAGES,
    DEFAULT_PLAIN_MIN_PAGES,
    DEFAULT_STREAM_MIN_BYTES,
    ENG_CHANNELS,
    ENG_CHUNK_PAGES,
    ENG_CURVE_B,
    ENG_GBPS,
    ENG_MODEL,
    ENG_PAR_MIN_BYTES,
    ENG_PAR_MIN_PAGES,
    ENG_PLAIN_MIN_PAGES,
    ENG_SETUP_NS,
    ENG_STREAM_MIN_BYTES,
    ENG_THREADS,
    ENGINE_FIELDS,
    MODEL_LINEAR,
    MODEL_UVM_CURVE,
    descriptor_ns,
    model_time_ns,
)

__all__ = ["CopyEngine"]

_MODELS = {"linear": MODEL_LINEAR, "uvm-curve": MODEL_UVM_CURVE}
_S_PER_NS = 1e-9
# The largest count the kernel array holds: float64 is exact up to 2**53, and the
# kernels turn counts back into int64, which 2**63 - 1 (stored as 2.0**63) would
# overflow. Every quantity these counts are compared with (pages in a batch,
# bytes, threads) is far smaller, so a larger value behaves as this one.
_KERNEL_COUNT_MAX = 2**53


def _count(value):
    """An integer parameter as the kernel array stores it (see _KERNEL_COUNT_MAX)."""
    return min(value, _KERNEL_COUNT_MAX)


def _int_at_least(name, value, low):
    # bool is an Integral; chunk_pages=True is a bug, not a 1.
    if isinstance(value, bool) or not isinstance(value, Integral):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value < low:
        raise ValueError(f"{name} must be >= {low}, got {value}")
    return int(value)


def _finite_real(name, value):
    if isinstance(value, bool) or not isinstance(value, Real):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__}")
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value}")
    return value


def _non_negative(name, value):
    value = _finite_real(name, value)
    if value < 0.0:
        raise ValueError(f"{name} must be >= 0, got {value}")
    return value


def _positive(name, value):
    value = _finite_real(name, value)
    if value <= 0.0:
        raise ValueError(f"{name} must be > 0, got {value}")
    return value


def _channels(name, value):
    value = _int_at_least(name, value, 1)
    if value > L.MAX_CHANNELS:
        raise ValueError(f"{name} must be <= {L.MAX_CHANNELS}, got {value}")
    return value


def _none_or_int_at_least(name, value, low):
    if value is None:
        return None
    return _int_at_least(name, value, low)


def _model(name, value):
    if not isinstance(value, str):
        raise TypeError(f"{name} must be a str, got {type(value).__name__}")
    if value not in _MODELS:
        raise ValueError(f"{name} must be one of {sorted(_MODELS)}, got {value!r}")
    return value


class _Param:
    """Attribute that validates on every assignment, not only in __init__."""

    def __init__(self, check, *args):
        self._check = check
        self._args = args

    def __set_name__(self, owner, name):
        self._name = name
        self._slot = "_" + name

    def __get__(self, obj, objtype=None):
        if obj is None:
            return self
        return getattr(obj, self._slot)

    def __set__(self, obj, value):
        setattr(obj, self._slot, self._check(self._name, value, *self._args))


# UVM-Smart's curve_a for -pcie_bandwidth 16.0GB/s is 12 in GiB/s (its
# calculate_transfer_time divides by 1024^3), i.e. 12.884901888 bytes per ns.
_UVM_SMART_A_GBPS = 12 * 2**30 / 1e9

# Constructor arguments of each preset; their sources are in CopyEngine.preset.
_PRESETS: dict[str, dict[str, Any]] = {
    "ptdma": {"setup_ns": 1600.0, "gbps": 12.7, "channels": 1},
    "ptdma-4ch": {"setup_ns": 1600.0, "gbps": 12.7, "channels": 4},
    "pcie3-uvm": {
        "model": "uvm-curve",
        "gbps": _UVM_SMART_A_GBPS,
        "curve_b": 0.07292,
        "setup_ns": 0.0,
        "channels": 1,
    },
    # 1.25 us per KB, the KB of the paper's axis being 1000 bytes: 0.8 bytes/ns.
    "uvm-sc21": {"model": "linear", "setup_ns": 0.0, "gbps": 0.8, "channels": 1},
    "cpu": {"setup_ns": 0.0, "gbps": 12.5, "channels": 1},
}


class CopyEngine:
    """Parameters of the chunked copy engine and its DMA timing model.

    Arguments:
        chunk_pages: largest descriptor, in pages (int >= 1). Pairs of pages
            that are physically contiguous on both the source and the
            destination side coalesce into one descriptor up to this size.
        channels: modelled engine channels (int, 1 to 1024). Each descriptor goes
            to the least-loaded channel; the busiest channel's total is the
            modelled time.
        setup_ns: fixed cost per descriptor in ns (finite, >= 0).
        gbps: per-channel rate in GB/s, i.e. bytes per ns (finite, > 0). For
            ``model="uvm-curve"`` it is the curve's asymptote ``a``, also in
            bytes per ns (UVM-Smart's ``a = 12`` GiB/s is ``12 * 2**30 / 1e9``).
        threads: host threads for the real copy and for the metadata sweeps
            of large migrations. None lets the engine pick (parallel above
            ``parallel_min_bytes`` / ``parallel_min_pages`` with numba's
            current thread count); 1 forces the serial path; k > 1 caps the
            parallel work at k threads (and at numba's current count).
        model: ``"linear"``: ``t(s) = setup_ns + s / gbps``;
            ``"uvm-curve"``: ``t(s) = setup_ns + s / speed(s)`` with
            ``speed(s) = (2 * gbps / pi) * atan(curve_b * s / 1024)`` GB/s,
            halved for ``s >= 2 MiB`` as UVM-Smart does (see the
            ``"pcie3-uvm"`` preset). :meth:`model_ns` gives ``t(s)``.
        curve_b: steepness of the UVM curve, per KiB (finite, > 0).
        parallel_min_bytes: batches smaller than this are copied serially
            (int >= 0), because a parallel region only pays for itself
            above about 1 MiB on a 2-core machine.
        parallel_min_pages: migrations of fewer pages run their metadata
            sweeps (setup, allocation, pages and finalize) on one thread
            (int >= 1). The outcome is the same either way; see kernels.parallel.
        plain_min_pages: migrations of fewer pages take the kernel's per-slot
            steps throughout (int >= 1, default 4); from it on, the profiles
            the fast paths serve (hmm-v25, modern) write each plain slot's net
            effect, on one thread below ``parallel_min_pages``. The outcome is
            the same either way: it only sets which code computes it.
        stream_min_bytes: batches of at least this many bytes are written
            with streaming (non-temporal) stores, which skip the destination's
            read-for-ownership and leave the caches alone, as a DMA engine's
            writes do (int >= 0); smaller batches go through memcpy and the
            caches. None never streams. The bytes copied are the same either way.

    Only the modelled time depends on ``channels``, ``setup_ns``, ``gbps``,
    ``model`` and ``curve_b``; the real copy always runs at host memory
    speed. Every attribute re-validates on assignment.
    """

    chunk_pages = _Param(_int_at_least, 1)
    channels = _Param(_channels)
    setup_ns = _Param(_non_negative)
    gbps = _Param(_positive)
    threads = _Param(_none_or_int_at_least, 1)
    model = _Param(_model)
    curve_b = _Param(_positive)
    parallel_min_bytes = _Param(_int_at_least, 0)
    parallel_min_pages = _Param(_int_at_least, 1)
    plain_min_pages = _Param(_int_at_least, 1)
    stream_min_bytes = _Param(_none_or_int_at_least, 0)

    #: The parameters, in constructor order (what ``repr`` and ``==`` compare).
    FIELDS = (
        "chunk_pages",
        "channels",
        "setup_ns",
        "gbps",
        "threads",
        "model",
        "curve_b",
        "parallel_min_bytes",
        "parallel_min_pages",
        "stream_min_bytes",
        "plain_min_pages",
    )

    def __init__(
        self,
        chunk_pages=16,
        channels=1,
        setup_ns=1600.0,
        gbps=12.7,
        threads=None,
        *,
        model="linear",
        curve_b=0.07292,
        parallel_min_bytes=DEFAULT_PAR_MIN_BYTES,
        parallel_min_pages=DEFAULT_PAR_MIN_PAGES,
        stream_min_bytes=DEFAULT_STREAM_MIN_BYTES,
        plain_min_pages=DEFAULT_PLAIN_MIN_PAGES,
    ):
        self.chunk_pages = chunk_pages
        self.channels = channels
        self.setup_ns = setup_ns
        self.gbps = gbps
        self.threads = threads
        self.model = model
        self.curve_b = curve_b
        self.parallel_min_bytes = parallel_min_bytes
        self.parallel_min_pages = parallel_min_pages
        self.stream_min_bytes = stream_min_bytes
        self.plain_min_pages = plain_min_pages

    def _params(self):
        return {name: getattr(self, name) for name in self.FIELDS}

    def __repr__(self):
        body = ", ".join(f"{k}={v!r}" for k, v in self._params().items())
        return f"CopyEngine({body})"

    def __eq__(self, other):
        if not isinstance(other, CopyEngine):
            return NotImplemented
        return self._params() == other._params()

    __hash__ = None  # type: ignore[assignment]  # mutable, so unhashable

    def replace(self, **changes):
        """Return a copy with some parameters changed (validated like __init__)."""
        params = self._params()
        unknown = set(changes) - set(params)
        if unknown:
            raise TypeError(f"unknown CopyEngine parameter(s): {', '.join(sorted(unknown))}")
        params.update(changes)
        return CopyEngine(**params)

    def to_array(self):
        """Return the ``float64[ENGINE_FIELDS]`` array the kernels take (threads None -> 0,
        stream_min_bytes None -> -1; integer parameters above 2**53 are stored as
        2**53, which every kernel treats the same: no batch comes near it)."""
        arr = np.zeros(ENGINE_FIELDS, dtype=np.float64)
        arr[ENG_CHUNK_PAGES] = _count(self.chunk_pages)
        arr[ENG_CHANNELS] = self.channels
        arr[ENG_SETUP_NS] = self.setup_ns
        arr[ENG_GBPS] = self.gbps
        arr[ENG_THREADS] = 0 if self.threads is None else _count(self.threads)
        arr[ENG_MODEL] = _MODELS[self.model]
        arr[ENG_CURVE_B] = self.curve_b
        arr[ENG_PAR_MIN_BYTES] = _count(self.parallel_min_bytes)
        arr[ENG_PAR_MIN_PAGES] = _count(self.parallel_min_pages)
        stream = self.stream_min_bytes
        arr[ENG_STREAM_MIN_BYTES] = -1 if stream is None else _count(stream)
        arr[ENG_PLAIN_MIN_PAGES] = _count(self.plain_min_pages)
        return arr

    def model_ns(self, nbytes):
        """Modelled time of one descriptor of ``nbytes`` bytes, in ns.

        ``nbytes`` is an int from 0 to ``2**63 - 1`` (TypeError for anything
        else, bool included; ValueError outside that range). The default (``"linear"``) model is
        ``setup_ns + nbytes / gbps``; ``"uvm-curve"`` uses UVM-Smart's curve,
        halved at 2 MiB and above (see the ``"pcie3-uvm"`` preset). 0 bytes
        cost ``setup_ns``. This is the kernel ``descriptor_ns`` itself, so
        ``model_ns(k * page_size) * 1e-9 == model_time_s([k], page_size)``
        on any number of channels.
        """
        nbytes = _int_at_least("nbytes", nbytes, 0)
        if nbytes >= 2**63:  # the kernel takes an int64
            raise ValueError(f"nbytes must be < 2**63, got {nbytes}")
        ns = descriptor_ns(nbytes, self.setup_ns, self.gbps, _MODELS[self.model], self.curve_b)
        return float(ns)

    def model_time_s(self, page_counts, page_size=4096):
        """Modelled seconds to copy descriptors of the given page counts, in order.

        Arguments:
            page_counts: 1-D sequence of descriptor sizes in pages (ints >= 1),
                in submission order.
            page_size: bytes per page (int >= 1).

        Returns the busiest channel's total (0.0 for no descriptors), using
        the same rule as the kernel ``model_time_ns``.
        """
        page_size = _int_at_least("page_size", page_size, 1)
        counts = np.asarray(page_counts)
        if counts.ndim != 1:
            raise ValueError(f"page_counts must be 1-D, got {counts.ndim}-D")
        if counts.size and not np.issubdtype(counts.dtype, np.integer):
            raise TypeError(f"page_counts must hold ints, got {counts.dtype}")
        if counts.size and counts.min() < 1:
            raise ValueError("page_counts must all be >= 1")
        counts = np.ascontiguousarray(counts, dtype=np.int64)
        ns = model_time_ns(
            counts,
            counts.size,
            page_size,
            self.channels,
            self.setup_ns,
            self.gbps,
            _MODELS[self.model],
            self.curve_b,
        )
        return float(ns) * _S_PER_NS

    @classmethod
    def presets(cls):
        """Return the preset names accepted by :meth:`preset`, sorted."""
        return tuple(sorted(_PRESETS))

    @classmethod
    def preset(cls, name, **overrides):
        """Return an engine with published parameters.

        Presets (``chunk_pages`` keeps its default of 16 unless overridden):

        ``"ptdma"``
            ``setup_ns=1600, gbps=12.7, channels=1``. AMD PTDMA inside Linux
            ``migrate_pages``: a fit of ``t(s) = t0 + s / B`` to the
            1-channel row of Shivank Garg's DMA-offload series, v5 reply
            (https://lkml.iu.edu/hypermail/linux/kernel/2605.1/00684.html):
            4 KiB folios at 2.16 GB/s = 1.9 us per folio, 2 MiB folios at
            12.65 GB/s = 166 us per folio. ``t0`` includes the kernel's
            per-folio bookkeeping, not only the descriptor.
        ``"ptdma-4ch"``
            The same per-channel fit on 4 channels, after the v4 table's
            4-channel row (https://lkml.rescloud.iu.edu/2603.2/06223.html).
            That row reaches 27 GB/s at 2 MiB, below 4 x 12.7: the model has
            no shared memory-bandwidth cap, so it is optimistic for large
            folios on many channels.
        ``"pcie3-uvm"``
            ``model="uvm-curve", gbps=12 * 2**30 / 1e9 (= 12.884901888, a),
            curve_b=0.07292, setup_ns=0``. The PCIe 3.0 x16 transfer curve of
            UVM-Smart (DebashisGanguly/gpgpu-sim_UVMSmart,
            ``gmmu_t::calculate_transfer_time`` in ``src/gpgpu-sim/gpu-sim.cc``;
            ``curve_a = 12`` and ``curve_b = 0.07292`` for
            ``-pcie_bandwidth 16.0GB/s``): ``speed = 2a/pi * atan(b * KiB)``,
            halved for transfers of 2 MiB or more, and
            ``cycles = size * core_freq / speed / 1024^3``, so ``a`` is
            12 GiB/s, not GB/s. That is 2.33 GB/s at 4 KiB, 11.15 GB/s at
            64 KiB, 12.78 GB/s at 1 MiB and 6.41 GB/s at 2 MiB. It reproduces
            UVM-Smart's logged transfer times within 0.03%: ``memcpy_h2d`` of
            4 KiB 1.758947 us (model 1.759448), 60 KiB 5.563808 us,
            124 KiB 10.597569 us, 252 KiB 20.744766 us, 508 KiB 41.077652 us,
            1020 KiB 81.761650 us, and a 1 MiB write-back 82.079674 us (model
            82.079961). The model is 0.2-0.54 ns above each, less than one
            cycle of the GeForceGTX1080Ti config's 1481 MHz core clock:
            UVM-Smart truncates to whole cycles, and its float32 formula
            truncated at 1481 MHz gives each logged cycle count exactly.
            ``curve_b`` is therefore UVM-Smart's own constant, not a fit (a
            least-squares fit of ``b`` to the seven times gives 0.072943,
            which only absorbs the truncation).
            One descriptor is one UVM-Smart transfer: the halving applies
            only to descriptors of 2 MiB or more (``chunk_pages >= 512`` at
            4 KiB pages).
        ``"uvm-sc21"``
            ``setup_ns=0, gbps=0.8, channels=1`` (linear). The cost of
            migrating data in one GPU fault batch measured on NVIDIA's UVM
            driver by Allen & Ge, "In-Depth Analyses of Unified Virtual
            Memory System for GPU Accelerated Computing", SC21
            (tallendev/uvm-eval, the cuBLAS figures
            ``cublas-*-batch-size-time-transfer-size*.png`` in ``paper-figs/``):
            batch time is about 30 us plus 1.25 us per KB migrated (the fitted
            line runs from 0.03 ms at 0 KB to 1.0 ms at 780 KB). Their KB is
            1000 bytes (``tools/plotv2/Batch.py`` plots ``transfer_size /
            1000``, the driver logging bytes), so 1.25 us per KB is 0.8
            bytes/ns (0.8 GB/s),
            1.28 us per KiB, 5.12 us per 4 KiB page. The fixed 30 us is per
            fault batch, not per descriptor, so it is not in ``setup_ns``:
            this preset pairs with the simulator's ``batch_us=30``.
        ``"cpu"``
            ``setup_ns=0, gbps=12.5, channels=1``. A single-thread memcpy:
            ``llvm.memcpy`` measured 12.5-13.2 GB/s (``np.copyto`` 12.2-13.7)
            on 256 MiB prefaulted buffers on the project's 2-vCPU EPYC
            development VM.

        Arguments:
            name: one of :meth:`presets`.
            overrides: constructor arguments that replace the preset's.

        Raises ValueError, listing the names, for an unknown preset.
        """
        if name not in _PRESETS:
            raise ValueError(
                f"unknown CopyEngine preset {name!r}; choose one of: {', '.join(cls.presets())}"
            )
        kwargs = dict(_PRESETS[name])
        kwargs.update(overrides)
        return cls(**kwargs)
