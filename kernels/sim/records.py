"""What the fault-driven simulation records: one row per fault batch, one per copy.

The rows are numpy structured arrays, so a compiled replay writes them as
``rec["field"][i]`` and Python reads them as columns. Times are modelled
microseconds since the start of the run (the cost model's clock, not wall time).
"""

import numpy as np

#: One serviced fault batch (uvm_gpu_service_replayable_faults() in NVIDIA's driver).
BATCH_DTYPE = np.dtype(
    [
        ("t_start_us", np.float64),  # modelled start of the service
        ("t_end_us", np.float64),  # modelled end: fixed costs plus every copy of the batch
        ("access", np.int64),  # trace index of the access that closed the batch
        ("faults", np.int64),  # fault entries serviced (one per faulting page)
        ("coalesced", np.int64),  # entries whose migration unit an earlier entry already asked for
        ("vablocks", np.int64),  # 2 MiB VA blocks the batch touched
        ("pages_to_device", np.int64),  # pages of faulted units moved in
        ("pages_prefetched", np.int64),  # pages the prefetcher added
        ("pages_evicted", np.int64),  # pages moved back to make room
        ("cpu_faults", np.int64),  # CPU faults since the previous batch
        ("bytes", np.int64),  # bytes copied by the batch, both directions
        ("copy_us", np.float64),  # modelled copy time of the batch
        ("resident_pages", np.int64),  # device pages resident after the batch
    ]
)

#: Copy kinds, for COPY_DTYPE["kind"].
COPY_TO_DEVICE = 0  # fault service and prefetch (host to device)
COPY_EVICT = 1  # eviction (device to host)
COPY_CPU_FAULT = 2  # a CPU access faulting a device page back (device to host)
COPY_KIND_NAMES = ("to_device", "evict", "cpu_fault")

#: One migrate_vma() call's work on one DMA channel.
COPY_DTYPE = np.dtype(
    [
        ("t_start_us", np.float64),  # modelled start on this channel
        ("dur_us", np.float64),  # the channel's modelled busy time for the call
        ("channel", np.int32),  # engine channel (0 .. channels - 1)
        ("kind", np.int8),  # COPY_TO_DEVICE, COPY_EVICT or COPY_CPU_FAULT
        ("bytes", np.int64),  # bytes the whole call copied
        ("batch", np.int64),  # row of the batch it belongs to, -1 for a CPU fault
    ]
)
