"""The copy engine's parameter and stats layouts, and its tuning defaults.

Engine parameters travel as one float64 array (``ENG_*``) and results
accumulate into one float64 array (``STAT_*``), so every kernel keeps one
fixed signature and stays cacheable: no jitclass, no callbacks, and the model
kind is a runtime integer. The measurements behind each default are in
docs/performance.md ("Copy engine").
"""

import numpy as np

# Engine parameter array layout (float64[ENGINE_FIELDS]).
ENG_CHUNK_PAGES = 0  # largest descriptor, pages (>= 1)
ENG_CHANNELS = 1  # number of modelled DMA channels (>= 1)
ENG_SETUP_NS = 2  # per-descriptor setup + completion latency, ns
ENG_GBPS = 3  # per-channel rate, GB/s == bytes/ns (curve asymptote for MODEL_UVM_CURVE)
ENG_THREADS = 4  # 0 = engine picks, 1 = serial, k > 1 = at most k threads
ENG_MODEL = 5  # MODEL_LINEAR or MODEL_UVM_CURVE
ENG_CURVE_B = 6  # UVM-Smart curve steepness b, per KiB
ENG_PAR_MIN_BYTES = 7  # batches smaller than this are copied serially
ENG_PAR_MIN_PAGES = 8  # migrations with fewer pages sweep their metadata serially
ENG_STREAM_MIN_BYTES = 9  # batches this large are written with streaming stores; < 0: never
ENG_PLAIN_MIN_PAGES = 10  # migrations with fewer pages take the kernel's per-slot steps only
ENGINE_FIELDS = 11

# Stats array layout (float64[STATS_FIELDS]); engine_copy adds to it.
STAT_DESCRIPTORS = 0
STAT_BYTES = 1
STAT_WALL_S = 2  # measured copy time only (descriptor build and model excluded)
STAT_MODEL_S = 3
STAT_CALLS = 4
STATS_FIELDS = 5

MODEL_LINEAR = 0
MODEL_UVM_CURVE = 1

# Below 1 MiB a batch the workload has just written sits in the first core's L2,
# and a second thread pulling half of it across was 2-3x slower than one thread;
# 1 MiB is the smallest batch at which the parallel copy never lost.
DEFAULT_PAR_MIN_BYTES = 1 << 20

# Metadata sweeps cost ~10 ns a page and a parallel region ~3-5 us here, so
# splitting them over threads pays from a few thousand pages.
DEFAULT_PAR_MIN_PAGES = 4096

# The plain sweeps write each plain slot's net effect. On one thread, from a user's @njit
# loop, a metadata-only migration to the device of 16 pages took 1.1-1.7 us against 2.2-3.1
# us with the kernel's per-slot steps, and of 512 pages 21 ns a page against 105; their fixed
# cost (the schedule, the per-thread counts) made 1 and 2 pages 0.3 us slower, and 4 pages
# broke even. A larger value keeps the per-slot steps (the tests' oracle for the sweeps).
DEFAULT_PLAIN_MIN_PAGES = 4

# Largest single memcpy call: calls of 1 MiB or more ran ~10% slower than calls of
# 64-512 KiB on the development VM, whatever the store type, so larger descriptors
# are copied in 256 KiB pieces (the timing model still charges whole descriptors).
COPY_PIECE_BYTES = 256 << 10

# Streaming (non-temporal) stores write whole lines straight to memory: no
# read-for-ownership, 2 bytes of DRAM traffic per byte instead of 3, and no cache
# pollution, as a DMA engine writes. A batch the caches still hold copies faster
# through them, so streaming starts at 3/4 of the development VM's 32 MiB L3
# (glibc's own rule for its non-temporal threshold).
DEFAULT_STREAM_MIN_BYTES = 24 << 20

S_PER_NS = np.float64(1e-9)
BYTES_PER_KIB = np.float64(1024.0)
TWO_OVER_PI = np.float64(2.0 / np.pi)

# UVM-Smart (gmmu_t::calculate_transfer_time) halves its curve's speed for
# transfers of this many bytes or more (``data_size >= 2*1024*1024``).
UVM_HALF_SPEED_BYTES = np.int64(2 << 20)
