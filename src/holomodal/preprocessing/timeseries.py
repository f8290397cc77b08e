"""Irregular multivariate time series, binned hourly with an observation mask and
time-since-last-observation channels (the GRU-D style inputs).

Each cell holds an array of rows ``(time_in_hours, channel_index, value)``. Binning is
done for all rows of a split at once with ``np.bincount``; several observations in one
bin are averaged.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import torch

from holomodal.schema import Column


class TimeSeriesProcessor:
    def __init__(self, column: Column) -> None:
        self.column = column
        self.channels: list[str] = list(column.options.get("channels", []))
        self.hours = int(column.options.get("hours", 48))
        self.mean_: list[float] = []
        self.std_: list[float] = []

    def _binned(self, df: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
        cells = df[self.column.name].tolist()
        n, t, c = len(cells), self.hours, len(self.channels)
        arrays = [np.asarray(a, dtype=np.float64).reshape(-1, 3) if a is not None else np.zeros((0, 3)) for a in cells]
        lengths = np.array([len(a) for a in arrays])
        obs = np.concatenate(arrays) if lengths.sum() else np.zeros((0, 3))
        rows = np.repeat(np.arange(n), lengths)
        steps = np.clip(np.floor(obs[:, 0]).astype(np.int64), 0, t - 1)
        chans = obs[:, 1].astype(np.int64)
        keep = np.isfinite(obs[:, 2]) & (chans >= 0) & (chans < c) & (obs[:, 0] >= 0) & (obs[:, 0] <= t)
        flat = (rows * t + steps) * c + chans
        sums = np.bincount(flat[keep], weights=obs[keep, 2], minlength=n * t * c)
        counts = np.bincount(flat[keep], minlength=n * t * c)
        values = np.divide(sums, counts, out=np.zeros_like(sums), where=counts > 0)
        return values.reshape(n, t, c), (counts > 0).reshape(n, t, c)

    def fit(self, df: pd.DataFrame) -> "TimeSeriesProcessor":
        values, observed = self._binned(df)
        mean, std = [], []
        for j in range(len(self.channels)):
            seen = values[..., j][observed[..., j]]
            mean.append(float(seen.mean()) if len(seen) else 0.0)
            std.append(float(seen.std()) if len(seen) > 1 and seen.std() > 0 else 1.0)
        self.mean_, self.std_ = mean, std
        return self

    def transform(self, df: pd.DataFrame, summary: dict[str, Any]) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        values, observed = self._binned(df)
        values = np.where(observed, (values - np.asarray(self.mean_)) / np.asarray(self.std_), 0.0)
        # hours since the channel was last observed (from the window start if never yet)
        delta = np.zeros_like(values)
        for step in range(1, self.hours):
            delta[:, step] = np.where(observed[:, step - 1], 1.0, delta[:, step - 1] + 1.0)
        present = observed.reshape(len(df), -1).any(axis=1)
        summary.setdefault("observed_fraction", {})[self.column.name] = float(observed.mean()) if observed.size else 0.0
        tensors = {
            "values": torch.from_numpy(values.astype(np.float32)),
            "observed": torch.from_numpy(observed.astype(np.float32)),
            "delta": torch.from_numpy((delta / self.hours).astype(np.float32)),
        }
        return tensors, torch.from_numpy(present)

    def spec(self) -> dict[str, Any]:
        return {"channels": len(self.channels), "steps": self.hours, "names": self.channels}

    def state(self) -> dict[str, Any]:
        return {"mean": self.mean_, "std": self.std_}

    def load_state(self, state: dict[str, Any]) -> None:
        self.mean_, self.std_ = state["mean"], state["std"]
