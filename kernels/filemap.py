"""The page cache's side of a file fault (mm/filemap.c find_get_page(),
filemap_fault()'s read-in), shared by the shared and the private file faults
of kernels.memory.
"""

from . import layout as L
from . import mm
from ._jit import internal


@internal
def find_or_read_page(st, v, addr):
    """find_get_page() of the page-cache page at ``addr``'s file offset in VMA
    ``v``, or, when the file has none there, a new one read in (zeroed: the
    model's files start empty), added to the page cache, whose reference the
    allocation's is, and to the faulting CPU's LRU-add batch.

    Args: st, v (a live file or shmem VMA), addr (inside it).
    Returns the pfn, or -1 when no frame is free (nothing changed)."""
    ps = st.sys[L.SYS_PAGE_SIZE]
    pc = st.vma["pcache_base"][v] + st.vma["pgoff"][v] + (addr - st.vma["start"][v]) // ps
    pfn = st.pcache[pc]
    if pfn < 0:
        pfn = mm.alloc_frame(st, L.RAM_POOL)
        if pfn < 0:
            return -1
        mm.zero_frame(st, pfn)
        st.page["mapping"][pfn] = L.MAPPING_FILE
        st.page["index"][pfn] = pc
        st.pcache[pc] = pfn
        mm.lru_cache_add(st, L.CPU_USER, pfn)
    return pfn
