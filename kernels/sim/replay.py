"""The replay loop: every access of a trace chunk, with no Python in between.

A device access to a resident page is a hit. Any other device access is a
fault: its page joins the open batch (the fault buffer), and the access waits
for the batch's service (replayable faults). The batch is serviced when a new
fault finds it full (``batch_faults`` entries), when an access reaches a page
whose fault is still in the batch (the access stream cannot pass its own
fault, so it waits: the driver services the batch, then the access replays as
a hit), before a CPU access, and at the end of the trace (replay()'s ``last``).
A CPU access (proc -1) goes through the engine's CPU fault path, which
migrates a device page back (hmm_devmem_ops.fault).
"""

import numpy as np

from .. import layout as L
from .._jit import internal, kernel
from ..copy import STAT_BYTES, STAT_MODEL_S
from ..cpu import TR_DEVICE, cpu_read, cpu_write, translate
from ..memory import handle_mm_fault
from .layout import (
    C_BATCH,
    C_BLOCK_PAGES,
    C_PAGE_SHIFT,
    C_PAGES,
    C_PID,
    C_STORE,
    C_UNIT_SHIFT,
    C_VMA,
    C_VSTART,
    ERR_CPU_FAULT,
    F_FAULT_US,
    S_ACCESSES,
    S_BATCH_ID,
    S_BATCHES,
    S_BYTES_TO_HOST,
    S_CPU_ACCESSES,
    S_CPU_FAULTS,
    S_CPU_SINCE,
    S_DEVICE_ACCESSES,
    S_DEVICE_FAULTS,
    S_DEVICE_HITS,
    S_ERROR,
    S_ERROR_ARG,
    S_LAST_BLOCK,
    S_LAST_RANK,
    S_NB,
    S_REMOTE,
    T_FIXED,
    T_NOW,
)
from .moves import clear_copy_stats, record_copy
from .records import COPY_CPU_FAULT
from .residency import page_out
from .service import service_batch, write_value

VA_BLOCK_SHIFT = 21  # NVIDIA's VA blocks are 2 MiB, whatever the page size


@internal(inline=True)
def _rank(vblocks, vb):
    """Index of 2 MiB block number ``vb`` in the sorted ``vblocks`` (it is there)."""
    # Branch-free halving: random accesses across blocks make the comparison
    # unpredictable, and a select costs less than a mispredicted branch.
    lo = np.int64(0)
    n = np.int64(vblocks.shape[0])
    while n > 1:
        half = n >> 1
        lo = lo + half if vblocks[lo + half] <= vb else lo
        n -= half
    return lo


@internal
def _cpu_access(sim, state, page, off, write, k):
    """A CPU load or store of one byte of ``page``; a device page faults back first."""
    shift = sim.cfg[C_PAGE_SHIFT]
    addr = sim.cfg[C_VSTART] + (page << shift) + off
    was_resident = sim.resident[page] != 0
    if was_resident:
        clear_copy_stats(state)
    buf = sim.iobuf[:1]
    if sim.cfg[C_STORE] == 0:
        # No bytes to move: the fault path alone (cpu_read/write need the frames' bytes).
        status = handle_mm_fault(state, sim.cfg[C_VMA], addr, write)
    elif write:
        val = write_value(k)
        buf[0] = val
        status = cpu_write(state, sim.cfg[C_PID], addr, buf)
    else:
        status = cpu_read(state, sim.cfg[C_PID], addr, buf)
    if status != 0:
        sim.ctr[S_ERROR] = ERR_CPU_FAULT
        sim.ctr[S_ERROR_ARG] = status
        return np.int64(-1)
    if was_resident:
        kind, _, _, _ = translate(state, sim.cfg[C_PID], addr)
        if kind != TR_DEVICE:
            page_out(sim, page)
        sim.ctr[S_CPU_FAULTS] += 1
        sim.ctr[S_CPU_SINCE] += 1
        sim.ctr[S_BYTES_TO_HOST] += np.int64(state.copy_stats[STAT_BYTES])
        sim.clock[T_NOW] += sim.fcfg[F_FAULT_US]
        sim.clock[T_FIXED] += sim.fcfg[F_FAULT_US]
        nbytes = np.int64(state.copy_stats[STAT_BYTES])
        record_copy(sim, state, COPY_CPU_FAULT, nbytes, -1, state.copy_stats[STAT_MODEL_S])
    return np.int64(0)


