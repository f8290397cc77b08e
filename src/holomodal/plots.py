"""PNG plots of a run (matplotlib, headless)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd


def plot_training_curves(metrics_csv: Path, out_png: Path) -> Path | None:
    """Loss and validation metrics per epoch from Lightning's CSV log."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not metrics_csv.exists():
        return None
    log = pd.read_csv(metrics_csv)
    if "epoch" not in log:
        return None
    per_epoch = log.groupby("epoch").last()
    losses = [c for c in per_epoch.columns if c.endswith("loss")]
    scores = [c for c in per_epoch.columns if c.startswith("val/") and not c.endswith("loss")]
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for col in losses:
        axes[0].plot(per_epoch.index, per_epoch[col], marker="o", label=col)
    for col in scores:
        axes[1].plot(per_epoch.index, per_epoch[col], marker="o", label=col)
    for ax, title in zip(axes, ("loss", "validation metrics")):
        ax.set_xlabel("epoch")
        ax.set_title(title)
        if ax.lines:
            ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out_png, dpi=100)
    plt.close(fig)
    return out_png
