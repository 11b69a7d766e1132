"""``me.Trace``: a memory-access trace, one access per row, read from files or made up.

A trace is three equal-length numpy columns: ``addr`` (uint64 virtual
addresses), ``write`` (bool) and ``proc`` (int8: 0 = the device, -1 = a CPU),
10 bytes per access. Traces come from

- ``Trace.read(path)`` / ``Trace.iter_read(path, chunk_accesses)``: a CSV with
  an ``addr,op[,proc]`` header, an ``.npz`` (what ``tr.save`` writes) or the text
  ``valgrind --tool=lackey --trace-mem=yes`` prints, each also gzipped. The
  format is recognised by content, never by the file's name;
- ``Trace.synthetic(pattern, pages=, accesses=, seed=0, **params)``: the seeded
  generators of :mod:`migengine.trace_synthetic`;
- ``Trace(addr, write, proc=None)``: arrays you already have.

Text is parsed in blocks of a few MiB with numpy (lackey fully vectorized, CSV
one Python step per row), so a trace larger than memory streams through
``iter_read``; an error names the file and the exact 1-based line (the CSV
header is line 1).
"""

from __future__ import annotations

import gzip
import io
import operator
import os
import zipfile
from collections.abc import Iterable, Iterator
from typing import Any

import numpy as np

from migengine._validate import as_count
from migengine.trace_synthetic import generate

PathLike = str | os.PathLike[str]

_BLOCK = 1 << 21  # bytes of text parsed at once
_OPS = {"r": False, "w": True}
_PROCS = {"gpu": 0, "0": 0, "cpu": -1, "-1": -1}
_HEX = np.full(256, 255, dtype=np.uint8)
for _i, _c in enumerate(b"0123456789abcdef"):
    _HEX[_c] = _HEX[ord(chr(_c).upper())] = _i
_NOT_DIGIT = np.ones(256, dtype=np.int32)
_NOT_DIGIT[ord("0") : ord("9") + 1] = 0


def _as_addr(addr: Any) -> np.ndarray:
    """uint64 addresses; a list mixing large and negative ints, which numpy turns
    into floats, is checked as Python ints, so no value is silently rounded."""
    a = np.asarray(addr)
    if a.ndim != 1:
        raise ValueError(f"addr must be 1-D, got {a.ndim}-D")
    if a.dtype.kind == "u":
        return a.astype(np.uint64, copy=False)
    if a.dtype.kind == "i":
        if a.size and a.min() < 0:
            raise ValueError(f"addr holds a negative value {a.min()}")
        return a.astype(np.uint64)
    if a.size == 0 and a.dtype.kind == "f":
        return np.zeros(0, dtype=np.uint64)
    if a.dtype.kind == "O" or (a.dtype.kind == "f" and not isinstance(addr, np.ndarray)):
        try:
            values = [operator.index(x) for x in (a.tolist() if a.dtype.kind == "O" else addr)]
        except TypeError:
            raise ValueError("addr must hold integers") from None
        if min(values) < 0 or max(values) >= 2**64:
            raise ValueError("addr holds a value outside 0 .. 2**64 - 1")
        return np.array(values, dtype=np.uint64)
    raise ValueError(f"addr must hold integers, not {a.dtype}")


def _as_flags(values: Any, name: str, allowed: tuple[int, ...], dtype: type) -> np.ndarray:
    a = np.asarray(values)
    if a.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got {a.ndim}-D")
    if a.size == 0:
        return np.zeros(0, dtype=dtype)
    if a.dtype.kind not in "biu" or not np.isin(a, allowed).all():
        raise ValueError(f"{name} may only hold {allowed}")
    return a.astype(dtype, copy=False)