@internal
def _miss(sim, state, policy, page, off, is_write, k, proc):
    """Access ``k`` when it is not a device hit: a CPU access, or a device access
    to a page that is not resident (it joins the batch, or waits for it).

    Returns 1 when the access is done, 0 when the replay must stop before it
    (``sim.batches`` is full, or an error set ``ctr[S_ERROR]``).
    """
    ctr = sim.ctr
    cap = sim.batches.shape[0]
    if proc != 0:
        if ctr[S_NB] > 0:
            if ctr[S_BATCHES] >= cap:
                return np.int64(0)
            if service_batch(sim, state, policy, k) < 0:
                return np.int64(0)
        if _cpu_access(sim, state, page, off, is_write, k) < 0:
            return np.int64(0)
        ctr[S_CPU_ACCESSES] += 1
        return np.int64(1)
    waited = False
    if sim.pend[page] == ctr[S_BATCH_ID]:
        # The stream reached its own outstanding fault: service, then replay.
        if ctr[S_BATCHES] >= cap:
            return np.int64(0)
        if service_batch(sim, state, policy, k) < 0:
            return np.int64(0)
        waited = True
    if sim.resident[page] != 0:
        ctr[S_DEVICE_HITS] += 1
        if is_write and sim.cfg[C_STORE] != 0:
            ps = np.int64(1) << sim.cfg[C_PAGE_SHIFT]
            state.data[sim.dev_pfn[page] * ps + off] = write_value(k)
        u = page >> sim.cfg[C_UNIT_SHIFT]
        sim.last_use[u] = k
        sim.uses[u] += 1
    elif waited:
        # Still not resident after its batch: the device could not take it.
        ctr[S_DEVICE_FAULTS] += 1
        ctr[S_REMOTE] += 1
        if _cpu_access(sim, state, page, off, is_write, k) < 0:
            return np.int64(0)
    else:
        if ctr[S_NB] >= sim.cfg[C_BATCH]:
            if ctr[S_BATCHES] >= cap:
                return np.int64(0)
            if service_batch(sim, state, policy, k) < 0:
                return np.int64(0)
        nb = ctr[S_NB]
        sim.b_page[nb] = page
        sim.b_access[nb] = k
        sim.b_info[nb] = (off << 1) | (1 if is_write else 0)
        ctr[S_NB] = nb + 1
        sim.pend[page] = ctr[S_BATCH_ID]
        ctr[S_DEVICE_FAULTS] += 1
    ctr[S_DEVICE_ACCESSES] += 1
    return np.int64(1)


@kernel
def replay(sim, state, policy, addr, write, proc, start, base, last):
    """Replay accesses ``start ..`` of one trace chunk.

    Arguments:
        sim: the run's SimState; state: the machine's State.
        policy: the eviction policy as a POLICY_SIG function (unused unless EV_USER).
        addr, write, proc: the chunk's columns (uint64, bool, int8).
        start: the first access of the chunk to replay.
        base: the trace index of the chunk's first access.
        last: bool; the trace ends with this chunk, so once its accesses are
            replayed the batch still open is serviced (the driver's last
            fault service, access index ``base`` + the chunk's length).

    Preconditions: every address is in one of ``sim.vblocks``' 2 MiB blocks.
    Postconditions: returns the index of the first access not replayed: the
    chunk's length when it is done; less when a batch needed a record row and
    ``sim.batches`` is full (grow it and call again from there) or on an error
    (``ctr[S_ERROR]`` != 0, the machine left consistent). With ``last``, the
    batch is still open (``ctr[S_NB]`` > 0) after a return of the chunk's
    length only when it needed a row and found none: grow and call again.

    One entry point serves the whole trace, the end included: every entry
    point is its own compile of the whole driver model and its own load
    from the cache.
    """
    ctr = sim.ctr
    cfg = sim.cfg
    shift = cfg[C_PAGE_SHIFT]
    ps_mask = (np.uint64(1) << np.uint64(shift)) - np.uint64(1)
    blk_mask = (np.uint64(1) << np.uint64(VA_BLOCK_SHIFT)) - np.uint64(1)
    bp = cfg[C_BLOCK_PAGES]
    # A shift, where a division by the run-time unit cost a third of the hit
    # path's time when it stored bytes.
    unit_shift = cfg[C_UNIT_SHIFT]
    store = cfg[C_STORE] != 0
    ps = np.int64(1) << shift
    last_block = np.uint64(ctr[S_LAST_BLOCK])
    last_rank = ctr[S_LAST_RANK]
    n = addr.shape[0]
    vblocks = sim.vblocks
    vb0 = vblocks[0]
    nblk = np.uint64(vblocks.shape[0])
    resident = sim.resident
    dev_pfn = sim.dev_pfn
    data = state.data
    last_use = sim.last_use
    uses = sim.uses
    # The hits stay in a register; they are added to ctr on the way out. The
    # rest of an access is a call (_miss()), which keeps the loop small.
    hits = np.int64(0)
    i = np.int64(start)
    while i < n:
        a = addr[i]
        k = base + i
        vb = a >> np.uint64(VA_BLOCK_SHIFT)
        # A trace's blocks are most often one run of consecutive numbers, so a
        # block's index is its distance from the first, which one load confirms.
        # Searching for it held a random trace's hits to half this rate or less
        # (docs/performance.md, "Hits: a block's index"). Written out here: as
        # an inline helper returning the index and the kept block, it ran no
        # faster than the search (in a scratch copy of this loop).
        r = vb - vb0  # wraps above the length when vb is below the first
        if r < nblk and vblocks[np.int64(r)] == vb:
            rank = np.int64(r)
        else:
            # Past a gap (a heap's blocks and a stack's, say): one block is
            # mostly accessed a while, so the last one searched for is kept.
            if last_rank < 0 or vb != last_block:
                last_block = vb
                last_rank = _rank(vblocks, vb)
            rank = last_rank
        page = rank * bp + np.int64((a & blk_mask) >> np.uint64(shift))
        off = np.int64(a & ps_mask)
        is_write = write[i]
        if proc[i] == 0 and resident[page] != 0:  # the common case: a device hit
            hits += 1
            if is_write and store:
                data[dev_pfn[page] * ps + off] = write_value(k)
            u = page >> unit_shift
            last_use[u] = k
            uses[u] += 1
            i += 1
            continue
        if _miss(sim, state, policy, page, off, is_write, k, proc[i]) == 0:
            break
        i += 1
    ctr[S_DEVICE_HITS] += hits
    ctr[S_DEVICE_ACCESSES] += hits
    ctr[S_ACCESSES] += i - start
    ctr[S_LAST_BLOCK] = np.int64(last_block)
    ctr[S_LAST_RANK] = last_rank
    if last and i == n and ctr[S_NB] > 0 and ctr[S_BATCHES] < sim.batches.shape[0]:
        service_batch(sim, state, policy, base + n)  # an error is left in ctr[S_ERROR]
    return i


