"""Tabular columns: categorical vocabularies and continuous standardisation."""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import pandas as pd
import torch

from holomodal.schema import Column

UNKNOWN_INDEX = 0  # code of a category never seen in training; known values start at 1


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
            values = pd.to_numeric(df[col.name], errors="coerce").astype(float)
            mean, std = values.mean(), values.std(ddof=0)
            self.mean_[col.name] = 0.0 if np.isnan(mean) else float(mean)
            self.std_[col.name] = 1.0 if not std or np.isnan(std) else float(std)
        return self

    def transform(self, df: pd.DataFrame, summary: dict[str, Any]) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
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
                examples = sorted(set(values[unseen].tolist()))[:5]
                warnings.warn(
                    f"column '{col.name}': {int(unseen.sum())} value(s) never seen in training "
                    f"{examples} map to the 'unknown' category",
                    UnseenCategoryWarning,
                    stacklevel=3,
                )
                summary.setdefault("unseen_categories", {})[col.name] = int(unseen.sum())
            cat[:, j] = codes.fillna(UNKNOWN_INDEX).to_numpy(dtype=np.int64)
            cat_missing[:, j] = missing
        con = np.zeros((n, len(self.continuous)), dtype=np.float32)
        con_missing = np.zeros((n, len(self.continuous)), dtype=bool)
        for j, col in enumerate(self.continuous):
            values = pd.to_numeric(df[col.name], errors="coerce").to_numpy(dtype=np.float64)
            missing = ~np.isfinite(values)
            con[:, j] = np.where(missing, 0.0, (values - self.mean_[col.name]) / self.std_[col.name])
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