class Trace:
    """One memory access per row: ``addr`` (uint64), ``write`` (bool) and ``proc``
    (int8, 0 = the device, -1 = a CPU; all 0 when not given), 10 bytes an access.

    The constructor checks its arrays (1-D, equal lengths, addresses 0 .. 2**64 - 1,
    writes bool or 0/1, procs 0 or -1: ValueError otherwise) and keeps them
    without a copy when they already have the right dtype.
    """

    __slots__ = ("addr", "write", "proc")
    addr: np.ndarray
    write: np.ndarray
    proc: np.ndarray

    def __init__(self, addr: Any, write: Any, proc: Any = None) -> None:
        a = _as_addr(addr)
        w = _as_flags(write, "write", (0, 1), np.bool_)
        p = np.zeros(len(a), np.int8) if proc is None else _as_flags(proc, "proc", (0, -1), np.int8)
        if not len(a) == len(w) == len(p):
            raise ValueError(f"addr, write and proc lengths differ: {len(a)}, {len(w)}, {len(p)}")
        self.addr, self.write, self.proc = a, w, p

    @classmethod
    def _raw(cls, addr: np.ndarray, write: np.ndarray, proc: np.ndarray) -> Trace:
        tr = object.__new__(cls)
        tr.addr, tr.write, tr.proc = addr, write, proc
        return tr

    # --- making traces -------------------------------------------------------------

    @classmethod
    def synthetic(
        cls, pattern: str, pages: int, accesses: int, seed: int = 0, **params: Any
    ) -> Trace:
        """``accesses`` accesses of ``pattern`` over ``pages`` pages from ``base``.

        Patterns: ``sequential``, ``strided``, ``random``, ``hotspot`` and the NVIDIA
        oversubscription benchmark's ``streaming``, ``block_streaming`` and
        ``random_warp``; :mod:`migengine.trace_synthetic` documents each one and its
        parameters. Unknown pattern: ValueError; unknown parameter: TypeError.
        """
        return cls._raw(*generate(pattern, pages, accesses, seed, params))

    @classmethod
    def concat(cls, traces: Iterable[Trace]) -> Trace:
        """One trace of ``traces`` one after the other."""
        parts = list(traces)
        if len(parts) == 1:
            return parts[0]
        cols = [
            np.concatenate([getattr(t, c) for t in parts]) if parts else np.zeros(0, d)
            for c, d in (("addr", np.uint64), ("write", np.bool_), ("proc", np.int8))
        ]
        return cls._raw(*cols)

    @classmethod
    def read(cls, path: PathLike) -> Trace:
        """The whole trace in ``path``: CSV, ``.npz`` or valgrind lackey text, each
        possibly gzipped, recognised by content. ValueError names the file (and the
        1-based line) of anything malformed or of an unknown format."""
        return cls.concat(_parts(path))

    @classmethod
    def iter_read(cls, path: PathLike, chunk_accesses: int = 1_000_000) -> Iterator[Trace]:
        """The trace in ``path`` as consecutive traces of ``chunk_accesses`` accesses
        (the last one shorter; none for an empty trace), for files too large to hold.
        Text is read a block at a time; an ``.npz`` is loaded and sliced."""
        n = as_count(chunk_accesses, "chunk_accesses", 1)
        held: list[Trace] = []
        have = 0
        for part in _parts(path):
            while len(part):
                take = min(n - have, len(part))
                held.append(part[:take])
                part = part[take:]
                have += take
                if have == n:
                    yield cls.concat(held)
                    held, have = [], 0
        if have:
            yield cls.concat(held)

    def save(self, path: PathLike, compress: bool = True) -> None:
        """Write the trace to ``path`` (exactly that name) as an ``.npz`` of the arrays
        ``addr``, ``write`` and ``proc``, which ``Trace.read`` takes back."""
        save = np.savez_compressed if compress else np.savez
        with open(path, "wb") as f:
            save(f, addr=self.addr, write=self.write, proc=self.proc)

    # --- looking at a trace ---------------------------------------------------------

    def __len__(self) -> int:
        return len(self.addr)

    def __getitem__(self, key: Any) -> Any:
        """``tr[i]``: the access ``(addr, write, proc)``; a slice, an index array or a
        boolean mask: a Trace (a slice shares the arrays)."""
        if isinstance(key, (int, np.integer)):
            return int(self.addr[key]), bool(self.write[key]), int(self.proc[key])
        return Trace._raw(self.addr[key], self.write[key], self.proc[key])

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Trace):
            return NotImplemented
        return all(np.array_equal(getattr(self, c), getattr(other, c)) for c in self.__slots__)

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        n = len(self)
        if n == 0:
            return "Trace(0 accesses)"
        return (
            f"Trace({n} accesses, {int(self.write.sum())} writes, "
            f"{int((self.proc != 0).sum())} by a CPU, "
            f"addr {int(self.addr.min()):#x} .. {int(self.addr.max()):#x})"
        )

    def page_numbers(self, page_size: int = 4096) -> np.ndarray:
        """Each access's page number, ``addr // page_size`` (uint64)."""
        ps = as_count(page_size, "page_size", 1)
        return self.addr // np.uint64(ps)

    def footprint_pages(self, page_size: int = 4096) -> np.ndarray:
        """The pages the trace touches, sorted page numbers (uint64)."""
        return np.unique(self.page_numbers(page_size))

    def pages(self, page_size: int = 4096) -> int:
        """How many distinct pages of ``page_size`` bytes the trace touches."""
        return len(self.footprint_pages(page_size))