@kernel
def expect_writes(sim, addr, write, base):
    """Store, in ``sim.expected``, the byte each write of one trace chunk leaves.

    Arguments: sim: the run's SimState; addr, write: the chunk's columns; base:
    the trace index of its first access.

    Pre: ``sim.expected`` holds what the chunks before this one left (zeros
    before the first: the run's pages start zero-filled). Post: it holds the
    value of the last write to each byte so far, device and CPU writes alike:
    every write access of a run stores write_value() of its index, however it
    was served. Built from the trace alone, after the replay, so the check
    owes nothing to the replay's bookkeeping and costs the replay nothing.
    """
    shift = sim.cfg[C_PAGE_SHIFT]
    ps_mask = (np.uint64(1) << np.uint64(shift)) - np.uint64(1)
    blk_mask = (np.uint64(1) << np.uint64(VA_BLOCK_SHIFT)) - np.uint64(1)
    bp = sim.cfg[C_BLOCK_PAGES]
    ps = np.int64(1) << shift
    last_block = np.uint64(0)
    rank = np.int64(-1)
    for i in range(addr.shape[0]):
        if not write[i]:
            continue
        a = addr[i]
        vb = a >> np.uint64(VA_BLOCK_SHIFT)
        if rank < 0 or vb != last_block:
            last_block = vb
            rank = _rank(sim.vblocks, vb)
        page = rank * bp + np.int64((a & blk_mask) >> np.uint64(shift))
        sim.expected[page * ps + np.int64(a & ps_mask)] = write_value(base + i)


@kernel
def verify_replay(sim, state):
    """Check the run against the machine: residency, and with data every byte.

    Returns (pages whose bytes differ from ``sim.expected`` (expect_writes()), pages whose
    residency differs from the page table). Both are 0 for a correct run. The
    check reads the page tables and frames directly, so it changes nothing.
    """
    shift = sim.cfg[C_PAGE_SHIFT]
    ps = np.int64(1) << shift
    store = sim.cfg[C_STORE] != 0
    bad_data = 0
    bad_res = 0
    for page in range(sim.cfg[C_PAGES]):
        addr = sim.cfg[C_VSTART] + (page << shift)
        kind, pfn, _, _ = translate(state, sim.cfg[C_PID], addr)
        on_device = kind == TR_DEVICE
        if on_device != (sim.resident[page] != 0) or (on_device and sim.dev_pfn[page] != pfn):
            bad_res += 1
        if not store:
            continue
        same = True
        if pfn >= 0 and pfn != state.sys[L.SYS_ZERO_PFN]:
            for j in range(ps):
                if state.data[pfn * ps + j] != sim.expected[page * ps + j]:
                    same = False
                    break
        else:
            for j in range(ps):
                if sim.expected[page * ps + j] != 0:
                    same = False
                    break
        if not same:
            bad_data += 1
    return bad_data, bad_res
