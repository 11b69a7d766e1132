"""Facts about the machine and software a benchmark ran with."""

from __future__ import annotations

import os
import platform
from typing import Any

import numba
import numpy as np

from migengine._numba_env import threading_info
from migengine._version import __version__

__all__ = ["run_metadata", "threading_info"]


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def run_metadata() -> dict[str, Any]:
    """Facts about the machine and software the results were measured with."""
    return {
        "machine": {
            "cpu": _cpu_model(),
            "arch": platform.machine(),
            "cpus": os.cpu_count(),
            "system": platform.platform(),
            "python": platform.python_version(),
        },
        "numba": numba.__version__,
        "numpy": np.__version__,
        "migengine": __version__,
        **threading_info(),
    }
