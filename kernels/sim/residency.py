"""What is on the device: per page, per migration unit and per 2 MiB VA block.

The eviction policies' orders live here too, kept up to date as pages come and
go: the FIFO of units in arrival order, the dense list of resident units the
random policy draws from, and NVIDIA's LRU of VA blocks (root chunks), which
its driver reorders when a block receives pages, not when the GPU touches it
(``uvm_pmm_gpu.c``: ``root_chunks.va_block_used``).
"""

import numpy as np

from .._jit import internal
from .layout import (
    C_BLOCK_SHIFT,
    C_UNIT_SHIFT,
    S_FIFO_HEAD,
    S_FIFO_TAIL,
    S_LRU_HEAD,
    S_LRU_TAIL,
    S_NRAND,
    S_RESIDENT,
    S_RNG,
)


@internal(hot=True)
def rng_next(ctr):
    """xorshift64*: the random policy's generator, its state in ``ctr[S_RNG]``."""
    x = np.uint64(ctr[S_RNG])
    x ^= x >> np.uint64(12)
    x ^= x << np.uint64(25)
    x ^= x >> np.uint64(27)
    ctr[S_RNG] = np.int64(x)
    return (x * np.uint64(0x2545F4914F6CDD1D)) >> np.uint64(1)


@internal(hot=True)
def _unit_arrive(sim, u, k):
    """Unit ``u`` got its first resident page: append it to the FIFO and the dense list."""
    ctr = sim.ctr
    tail = ctr[S_FIFO_TAIL]
    sim.fifo_prev[u] = tail
    sim.fifo_next[u] = -1
    if tail >= 0:
        sim.fifo_next[tail] = u
    else:
        ctr[S_FIFO_HEAD] = u
    ctr[S_FIFO_TAIL] = u
    n = ctr[S_NRAND]
    sim.rand_units[n] = u
    sim.rand_pos[u] = n
    ctr[S_NRAND] = n + 1
    sim.first_use[u] = k
    sim.last_use[u] = k
    sim.uses[u] = 0


@internal(hot=True)
def _unit_leave(sim, u):
    """Unit ``u`` lost its last resident page: take it out of both orders."""
    ctr = sim.ctr
    p = sim.fifo_prev[u]
    q = sim.fifo_next[u]
    if p >= 0:
        sim.fifo_next[p] = q
    else:
        ctr[S_FIFO_HEAD] = q
    if q >= 0:
        sim.fifo_prev[q] = p
    else:
        ctr[S_FIFO_TAIL] = p
    pos = sim.rand_pos[u]
    last = ctr[S_NRAND] - 1
    moved = sim.rand_units[last]
    sim.rand_units[pos] = moved
    sim.rand_pos[moved] = pos
    sim.rand_pos[u] = -1
    ctr[S_NRAND] = last


@internal(hot=True)
def lru_unlink(sim, b):
    """Take VA block ``b`` out of the LRU, if it is on it."""
    ctr = sim.ctr
    if sim.lru_prev[b] < 0 and ctr[S_LRU_HEAD] != b:
        return
    p = sim.lru_prev[b]
    q = sim.lru_next[b]
    if p >= 0:
        sim.lru_next[p] = q
    else:
        ctr[S_LRU_HEAD] = q
    if q >= 0:
        sim.lru_prev[q] = p
    else:
        ctr[S_LRU_TAIL] = p
    sim.lru_prev[b] = -1
    sim.lru_next[b] = -1


@internal(hot=True)
def lru_used(sim, b):
    """VA block ``b`` received pages: it becomes the most recently used (the tail)."""
    ctr = sim.ctr
    if ctr[S_LRU_TAIL] == b:
        return
    lru_unlink(sim, b)
    tail = ctr[S_LRU_TAIL]
    sim.lru_prev[b] = tail
    sim.lru_next[b] = -1
    if tail >= 0:
        sim.lru_next[tail] = b
    else:
        ctr[S_LRU_HEAD] = b
    ctr[S_LRU_TAIL] = b


@internal(hot=True)
def page_in(sim, page, pfn, k):
    """Simulated page ``page`` is now on the device in frame ``pfn`` (at access ``k``)."""
    sim.resident[page] = 1
    sim.dev_pfn[page] = pfn
    u = page >> sim.cfg[C_UNIT_SHIFT]
    if sim.unit_res[u] == 0:
        _unit_arrive(sim, u, k)
    sim.unit_res[u] += 1
    sim.blk_res[page >> sim.cfg[C_BLOCK_SHIFT]] += 1
    sim.ctr[S_RESIDENT] += 1


@internal(hot=True)
def page_out(sim, page):
    """Simulated page ``page`` left the device (evicted, or faulted back by a CPU)."""
    sim.resident[page] = 0
    sim.dev_pfn[page] = -1
    u = page >> sim.cfg[C_UNIT_SHIFT]
    sim.unit_res[u] -= 1
    if sim.unit_res[u] == 0:
        _unit_leave(sim, u)
    b = page >> sim.cfg[C_BLOCK_SHIFT]
    sim.blk_res[b] -= 1
    if sim.blk_res[b] == 0:
        lru_unlink(sim, b)
    sim.ctr[S_RESIDENT] -= 1
