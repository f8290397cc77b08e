"""Preprocessing, fitted on the training split only and saved with the model.

:class:`Preprocessor` turns a DataFrame into a :class:`~holomodal.batch.Batch` holding the
whole split as tensors, with the natural missingness (NaN cells, blank text, absent or
unreadable files) in its masks. Its fitted state is plain JSON: loading it never
unpickles code.
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import pandas as pd
import torch

from holomodal.batch import Batch
from holomodal.errors import DataError
from holomodal.preprocessing.audio import AudioProcessor
from holomodal.preprocessing.image import ImageProcessor
from holomodal.preprocessing.tabular import TabularProcessor, UnseenCategoryWarning
from holomodal.preprocessing.text import TextProcessor
from holomodal.preprocessing.timeseries import TimeSeriesProcessor
from holomodal.schema import TABULAR, Modality, Schema, Task, row_list

__all__ = ["LabelWarning", "Preprocessor", "UnseenCategoryWarning"]


class LabelWarning(UserWarning):
    """A class of the labels that a split lacks: metrics averaged over classes are undefined there."""


class Preprocessor:
    def __init__(self, schema: Schema) -> None:
        self.schema = schema
        self.processors: dict[str, Any] = {}
        if schema.tabular:
            self.processors[TABULAR] = TabularProcessor(schema.categorical, schema.continuous)
        for col in schema.columns:
            if col.modality == Modality.IMAGE:
                self.processors[col.name] = ImageProcessor(col, schema.on_unreadable, schema.allow_outside_root,
                                                           schema.max_image_pixels)
            elif col.modality == Modality.AUDIO:
                self.processors[col.name] = AudioProcessor(col, schema.on_unreadable, schema.allow_outside_root)
            elif col.modality == Modality.TEXT:
                self.processors[col.name] = TextProcessor(col)
            elif col.modality == Modality.TIMESERIES:
                self.processors[col.name] = TimeSeriesProcessor(col)
        self.classes_: list[str] = []
        # regression: the label is standardised with the training split's mean and std
        self.label_mean_, self.label_std_ = 0.0, 1.0

    @property
    def is_regression(self) -> bool:
        return self.schema.task == Task.REGRESSION

    # ---- labels ------------------------------------------------------------------------
    def _fit_labels(self, df: pd.DataFrame) -> None:
        label = self.schema.label
        if self.is_regression:
            self.classes_ = []
            values = df[label.name]
            numbers = pd.to_numeric(values, errors="coerce").to_numpy(dtype=np.float64)
            finite = numbers[np.isfinite(numbers)]
            if finite.size == 0:
                raise DataError(f"label column '{label.name}' (regression) holds no finite number in its "
                                f"{len(values)} training row(s)")
            std = float(finite.std())
            self.label_mean_ = float(finite.mean())
            # a constant label (or a single row) leaves the values unscaled rather than divided by 0
            self.label_std_ = std if std > 0 and np.isfinite(std) else 1.0
            return
        given = label.options.get("classes")
        if given:
            self.classes_ = [str(c) for c in given]
        elif self.schema.task == Task.MULTILABEL:
            raise DataError(f"multi-label column '{label.name}' needs its 'classes' option")
        else:
            values = df[label.name]
            self.classes_ = [str(v) for v in sorted(values.unique().tolist())]

    def check_labels(self, train: pd.DataFrame, **splits: pd.DataFrame | None) -> None:
        """The classes of every split, checked before anything is trained: the training split
        must hold at least two classes (two exactly under ``task: binary``), the other splits
        only training classes; a training class absent from another split is one
        :class:`LabelWarning` for that split, as metrics averaged over classes are undefined on it."""
        name = self.schema.label.name
        self._fit_labels(train)
        if self.is_regression:
            for split, df in {"training": train, **splits}.items():
                if df is not None:
                    self.encode_labels(df[name], split)
            if train[name].nunique() < 2:
                warnings.warn(f"label column '{name}' (regression): all {len(train)} rows of the training split "
                              "hold the same value, so the model can only learn that constant", LabelWarning,
                              stacklevel=3)
            return
        if self.schema.task == Task.MULTILABEL:
            for split, df in {"training": train, **splits}.items():
                if df is not None:
                    self.encode_labels(df[name], split)
            return
        held = np.unique(self.encode_labels(train[name], "training").numpy())
        if held.size < 2:
            raise DataError(
                f"label column '{name}': all {len(train)} rows of the training split hold the single class "
                f"'{self.classes_[held[0]]}'; a classifier needs at least two classes"
            )
        if self.schema.task == Task.BINARY and self.num_classes != 2:
            raise DataError(
                f"label column '{name}' is declared task: binary but has {self.num_classes} classes "
                f"{self.classes_}: set task: multiclass in the schema, or merge classes into two"
            )
        never = [c for i, c in enumerate(self.classes_) if i not in held]
        if never:
            warnings.warn(f"label column '{name}': class(es) {never} of the 'classes' option never occur in the "
                          "training split, so the model cannot learn them", LabelWarning, stacklevel=3)
        for split, df in splits.items():
            if df is None:
                continue
            present = np.unique(self.encode_labels(df[name], split).numpy())
            absent = [self.classes_[i] for i in held if i not in present]
            if absent:
                warnings.warn(
                    f"label column '{name}': training class(es) {absent} are absent from the {split} split, so "
                    "AUROC/AUPRC and class-averaged metrics are undefined on it (reported as NaN)",
                    LabelWarning, stacklevel=3,
                )

    def encode_labels(self, values: pd.Series, split: str | None = None) -> torch.Tensor:
        name = self.schema.label.name
        where = f" in the {split} split" if split else ""
        if self.is_regression:
            return torch.from_numpy(self._standardised(values, where))
        if self.schema.task == Task.MULTILABEL:
            out = torch.zeros((len(values), len(self.classes_)), dtype=torch.float32)
            for i, cell in enumerate(values.tolist()):
                try:
                    idx = [int(j) for j in (cell if cell is not None else [])]
                except (TypeError, ValueError):
                    idx = [-1]
                if any(j < 0 or j >= len(self.classes_) for j in idx):
                    raise DataError(f"label column '{name}'{where}, row {values.index[i]}: {cell!r} is not a list of "
                                    f"class indices in 0..{len(self.classes_) - 1}")
                out[i, idx] = 1.0
            return out
        lookup = {c: i for i, c in enumerate(self.classes_)}
        as_int = pd.to_numeric(values, errors="coerce")
        if self.schema.label.options.get("classes") and as_int.notna().all():
            codes = as_int
        else:
            codes = pd.to_numeric(values.map(lambda v: lookup.get(str(v))), errors="coerce")
        bad = (codes.isna() | (codes < 0) | (codes >= len(self.classes_)) | (codes % 1 != 0)).to_numpy()
        if bad.any():
            found = sorted({str(v) for v in values[bad]})
            raise DataError(
                f"label column '{name}'{where}: value(s) {found[:5]} in row(s) {row_list(values.index[bad])} "
                f"are not among the classes {self.classes_}"
            )
        return torch.from_numpy(np.array(codes.to_numpy(), dtype=np.int64))

    def _standardised(self, values: pd.Series, where: str) -> np.ndarray:
        """Regression labels as float32 of shape (N,), the shape the MSE loss and the
        regression metrics flatten to, standardised with the training split's mean and std."""
        name = self.schema.label.name
        numbers = pd.to_numeric(values, errors="coerce").to_numpy(dtype=np.float64)
        not_number = np.isnan(numbers) & values.notna().to_numpy()
        if not_number.any():
            found = sorted({repr(v) for v in values[not_number]})
            raise DataError(f"label column '{name}' (regression){where}: value(s) {', '.join(found[:5])} in "
                            f"row(s) {row_list(values.index[not_number])} are not numbers")
        bad = ~np.isfinite(numbers)
        if bad.any():
            found = sorted({str(v) for v in numbers[bad]})
            raise DataError(f"label column '{name}' (regression){where}: row(s) {row_list(values.index[bad])} "
                            f"hold {', '.join(found)} (missing or infinite) where a finite number is needed")
        return ((numbers - self.label_mean_) / self.label_std_).astype(np.float32)

    def decode_values(self, values: np.ndarray) -> np.ndarray:
        """Standardised regression values (predictions or encoded labels) in the label's own units."""
        return np.asarray(values, dtype=np.float64) * self.label_std_ + self.label_mean_

    @property
    def label_scale(self) -> tuple[float, float]:
        """(mean, std) of the training split's regression label; (0, 1) for classification."""
        return self.label_mean_, self.label_std_

    @property
    def num_classes(self) -> int:
        return 1 if self.is_regression else len(self.classes_)

    # ---- fit / transform ---------------------------------------------------------------
    def fit(self, df: pd.DataFrame, unlabelled: pd.DataFrame | None = None) -> "Preprocessor":
        """Labels from ``df``; the inputs' statistics (category codes, z-scores, pixel means)
        from ``df`` and the ``unlabelled`` rows of a semi-supervised run together."""
        self.schema.validate(df, allow_extra=True)
        self._fit_labels(df)
        rows = df if unlabelled is None else pd.concat([df.drop(columns=[self.schema.label.name]), unlabelled.drop(
            columns=[self.schema.label.name], errors="ignore")], ignore_index=True)
        for proc in self.processors.values():
            proc.fit(rows)
        return self

    def transform(self, df: pd.DataFrame, *, with_target: bool = True,
                  split: str | None = None) -> tuple[Batch, dict[str, Any]]:
        """The whole table as one :class:`Batch`, plus a summary of what was missing;
        ``split`` names the table in warnings."""
        self.schema.validate(df, require_label=with_target, allow_extra=True)
        summary: dict[str, Any] = {"rows": len(df)}
        inputs, present = {}, {}
        cell_missing = None
        for key, proc in self.processors.items():
            if key == TABULAR:
                inputs[key], cell_missing = proc.transform(df, summary, split=split)
                present[key] = ~cell_missing.all(dim=1) if cell_missing.shape[1] else torch.ones(len(df), dtype=torch.bool)
            else:
                inputs[key], present[key] = proc.transform(df, summary)
        summary["absent_modalities"] = {m: int((~p).sum()) for m, p in present.items()}
        target = self.encode_labels(df[self.schema.label.name]) if with_target else None
        batch = Batch(inputs, present, cell_missing, target, torch.arange(len(df))).zero_missing()
        return batch, summary

    def tabular_matrix(self, df: pd.DataFrame) -> np.ndarray:
        """Tabular cells as numbers with NaN where missing (for feature-importance ranking)."""
        return self.processors[TABULAR].raw_matrix(df)

    # ---- description and state ---------------------------------------------------------
    @property
    def input_specs(self) -> dict[str, dict[str, Any]]:
        return {key: proc.spec() for key, proc in self.processors.items()}

    def state_dict(self) -> dict[str, Any]:
        return {
            "schema": self.schema.to_dict(),
            "classes": self.classes_,
            "label_scale": [self.label_mean_, self.label_std_],
            "processors": {key: proc.state() for key, proc in self.processors.items()},
        }

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> "Preprocessor":
        pre = cls(Schema.from_dict(state["schema"]))
        pre.classes_ = list(state["classes"])
        # states saved before regression existed hold no scale: the identity, which
        # classification never reads
        mean, std = (float(v) for v in state.get("label_scale") or (0.0, 1.0))
        if not (np.isfinite(mean) and np.isfinite(std) and std > 0):
            raise ValueError(f"label_scale {[mean, std]} is not a finite mean and a positive std")
        pre.label_mean_, pre.label_std_ = mean, std
        for key, proc_state in state["processors"].items():
            pre.processors[key].load_state(proc_state)
        return pre
