"""Swap slots (mm/swapfile.c): get_swap_page() and swap_free().

``state.swap_map[e]`` counts the PTEs that hold swap entry ``e`` (the kernel's
swap_map, one count per slot). A slot nobody has used yet holds 0, and the
slots from ``sys[SYS_SWAP_FRESH]`` on have never been used, so a fresh machine's
swap map is zeros its pages are never touched for. A slot freed since holds
``-(next + 2)``: a link to the next freed slot (-1 ends the list, headed by
``sys[SYS_SWAP_HEAD]``), as the kernel's free lists link through the free
objects themselves. Freed slots go first, last freed first, then fresh ones in
order: the order of a stack of every slot, lowest on top.
"""

import numpy as np

from . import layout as L
from ._jit import internal


@internal(inline=True)
def swap_users(st, entry):
    """How many PTEs hold swap entry ``entry`` (0 for a free slot)."""
    return max(np.int64(st.swap_map[entry]), 0)


@internal(inline=True)
def get_swap_slot(st):
    """get_swap_page(): take a free slot with no users yet; -1 when swap is full."""
    if st.sys[L.SYS_SWAP_FREE] == 0:
        return np.int64(-1)
    st.sys[L.SYS_SWAP_FREE] -= 1
    entry = st.sys[L.SYS_SWAP_HEAD]
    if entry >= 0:
        st.sys[L.SYS_SWAP_HEAD] = -np.int64(st.swap_map[entry]) - 2
        st.swap_map[entry] = 0
        return entry
    entry = st.sys[L.SYS_SWAP_FRESH]
    st.sys[L.SYS_SWAP_FRESH] += 1
    return entry


@internal(inline=True)
def swap_free(st, entry):
    """swap_free(): drop one user of ``entry``; the last one frees the slot."""
    st.swap_map[entry] -= 1
    if st.swap_map[entry] == 0:
        st.swap_map[entry] = -(st.sys[L.SYS_SWAP_HEAD] + 2)
        st.sys[L.SYS_SWAP_HEAD] = entry
        st.sys[L.SYS_SWAP_FREE] += 1


@internal
def check_swap_free(st):
    """The freed slots' list and the fresh slots account for every free slot:
    True when they do (the list ends, has no users' counts, and its length plus
    the fresh slots is ``sys[SYS_SWAP_FREE]``). The fresh slots themselves are
    not read (kernels.check finds any entry naming one), so the check costs
    the slots used, not the swap file's size."""
    nr = st.swap_map.shape[0]
    fresh = st.sys[L.SYS_SWAP_FRESH]
    if fresh < 0 or fresh > nr:
        return False
    freed = 0
    e = st.sys[L.SYS_SWAP_HEAD]
    while e >= 0:
        if e >= fresh or st.swap_map[e] >= 0 or freed >= fresh:
            return False  # past the used slots, a slot with users, or a cycle
        freed += 1
        e = -np.int64(st.swap_map[e]) - 2
    return e == -1 and freed + nr - fresh == st.sys[L.SYS_SWAP_FREE]
