"""Predictions as a table: class probabilities and, per row, which inputs were missing.

Input that does not fit the model stops before any prediction, with a message that names
the file, the column and, where it helps, the rows: unreadable file, missing column,
column the model does not know, value of the wrong type.
"""

from __future__ import annotations

import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Iterable, Iterator

import numpy as np
import pandas as pd

from holomodal.errors import DataError, HolomodalError, SchemaError
from holomodal.schema import Modality, Task
from holomodal.tables import PARQUET_SUFFIXES, read_table

if TYPE_CHECKING:
    from holomodal.estimator import Classifier

# columns a prediction table may leave out: they describe rows, the model never reads them
_OPTIONAL = (Modality.LABEL, Modality.ID, Modality.GROUP)
_PARQUET = PARQUET_SUFFIXES
EXTRA_POLICIES = ("warn", "ignore", "error")
UNREADABLE_POLICIES = ("error", "missing")


class PredictionWarning(UserWarning):
    """Input a prediction run does not use (extra columns) or treats as missing (unreadable files)."""


def read_frame(path: str | Path, encoding: str | None = None) -> pd.DataFrame:
    """A CSV or parquet file as a DataFrame (:func:`holomodal.tables.read_table`); a file that
    cannot be read raises a :class:`DataError` naming it and saying why."""
    return read_table(path, encoding=encoding)


def check_prediction_input(clf: Classifier, frame: pd.DataFrame, *, source: str | None = None,
                           extra: str = "warn", keep: Iterable[str] = ()) -> pd.DataFrame:
    """``frame`` ready for encoding: every input column of the model present, values of the
    declared types. Columns the model does not know are dropped, with one
    :class:`PredictionWarning` (``extra="warn"``), silently (``"ignore"``; also for the
    columns in ``keep``) or refused (``"error"``). Row-describing columns (label, id, group)
    may be absent; absent ones are added empty."""
    if extra not in EXTRA_POLICIES:
        raise ValueError(f"extra must be one of {EXTRA_POLICIES}, not {extra!r}")
    schema = clf.schema
    where = f"'{source}': " if source else ""
    duplicated = frame.columns[frame.columns.duplicated()].unique().tolist()
    if duplicated:
        raise SchemaError(f"{where}duplicate column name(s) {', '.join(repr(str(d)) for d in duplicated)}: every "
                          "column needs a name of its own")
    inputs = [c.name for c in schema.columns if c.modality not in _OPTIONAL]
    missing = [n for n in inputs if n not in frame.columns]
    if missing:
        raise SchemaError(
            f"{where}column(s) {', '.join(repr(n) for n in missing)} needed by the model are missing "
            f"(the model reads: {inputs})"
        )
    unknown = [n for n in frame.columns if n not in schema.column_names]
    told = [n for n in unknown if n not in set(keep)]
    if told and extra == "error":
        raise SchemaError(
            f"{where}unknown column(s) {', '.join(repr(str(n)) for n in told)}: the model was not trained "
            f"on them (its columns: {schema.column_names}); drop them before predicting"
        )
    if told and extra == "warn":
        warnings.warn(f"{where}column(s) {', '.join(repr(str(n)) for n in told)} are not used by the model and are "
                      f"ignored (it reads {inputs})", PredictionWarning, stacklevel=3)
    frame = frame.drop(columns=unknown)
    for col in schema.columns:
        if col.modality in _OPTIONAL[1:] and col.name not in frame.columns:
            frame = frame.assign(**{col.name: None})
    try:
        schema.validate(frame, require_label=False, allow_extra=False)
    except HolomodalError as exc:
        raise type(exc)(f"{where}{exc}") from None
    return frame


@contextmanager
def unreadable_policy(clf: Classifier, policy: str | None) -> Iterator[None]:
    """Within the block, image and audio files that cannot be read follow ``policy``
    (``error`` or ``missing``) instead of the policy the model was saved with; None keeps it."""
    if policy is None:
        yield
        return
    if policy not in UNREADABLE_POLICIES:
        raise DataError(f"on_unreadable must be one of {', '.join(UNREADABLE_POLICIES)}, not '{policy}'")
    # the file processors read the policy when they decode, so swapping it is enough
    processors = [p for p in clf.preprocessor_.processors.values() if hasattr(p, "on_unreadable")]
    saved = [p.on_unreadable for p in processors]
    try:
        for proc in processors:
            proc.on_unreadable = policy
        yield
    finally:
        for proc, old in zip(processors, saved):
            proc.on_unreadable = old


