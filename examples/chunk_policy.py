"""Which migration block size? A sweep under a strided and a random access pattern.

Runs the oversubscribed-device simulation of ``gpu_oversubscription.py`` once
per (pattern, block size) and compares what each block size costs:

* device faults: each one pays a far-fault latency (45 us, UVM-Smart);
* pages moved in and out, and the copy engine's modelled DMA time for them
  (the ``pcie3-uvm`` curve by default; each block is one descriptor when its
  frames are physically contiguous, since the engine's chunk is the block);
* the modelled total, faults plus DMA.

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
import os
import sys
from collections.abc import Callable
from typing import Any

import matplotlib

matplotlib.use("Agg")  # headless: write the PNG, never open a window
import matplotlib.pyplot as plt  # noqa: E402

import migengine as me  # noqa: E402

# The simulation lives next to this file; examples/ is not a package.
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import gpu_oversubscription as gpu  # noqa: E402

DEFAULT_BLOCKS = (1, 4, 16, 64, 256)  # 4 KiB .. 1 MiB
COMPARED = ("strided", "random")


def sweep(
    blocks: tuple[int, ...] = DEFAULT_BLOCKS,
    patterns: tuple[str, ...] = COMPARED,
    make_machine: Callable[..., me.Machine] = me.Machine,
    **run_args: Any,
) -> list[dict[str, Any]]:
    """One gpu_oversubscription.run() per (pattern, block size); returns a row
    per run with the pattern, block_pages, the run's counters and model times,
    ``total_model_s`` (faults + DMA) and ``bad_pages``."""
    rows = []
    for pattern in patterns:
        for block in blocks:
            r = gpu.run(block_pages=block, pattern=pattern, make_machine=make_machine, **run_args)
            row = {k: v for k, v in r.items() if k not in ("machine", "process", "vma")}
            row.pop("expected_writes")
            row.update(
                pattern=pattern,
                block_pages=block,
                total_model_s=r["dma_model_s"] + r["fault_model_s"],
            )
            rows.append(row)
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
        f"modelled time (faults at {gpu.FAULT_US:.0f} us + DMA)",
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
    if max(args.blocks) > args.device_pages:
        ap.error("every block must fit in device memory (--device-pages)")
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
    bad = sum(r["bad_pages"] for r in rows)
    if bad:
        raise SystemExit(f"{bad} pages lost data")
    plot(rows, args.out)
    print(f"wrote {args.out}")
    return rows


if __name__ == "__main__":
    main()
