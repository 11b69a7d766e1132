"""``me.Trace``: the constructor's checks, the three file formats (and gzip), exact
line numbers in errors, chunked reading, the synthetic generators and the real
valgrind lackey trace in ``examples/traces``."""

from __future__ import annotations

import gzip
import shutil
import subprocess
from pathlib import Path
from unittest import mock

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import migengine as me
from migengine import trace as trace_mod
from migengine.trace import Trace
from migengine.trace_synthetic import DEFAULT_BASE, PATTERNS

ROOT = Path(__file__).resolve().parents[2]
STORED = ROOT / "examples" / "traces" / "stream.lackey.gz"
NVIDIA = ("streaming", "block_streaming", "random_warp")

LACKEY_SAMPLE = """\
==123== Lackey, an example Valgrind tool
==123== Command: ./stream
==123==
I  04017a0,3
 L 1ffefffe48,8
 S 1ffefffe40,8
I  04017a3,5

 M 0421fd8,4
 L 04a2a040,4
==123== Counted 1 call to main()
"""


@st.composite
def traces(draw: st.DrawFn, max_size: int = 60) -> Trace:
    n = draw(st.integers(0, max_size))
    addr = draw(st.lists(st.integers(0, 2**64 - 1), min_size=n, max_size=n))
    write = draw(st.lists(st.booleans(), min_size=n, max_size=n))
    proc = draw(st.lists(st.sampled_from([0, -1]), min_size=n, max_size=n))
    return Trace(np.array(addr, dtype=np.uint64), write, proc)


def write_csv(path: Path, tr: Trace, *, hexa: bool, order: list[str], labels: bool) -> None:
    """A CSV of ``tr`` with the columns in ``order`` and spaces around fields."""
    cell = {
        "addr": [f"{a:#x}" if hexa else str(a) for a in tr.addr.tolist()],
        "op": ["w" if w else "r" for w in tr.write.tolist()],
        "proc": [("cpu" if p else "gpu") if labels else str(p) for p in tr.proc.tolist()],
    }
    rows = [" , ".join(order)] + [", ".join(cell[c][i] for c in order) for i in range(len(tr))]
    path.write_text("\n".join(rows) + "\n")


def assert_error(path: Path, line: int | None, *words: str) -> None:
    with pytest.raises(ValueError) as err:
        Trace.read(path)
    msg = str(err.value)
    assert str(path) in msg
    if line is not None:
        assert f"line {line}:" in msg, msg
    for w in words:
        assert w in msg, msg


# --- the constructor -----------------------------------------------------------------


def test_columns_have_the_contract_dtypes_and_proc_defaults_to_the_device():
    tr = Trace([0x1000, 2**64 - 1, 5], [1, 0, True])
    assert tr.addr.dtype == np.uint64 and tr.write.dtype == np.bool_ and tr.proc.dtype == np.int8
    assert tr.addr.tolist() == [0x1000, 2**64 - 1, 5]
    assert tr.write.tolist() == [True, False, True]
    assert tr.proc.tolist() == [0, 0, 0] and len(tr) == 3
    assert me.Trace is Trace and "Trace" in me.__all__


@pytest.mark.parametrize(
    "addr, write, proc",
    [
        ([1, -2], [0, 0], None),  # negative address
        (np.array([1, -2]), [0, 0], None),
        ([1, 2**64], [0, 0], None),  # past 64 bits
        ([1.5, 2.0], [0, 0], None),  # not integers
        ([[1, 2]], [[0, 0]], None),  # 2-D
        ([1, 2], [0], None),  # lengths differ
        ([1, 2], [0, 0], [0]),
        ([1, 2], [0, 2], None),  # write not bool-like
        ([1, 2], [0, 0], [0, 1]),  # proc only 0 or -1
        ([1, 2], [0, 0], ["gpu", "cpu"]),
    ],
)
def test_constructor_refuses_bad_columns(addr, write, proc):
    with pytest.raises(ValueError):
        Trace(addr, write, proc)


