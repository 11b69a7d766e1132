"""Name numba's compiled code for ``perf``: a perf map of every loaded function.

``perf report`` shows JIT code as bare addresses unless the process leaves a
``/tmp/perf-<pid>.map`` naming them. numba writes none, so call
:func:`write_perf_map` once the code to profile has loaded (run it once
first), then loop the work while ``perf record`` watches::

    perf record -F 1999 -o /tmp/perf.data python my_loop.py
    perf report -i /tmp/perf.data --no-children --sort symbol

where ``my_loop.py`` runs the workload once, calls ``write_perf_map()``, then
repeats the workload for some seconds. A function loaded from numba's cache
keeps its definitions in the library's shared module (which a migengine entry
point parses only on demand, so it is parsed here), one compiled in this
process in its final module; both are read. Sizes are the gaps to the next
symbol, so an inlined callee is counted in its caller.
"""

from __future__ import annotations

import gc
import os
from pathlib import Path

from numba.core.dispatcher import Dispatcher


def loaded_symbols() -> dict[int, str]:
    """Address -> mangled name of every function numba has compiled or loaded."""
    symbols: dict[int, str] = {}
    for obj in gc.get_objects():
        # type(), not isinstance(): the collector also lists weak proxies, and
        # isinstance() asks a dead one for its class, which raises ReferenceError.
        if not issubclass(type(obj), Dispatcher):
            continue
        for cres in obj.overloads.values():
            lib = cres.library
            if getattr(lib, "_linking_bitcode", None) is not None:
                lib._get_module_for_linking()  # a cached entry point's IR, parsed on demand
            module = getattr(lib, "_shared_module", None) or getattr(lib, "_final_module", None)
            if module is None:
                continue
            engine = lib._codegen._engine
            for fn in module.functions:
                if fn.is_declaration:
                    continue
                address = engine.get_function_address(fn.name)
                if address:
                    symbols[address] = fn.name
    return symbols


def write_perf_map(path: str | os.PathLike[str] | None = None) -> Path:
    """Write the perf map of this process (``/tmp/perf-<pid>.map`` by default)."""
    out = Path(path) if path is not None else Path(f"/tmp/perf-{os.getpid()}.map")
    symbols = loaded_symbols()
    addresses = sorted(symbols)
    with out.open("w") as f:
        for i, address in enumerate(addresses):
            gap = addresses[i + 1] - address if i + 1 < len(addresses) else 4096
            f.write(f"{address:x} {min(gap, 1 << 20):x} {symbols[address]}\n")
    return out
