"""The fault-driven simulation's kernels: a UVM-style driver model over migrate_vma().

migengine.sim builds a :class:`SimState` and calls replay() per trace chunk
(the last one with ``last``, which services the batch still open), then
expect_writes() per chunk and verify_replay() to check the run.
"""

from .layout import EVICT_IDS, POLICY_SIG, PREFETCH_IDS, STAT_NAMES, SimState
from .records import BATCH_DTYPE, COPY_DTYPE, COPY_KIND_NAMES
from .replay import VA_BLOCK_SHIFT, expect_writes, replay, verify_replay

__all__ = [
    "BATCH_DTYPE",
    "COPY_DTYPE",
    "COPY_KIND_NAMES",
    "EVICT_IDS",
    "POLICY_SIG",
    "PREFETCH_IDS",
    "STAT_NAMES",
    "SimState",
    "VA_BLOCK_SHIFT",
    "expect_writes",
    "replay",
    "verify_replay",
]
