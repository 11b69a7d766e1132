"""Making room on the device: choose a victim and move it back with migrate_vma().

Victims are whole migration units, except under ``EV_LRU``, where they are 2 MiB
VA blocks as NVIDIA's driver evicts root chunks, least recently migrated into
first. Whatever the batch being serviced asked for or is about to fill carries
the batch's id in ``unit_mark``/``blk_mark`` and is never chosen.
"""

import numpy as np

from .._jit import internal
from .layout import (
    C_BLOCK_PAGES,
    C_EVICT,
    C_UNIT,
    ERR_POLICY,
    EV_FIFO,
    EV_LRU,
    EV_RANDOM,
    S_BATCH_ID,
    S_ERROR,
    S_ERROR_ARG,
    S_EVICTIONS,
    S_FIFO_HEAD,
    S_LRU_HEAD,
    S_NRAND,
    S_PAGES_EVICTED,
)
from .moves import move_run
from .records import COPY_EVICT
from .residency import rng_next


@internal
def _victim_unit(sim, policy, now):
    """A resident, unprotected unit by the run's policy, or -1 (-2: the policy failed)."""
    ctr = sim.ctr
    batch_id = ctr[S_BATCH_ID]
    kind = sim.cfg[C_EVICT]
    if kind == EV_FIFO:
        u = ctr[S_FIFO_HEAD]
        while u >= 0 and sim.unit_mark[u] == batch_id:
            u = sim.fifo_next[u]
        return u
    n = ctr[S_NRAND]
    if n == 0:
        return np.int64(-1)
    if kind == EV_RANDOM:
        start = np.int64(rng_next(ctr) % np.uint64(n))
        for j in range(n):
            u = sim.rand_units[(start + j) % n]
            if sim.unit_mark[u] != batch_id:
                return u
        return np.int64(-1)
    # EV_USER: the unprotected resident units, as the policy's four arrays.
    m = 0
    for j in range(n):
        u = sim.rand_units[j]
        if sim.unit_mark[u] == batch_id:
            continue
        sim.pol_units[m] = u
        sim.pol_last[m] = sim.last_use[u]
        sim.pol_first[m] = sim.first_use[u]
        sim.pol_uses[m] = sim.uses[u]
        m += 1
    if m == 0:
        return np.int64(-1)
    pos = policy(
        sim.pol_units.ctypes, sim.pol_last.ctypes, sim.pol_first.ctypes, sim.pol_uses.ctypes, m, now
    )
    if pos < 0 or pos >= m:
        ctr[S_ERROR] = ERR_POLICY
        ctr[S_ERROR_ARG] = pos
        return np.int64(-2)
    return sim.pol_units[pos]


@internal
def _victim_block(sim):
    """The least recently migrated-into VA block with resident pages, unprotected, or -1."""
    batch_id = sim.ctr[S_BATCH_ID]
    b = sim.ctr[S_LRU_HEAD]
    while b >= 0 and sim.blk_mark[b] == batch_id:
        b = sim.lru_next[b]
    return b


@internal
def evict_one(sim, state, policy, batch_row, now):
    """Move one victim's resident pages back to system memory.

    Returns the pages moved (0 when nothing can be evicted), or -1 on an error
    (``ctr[S_ERROR]`` says which).
    """
    if sim.cfg[C_EVICT] == EV_LRU:
        b = _victim_block(sim)
        if b < 0:
            return np.int64(0)
        first = b * sim.cfg[C_BLOCK_PAGES]
        n = sim.cfg[C_BLOCK_PAGES]
    else:
        u = _victim_unit(sim, policy, now)
        if u < 0:
            return np.int64(min(u + 1, 0))  # -1 (none) -> 0, -2 (policy error) -> -1
        first = u * sim.cfg[C_UNIT]
        n = sim.cfg[C_UNIT]
    sim.ctr[S_EVICTIONS] += 1
    moved = np.int64(0)
    i = np.int64(0)
    while i < n:  # each run of resident pages is one migrate_vma() call
        if sim.resident[first + i] == 0:
            i += 1
            continue
        j = i
        while j < n and sim.resident[first + j] != 0:
            j += 1
        # Typed, not literal, direction and kind: move_run() compiles once for
        # both callers, where each compile re-optimizes the driver it links.
        got = move_run(
            sim, state, first + i, j - i, np.bool_(False), np.int64(COPY_EVICT), batch_row, now
        )
        if got < 0:
            return np.int64(-1)
        moved += got
        i = j
    sim.ctr[S_PAGES_EVICTED] += moved
    return moved