# --- reading files ------------------------------------------------------------------


def _fail(path: PathLike, line: int | None, why: str) -> ValueError:
    where = f"{os.fspath(path)}: line {line}" if line else os.fspath(path)
    return ValueError(f"{where}: {why}")


def _parts(path: PathLike) -> Iterator[Trace]:
    """The trace in ``path`` as traces of any length, one per parsed block."""
    with open(path, "rb") as raw:
        gz = raw.read(2) == b"\x1f\x8b"
    with gzip.open(path, "rb") if gz else open(path, "rb") as f:
        head = _read(f, path)
        if not head:
            raise _fail(path, None, "empty file, not a trace")
        if head.startswith(b"PK"):
            yield from _npz(path, io.BytesIO(head + _read(f, path, -1)) if gz else path)
            return
        while b"\n" not in head and len(head) < 1 << 20 and (more := _read(f, path)):
            head += more  # the whole first line, to recognise the format
        first = head.split(b"\n", 1)[0].decode("utf-8", "replace").lstrip("\ufeff").strip()
        names = [c.strip().lower() for c in first.split(",")]
        if "addr" in names and "op" in names:
            yield from _csv(path, names, _blocks(f, head, path))
            return
        start = head.lstrip(b"\r\n")[:3]
        if start[:2] in (b"==", b"I ") or start in (b" L ", b" S ", b" M "):
            yield from _lackey(path, _blocks(f, head, path))
            return
    raise _fail(
        path, None, "unknown trace format: not a CSV with an addr,op header, an .npz or lackey text"
    )


def _read(f: io.BufferedIOBase, path: PathLike, size: int | None = None) -> bytes:
    """``f.read``, a broken gzip stream (bad CRC, cut short) as a ValueError."""
    try:
        return f.read(_BLOCK if size is None else size)
    except (OSError, EOFError) as e:
        raise _fail(path, None, f"unreadable gzip data ({e})") from None


def _blocks(f: io.BufferedIOBase, pending: bytes, path: PathLike) -> Iterator[bytes]:
    """Blocks of whole lines, each ending with a newline (one is added at the end)."""
    while True:
        data = _read(f, path)
        if not data:
            if pending:
                yield pending if pending.endswith(b"\n") else pending + b"\n"
            return
        buf = pending + data
        cut = buf.rfind(b"\n") + 1
        if cut:
            yield buf[:cut]
        pending = buf[cut:]


def _npz(path: PathLike, source: Any) -> Iterator[Trace]:
    try:
        with np.load(source, allow_pickle=False) as z:
            cols = {k: z[k] for k in ("addr", "write", "proc") if k in z.files}
    except (OSError, EOFError, ValueError, zipfile.BadZipFile) as e:
        raise _fail(path, None, f"unreadable .npz ({e})") from None
    if "addr" not in cols or "write" not in cols:
        raise _fail(path, None, f"an .npz trace needs the arrays addr and write, has {list(cols)}")
    try:
        tr = Trace(**cols)
    except ValueError as e:
        raise _fail(path, None, str(e)) from None
    yield tr


def _int(s: str) -> int:
    s = s.strip()
    return int(s[2:], 16) if s[:2] in ("0x", "0X") else int(s, 10)


def _csv(path: PathLike, names: list[str], blocks: Iterator[bytes]) -> Iterator[Trace]:
    for col in ("addr", "op", "proc"):
        if names.count(col) > 1:
            raise _fail(path, 1, f"column {col!r} appears twice in the header")
    ai, oi, ncol = names.index("addr"), names.index("op"), len(names)
    pi = names.index("proc") if "proc" in names else None
    line0 = 1  # lines before the block; the header is line 1
    for k, block in enumerate(blocks):
        if k == 0:
            block = block[block.index(b"\n") + 1 :]
        text = block.decode("utf-8", "replace")
        try:
            cols = _csv_columns(block, text, ncol)
            n = len(cols[ai])
            addr = np.fromiter(map(_int, cols[ai]), np.uint64, n)
            write = np.fromiter((_OPS[x.strip().lower()] for x in cols[oi]), np.bool_, n)
            proc = np.zeros(n, np.int8)
            if pi is not None:
                proc = np.fromiter((_PROCS[x.strip().lower()] for x in cols[pi]), np.int8, n)
        except (ValueError, KeyError, OverflowError):
            _csv_error(path, text.split("\n")[:-1], line0, ai, oi, pi, ncol)
            raise
        yield Trace._raw(addr, write, proc)
        line0 += text.count("\n")


