"""Irregular multivariate time series, binned hourly with an observation mask and
time-since-last-observation channels (the GRU-D style inputs).

Each cell holds an array of rows ``(time_in_hours, channel_index, value)``. Binning is
done for all rows of a split at once with ``np.bincount``; several observations in one
bin are averaged. Observations with a NaN, or (under ``on_nonfinite: missing``) an infinite
or beyond-float32 number, are not observations; their channel statistics come from the
usable ones only.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import torch

from holomodal.preprocessing.tabular import fitted_moments, standardise
from holomodal.schema import Column, nonfinite_mask, series_cell


class TimeSeriesProcessor:
    def __init__(self, column: Column) -> None:
        self.column = column
        self.channels: list[str] = list(column.options.get("channels", []))
        self.hours = int(column.options.get("hours", 48))
        self.mean_: list[float] = []
        self.std_: list[float] = []

    def _binned(self, df: pd.DataFrame, summary: dict[str, Any] | None = None) -> tuple[np.ndarray, np.ndarray]:
        # cells passed the schema's validation, so every one converts
        arrays = [series_cell(a) for a in df[self.column.name].tolist()]
        n, t, c = len(arrays), self.hours, len(self.channels)
        lengths = np.array([len(a) for a in arrays], dtype=np.int64)
        obs = np.concatenate(arrays) if lengths.sum() else np.zeros((0, 3))
        rows = np.repeat(np.arange(n), lengths)
        overflow = nonfinite_mask(obs).any(axis=1)
        if summary is not None and overflow.any():
            summary.setdefault("nonfinite_cells", {})[self.column.name] = int(overflow.sum())
        time, chan = obs[:, 0], obs[:, 1]
        keep = ~np.isnan(obs).any(axis=1) & ~overflow & (chan >= 0) & (chan < c) & (time >= 0) & (time <= t)
        rows, time, chans, found = rows[keep], time[keep], chan[keep].astype(np.int64), obs[keep, 2]
        steps = np.clip(np.floor(time).astype(np.int64), 0, t - 1)
        flat = (rows * t + steps) * c + chans
        sums = np.bincount(flat, weights=found, minlength=n * t * c)
        counts = np.bincount(flat, minlength=n * t * c)
        values = np.divide(sums, counts, out=np.zeros_like(sums), where=counts > 0)
        return values.reshape(n, t, c), (counts > 0).reshape(n, t, c)

    def fit(self, df: pd.DataFrame) -> "TimeSeriesProcessor":
        values, observed = self._binned(df)
        moments = [fitted_moments(values[..., j][observed[..., j]]) for j in range(len(self.channels))]
        self.mean_, self.std_ = [m for m, _ in moments], [s for _, s in moments]
        return self

    def transform(self, df: pd.DataFrame, summary: dict[str, Any]) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        values, observed = self._binned(df, summary)
        values = np.where(observed, standardise(values, np.asarray(self.mean_), np.asarray(self.std_)), 0.0)
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
