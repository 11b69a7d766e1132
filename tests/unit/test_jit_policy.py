"""kernels/_jit.py: machine code only where it runs.

Internal kernels, and entry points as compiled code calls them, are link-only:
their library holds LLVM IR for the callers that link it and no machine code.
These tests run in child processes with a cache folder of their own, so that
the second child loads the link-only entries the first one wrote (numba's own
loader crashed on them: it looks for the kernel's environment in a module the
engine never got).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

CHILD = textwrap.dedent(
    """
    import json, sys
    from numba import njit
    import migengine as me
    from migengine import kernels
    from migengine.kernels import _jit, mm

    m = me.Machine(64)
    p = m.new_process()
    vma = p.mmap(4)
    ns = {"njit": njit, "kernels": kernels}
    # A new user function in each child: it compiles, and links find_vma's twin.
    exec(f"@njit\\ndef user_{sys.argv[1]}(st, pid, addr):\\n"
         "    return kernels.find_vma(st, pid, addr)", ns)
    user = ns[f"user_{sys.argv[1]}"]
    found = [user(m.state, p.pid, vma.start), user(m.state, p.pid, vma.end)]
    twin = kernels.find_vma._twin()
    out = {
        "found": found,
        "want": [vma.index, -1],
        "entry_compiled_before_python_call": len(kernels.find_vma.signatures),
        "twin_link_only": all(
            isinstance(c.library, _jit._LinkOnlyLibrary) for c in twin.overloads.values()
        ),
        "twin_cache_hits": sum(twin._cache_hits.values()),
        "python_call": kernels.find_vma(m.state, p.pid, vma.start),
    }
    out["entry_compiled_after_python_call"] = len(kernels.find_vma.signatures)
    try:
        mm.pmd_of_first_slot(m.state, 0)
        out["internal_from_python"] = "called"
    except TypeError as e:
        out["internal_from_python"] = str(e)
    print(json.dumps(out))
    """
)


def _child(variant: str, cache: Path) -> dict:
    env = dict(os.environ, NUMBA_CACHE_DIR=str(cache))
    run = subprocess.run(
        [sys.executable, "-c", CHILD, variant],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=env,
        timeout=600,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    return json.loads(run.stdout.strip().splitlines()[-1])


def test_compiled_callers_link_the_ir_and_a_new_process_loads_it(tmp_path):
    first = _child("a", tmp_path)
    second = _child("b", tmp_path)
    for out in (first, second):
        assert out["found"] == out["want"]
        # Compiled code calling an entry point compiled its link-only twin, not the entry.
        assert out["entry_compiled_before_python_call"] == 0
        assert out["twin_link_only"]
        # Python's call compiles the entry itself, with its machine code.
        assert out["python_call"] == out["want"][0]
        assert out["entry_compiled_after_python_call"] == 1
        assert "internal to migengine.kernels" in out["internal_from_python"]
    assert first["twin_cache_hits"] == 0
    assert second["twin_cache_hits"] == 1  # loaded from the first child's cache entry
