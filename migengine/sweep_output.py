"""A sweep's results on disk: results.parquet (resumable), the summary table and plot.

``results.parquet`` (pyarrow) has one row per run: its parameters (the trace,
every SimConfig field, every engine parameter), its stats, ``error`` and the
host and versions it ran with. It is rewritten as runs finish, through a
temporary file renamed into place, so an interrupted sweep loses no finished
run and never leaves a torn file.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:  # pandas (0.26 s to import) loads only when a frame is made
    import pandas as pd

RESULTS = "results.parquet"
PLOT = "summary.png"
#: Seconds between checkpoints of results.parquet while a sweep runs.
CHECKPOINT_S = 2.0


def read_results(directory: str | os.PathLike[str]) -> pd.DataFrame | None:
    """DIR/results.parquet, or None when there is none yet."""
    path = Path(directory) / RESULTS
    if not path.exists():
        return None
    import pandas as pd

    try:
        return pd.read_parquet(path)
    except Exception as exc:  # noqa: BLE001 - pyarrow raises several types for a bad file
        raise ValueError(f"{path}: not a results file this tool can read: {exc}") from None


def write_results(df: pd.DataFrame, directory: str | os.PathLike[str]) -> Path:
    """Write ``df`` to DIR/results.parquet atomically (temporary file, then rename)."""
    path = Path(directory) / RESULTS
    tmp = path.with_suffix(".parquet.tmp")
    df.to_parquet(tmp, index=False)
    os.replace(tmp, path)
    return path


class Checkpoint:
    """Collects records and rewrites results.parquet at most every CHECKPOINT_S seconds."""

    def __init__(self, directory: str | os.PathLike[str], kept: pd.DataFrame | None) -> None:
        self.directory = directory
        self.kept = kept
        self.records: list[dict[str, Any]] = []
        self._last = time.monotonic()

    def frame(self) -> pd.DataFrame:
        """The kept rows and the new records, in run order."""
        import pandas as pd

        new = pd.DataFrame.from_records(self.records)
        if self.kept is None or self.kept.empty:
            df = new
        elif new.empty:
            df = self.kept
        else:
            df = pd.concat([self.kept, new], ignore_index=True)
        if "run" in df.columns:
            df = df.sort_values("run", kind="stable").reset_index(drop=True)
        return df

    def add(self, record: dict[str, Any]) -> None:
        self.records.append(record)
        if time.monotonic() - self._last >= CHECKPOINT_S:
            self.flush()

    def flush(self) -> None:
        if self.records or self.kept is not None:
            write_results(self.frame(), self.directory)
        self._last = time.monotonic()


def format_summary(df: pd.DataFrame, varied: Sequence[str], stats: Sequence[str]) -> str:
    """The runs as a table: the varied parameters, a few stats and the error, if any."""
    cols = [c for c in (*varied, *stats) if c in df.columns]
    table = df[cols].copy()
    if "error" in df.columns and df["error"].notna().any():
        table["error"] = df["error"].fillna("").str.slice(0, 40)
    return table.to_string(index=False)


def plot_kind(kind: str | None, y: str | None) -> str:
    """The plot kind: ``kind``, or by default a heatmap with a ``y`` and lines without;
    ValueError for another kind, or a heatmap without a ``y``."""
    kind = kind or ("heatmap" if y is not None else "lines")
    if kind not in ("heatmap", "lines") or (kind == "heatmap" and y is None):
        raise ValueError(f"plot: kind must be 'lines', or 'heatmap' with a y, got {kind!r}")
    return kind


def plot_summary(
    df: pd.DataFrame,
    stat: str,
    x: str,
    y: str | None,
    path: str | os.PathLike[str],
    kind: str | None = None,
) -> Path:
    """``stat`` against parameter ``x`` (and ``y``), as a ``"heatmap"`` or ``"lines"``.

    The default is a heatmap when ``y`` is given, else one line. As lines, each
    value of ``y`` is one line. Failed runs are left out; runs that share
    ``x`` and ``y`` but differ in other parameters are averaged (the title says so).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    kind = plot_kind(kind, y)
    ok = df[df["error"].isna()] if "error" in df.columns else df
    if stat not in ok.columns:
        raise ValueError(f"no stat {stat!r} in the results")
    keys = [x] if y is None else [x, y]
    for k in keys:
        if k not in ok.columns:
            raise ValueError(f"no parameter {k!r} in the results")
    import pandas as pd

    data = ok.groupby(keys, dropna=False)[stat].mean() if len(ok) else pd.Series(dtype=float)
    averaged = len(ok) > len(data)
    fig, ax = plt.subplots(figsize=(6.4, 4.4), layout="constrained")
    if len(data) and y is not None:
        table = data.unstack(x)  # rows: y's values, columns: x's
        values = table.to_numpy(dtype=float)
        if kind == "heatmap":
            im = ax.imshow(values, aspect="auto", origin="lower", cmap="viridis")
            ax.set_xticks(np.arange(values.shape[1]), [str(c) for c in table.columns])
            ax.set_yticks(np.arange(values.shape[0]), [str(r) for r in table.index])
            ax.set_ylabel(y)
            for (i, j), v in np.ndenumerate(values):
                if np.isfinite(v):
                    ax.text(j, i, f"{v:.3g}", ha="center", va="center", color="w", fontsize=8)
            fig.colorbar(im, ax=ax, label=stat)
        else:
            labels = [str(c) for c in table.columns]
            for row, yv in zip(values, table.index, strict=True):
                ax.plot(labels, row, marker="o", label=f"{y}={yv}")
            ax.set_ylabel(stat)
            ax.legend(fontsize=8)
            ax.grid(alpha=0.3)
    elif len(data):
        ax.plot([str(v) for v in data.index], data.to_numpy(dtype=float), marker="o")
        ax.set_ylabel(stat)
        ax.grid(alpha=0.3)
    ax.set_xlabel(x)
    ax.set_title(f"{stat}" + (" (mean over the other parameters)" if averaged else ""))
    out = Path(path)
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out
