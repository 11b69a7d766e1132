"""GPU memory oversubscription: a working set larger than the device, replayed.

A synthetic access stream runs through ``me.simulate``, the UVM-style driver
model: device faults are batched, grown to the migration unit, prefetched and
evicted by the chosen policies, and every move is the engine's compiled
``migrate_vma()``. Every byte the trace writes is checked at the end.

    python examples/gpu_oversubscription.py --pages 16384 --device-pages 8192 \\
        --accesses 2000000 --prefetch tree --out oversub
"""

from __future__ import annotations

import argparse

import migengine as me
from migengine.trace_synthetic import PATTERNS


def run(
    pattern: str = "hotspot",
    pages: int = 16384,
    device_pages: int = 8192,
    accesses: int = 2_000_000,
    write_fraction: float = 0.2,
    seed: int = 0,
    **config: object,
) -> me.SimResult:
    """Replay ``accesses`` accesses of ``pattern`` over ``pages`` pages on a device of
    ``device_pages`` pages; ``config`` holds further SimConfig fields."""
    trace = me.Trace.synthetic(
        pattern, pages=pages, accesses=accesses, seed=seed, write_fraction=write_fraction
    )
    cfg = me.SimConfig(device_pages=device_pages, seed=seed, **config)  # type: ignore[arg-type]
    return me.simulate(trace, cfg, name=pattern)


def main(argv: list[str] | None = None) -> me.SimResult:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--pattern", choices=PATTERNS, default="hotspot")
    ap.add_argument("--pages", type=int, default=16384, help="working set, pages")
    ap.add_argument("--device-pages", type=int, default=8192, help="device memory, pages")
    ap.add_argument("--accesses", type=int, default=2_000_000)
    ap.add_argument("--migrate-pages", type=int, default=16, help="pages per migration unit")
    ap.add_argument("--prefetch", choices=("none", "sequential", "tree"), default="none")
    ap.add_argument("--evict", choices=("lru", "fifo", "random"), default="lru")
    ap.add_argument("--engine", choices=me.CopyEngine.presets(), default="pcie3-uvm")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", help="directory for results.json, run.png and timeline.json")
    a = ap.parse_args(argv)
    res = run(
        a.pattern,
        a.pages,
        a.device_pages,
        a.accesses,
        seed=a.seed,
        migrate_pages=a.migrate_pages,
        prefetch=a.prefetch,
        evict=a.evict,
        engine=a.engine,
    )
    s = res.stats
    moved = s["pages_to_device"] + s["pages_prefetched"] + s["pages_evicted"] + s["cpu_faults"]
    print(
        f"{s['accesses']:,} accesses ({a.pattern}) over {a.pages:,} pages, device "
        f"{a.device_pages:,} pages ({a.pages / a.device_pages:.0%} of it)"
    )
    print(
        f"  faults {s['device_faults']:,} in {s['fault_batches']:,} batches; pages in "
        f"{s['pages_to_device']:,} + prefetched {s['pages_prefetched']:,}, evicted "
        f"{s['pages_evicted']:,}"
    )
    print(
        f"  modelled {s['modelled_s'] * 1e3:.2f} ms ({s['fault_s'] * 1e3:.2f} fault handling, "
        f"{s['copy_s'] * 1e3:.2f} DMA); wall {s['wall_s']:.3f} s, "
        f"{moved / s['wall_s']:,.0f} pages migrated/s"
    )
    print(f"  data check: {'every byte intact' if s['data_ok'] else 'not kept'}")
    if a.out:
        res.save(a.out)
        print(f"  wrote {a.out}/results.json, run.png and timeline.json")
    return res


if __name__ == "__main__":
    main()