def predict_frame(clf: Classifier, frame: pd.DataFrame, *, source: str | None = None, extra: str = "warn",
                  keep: Iterable[str] = (), on_unreadable: str | None = None) -> pd.DataFrame:
    """One row per input row: the id columns of the schema that ``frame`` holds and the
    columns in ``keep`` (copied as they are), then ``proba_<class>`` columns and the
    prediction (for regression, the predicted value), and which inputs were missing.
    ``on_unreadable`` overrides the saved policy for unreadable files for this call."""
    clf._check_fitted()
    keep = list(dict.fromkeys(keep))
    where = f"'{source}': " if source else ""
    absent = [k for k in keep if k not in frame.columns]
    if absent:
        raise DataError(f"{where}column(s) {', '.join(repr(a) for a in absent)} to keep are not in the data "
                        f"(columns: {[str(c) for c in frame.columns]})")
    ids = [c.name for c in clf.schema.of(Modality.ID) if c.name in frame.columns and c.name not in keep]
    copied = frame[ids + keep].copy()
    frame = check_prediction_input(clf, frame, source=source, extra=extra, keep=keep)
    inputs = frame.drop(columns=[clf.schema.label.name], errors="ignore")
    with unreadable_policy(clf, on_unreadable):
        batch, summary = clf._encode(inputs, "test", None, with_target=False)
    for column, count in (summary.get("unreadable_files") or {}).items():
        warnings.warn(f"{where}{count} file(s) in column '{column}' could not be read and count as missing "
                      "(the missing_ columns say which rows)", PredictionWarning, stacklevel=2)
    proba = clf._probabilities(batch)
    if clf.schema.task == Task.REGRESSION:  # in the label's units, from the one encoding of the rows
        out = pd.DataFrame({"prediction": clf.preprocessor_.decode_values(proba[:, 0])}, index=frame.index)
    else:
        classes = clf.preprocessor_.classes_
        out = pd.DataFrame(proba, columns=[f"proba_{c}" for c in classes], index=frame.index)
        out["prediction"] = np.asarray(classes)[proba.argmax(axis=1)] if clf.schema.task != Task.MULTILABEL else [
            [c for c, p in zip(classes, row) if p >= 0.5] for row in proba
        ]
    for m, present in batch.present.items():
        out[f"missing_{m}"] = (~present).numpy()
    if batch.cell_missing is not None:
        names = [c.name for c in clf.schema.tabular]
        cells = batch.cell_missing.numpy()
        out["missing_cells"] = [", ".join(n for n, miss in zip(names, row) if miss) for row in cells]
    clash = [c for c in copied.columns if c in out.columns]
    if clash:
        raise DataError(f"{where}column(s) {clash} to copy have the names of prediction columns: rename them")
    # side by side by position: a repeated index in the input must not multiply rows
    joined = pd.concat([copied.reset_index(drop=True), out.reset_index(drop=True)], axis=1)
    return joined.set_axis(out.index)


def predict_file(clf: Classifier, data: str | Path, out: str | Path, *, keep: Iterable[str] = (),
                 on_unreadable: str | None = None, encoding: str | None = None, extra: str = "warn") -> pd.DataFrame:
    """Predictions for a CSV/parquet file, written to ``out`` (parquet or CSV by suffix);
    ``out`` is checked first, so a bad output path costs no inference."""
    out = Path(out)
    if out.exists():
        raise DataError(f"will not overwrite '{out}': it exists")
    if out.suffix.lower() not in _PARQUET + (".csv",):
        raise DataError(f"output file '{out}': unsupported format '{out.suffix}' (use .parquet or .csv)")
    if not out.parent.exists():
        raise DataError(f"output folder '{out.parent}' does not exist")
    preds = predict_frame(clf, read_frame(data, encoding=encoding), source=str(data), keep=keep,
                          on_unreadable=on_unreadable, extra=extra)
    if out.suffix.lower() in _PARQUET:
        preds.to_parquet(out)
    else:
        preds.to_csv(out, index=False)
    return preds