def test_slicing_concat_pages_and_repr():
    tr = Trace([0x1000, 0x1008, 0x5000, 0x2000], [0, 1, 0, 1], [0, -1, 0, 0])
    assert isinstance(tr[1:3], Trace) and tr[1:3].addr.tolist() == [0x1008, 0x5000]
    assert tr[1] == (0x1008, True, -1)
    assert tr[tr.write].addr.tolist() == [0x1008, 0x2000]
    assert Trace.concat([tr[:1], tr[1:]]) == tr and Trace.concat([]) == Trace([], [])
    assert tr != tr[::-1]
    assert tr.pages() == 3 and tr.pages(1 << 16) == 1
    assert tr.footprint_pages().tolist() == [1, 2, 5]
    assert tr.page_numbers().tolist() == [1, 1, 5, 2]
    assert "4 accesses" in repr(tr) and "2 writes" in repr(tr) and "0x5000" in repr(tr)
    assert repr(Trace([], [])) == "Trace(0 accesses)"


# --- files ---------------------------------------------------------------------------


@settings(deadline=None, max_examples=30)
@given(tr=traces())
def test_npz_round_trip_keeps_every_column(tmp_path_factory, tr):
    path = tmp_path_factory.mktemp("npz") / "trace.bin"  # any name: the content decides
    tr.save(path)
    assert path.exists() and not path.with_suffix(".bin.npz").exists()
    back = Trace.read(path)
    assert back == tr
    assert back.addr.dtype == np.uint64 and back.proc.dtype == np.int8


@settings(deadline=None, max_examples=40)
@given(
    tr=traces(),
    hexa=st.booleans(),
    order=st.permutations(["addr", "op", "proc"]),
    labels=st.booleans(),
    with_proc=st.booleans(),
)
def test_csv_round_trip(tmp_path_factory, tr, hexa, order, labels, with_proc):
    path = tmp_path_factory.mktemp("csv") / "trace.txt"
    if not with_proc:
        tr = Trace(tr.addr, tr.write)
        order = [c for c in order if c != "proc"]
    write_csv(path, tr, hexa=hexa, order=order, labels=labels)
    assert Trace.read(path) == tr


@pytest.mark.parametrize("fmt", ["csv", "npz", "lackey"])
def test_gzipped_files_read_like_the_plain_ones(tmp_path, fmt):
    plain, packed = tmp_path / "plain", tmp_path / "packed.anything"
    tr = Trace([16, 0xFFFF_FFFF_FFFF], [True, False], [-1, 0])
    if fmt == "csv":
        write_csv(plain, tr, hexa=True, order=["proc", "op", "addr"], labels=True)
    elif fmt == "npz":
        tr.save(plain)
    else:
        tr = Trace([0x1FFEFFFE48, 0x421FD8], [False, True])
        plain.write_text(LACKEY_SAMPLE.splitlines()[1] + "\n L 1ffefffe48,8\n M 0421fd8,4\n")
    packed.write_bytes(gzip.compress(plain.read_bytes()))
    assert Trace.read(packed) == Trace.read(plain) == tr


def test_csv_with_crlf_blank_lines_and_decimal_addresses(tmp_path):
    path = tmp_path / "t.csv"
    path.write_bytes(b"\xef\xbb\xbfOp , Addr\r\nR, 4096\r\n\r\nw,0X2000\r\n")
    tr = Trace.read(path)
    assert tr.addr.tolist() == [4096, 0x2000] and tr.write.tolist() == [False, True]
    assert tr.proc.tolist() == [0, 0]


def test_lackey_sample_skips_fetches_and_pid_lines_and_counts_a_modify_as_one_write(tmp_path):
    path = tmp_path / "sample"
    path.write_text(LACKEY_SAMPLE)
    tr = Trace.read(path)
    assert tr.addr.tolist() == [0x1FFEFFFE48, 0x1FFEFFFE40, 0x421FD8, 0x4A2A040]
    assert tr.write.tolist() == [False, True, True, False]
    assert tr.proc.tolist() == [0, 0, 0, 0]


def test_header_only_csv_and_pid_only_lackey_are_empty_traces(tmp_path):
    (tmp_path / "a").write_text("addr,op\n")
    (tmp_path / "b").write_text("==1== Lackey\n==1==\n")
    for name in "ab":
        assert len(Trace.read(tmp_path / name)) == 0
        assert list(Trace.iter_read(tmp_path / name)) == []


