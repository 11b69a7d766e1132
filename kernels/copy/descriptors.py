"""Copy descriptors: (source, destination) frame pairs coalesced into runs.

A run that is physically contiguous on *both* sides becomes one descriptor of
up to ``chunk_pages`` pages, the way a driver fills a scatter-gather list.
"""

from numba import njit

from ..mm import ix


@njit(cache=True, nogil=True)
def build_descriptors(src_pfns, dst_pfns, n, chunk_pages, desc_src, desc_dst, desc_len):
    """build_descriptors() - coalesce (src, dst) pfn pairs into copy descriptors.

    Arguments:
        src_pfns: int64[>= n] source pfns, in copy order.
        dst_pfns: int64[>= n] destination pfns, paired with ``src_pfns``.
        n: number of pairs to use.
        chunk_pages: largest descriptor, in pages (values < 1 act as 1).
        desc_src: int64[>= n] output, first source pfn of each descriptor.
        desc_dst: int64[>= n] output, first destination pfn of each descriptor.
        desc_len: int64[>= n] output, page count of each descriptor.

    Preconditions:
        The three output arrays hold at least ``n`` entries (n pairs never
        give more than n descriptors). Not checked here.

    Postconditions:
        Returns ``ndesc``. Entries ``[0, ndesc)`` of the outputs describe the
        pairs in order: descriptor k covers pages ``desc_src[k] + j ->
        desc_dst[k] + j`` for ``0 <= j < desc_len[k]``. A new descriptor
        starts whenever either side stops being contiguous
        (``src[i] != src[i-1] + 1`` or ``dst[i] != dst[i-1] + 1``) or the
        current one reaches ``chunk_pages``. ``sum(desc_len) == n``. Returns 0
        when ``n <= 0``.
    """
    if n <= 0:
        return 0
    limit = max(chunk_pages, 1)
    ndesc = 0
    s0 = src_pfns[0]
    d0 = dst_pfns[0]
    run = 1
    for i in range(1, n):
        s = src_pfns[ix(i)]
        d = dst_pfns[ix(i)]
        if extends_run(s0, d0, run, s, d, limit):
            run += 1
            continue
        emit_descriptor(desc_src, desc_dst, desc_len, ndesc, s0, d0, run)
        ndesc += 1
        s0 = s
        d0 = d
        run = 1
    emit_descriptor(desc_src, desc_dst, desc_len, ndesc, s0, d0, run)
    return ndesc + 1


@njit(cache=True, nogil=True)
def extends_run(s0, d0, run, s, d, limit):
    """Whether the pair (``s``, ``d``) continues the descriptor of ``run`` pages
    from (``s0``, ``d0``) without passing ``limit`` pages."""
    return run < limit and s == s0 + run and d == d0 + run


@njit(cache=True, nogil=True)
def emit_descriptor(desc_src, desc_dst, desc_len, k, src_pfn, dst_pfn, npages):
    """Write descriptor ``k``: ``npages`` pages from ``src_pfn`` to ``dst_pfn``."""
    desc_src[ix(k)] = src_pfn
    desc_dst[ix(k)] = dst_pfn
    desc_len[ix(k)] = npages


@njit(cache=True, nogil=True)
def stitch_descriptors(desc_src, desc_dst, desc_len, seg_first, seg_count, chunk_pages):
    """stitch_descriptors() - join per-segment descriptor lists into one, in place.

    Arguments:
        desc_src, desc_dst, desc_len: int64 descriptor arrays holding the
            segments.
        seg_first: int64[nseg], where each segment's list starts; ``seg_first[0]``
            is 0 and each starts at or after the end of the one before.
        seg_count: int64[nseg], each segment's descriptor count (>= 1).
        chunk_pages: largest descriptor, in pages (values < 1 act as 1).

    Preconditions:
        Segment ``t`` is :func:`build_descriptors` of the ``t``-th slice of a
        batch's pairs (the parallel setup sweep builds one a thread), and no
        segment's list is longer than its slice.

    Postconditions:
        Returns ``ndesc``; ``desc_*[0:ndesc]`` is what build_descriptors gives
        over the whole batch. Only where a contiguous run crosses a segment edge
        does that differ from the segments laid end to end: the run continues
        the descriptor before the edge and is re-chunked from there, until a
        break starts a new descriptor in both. Each segment's descriptors are
        read before anything is written over them: a descriptor of the joined
        list never lies after the one it was read from.
    """
    limit = max(chunk_pages, 1)
    nd = seg_count[0] - 1  # the last descriptor is held: the next segment may extend it
    s0 = desc_src[ix(nd)]
    d0 = desc_dst[ix(nd)]
    run = desc_len[ix(nd)]
    for t in range(1, seg_first.shape[0]):
        for k in range(seg_first[t], seg_first[t] + seg_count[t]):
            s = desc_src[ix(k)]
            d = desc_dst[ix(k)]
            n = desc_len[ix(k)]
            if extends_run(s0, d0, run, s, d, limit):
                take = min(n, limit - run)
                run += take
                s += take
                d += take
                n -= take
            if n > 0:  # at most chunk_pages left, so it makes exactly one descriptor
                emit_descriptor(desc_src, desc_dst, desc_len, nd, s0, d0, run)
                nd += 1
                s0 = s
                d0 = d
                run = n
    emit_descriptor(desc_src, desc_dst, desc_len, nd, s0, d0, run)
    return nd + 1
