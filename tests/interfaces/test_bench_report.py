"""``migengine bench``'s Markdown report (results.md) and its regeneration.

Pure Python: a hand-made result dict, no sweep and no compiled kernel.
"""

from __future__ import annotations

import json
import pathlib
import subprocess
import sys

import pytest

from migengine.bench import report

DOCS = pathlib.Path(__file__).resolve().parents[2] / "docs" / "bench-results"
HEADER = [
    "chunk",
    "KiB",
    "descs",
    "wall GB/s",
    "model GB/s",
    "copy GB/s",
    "x copyto",
    "meta ns/pg",
    "meta/copyto",
    "non-copy ns/pg",
]


def _record(chunk: int, descriptors: int, wall: float, model: float | None) -> dict:
    return {
        "chunk_pages": chunk,
        "chunk_bytes": chunk * 4096,
        "descriptors": descriptors,
        "wall_gbps": wall,
        "model_gbps": model,
        "copy_gbps": 2 * wall,
        "copyto_gbps": 10.0 + chunk,
        "memcpy_ratio": wall / 10.0,
        "meta_ns_per_page": 12.34,
        "meta_share": 0.01234,
        "noncopy_ns_per_page": 56.78,
    }


@pytest.fixture
def result() -> dict:
    return {
        "records": [_record(1, 256, 1.5, 2.25), _record(16, 20, 7.125, None)],
        "metadata": {
            "machine": {
                "cpu": "Test CPU",
                "arch": "x86_64",
                "cpus": 2,
                "system": "Linux-test",
                "python": "3.11.0",
            },
            "numba": "0.68.1",
            "numpy": "2.0.0",
            "migengine": "0.1.0",
            "threading_layer": "omp",
            "threads": 2,
            "parameters": {
                "pages": 256,
                "bytes": 256 * 4096,
                "chunk_pages": [1, 16],
                "repeat": 2,
                "meta_pairs": 3,
                "fragmentation": 0.25,
                "engine": "ptdma",
                "threads": None,
                "stream": False,
                "seed": 7,
                "profile": "seed",
            },
            "workload": {"runs": 64, "break_fraction": 0.25},
            "elapsed_s": 1.5,
        },
    }


def _table(text: str) -> list[list[str]]:
    rows = [line for line in text.splitlines() if line.startswith("|")]
    return [[cell.strip() for cell in row.strip("|").split("|")] for row in rows]


def test_markdown_table_has_the_printed_columns_and_one_row_per_record(result):
    rows = _table(report.format_markdown(result))
    assert rows[0] == HEADER
    assert rows[1] == ["---:"] * len(HEADER)
    assert rows[2] == ["1", "4", "256", "1.50", "2.25", "3.00", "0.150", "12.3", "0.012", "56.8"]
    # a non-finite figure (written to results.json as null) reads n/a
    assert rows[3][:5] == ["16", "64", "20", "7.12", "n/a"]
    assert len(rows) == 2 + len(result["records"])


def test_markdown_matches_the_printed_table_cell_for_cell(result):
    result["records"][1]["model_gbps"] = float("inf")
    printed = report.format_table(result).splitlines()
    md = _table(report.format_markdown(result))
    assert md[0] == HEADER
    assert [line.split() for line in printed[2:4]] == [
        [c.replace("n/a", "inf") for c in row] for row in md[2:4]
    ]


def test_markdown_names_the_machine_and_the_command(result):
    text = report.format_markdown(result, out="docs/bench-results")
    machine = next(line for line in text.splitlines() if line.startswith("Machine:"))
    assert "Test CPU" in machine and "2 CPUs" in machine
    assert "threading layer omp, 2 threads" in machine and "numba 0.68.1" in machine
    command = next(line for line in text.splitlines() if line.startswith("Reproduce:"))
    assert command == (
        "Reproduce: `migengine bench --pages 256 --chunk-pages 1,16 --repeat 2 "
        "--fragmentation 0.25 --engine ptdma --seed 7 --profile seed --no-stream "
        "--out docs/bench-results`"
    )


def test_regenerate_writes_results_md_beside_results_json(result, tmp_path):
    path = tmp_path / "results.json"
    path.write_text(json.dumps(result))
    proc = subprocess.run(
        [sys.executable, "-m", "migengine.bench", str(path)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    text = (tmp_path / "results.md").read_text()
    assert text == report.format_markdown(result, out=str(tmp_path))
    assert _table(text)[0] == HEADER


def test_regenerate_without_a_path_is_a_usage_error(capsys):
    assert report.main([]) == 2
    assert "usage" in capsys.readouterr().err


def test_committed_results_md_is_generated_from_results_json():
    """docs/bench-results/results.md is regenerated whenever results.json changes
    (python -m migengine.bench docs/bench-results/results.json)."""
    result = json.loads((DOCS / "results.json").read_text())
    expected = report.format_markdown(result, out="docs/bench-results")
    assert (DOCS / "results.md").read_text() == expected


def test_committed_profile_comparison_is_generated_from_its_results_json():
    """docs/bench-results/profiles/ (migengine bench --profile seed,hmm-v25,modern): its results.md
    is the comparison's own form, regenerated from results.json."""
    result = json.loads((DOCS / "profiles" / "results.json").read_text())
    names = [run["metadata"]["parameters"]["profile"] for run in result["runs"]]
    assert names == ["seed", "hmm-v25", "modern"]
    expected = report.format_markdown(result, out="docs/bench-results/profiles")
    assert (DOCS / "profiles" / "results.md").read_text() == expected
    assert "--profile seed,hmm-v25,modern" in expected


def test_the_readme_shows_the_generated_table():
    """README.md's benchmark table is docs/bench-results/results.md's, spliced in by
    ``python -m migengine.bench docs/bench-results/results.json --readme README.md``."""
    readme = (DOCS.parents[1] / "README.md").read_text()
    generated = (DOCS / "results.md").read_text()
    assert report.splice_readme(readme, generated) == readme
    assert "| chunk | KiB |" in readme


def test_splice_readme_needs_its_markers():
    with pytest.raises(ValueError, match="bench-table"):
        report.splice_readme("# no markers here\n", "| a |\n")
    spliced = report.splice_readme(
        f"x\n{report.README_START}\nold\n{report.README_END}\ny\n", "<!-- gen -->\n| new |\n"
    )
    assert spliced == f"x\n{report.README_START}\n| new |\n{report.README_END}\ny\n"
