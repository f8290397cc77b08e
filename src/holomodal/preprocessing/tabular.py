"""Tabular columns: categorical vocabularies and continuous standardisation.

Continuous statistics are fitted on the finite training values only; numbers that are
+-inf or beyond float32's range (allowed through validation by ``on_nonfinite: missing``)
are missing cells. Standardised values are clipped to +-``STANDARD_LIMIT``: no training
value reaches it (with n rows |z| <= sqrt(n - 1)), and a value further out at prediction
time would only push the network into overflow and NaN probabilities.
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import pandas as pd
import torch

from holomodal.schema import Column, continuous_numbers, nonfinite_mask

UNKNOWN_INDEX = 0  # code of a category never seen in training; known values start at 1
STANDARD_LIMIT = 1e4


def standardise(numbers: np.ndarray, mean: Any, std: Any) -> np.ndarray:
    return np.clip((numbers - mean) / std, -STANDARD_LIMIT, STANDARD_LIMIT)


def fitted_moments(numbers: np.ndarray) -> tuple[float, float]:
    """Mean and standard deviation (float64) of the usable numbers; (0, 1) when there are
    none, std 1 when they do not vary, so that standardising never divides by zero."""
    numbers = numbers[~np.isnan(numbers) & ~nonfinite_mask(numbers)]
    if not numbers.size:
        return 0.0, 1.0
    std = float(numbers.std())
    return float(numbers.mean()), std if std > 0 and np.isfinite(std) else 1.0


class UnseenCategoryWarning(UserWarning):
    """A categorical value at transform time that the training split never held."""


def _as_category_strings(values: pd.Series) -> pd.Series:
    # values compare as strings so that 1, 1.0 and "1" in a CSV all name one category
    def norm(v: Any) -> Any:
        if v is None or (isinstance(v, float) and np.isnan(v)):
            return None
        if isinstance(v, (float, np.floating)) and float(v).is_integer():
            v = int(v)
        text = str(v).strip()
        return text if text else None

    return values.map(norm)


class TabularProcessor:
    def __init__(self, categorical: list[Column], continuous: list[Column]) -> None:
        self.categorical = categorical
        self.continuous = continuous
        self.vocab_: dict[str, list[str]] = {}
        self.mean_: dict[str, float] = {}
        self.std_: dict[str, float] = {}

    @property
    def names(self) -> list[str]:
        return [c.name for c in self.categorical + self.continuous]

    def fit(self, df: pd.DataFrame) -> "TabularProcessor":
        for col in self.categorical:
            values = _as_category_strings(df[col.name]).dropna()
            self.vocab_[col.name] = sorted(values.unique().tolist())
        for col in self.continuous:
            self.mean_[col.name], self.std_[col.name] = fitted_moments(continuous_numbers(df[col.name]))
        return self

    def transform(self, df: pd.DataFrame, summary: dict[str, Any],
                  split: str | None = None) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        n = len(df)
        cat = np.zeros((n, len(self.categorical)), dtype=np.int64)
        cat_missing = np.zeros((n, len(self.categorical)), dtype=bool)
        for j, col in enumerate(self.categorical):
            values = _as_category_strings(df[col.name])
            missing = values.isna().to_numpy()
            lookup = {v: i + 1 for i, v in enumerate(self.vocab_[col.name])}
            codes = values.map(lookup)
            unseen = codes.isna().to_numpy() & ~missing
            if unseen.any():
                counts = values[unseen].value_counts()
                shown = ", ".join(f"{v!r} x{c}" for v, c in counts.iloc[:5].items())
                more = f" and {len(counts) - 5} more" if len(counts) > 5 else ""
                where = f" ({split} split)" if split else ""
                # one message per column and split (Python shows a repeated warning once)
                warnings.warn(
                    f"column '{col.name}'{where}: {int(unseen.sum())} cell(s) hold {len(counts)} value(s) never seen "
                    f"in training ({shown}{more}); they map to the 'unknown' category",
                    UnseenCategoryWarning,
                    stacklevel=3,
                )
                summary.setdefault("unseen_categories", {})[col.name] = int(unseen.sum())
            cat[:, j] = codes.fillna(UNKNOWN_INDEX).to_numpy(dtype=np.int64)
            cat_missing[:, j] = missing
        con = np.zeros((n, len(self.continuous)), dtype=np.float32)
        con_missing = np.zeros((n, len(self.continuous)), dtype=bool)
        for j, col in enumerate(self.continuous):
            values = continuous_numbers(df[col.name])
            overflow = nonfinite_mask(values)
            if overflow.any():
                summary.setdefault("nonfinite_cells", {})[col.name] = int(overflow.sum())
            missing = np.isnan(values) | overflow
            with np.errstate(invalid="ignore", over="ignore"):
                con[:, j] = np.where(missing, 0.0, standardise(values, self.mean_[col.name], self.std_[col.name]))
            con_missing[:, j] = missing
        cell_missing = torch.from_numpy(np.concatenate([cat_missing, con_missing], axis=1))
        summary["missing_cells"] = {
            name: int(cell_missing[:, j].sum()) for j, name in enumerate(self.names)
        }
        tensors = {"categorical": torch.from_numpy(cat), "continuous": torch.from_numpy(con)}
        return tensors, cell_missing

    def raw_matrix(self, df: pd.DataFrame) -> np.ndarray:
        """Codes and raw numbers with NaN where missing: the input of the importance forest."""
        tensors, missing = self.transform(df, {})
        mat = np.concatenate(
            [tensors["categorical"].numpy().astype(np.float64), tensors["continuous"].numpy().astype(np.float64)], axis=1
        )
        mat[missing.numpy()] = np.nan
        return mat

    def spec(self) -> dict[str, Any]:
        return {
            "cardinalities": [len(self.vocab_[c.name]) + 1 for c in self.categorical],
            "n_continuous": len(self.continuous),
            "columns": self.names,
        }

    def state(self) -> dict[str, Any]:
        return {"vocab": self.vocab_, "mean": self.mean_, "std": self.std_}

    def load_state(self, state: dict[str, Any]) -> None:
        self.vocab_, self.mean_, self.std_ = state["vocab"], state["mean"], state["std"]