CSV_ERRORS = [
    ("addr,op\n0x10,r\n0x20,x\n", 3, ["unknown op", "'x'"]),
    ("addr,op\n\n0x10,r\nzz,w\n", 4, ["bad address", "'zz'"]),
    ("addr,op\n0x10,r\n-5,w\n", 3, ["bad address"]),
    (f"addr,op\n{2**64},w\n", 2, ["bad address"]),
    ("addr,op,proc\n1,r,gpu\n2,r,cpu\n3,w,tpu\n", 4, ["unknown proc", "'tpu'"]),
    ("addr,op\n1,r\n2,r,extra\n", 3, ["3 fields"]),
    ("addr,op,addr\n1,r,2\n", 1, ["twice"]),
]


@pytest.mark.parametrize("text, line, words", CSV_ERRORS)
def test_csv_errors_name_the_file_and_the_line(tmp_path, text, line, words):
    path = tmp_path / "bad.csv"
    path.write_text(text)
    assert_error(path, line, *words)
    path.with_suffix(".gz").write_bytes(gzip.compress(text.encode()))
    assert_error(path.with_suffix(".gz"), line, *words)


@pytest.mark.parametrize(
    "bad",
    [
        *(" X 0421fd8,4", " L 0421fd8", " L zz,4", " L 0421fd8,", " L ,4", " L 0421fd8,4x"),
        *("L 0421fd8,4", "I04017a0,3", " L 0x421fd8,4", " L 1234567890abcdef0,4", "hello"),
    ],
)
def test_lackey_errors_name_the_file_and_the_line(tmp_path, bad):
    path = tmp_path / "bad.lackey"
    lines = LACKEY_SAMPLE.splitlines()
    path.write_text("\n".join([*lines[:6], bad, *lines[6:]]) + "\n")
    assert_error(path, 7, "not a valgrind lackey line", repr(bad))


@settings(deadline=None, max_examples=25)
@given(block=st.integers(8, 300), where=st.integers(0, 199), kind=st.sampled_from(["csv", "lk"]))
def test_error_line_numbers_stay_exact_across_blocks(tmp_path_factory, block, where, kind):
    """Text is parsed a block at a time; the line of an error counts every line before
    its block, blank ones and the header included."""
    rows = [f"{i:#x},r" if i % 7 else "" for i in range(200)]
    rows[where] = "0x10,?"
    head = "addr,op" if kind == "csv" else "==1== Lackey"
    if kind == "lk":
        rows = [f" L {r.split(',')[0][2:]},4" if r else "" for r in rows]
        rows[where] = " Q 10,4"
    path = tmp_path_factory.mktemp("lines") / "t"
    path.write_text("\n".join([head, *rows]) + "\n")
    with mock.patch.object(trace_mod, "_BLOCK", block):
        assert_error(path, where + 2)


def test_empty_unknown_and_broken_files(tmp_path):
    cases = {
        "empty": (b"", "empty"),
        "words": (b"time,value\n1,2\n", "unknown trace format"),
        "npz_no_write": (None, "needs the arrays addr and write"),
        "npz_bad_proc": (None, "proc"),
        "bad_zip": (b"PK\x03\x04garbage", "unreadable .npz"),
        "bad_gzip": (gzip.compress(b"addr,op\n1,r\n")[:-12], "gzip"),
    }
    with open(tmp_path / "npz_no_write", "wb") as f:
        np.savez(f, addr=np.arange(3, dtype=np.uint64))
    with open(tmp_path / "npz_bad_proc", "wb") as f:
        np.savez(f, addr=np.arange(2), write=np.zeros(2, bool), proc=np.array([0, 3]))
    for name, (content, word) in cases.items():
        if content is not None:
            (tmp_path / name).write_bytes(content)
        assert_error(tmp_path / name, None, word)


@settings(deadline=None, max_examples=40)
@given(
    chunk=st.integers(1, 400),
    block=st.integers(16, 4000),
    fmt=st.sampled_from(["csv", "csv.gz", "npz", "lackey", "lackey.gz"]),
)
def test_chunked_reading_equals_whole_reading(tmp_path_factory, chunk, block, fmt):
    path = tmp_path_factory.mktemp("chunks") / "t"
    tr = Trace.synthetic("random", pages=50, accesses=700, seed=3, write_fraction=0.5)
    if fmt.startswith("csv"):
        tr = Trace(tr.addr, tr.write, np.where(tr.addr % 3 == 0, -1, 0))
        write_csv(path, tr, hexa=True, order=["addr", "op", "proc"], labels=False)
    elif fmt == "npz":
        tr.save(path)
    else:
        mnem = np.where(tr.write, " S ", " L ")
        lines = (f"{m}{a:08x},8\nI  0401000,2\n" for m, a in zip(mnem, tr.addr, strict=True))
        path.write_text("".join(lines))
    if fmt.endswith(".gz"):
        path.write_bytes(gzip.compress(path.read_bytes()))
    with mock.patch.object(trace_mod, "_BLOCK", block):
        parts = list(Trace.iter_read(path, chunk_accesses=chunk))
        whole = Trace.read(path)
    assert whole == tr
    assert all(len(p) == chunk for p in parts[:-1]) and 0 < len(parts[-1]) <= chunk
    assert Trace.concat(parts) == tr


