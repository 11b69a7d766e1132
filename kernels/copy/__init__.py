"""The chunked copy engine: it stands in for the device's DMA engine.

It does three things for the ``alloc_and_copy`` step of ``migrate_vma``:

1. :mod:`.descriptors` coalesces ``(src_pfn, dst_pfn)`` pairs into copy
   descriptors, runs contiguous on both sides up to ``chunk_pages`` pages;
2. :mod:`.execute` moves the bytes (``llvm.memcpy`` or streaming stores, on
   one thread or several);
3. :mod:`.model` charges each descriptor ``setup_ns + bytes / rate`` on the
   least-loaded of ``channels`` channels, so the simulator reports what a
   real engine would have taken, independent of the host's memcpy speed.

:mod:`.engine` holds the entry points; :mod:`.params` the ``ENG_*`` /
``STAT_*`` array layouts. The byte-copy intrinsics live in ``kernels._llvm``
and are re-exported here.
"""

from .._llvm import memcpy_bytes, store_fence, stream_bytes
from .descriptors import build_descriptors, emit_descriptor, extends_run, stitch_descriptors
from .engine import engine_copy, engine_copy_built_into, engine_copy_into
from .execute import copy_descriptors_parallel, copy_descriptors_serial, engine_copy_ns
from .model import descriptor_ns, model_time_into, model_time_ns
from .params import (
    COPY_PIECE_BYTES,
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
    STAT_BYTES,
    STAT_CALLS,
    STAT_DESCRIPTORS,
    STAT_MODEL_S,
    STAT_WALL_S,
    STATS_FIELDS,
)

__all__ = [
    "COPY_PIECE_BYTES",
    "DEFAULT_PAR_MIN_BYTES",
    "DEFAULT_PAR_MIN_PAGES",
    "DEFAULT_PLAIN_MIN_PAGES",
    "DEFAULT_STREAM_MIN_BYTES",
    "ENGINE_FIELDS",
    "ENG_CHANNELS",
    "ENG_CHUNK_PAGES",
    "ENG_CURVE_B",
    "ENG_GBPS",
    "ENG_MODEL",
    "ENG_PAR_MIN_BYTES",
    "ENG_PAR_MIN_PAGES",
    "ENG_PLAIN_MIN_PAGES",
    "ENG_SETUP_NS",
    "ENG_STREAM_MIN_BYTES",
    "ENG_THREADS",
    "MODEL_LINEAR",
    "MODEL_UVM_CURVE",
    "STATS_FIELDS",
    "STAT_BYTES",
    "STAT_CALLS",
    "STAT_DESCRIPTORS",
    "STAT_MODEL_S",
    "STAT_WALL_S",
    "build_descriptors",
    "copy_descriptors_parallel",
    "copy_descriptors_serial",
    "engine_copy_ns",
    "descriptor_ns",
    "emit_descriptor",
    "engine_copy",
    "engine_copy_built_into",
    "engine_copy_into",
    "extends_run",
    "memcpy_bytes",
    "model_time_into",
    "model_time_ns",
    "stitch_descriptors",
    "store_fence",
    "stream_bytes",
]
