"""The fault-driven simulation's state: indices, policy ids and the SimState tuple.

A simulation is a driver model in the style of NVIDIA's UVM driver running on
the engine's real machine: its own bookkeeping (what is resident, the fault
batch, the eviction lists) lives in the flat arrays of one :class:`SimState`,
so the compiled replay can stop (a trace chunk ends, the batch records are
full) and resume where it stopped.
"""

from collections import namedtuple

from numba import types

# ``cfg`` (int64): the run's geometry and policies, fixed for the run.
(
    C_PAGES,  # simulated pages: VA blocks * C_BLOCK_PAGES
    C_BLOCK_PAGES,  # pages per 2 MiB VA block
    C_UNIT,  # pages per migration unit (SimConfig.migrate_pages)
    C_BATCH,  # fault entries per batch (SimConfig.batch_faults)
    C_PREFETCH,  # PF_* below
    C_EVICT,  # EV_* below
    C_STORE,  # 1: device and CPU writes store a byte, checked at the end
    C_THRESHOLD,  # the tree prefetcher's threshold, percent (51)
    C_SEQ_PAGES,  # pages per sequential-local block (64 KiB)
    C_PID,  # the simulated process
    C_VMA,  # its one VMA's index
    C_VSTART,  # the VMA's first address (2 MiB aligned)
    C_PAGE_SHIFT,  # log2(page size)
    C_UNIT_SHIFT,  # log2(C_UNIT): page >> C_UNIT_SHIFT is its unit
    C_BLOCK_SHIFT,  # log2(C_BLOCK_PAGES): page >> C_BLOCK_SHIFT is its VA block
    C_GATHER,  # 1: a fault batch's bytes move in one engine copy (copies.py); 0: per call
    C_FIELDS,
) = range(17)

# ``ctr`` (int64): the run's counters, then the bookkeeping that must survive a resume.
(
    S_ACCESSES,
    S_DEVICE_ACCESSES,
    S_DEVICE_HITS,
    S_DEVICE_FAULTS,
    S_BATCHES,
    S_FAULTS_SERVICED,
    S_FAULTS_COALESCED,
    S_PAGES_TO_DEVICE,
    S_PAGES_PREFETCHED,
    S_PAGES_EVICTED,
    S_CPU_ACCESSES,
    S_CPU_FAULTS,
    S_REMOTE,  # device accesses served remotely: their page could not be moved in
    S_EVICTIONS,  # victims chosen
    S_MIGRATE_CALLS,
    S_BYTES_TO_DEVICE,
    S_BYTES_TO_HOST,
    S_COPIES,  # rows used in ``copies``
    S_COPIES_DROPPED,
    S_NB,  # entries in the open batch
    S_BATCH_ID,  # id of the open batch (pend[] marks its pages with it)
    S_CPU_SINCE,  # CPU faults since the last batch record
    S_RESIDENT,  # device pages resident
    S_FIFO_HEAD,  # oldest resident unit (-1: none)
    S_FIFO_TAIL,
    S_LRU_HEAD,  # least recently migrated-into VA block (-1: none)
    S_LRU_TAIL,
    S_NRAND,  # entries of rand_units
    S_RNG,  # xorshift64* state of the random policy
    S_LAST_BLOCK,  # lookup cache: the last trace VA block ...
    S_LAST_RANK,  # ... and its rank (-1: none)
    S_ERROR,  # ERR_* below, with the details in S_ERROR_ARG
    S_ERROR_ARG,
    S_QN,  # descriptors gathered in ``queue``, their bytes not moved yet (copies.py)
    S_QPAGES,  # pages they cover
    S_QDIR,  # their direction: 1 to the device, 0 back
    S_FIELDS,
) = range(37)

#: The counters simulate() reports, in ``ctr`` order (the rest is bookkeeping).
STAT_NAMES = (
    "accesses",
    "device_accesses",
    "device_hits",
    "device_faults",
    "fault_batches",
    "faults_serviced",
    "faults_coalesced",
    "pages_to_device",
    "pages_prefetched",
    "pages_evicted",
    "cpu_accesses",
    "cpu_faults",
    "remote_accesses",
    "evictions",
    "migrate_calls",
    "bytes_to_device",
    "bytes_to_host",
)

# Rows of ``queue`` (int64[Q_ROWS, n]): a gathered copy descriptor's first source
# frame, first destination frame and pages.
Q_SRC, Q_DST, Q_LEN, Q_ROWS = range(4)

# ``clock`` (float64): modelled time, microseconds.
T_NOW, T_FIXED, T_COPY, T_FIELDS = range(4)

# ``fcfg`` (float64): fixed costs.
F_FAULT_US, F_BATCH_US, F_FIELDS = range(3)

PF_NONE, PF_SEQUENTIAL, PF_TREE = range(3)
PREFETCH_IDS = {"none": PF_NONE, "sequential": PF_SEQUENTIAL, "tree": PF_TREE}

EV_LRU, EV_FIFO, EV_RANDOM, EV_USER = range(4)
EVICT_IDS = {"lru": EV_LRU, "fifo": EV_FIFO, "random": EV_RANDOM}

# Why a replay stopped (replay()'s return tells where).
ERR_NONE, ERR_CPU_FAULT, ERR_POLICY, ERR_MIGRATE = range(4)

#: A user eviction policy as the replay calls it: the four int64 arrays as
#: pointers, their length, and the access index (see migengine.sim).
POLICY_SIG = types.int64(
    types.CPointer(types.int64),
    types.CPointer(types.int64),
    types.CPointer(types.int64),
    types.CPointer(types.int64),
    types.int64,
    types.int64,
)

#: The arrays of one run. Per page: ``resident`` (1 on the device), ``dev_pfn``
#: (its device frame), ``pend`` (the batch id whose open batch holds its fault).
#: Per unit: ``unit_res`` (resident pages), ``unit_mark`` (batch id that asked for
#: or protects it), ``last_use``/``first_use``/``uses`` (for policies),
#: ``fifo_prev``/``fifo_next`` and ``rand_pos``. Per VA block: ``blk_res``,
#: ``blk_mark``, ``lru_prev``/``lru_next``, ``blk_head`` (its entries in the batch
#: being serviced). ``vblocks``: the trace's sorted 2 MiB block numbers.
#: ``expected``: with bytes, what every byte must hold at the end (expect_writes()).
#: ``queue``: the fault batch's copy descriptors whose bytes have not moved yet.
SimState = namedtuple(
    "SimState",
    [
        "cfg",
        "fcfg",
        "ctr",
        "clock",
        "vblocks",
        "resident",
        "dev_pfn",
        "pend",
        "unit_res",
        "unit_mark",
        "last_use",
        "first_use",
        "uses",
        "fifo_prev",
        "fifo_next",
        "rand_units",
        "rand_pos",
        "blk_res",
        "blk_mark",
        "lru_prev",
        "lru_next",
        "blk_head",
        "b_page",
        "b_access",
        "b_info",
        "b_next",
        "touched",
        "want",
        "req",
        "occ",
        "src",
        "dst",
        "pol_units",
        "pol_last",
        "pol_first",
        "pol_uses",
        "expected",
        "iobuf",
        "queue",
        "batches",
        "copies",
    ],
)