def test_memory_is_at_most_16_bytes_per_access(tmp_path):
    made = [
        Trace(np.arange(1000, dtype=np.int64), np.zeros(1000, np.int64)),
        Trace.synthetic("hotspot", pages=100, accesses=5000, cpu_fraction=0.5),
        Trace.read(STORED),
    ]
    for tr in made:
        assert tr.addr.nbytes + tr.write.nbytes + tr.proc.nbytes <= 16 * len(tr)


# --- synthetic -----------------------------------------------------------------------


@settings(deadline=None, max_examples=60)
@given(
    pattern=st.sampled_from(PATTERNS),
    pages=st.integers(1, 300),
    accesses=st.integers(0, 3000),
    page_shift=st.integers(12, 16),
    seed=st.integers(0, 2**32),
)
def test_synthetic_is_reproducible_and_stays_in_the_buffer(
    pattern, pages, accesses, page_shift, seed
):
    ps = 1 << page_shift
    kw = dict(pages=pages, accesses=accesses, seed=seed, page_size=ps, write_fraction=0.3)
    tr = Trace.synthetic(pattern, **kw)
    assert Trace.synthetic(pattern, **kw) == tr and len(tr) == accesses
    assert tr.addr.dtype == np.uint64 and tr.write.dtype == np.bool_ and tr.proc.dtype == np.int8
    if accesses:
        assert tr.addr.min() >= DEFAULT_BASE and tr.addr.max() < DEFAULT_BASE + pages * ps
    assert (tr.proc == 0).all()


