"""kernels/_jit.py: machine code only where it runs.

Internal kernels are link-only: their library holds LLVM IR for the callers
that link it and no machine code. A compiled caller of an entry point links
the entry when it is compiled or cached, and otherwise the entry's link-only
twin. The children share a cache folder, so each one sees what the one before
wrote: the twin (numba's own loader crashed on a link-only entry: it looks for
the kernel's environment in a module the engine never got), then the entry,
which a Python call loads without parsing the IR its compiled callers link.
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
    early = {}
    if sys.argv[2] == "load":
        # Python's call first: the entry loads from the cache, its linking IR unparsed.
        early["python_call"] = kernels.find_vma(m.state, p.pid, vma.start)
        lib = next(iter(kernels.find_vma.overloads.values())).library
        early["entry_library"] = type(lib).__name__
        early["ir_parsed_by_load"] = lib._shared_module is not None
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
        "entry_before_python_call": len(kernels.find_vma.signatures),
        "twin": len(twin.signatures),
        "twin_link_only": all(
            isinstance(c.library, _jit._LinkOnlyLibrary) for c in twin.overloads.values()
        ),
        "twin_cache_hits": sum(twin._cache_hits.values()),
        **early,
    }
    if sys.argv[2] == "load":
        out["ir_parsed_by_link"] = lib._shared_module is not None
    if sys.argv[2] == "call":
        out["python_call"] = kernels.find_vma(m.state, p.pid, vma.start)
        out["entry_after_python_call"] = len(kernels.find_vma.signatures)
    try:
        mm.pmd_of_first_slot(m.state, 0)
        out["internal_from_python"] = "called"
    except TypeError as e:
        out["internal_from_python"] = str(e)
    print(json.dumps(out))
    """
)


def _child(variant: str, cache: Path, mode: str = "-") -> dict:
    env = dict(os.environ, NUMBA_CACHE_DIR=str(cache))
    run = subprocess.run(
        [sys.executable, "-c", CHILD, variant, mode],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=env,
        timeout=600,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    return json.loads(run.stdout.strip().splitlines()[-1])


def test_compiled_callers_link_the_entry_or_its_ir_and_a_new_process_loads_it(tmp_path):
    first = _child("a", tmp_path)
    second = _child("b", tmp_path, "call")
    third = _child("c", tmp_path)
    fourth = _child("d", tmp_path, "load")
    for out in (first, second, third, fourth):
        assert out["found"] == out["want"]
        assert out["twin_link_only"]
        assert "internal to migengine.kernels" in out["internal_from_python"]
    # No entry compiled or cached: compiled code compiles the link-only twin.
    assert (first["entry_before_python_call"], first["twin"]) == (0, 1)
    assert first["twin_cache_hits"] == 0
    # A new process loads the twin from the first one's cache entry; Python's
    # call then compiles the entry itself, with its machine code.
    assert (second["entry_before_python_call"], second["twin"]) == (0, 1)
    assert second["twin_cache_hits"] == 1
    assert second["python_call"] == second["want"][0]
    assert second["entry_after_python_call"] == 1
    # The entry is in the cache now: compiled code links it, no twin.
    assert (third["entry_before_python_call"], third["twin"]) == (1, 0)
    # A Python call loads the cached entry's machine code without parsing the IR
    # that compiled callers link (_EntryLibrary); the first such caller parses it.
    assert fourth["python_call"] == fourth["want"][0]
    assert fourth["entry_library"] == "_EntryLibrary"
    assert not fourth["ir_parsed_by_load"]
    assert fourth["ir_parsed_by_link"]
    assert (fourth["entry_before_python_call"], fourth["twin"]) == (1, 0)
