"""Predictions as a table: class probabilities and, per row, which inputs were missing.

Input that does not fit the model stops before any prediction, with a message that names
the file, the column and, where it helps, the rows: unreadable file, missing column,
column the model does not know, value of the wrong type.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from holomodal.errors import DataError, HolomodalError, SchemaError
from holomodal.estimator import Classifier
from holomodal.schema import Modality

# columns a prediction table may leave out: they describe rows, the model never reads them
_OPTIONAL = (Modality.LABEL, Modality.ID, Modality.GROUP)
_PARQUET = (".parquet", ".pq")
_CSV = (".csv", ".txt", ".gz")


def read_frame(path: str | Path) -> pd.DataFrame:
    """A CSV or parquet file as a DataFrame; a file that cannot be read raises a
    :class:`DataError` naming it and saying why."""
    p = Path(path)
    if not p.exists():
        raise DataError(f"data file '{p}' not found")
    if p.is_dir():
        raise DataError(f"data file '{p}' is a folder, not a CSV or parquet file")
    if p.suffix.lower() in _PARQUET:
        kind, reader = "parquet", pd.read_parquet
    elif p.suffix.lower() in _CSV:
        kind, reader = "CSV", pd.read_csv
    else:
        raise DataError(f"data file '{p}': unsupported format '{p.suffix}' (use .csv or .parquet)")
    try:
        frame = reader(p)
    except Exception as exc:  # pandas and pyarrow raise many types; all mean "unreadable"
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise DataError(f"cannot read data file '{p}' as {kind}: {reason}") from None
    if len(frame) == 0:
        raise DataError(f"data file '{p}' holds no rows")
    return frame


def check_prediction_input(clf: Classifier, frame: pd.DataFrame, *, source: str | None = None,
                           allow_extra: bool = False) -> pd.DataFrame:
    """``frame`` ready for encoding: every input column of the model present, no unknown
    column (unless ``allow_extra``), values of the declared types. Row-describing columns
    (label, id, group) may be absent; absent ones are added empty."""
    schema = clf.schema
    where = f"'{source}': " if source else ""
    inputs = [c.name for c in schema.columns if c.modality not in _OPTIONAL]
    missing = [n for n in inputs if n not in frame.columns]
    if missing:
        raise SchemaError(
            f"{where}column(s) {', '.join(repr(n) for n in missing)} needed by the model are missing "
            f"(the model reads: {inputs})"
        )
    extra = [n for n in frame.columns if n not in schema.column_names]
    if extra and not allow_extra:
        raise SchemaError(
            f"{where}unknown column(s) {', '.join(repr(str(n)) for n in extra)}: the model was not trained "
            f"on them (its columns: {schema.column_names}); drop them before predicting"
        )
    frame = frame.drop(columns=extra)
    for col in schema.columns:
        if col.modality in _OPTIONAL[1:] and col.name not in frame.columns:
            frame = frame.assign(**{col.name: None})
    try:
        schema.validate(frame, require_label=False, allow_extra=False)
    except HolomodalError as exc:
        raise type(exc)(f"{where}{exc}") from None
    return frame


def predict_frame(clf: Classifier, frame: pd.DataFrame, *, source: str | None = None,
                  allow_extra: bool = False) -> pd.DataFrame:
    """One row per input row: ``proba_<class>`` columns, the prediction, and missingness."""
    clf._check_fitted()
    frame = check_prediction_input(clf, frame, source=source, allow_extra=allow_extra)
    batch, _ = clf._encode(frame.drop(columns=[clf.schema.label.name], errors="ignore"), "test", None, with_target=False)
    proba = clf._probabilities(batch)
    classes = clf.preprocessor_.classes_
    out = pd.DataFrame(proba, columns=[f"proba_{c}" for c in classes], index=frame.index)
    out["prediction"] = np.asarray(classes)[proba.argmax(axis=1)] if clf.schema.task.value != "multilabel" else [
        [c for c, p in zip(classes, row) if p >= 0.5] for row in proba
    ]
    for m, present in batch.present.items():
        out[f"missing_{m}"] = (~present).numpy()
    if batch.cell_missing is not None:
        names = [c.name for c in clf.schema.tabular]
        cells = batch.cell_missing.numpy()
        out["missing_cells"] = [", ".join(n for n, miss in zip(names, row) if miss) for row in cells]
    return out


def predict_file(clf: Classifier, data: str | Path, out: str | Path) -> pd.DataFrame:
    """Predictions for a CSV/parquet file, written to ``out`` (parquet or CSV by suffix);
    ``out`` is checked first, so a bad output path costs no inference."""
    out = Path(out)
    if out.exists():
        raise DataError(f"will not overwrite '{out}': it exists")
    if out.suffix.lower() not in _PARQUET + (".csv",):
        raise DataError(f"output file '{out}': unsupported format '{out.suffix}' (use .parquet or .csv)")
    if not out.parent.exists():
        raise DataError(f"output folder '{out.parent}' does not exist")
    preds = predict_frame(clf, read_frame(data), source=str(data))
    if out.suffix.lower() in _PARQUET:
        preds.to_parquet(out)
    else:
        preds.to_csv(out, index=False)
    return preds