def _csv_columns(block: bytes, text: str, ncol: int) -> list[Any]:
    """The fields of a block's rows, column by column. When every line holds
    ``ncol - 1`` commas (checked with numpy) one ``split`` makes them, without a
    list per row; otherwise blank lines are dropped row by row (ValueError when
    a row's field count is wrong)."""
    a = np.frombuffer(block, np.uint8)
    commas = np.searchsorted(np.flatnonzero(a == 44), np.flatnonzero(a == 10))
    if (np.diff(commas, prepend=0) == ncol - 1).all():
        flat = text[:-1].replace("\n", ",").split(",") if text else []
        return [flat[c::ncol] for c in range(ncol)]
    rows = [r.split(",") for r in text.split("\n") if r.strip()]
    if any(len(r) != ncol for r in rows):
        raise ValueError("field count")
    return [[r[c] for r in rows] for c in range(ncol)]


def _csv_error(path: PathLike, lines: list[str], line0: int, *cols: Any) -> None:
    """Raise the error of the first bad line among ``lines`` (line ``line0 + 1`` on)."""
    ai, oi, pi, ncol = cols
    for i, line in enumerate(lines, line0 + 1):
        if not line.strip():
            continue
        r = line.split(",")
        if len(r) != ncol:
            raise _fail(path, i, f"{len(r)} fields where the header names {ncol}: {line!r}")
        try:
            if not 0 <= _int(r[ai]) < 2**64:
                raise ValueError
        except ValueError:
            raise _fail(path, i, f"bad address {r[ai].strip()!r}") from None
        if r[oi].strip().lower() not in _OPS:
            raise _fail(path, i, f"unknown op {r[oi].strip()!r} (expected r or w)")
        if pi is not None and r[pi].strip().lower() not in _PROCS:
            raise _fail(path, i, f"unknown proc {r[pi].strip()!r} (expected gpu, 0, cpu or -1)")


def _lackey(path: PathLike, blocks: Iterator[bytes]) -> Iterator[Trace]:
    """Parse valgrind lackey text: `` L a,n`` reads, `` S``/`` M`` writes (a modify
    is one write), ``I`` fetches and ``==pid==`` lines skipped, blank lines too."""
    line0 = 0
    for block in blocks:
        a = np.frombuffer(block, np.uint8)
        pad = np.concatenate([a, np.zeros(4, np.uint8)])
        ends = np.flatnonzero(a == 10)
        starts = np.concatenate([[0], ends[:-1] + 1])
        ends = ends - ((ends > starts) & (a[ends - 1] == 13))  # CRLF
        c0, c1, c2 = pad[starts], pad[starts + 1], pad[starts + 2]
        skip = (ends == starts) | ((c0 == 61) & (c1 == 61)) | ((c0 == 73) & (c1 == 32))
        data = (c0 == 32) & np.isin(c1, np.frombuffer(b"LSM", np.uint8)) & (c2 == 32)
        bad = ~(skip | data)
        i = np.flatnonzero(data)
        st, en = starts[i], ends[i]
        commas = np.flatnonzero(a == 44)
        ci = np.searchsorted(commas, st)
        comma = commas[np.minimum(ci, len(commas) - 1)] if len(commas) else st
        ndig = comma - st - 3
        ok = (ci < len(commas)) & (comma < en) & (ndig >= 1) & (ndig <= 16)
        addr = np.zeros(len(i), np.uint64)
        for k in range(16):  # the k-th hex digit before the comma, for every line at once
            has = ok & (ndig > k)
            digit = _HEX[pad[np.where(has, comma - 1 - k, len(a))]]
            ok &= ~has | (digit != 255)
            addr |= np.where(has, digit, 0).astype(np.uint64) << np.uint64(4 * k)
        nondigit = np.cumsum(_NOT_DIGIT[a], dtype=np.int32)
        ok &= (en - comma > 1) & (nondigit[np.maximum(en - 1, 0)] == nondigit[comma])
        bad[i] |= ~ok
        if bad.any():
            j = int(np.argmax(bad))
            text = block[starts[j] : ends[j]].decode("utf-8", "replace")
            why = "not a valgrind lackey line (I, L, S, M or ==pid==)"
            raise _fail(path, line0 + j + 1, f"{why}: {text!r}")
        yield Trace._raw(addr, c1[i] != ord("L"), np.zeros(len(i), np.int8))
        line0 += len(ends)
