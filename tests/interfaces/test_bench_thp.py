"""``migengine bench --thp``: the benchmark_thp_migration replica (hmm-tests.c #38).

One small run of the real harness: the modern profile moves a THP buffer as one
device folio and back, the data checked by the harness; the table names it.
"""

from __future__ import annotations

from migengine.bench import thp


def test_thp_replica_moves_a_folio_whole_and_reports_it():
    result = thp.run_thp_benchmark(("modern", "hmm-v25"), sizes=(512,), iterations=1, meta=False)
    by = {(r["profile"], r["thp"]): r for r in result["records"]}
    assert by[("modern", True)]["huge_on_device"]  # one device-private PMD entry
    assert not by[("modern", False)]["huge_on_device"]
    assert not by[("hmm-v25", True)]["huge_on_device"]  # 4.14 splits the THP
    assert all(r["to_dev_gibs"] > 0 and r["to_sys_gibs"] > 0 for r in result["records"])
    table = thp.format_thp_markdown(result)
    assert "| modern | 2 MiB | yes | yes |" in table
    assert "| hmm-v25 | 2 MiB | yes | no |" in table
