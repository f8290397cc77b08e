"""PNG plots of a run (matplotlib, headless)."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import pandas as pd


def _epoch_log(metrics_csv: Path) -> pd.DataFrame | None:
    if not metrics_csv.exists():
        return None
    log = pd.read_csv(metrics_csv)
    return log.groupby("epoch").last() if "epoch" in log else None


def _two_panels(per_epoch: pd.DataFrame, panels: Sequence[tuple[str, list[str]]], out_png: Path,
                ylim: tuple[float, float] | None = None, label=lambda c: c) -> Path:
    """One figure, two panels side by side, each ``(title, columns)`` plotted per epoch."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, (title, columns) in zip(axes, panels):
        for col in columns:
            ax.plot(per_epoch.index + 1, per_epoch[col], marker="o", label=label(col))
        ax.set_xlabel("epoch")
        ax.set_title(title)
        if ylim is not None:
            ax.set_ylim(*ylim)
        if ax.lines:
            ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out_png, dpi=100)
    plt.close(fig)
    return out_png


def plot_training_curves(metrics_csv: Path, out_png: Path) -> Path | None:
    """Loss and validation metrics per epoch from Lightning's CSV log."""
    per_epoch = _epoch_log(metrics_csv)
    if per_epoch is None:
        return None
    losses = [c for c in per_epoch.columns if c.endswith("loss")]
    scores = [c for c in per_epoch.columns if c.startswith("val/") and not c.endswith("loss")]
    return _two_panels(per_epoch, [("loss", losses), ("validation metrics", scores)], out_png)


def plot_pseudo_labels(metrics_csv: Path, out_png: Path) -> Path | None:
    """A semi-supervised run's pseudo-label diagnostics per epoch: the share of unlabelled
    rows with a confident pseudo-label, the share of each consensus case, and the accuracy of
    the confident pseudo-labels where the hidden labels are known. None for other runs."""
    per_epoch = _epoch_log(metrics_csv)
    columns = [] if per_epoch is None else [c for c in per_epoch.columns if c.startswith("pseudo/")]
    if not columns:
        return None
    accuracy = [c for c in columns if c.startswith("pseudo/accuracy")]
    shares = [c for c in columns if c not in accuracy]
    return _two_panels(per_epoch, [("shares of unlabelled rows", shares), ("pseudo-label accuracy (hidden labels)", accuracy)],
                       out_png, ylim=(-0.02, 1.02), label=lambda c: c.split("/", 1)[1])
