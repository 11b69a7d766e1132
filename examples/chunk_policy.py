"""Which migration block size? A sweep under a strided and a random access pattern.

Runs ``me.simulate`` (the UVM-style driver model) once per (pattern, migration
unit) and compares what each unit size costs:

* device faults: each one pays a far-fault latency (45 us, UVM-Smart);
* pages moved in and out, and the copy engine's modelled DMA time for them
  (the ``pcie3-uvm`` curve by default);
* the modelled total, fault handling plus DMA.

Small blocks fault on every new page; large ones move pages nobody touches
before they are evicted again. Which wins depends on the pattern and on how
long the LRU keeps a block: in the default sweep the random pattern is
cheapest at 4 KiB, and the strided walk at 16 KiB, the largest block that
stays resident until the walk comes back to it. Writes a PNG of the sweep
to ``--out``.

    python examples/chunk_policy.py --out chunk_policy.png
"""

from __future__ import annotations

import argparse
from typing import Any

import matplotlib

matplotlib.use("Agg")  # headless: write the PNG, never open a window
import matplotlib.pyplot as plt  # noqa: E402

import migengine as me  # noqa: E402

FAULT_US = me.SimConfig().fault_us

DEFAULT_BLOCKS = (1, 4, 16, 64, 256)  # 4 KiB .. 1 MiB
COMPARED = ("strided", "random")


def sweep(
    blocks: tuple[int, ...] = DEFAULT_BLOCKS,
    patterns: tuple[str, ...] = COMPARED,
    pages: int = 1024,
    device_pages: int = 512,
    accesses: int = 20_000,
    stride: int = 16,
    engine: str = "pcie3-uvm",
    seed: int = 0,
) -> list[dict[str, Any]]:
    """One me.simulate() per (pattern, unit size); returns a row per run with the
    pattern, ``block_pages``, the run's stats, ``faults``, ``pages_in``/``pages_out``,
    ``dma_model_s``, ``fault_model_s`` and ``total_model_s``."""
    rows = []
    for pattern in patterns:
        extra = {"stride": stride} if pattern == "strided" else {}
        trace = me.Trace.synthetic(
            pattern, pages=pages, accesses=accesses, seed=seed, write_fraction=0.2, **extra
        )
        for block in blocks:
            cfg = me.SimConfig(
                device_pages=device_pages, migrate_pages=block, engine=engine, seed=seed
            )
            s = me.simulate(trace, cfg, name=pattern).stats
            rows.append(
                dict(
                    s,
                    pattern=pattern,
                    block_pages=block,
                    faults=s["device_faults"],
                    pages_in=s["pages_to_device"] + s["pages_prefetched"],
                    pages_out=s["pages_evicted"] + s["cpu_faults"],
                    dma_model_s=s["copy_s"],
                    fault_model_s=s["fault_s"],
                    total_model_s=s["modelled_s"],
                )
            )
    return rows


def plot(rows: list[dict[str, Any]], path: str, page_size: int = 4096) -> None:
    """Three panels against block size: modelled time, faults, pages moved."""
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.5))
    ticks = sorted({r["block_pages"] * page_size / 1024 for r in rows})
    for pattern in dict.fromkeys(r["pattern"] for r in rows):
        mine = [r for r in rows if r["pattern"] == pattern]
        kib = [r["block_pages"] * page_size / 1024 for r in mine]
        line = axes[0].plot(kib, [r["total_model_s"] for r in mine], "o-", label=f"{pattern}")
        axes[0].plot(
            kib,
            [r["dma_model_s"] for r in mine],
            "--",
            color=line[0].get_color(),
            label=f"{pattern}: DMA only",
        )
        axes[1].plot(kib, [r["faults"] for r in mine], "o-", label=pattern)
        axes[2].plot(kib, [r["pages_in"] + r["pages_out"] for r in mine], "o-", label=pattern)
    titles = (
        f"modelled time (faults at {FAULT_US:.0f} us + DMA)",
        "device faults",
        "pages migrated (in + out)",
    )
    for ax, title in zip(axes, titles, strict=True):
        ax.set_xscale("log", base=2)
        ax.set_xticks(ticks, [f"{t:g}" for t in ticks])
        ax.set_yscale("log")
        ax.set_xlabel("migration block (KiB)")
        ax.set_title(title)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend()
    axes[0].set_ylabel("seconds")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _blocks(text: str) -> tuple[int, ...]:
    try:
        blocks = tuple(int(b) for b in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a comma-separated list of ints: {text!r}") from None
    if not blocks or min(blocks) < 1:
        raise argparse.ArgumentTypeError("block sizes must be >= 1 page")
    return blocks


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--pages", type=int, default=1024, help="working set, pages (default 1024)")
    ap.add_argument("--device-pages", type=int, default=512, help="device memory, pages")
    ap.add_argument("--accesses", type=int, default=20_000, help="trace length per run")
    ap.add_argument("--blocks", type=_blocks, default=DEFAULT_BLOCKS, help="pages, e.g. 1,16,512")
    ap.add_argument("--stride", type=int, default=16, help="row length of the strided walk")
    ap.add_argument("--engine", choices=me.CopyEngine.presets(), default="pcie3-uvm")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="chunk_policy.png", help="PNG to write")
    args = ap.parse_args(argv)
    if max(args.blocks) > min(args.device_pages, 512) or any(b & (b - 1) for b in args.blocks):
        ap.error("every block must be a power of two that fits in device memory, at most 512")
    rows = sweep(
        blocks=args.blocks,
        pages=args.pages,
        device_pages=args.device_pages,
        accesses=args.accesses,
        stride=args.stride,
        engine=args.engine,
        seed=args.seed,
    )
    print(f"{'pattern':>8} {'block':>7} {'faults':>9} {'pages':>9} {'DMA ms':>9} {'total ms':>9}")
    for r in rows:
        print(
            f"{r['pattern']:>8} {r['block_pages'] * 4:>5}Ki {r['faults']:>9,} "
            f"{r['pages_in'] + r['pages_out']:>9,} {r['dma_model_s'] * 1e3:>9.2f} "
            f"{r['total_model_s'] * 1e3:>9.2f}"
        )
    for pattern in COMPARED:
        best = min((r for r in rows if r["pattern"] == pattern), key=lambda r: r["total_model_s"])
        print(f"best block for {pattern}: {best['block_pages'] * 4} KiB")
    if not all(r["data_ok"] for r in rows):
        raise SystemExit("a run lost data")
    plot(rows, args.out)
    print(f"wrote {args.out}")
    return rows


if __name__ == "__main__":
    main()
