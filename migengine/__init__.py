"""migengine - a numba-accelerated, kernel-faithful simulator of Linux migrate_vma().

The public API: ``Machine``, ``Process``, ``Vma``, ``PageInfo``, ``Pte``,
``MigrateOps``, ``migrate_vma``, ``CopyEngine``, the ``VM_*`` flags, the
``MIGRATE_PFN_*`` constants (hmm-v25 values) and the exceptions. The compiled
level lives in ``migengine.kernels``; ``migengine.bench`` is the built-in
benchmark behind ``migengine bench``. Nothing compiles at import time.
"""

from migengine._ops import MigrateOps
from migengine._version import __version__ as __version__
from migengine.copyengine import CopyEngine
from migengine.device import DeviceSpec
from migengine.errors import (
    InvariantError,
    MigengineError,
    MigrateError,
    OutOfMemory,
    SegFault,
    SigBus,
)
from migengine.kernels.layout import (
    HMM_DMIRROR_PROT_DEV_COHERENT_LOCAL,
    HMM_DMIRROR_PROT_DEV_COHERENT_REMOTE,
    HMM_DMIRROR_PROT_DEV_PRIVATE_LOCAL,
    HMM_DMIRROR_PROT_DEV_PRIVATE_REMOTE,
    HMM_DMIRROR_PROT_ERROR,
    HMM_DMIRROR_PROT_NONE,
    HMM_DMIRROR_PROT_PMD,
    HMM_DMIRROR_PROT_PUD,
    HMM_DMIRROR_PROT_READ,
    HMM_DMIRROR_PROT_WRITE,
    HMM_DMIRROR_PROT_ZERO,
    HMM_V25_LAYOUT,
    SEED_LAYOUT,
    VM_DAX,
    VM_DONTEXPAND,
    VM_HUGETLB,
    VM_IO,
    VM_LOCKED,
    VM_MIXEDMAP,
    VM_PFNMAP,
    VM_SPECIAL,
    VM_UFFD_MISSING,
    Layout,
)
from migengine.machine import Machine, PageInfo
from migengine.migrate import InvalidDstWarning, migrate_vma
from migengine.migrate_device import (
    migrate_device_finalize,
    migrate_device_pages,
    migrate_device_pfns,
    migrate_device_range,
)
from migengine.migrate_split import (
    MIGRATE_VMA_SELECT_COMPOUND,
    MIGRATE_VMA_SELECT_DEVICE_COHERENT,
    MIGRATE_VMA_SELECT_DEVICE_PRIVATE,
    MIGRATE_VMA_SELECT_SYSTEM,
    MigrateVma,
    migrate_vma_finalize,
    migrate_vma_pages,
    migrate_vma_setup,
)
from migengine.process import Process, Pte, Vma
from migengine.sim import SimConfig, SimResult, simulate
from migengine.sweeps import sweep
from migengine.trace import Trace

MIGRATE_PFN_VALID = HMM_V25_LAYOUT.VALID
MIGRATE_PFN_MIGRATE = HMM_V25_LAYOUT.MIGRATE
MIGRATE_PFN_LOCKED = HMM_V25_LAYOUT.LOCKED
MIGRATE_PFN_WRITE = HMM_V25_LAYOUT.WRITE
MIGRATE_PFN_DEVICE = HMM_V25_LAYOUT.DEVICE
MIGRATE_PFN_ERROR = HMM_V25_LAYOUT.ERROR
MIGRATE_PFN_SHIFT = HMM_V25_LAYOUT.SHIFT


__all__ = [
    "CopyEngine",
    "HMM_DMIRROR_PROT_ERROR",
    "HMM_DMIRROR_PROT_NONE",
    "HMM_DMIRROR_PROT_READ",
    "HMM_DMIRROR_PROT_WRITE",
    "HMM_DMIRROR_PROT_PMD",
    "HMM_DMIRROR_PROT_PUD",
    "HMM_DMIRROR_PROT_ZERO",
    "HMM_DMIRROR_PROT_DEV_PRIVATE_LOCAL",
    "HMM_DMIRROR_PROT_DEV_PRIVATE_REMOTE",
    "HMM_DMIRROR_PROT_DEV_COHERENT_LOCAL",
    "HMM_DMIRROR_PROT_DEV_COHERENT_REMOTE",
    "HMM_V25_LAYOUT",
    "InvalidDstWarning",
    "InvariantError",
    "Layout",
    "DeviceSpec",
    "MIGRATE_VMA_SELECT_COMPOUND",
    "MIGRATE_VMA_SELECT_DEVICE_COHERENT",
    "MIGRATE_VMA_SELECT_DEVICE_PRIVATE",
    "MIGRATE_VMA_SELECT_SYSTEM",
    "Machine",
    "MigrateVma",
    "migrate_device_finalize",
    "migrate_device_pages",
    "migrate_device_pfns",
    "migrate_device_range",
    "MigengineError",
    "MigrateError",
    "MigrateOps",
    "MIGRATE_PFN_DEVICE",
    "MIGRATE_PFN_ERROR",
    "MIGRATE_PFN_LOCKED",
    "MIGRATE_PFN_MIGRATE",
    "MIGRATE_PFN_SHIFT",
    "MIGRATE_PFN_VALID",
    "MIGRATE_PFN_WRITE",
    "OutOfMemory",
    "PageInfo",
    "Process",
    "Pte",
    "SEED_LAYOUT",
    "SegFault",
    "SigBus",
    "SimConfig",
    "SimResult",
    "Trace",
    "VM_DONTEXPAND",
    "VM_HUGETLB",
    "VM_IO",
    "VM_LOCKED",
    "VM_MIXEDMAP",
    "VM_PFNMAP",
    "VM_SPECIAL",
    "VM_DAX",
    "VM_UFFD_MISSING",
    "Vma",
    "simulate",
    "sweep",
    "migrate_vma",
    "migrate_vma_finalize",
    "migrate_vma_pages",
    "migrate_vma_setup",
]