def page(tr: Trace) -> list[int]:
    return ((tr.addr - DEFAULT_BASE) // 4096).tolist()


def test_sequential_and_strided_walk_the_pages_in_their_order():
    assert page(Trace.synthetic("sequential", pages=4, accesses=6)) == [0, 1, 2, 3, 0, 1]
    seq = Trace.synthetic("sequential", pages=3, accesses=7, base=0)
    assert seq.addr.tolist() == [0, 2048, 4096, 6144, 8192, 10240, 0]
    strided = Trace.synthetic("strided", pages=10, accesses=10, stride=3)
    assert page(strided) == [0, 3, 6, 9, 1, 4, 7, 2, 5, 8]
    twice = Trace.synthetic("strided", pages=4, accesses=8, stride=2)
    assert page(twice) == [0, 0, 2, 2, 1, 1, 3, 3]


def test_random_and_hotspot_distributions():
    rnd = Trace.synthetic("random", pages=64, accesses=20_000, seed=1)
    assert rnd.pages() == 64 and rnd != Trace.synthetic("random", pages=64, accesses=20_000)
    hot = Trace.synthetic("hotspot", pages=1000, accesses=20_000, hot_pages=10, hot_fraction=0.8)
    in_hot = ((hot.addr - DEFAULT_BASE) // 4096 < 10).mean()
    assert 0.79 < in_hot < 0.83  # 0.8 directly + 0.2 * 10/1000 from the uniform rest
    assert hot.pages() > 500


def test_write_and_cpu_fractions_do_not_move_addresses():
    a = Trace.synthetic("random", pages=100, accesses=20_000, seed=5)
    b = Trace.synthetic(
        "random", pages=100, accesses=20_000, seed=5, write_fraction=0.25, cpu_fraction=0.1
    )
    assert np.array_equal(a.addr, b.addr) and not a.write.any() and (a.proc == 0).all()
    assert 0.23 < b.write.mean() < 0.27 and 0.08 < (b.proc == -1).mean() < 0.12
    assert set(np.unique(b.proc).tolist()) == {-1, 0}


def warps(tr: Trace, elem: int = 4) -> np.ndarray:
    """Element indices from the base, one row per warp (32 accesses)."""
    return ((tr.addr - DEFAULT_BASE) // elem).astype(np.int64).reshape(-1, 32)


def test_nvidia_patterns_read_32_consecutive_elements_per_warp():
    for pattern in NVIDIA:
        w = warps(Trace.synthetic(pattern, pages=20, accesses=32 * 500, seed=2))
        assert (np.diff(w, axis=1) == 1).all(), pattern
        assert (w[:, 0] // 1024 == w[:, -1] // 1024).all(), pattern  # within one page
    rw = warps(Trace.synthetic("random_warp", pages=20, accesses=32 * 500, seed=2))
    assert len(np.unique(rw[:, 0] // 1024)) == 20 and (rw[:, 0] % 32 != 0).any()  # unaligned


def test_streaming_covers_the_buffer_in_address_order():
    one_pass = Trace.synthetic("streaming", pages=4, accesses=4096)
    assert one_pass.addr.tolist() == (DEFAULT_BASE + 4 * np.arange(4096)).tolist()
    thin = Trace.synthetic("streaming", pages=100, accesses=320)  # 10 warps over 100 pages
    first = warps(thin)[:, 0]
    assert (np.diff(first) > 0).all() and first[0] == 0 and first[-1] >= 90 * 1024
    assert len(Trace.synthetic("streaming", pages=1, accesses=5000)) == 5000  # wraps around


def test_block_streaming_interleaves_the_blocks_contiguous_chunks():
    tr = Trace.synthetic("block_streaming", pages=1, accesses=1024, blocks=3, block_size=64)
    lines = warps(tr)[:, 0] // 32  # 32 lines of 128 B; chunks of 11, 11, 10 lines
    assert lines[:6].tolist() == [0, 1, 11, 12, 22, 23]  # step 0: two warps of each block
    assert sorted(lines.tolist()) == list(range(32))  # one pass reads each line once
    thin = Trace.synthetic("block_streaming", pages=200, accesses=32 * 4000, blocks=7)
    assert len(set((warps(thin)[:, 0] // 32).tolist())) == 4000  # 4000 of 6400 lines, no repeat


@pytest.mark.parametrize(
    "kwargs, exc, word",
    [
        (dict(pattern="zigzag"), ValueError, "sequential"),
        (dict(pattern="zigzag"), ValueError, "random_warp"),
        (dict(colour=1), TypeError, "colour"),
        (dict(pattern="random", stride=2), TypeError, "stride"),
        (dict(pages=0), ValueError, "pages"),
        (dict(accesses=-1), ValueError, "accesses"),
        (dict(page_size=3000), ValueError, "power of two"),
        (dict(base=123), ValueError, "base"),
        (dict(write_fraction=1.5), ValueError, "write_fraction"),
        (dict(pattern="hotspot", hot_pages=11), ValueError, "hot_pages"),
        (dict(pattern="block_streaming", block_size=48), ValueError, "block_size"),
        (dict(pattern="streaming", elem_size=256), ValueError, "page_size"),
    ],
)
def test_synthetic_refuses_bad_arguments(kwargs, exc, word):
    args = dict(pattern="sequential", pages=10, accesses=10) | kwargs
    with pytest.raises(exc, match=word):
        Trace.synthetic(**args)


# --- the real trace ------------------------------------------------------------------


def check_stream_trace(tr: Trace) -> None:
    """What stream.c's run must look like: loads and stores, all by the device, and
    its 1 MiB array as 256 pages of 132 accesses (64 stores, 64 loads, 4 modifies)."""
    assert len(tr) > 10_000 and tr.write.any() and not tr.write.all()
    assert (tr.proc == 0).all()
    _, counts = np.unique(tr.page_numbers(), return_counts=True)
    assert (counts >= 132).sum() >= 256


def test_stored_lackey_trace_replays():
    assert STORED.stat().st_size < 1 << 20
    text = gzip.decompress(STORED.read_bytes()).decode()
    assert "\n L " in text and "\n S " in text and "\n M " in text
    check_stream_trace(Trace.read(STORED))


@pytest.mark.skipif(
    not (shutil.which("valgrind") and shutil.which("gcc")), reason="needs valgrind and gcc"
)
def test_fresh_valgrind_trace_reads(tmp_path):
    script = ROOT / "examples" / "traces" / "make_trace.sh"
    subprocess.run(["sh", str(script), str(tmp_path)], check=True, capture_output=True)
    check_stream_trace(Trace.read(tmp_path / "stream.lackey.gz"))
