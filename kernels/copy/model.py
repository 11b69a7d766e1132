"""The DMA cost model: what a real engine (AMD PTDMA, a PCIe link) would take.

Each descriptor is charged ``setup_ns + bytes / rate`` (or UVM-Smart's curve,
halved at 2 MiB and above) on the least-loaded of ``channels`` channels; the
busiest channel decides.
"""

import numpy as np
from numba import njit

from .params import (
    BYTES_PER_KIB,
    ENG_CHANNELS,
    ENG_CURVE_B,
    ENG_GBPS,
    ENG_MODEL,
    ENG_SETUP_NS,
    MODEL_UVM_CURVE,
    TWO_OVER_PI,
    UVM_HALF_SPEED_BYTES,
)


@njit(cache=True, nogil=True)
def descriptor_ns(nbytes, setup_ns, gbps, model_kind, curve_b):
    """descriptor_ns() - modelled time of one descriptor of ``nbytes`` bytes.

    Arguments:
        nbytes: bytes the descriptor moves (int, >= 0).
        setup_ns, gbps, model_kind, curve_b: as for :func:`model_time_ns`.

    Returns float64 ns. MODEL_LINEAR: ``setup_ns + nbytes / gbps``.
    MODEL_UVM_CURVE: ``setup_ns + nbytes / speed`` with UVM-Smart's
    ``speed = (2 * gbps / pi) * atan(curve_b * nbytes / 1024)``, halved when
    ``nbytes >= 2 MiB`` (DebashisGanguly/gpgpu-sim_UVMSmart,
    ``gmmu_t::calculate_transfer_time`` in ``src/gpgpu-sim/gpu-sim.cc``, which
    computes the same in float32 and truncates to whole core cycles). A
    descriptor of 0 bytes transfers nothing and costs ``setup_ns`` under
    either model (the curve's speed is 0 there, and 0 / 0 is not a time).
    """
    if nbytes <= 0:
        return setup_ns + 0.0
    s = np.float64(nbytes)
    if model_kind == MODEL_UVM_CURVE:
        # UVM-Smart gmmu_t::calculate_transfer_time: speed = (2a/pi) atan(b * KiB),
        # halved for transfers of 2 MiB or more (its `data_size >= 2*1024*1024`).
        speed = TWO_OVER_PI * gbps * np.arctan(curve_b * (s / BYTES_PER_KIB))
        if nbytes >= UVM_HALF_SPEED_BYTES:
            speed = speed / 2.0
        return setup_ns + s / speed
    return setup_ns + s / gbps


@njit(cache=True, nogil=True)
def model_time_ns(desc_len, ndesc, page_size, channels, setup_ns, gbps, model_kind, curve_b):
    """model_time_ns() - modelled engine time of a batch of descriptors.

    Arguments:
        desc_len: int64 page counts of the descriptors, in submission order.
        ndesc: number of descriptors.
        page_size: bytes per page.
        channels: number of engine channels (values < 1 act as 1).
        setup_ns: fixed cost per descriptor, ns.
        gbps: channel rate in GB/s (= bytes/ns); for MODEL_UVM_CURVE the
            asymptote ``a`` of the curve.
        model_kind: MODEL_LINEAR (0): ``t(s) = setup_ns + s / gbps``;
            MODEL_UVM_CURVE (1): ``t(s) = setup_ns + s / speed(s)`` with
            ``speed(s) = (2 * gbps / pi) * atan(curve_b * s / 1024)`` GB/s,
            halved for ``s >= 2 MiB`` (UVM-Smart's curve; see descriptor_ns).
        curve_b: steepness of the UVM curve, per KiB (ignored for model 0).

    Preconditions:
        ``gbps > 0``; ``curve_b > 0`` for MODEL_UVM_CURVE.

    Postconditions:
        Returns float64 ns: each descriptor, in order, is charged to the
        channel with the least accumulated time (lowest index on ties) and
        the busiest channel's total is returned. 0.0 when ``ndesc <= 0``.
    """
    load = np.zeros(max(channels, 1), dtype=np.float64)
    return model_time_into(load, desc_len, ndesc, page_size, setup_ns, gbps, model_kind, curve_b)


@njit(cache=True, nogil=True)
def model_time_into(load, desc_len, ndesc, page_size, setup_ns, gbps, model_kind, curve_b):
    """model_time_into() - ``model_time_ns`` with the channels' loads in ``load``.

    ``load.shape[0]`` is the number of channels; it is overwritten. Nothing is
    allocated, so compiled code without reference counting can call it.
    """
    if ndesc <= 0:
        return 0.0
    nch = load.shape[0]
    # A descriptor's time depends only on its length, and neighbours mostly share
    # one (every descriptor at chunk 1, the full chunks of long runs), so the last
    # length's time is reused: the same float, without its division (about 0.5 ns
    # a descriptor at chunk 1, where every descriptor is one page).
    last_len = np.int64(-1)
    cost = 0.0
    if nch == 1:
        total = 0.0
        for k in range(ndesc):
            if desc_len[k] != last_len:
                last_len = desc_len[k]
                cost = descriptor_ns(last_len * page_size, setup_ns, gbps, model_kind, curve_b)
            total += cost
        return total
    load[:] = 0.0
    for k in range(ndesc):
        if desc_len[k] != last_len:
            last_len = desc_len[k]
            cost = descriptor_ns(last_len * page_size, setup_ns, gbps, model_kind, curve_b)
        best = 0
        for c in range(1, nch):
            if load[c] < load[best]:
                best = c
        load[best] += cost
    busiest = 0.0
    for c in range(nch):
        busiest = max(busiest, load[c])
    return busiest


@njit(cache=True, nogil=True)
def engine_model_ns(engine, desc_len, ndesc, page_size, load):
    """engine_model_ns() - the modelled time with the parameters of ``engine``;
    ``load`` is scratch of at least ``engine[ENG_CHANNELS]`` entries."""
    channels = max(np.int64(engine[ENG_CHANNELS]), 1)
    kind = np.int64(engine[ENG_MODEL])
    setup_ns = engine[ENG_SETUP_NS]
    return model_time_into(
        load[:channels],
        desc_len,
        ndesc,
        page_size,
        setup_ns,
        engine[ENG_GBPS],
        kind,
        engine[ENG_CURVE_B],
    )
