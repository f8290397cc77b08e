"""The one place that describes a data set: its columns, their modality and options.

A :class:`Schema` maps every column of a table (a pandas DataFrame, parquet or CSV file)
to a :class:`Modality`. Tabular columns (categorical and continuous) together form the
``tabular`` modality; every image, text, audio or time-series column is a modality of its
own, named after the column. Missingness is never encoded in values: it is derived from
NaN / blank cells and absent files, and travels as explicit masks (see
:mod:`holomodal.batch`).
"""

from __future__ import annotations

import json
import re
import warnings
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import pandas as pd

from holomodal.errors import DataError, SchemaError

TABULAR = "tabular"


class Modality(str, Enum):
    IMAGE = "image"
    CATEGORICAL = "categorical"
    CONTINUOUS = "continuous"
    TEXT = "text"
    AUDIO = "audio"
    TIMESERIES = "timeseries"
    LABEL = "label"
    ID = "id"
    GROUP = "group"
    TIME = "time"
    VIEW = "view"


class Task(str, Enum):
    BINARY = "binary"
    MULTICLASS = "multiclass"
    MULTILABEL = "multilabel"
    REGRESSION = "regression"


TABULAR_MODALITIES = (Modality.CATEGORICAL, Modality.CONTINUOUS)
FILE_MODALITIES = (Modality.IMAGE, Modality.AUDIO)


def time_values(values: pd.Series, column: str) -> np.ndarray:
    """A time column as float days (numbers are taken as they are; dates become days since
    1970-01-01); blank cells are NaN. Values that are neither name their rows."""
    if pd.api.types.is_datetime64_any_dtype(values):
        dates = values
    else:
        numbers = pd.to_numeric(values, errors="coerce")
        blank = values.isna() | (values.astype(str).str.strip() == "")
        if not (numbers.isna() & ~blank).any():
            out = numbers.to_numpy(dtype=np.float64)
            if not np.isfinite(out[~blank.to_numpy()]).all():
                bad = ~np.isfinite(out) & ~blank.to_numpy()
                raise SchemaError(f"time column '{column}': infinite value(s) in row(s) {row_list(values.index[bad])}")
            return out
        dates = pd.to_datetime(values.where(~blank), errors="coerce", format="mixed")
        bad = (dates.isna() & ~blank).to_numpy()
        if bad.any():
            raise SchemaError(f"time column '{column}' holds values that are neither numbers nor dates (e.g. "
                              f"{values[bad].iloc[0]!r}) in row(s) {row_list(values.index[bad])}")
    stamps = dates.to_numpy(dtype="datetime64[ns]")
    days = (stamps - np.datetime64("1970-01-01", "ns")) / np.timedelta64(1, "D")
    return np.where(pd.isna(dates).to_numpy(), np.nan, days).astype(np.float64)


@dataclass
class Column:
    """One column: its name, modality and modality-specific options.

    Options used by the preprocessors:
      image: ``root`` (folder for relative paths), ``channels`` (1 or 3), ``size``.
      audio: ``root``, ``sample_rate``, ``n_mels``, ``duration`` (seconds).
      text: ``max_length``.
      timeseries: ``channels`` (names, in order), ``hours`` (window length), cells hold an
        array of rows ``(time_in_hours, channel_index, value)``.
      label: ``task`` (binary / multiclass / multilabel / regression), ``classes`` (optional,
        in order; not for regression).
      time: none; cells hold numbers (days, or any unit) or dates, ordering the rows of a
        ``group`` (a patient's studies): rows sharing group and time are one study.
      view: ``frontal`` and ``lateral``, the cell values of each view (e.g. ``[PA, AP]`` and
        ``[L, LL, LATERAL]``); other values are neither view.
    """

    name: str
    modality: Modality
    options: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        try:
            self.modality = Modality(self.modality)
        except ValueError:
            known = ", ".join(m.value for m in Modality)
            raise SchemaError(
                f"column '{self.name}': unknown modality '{self.modality}' (known: {known})"
            ) from None

    @property
    def modality_key(self) -> str:
        """Name of the modality this column feeds (``tabular`` for table cells)."""
        return TABULAR if self.modality in TABULAR_MODALITIES else self.name

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "modality": self.modality.value, "options": dict(self.options)}


@dataclass
class Schema:
    """A declarative description of a data set.

    ``on_unreadable`` is the policy for image/audio files that cannot be read: ``error``
    stops with a message naming the file and row; ``missing`` treats the modality as absent
    for that row and counts it in the run summary.

    ``on_nonfinite`` is the policy for +-inf and values that overflow float32 in continuous
    and time-series columns: ``error`` names column and rows, ``missing`` makes them missing
    cells (time-series: dropped observations), counted per column in the data summary's
    ``nonfinite_cells``.

    ``allow_outside_root`` lets file paths resolve outside their column's ``root`` (absolute
    paths, ``..``); by default such paths are refused. ``max_image_pixels`` caps the size of
    an image file (width x height) before it is decoded.
    """

    columns: list[Column]
    on_unreadable: str = "error"
    on_nonfinite: str = "error"
    allow_outside_root: bool = False
    max_image_pixels: int = 50_000_000

    def __post_init__(self) -> None:
        names = [c.name for c in self.columns]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise SchemaError(f"column(s) declared twice in the schema: {', '.join(dup)}")
        labels = [c for c in self.columns if c.modality == Modality.LABEL]
        if len(labels) != 1:
            raise SchemaError(f"the schema needs exactly one label column, found {len(labels)}")
        for key in ("on_unreadable", "on_nonfinite"):
            if getattr(self, key) not in ("error", "missing"):
                raise SchemaError(f"{key} must be 'error' or 'missing', not '{getattr(self, key)}'")
        if not isinstance(self.allow_outside_root, bool):
            raise SchemaError(f"allow_outside_root must be true or false, not {self.allow_outside_root!r}")
        if isinstance(self.max_image_pixels, bool) or not isinstance(self.max_image_pixels, int) or self.max_image_pixels < 1:
            raise SchemaError(f"max_image_pixels must be a positive whole number, not {self.max_image_pixels!r}")
        for modality in (Modality.TIME, Modality.VIEW):
            found = [c.name for c in self.columns if c.modality == modality]
            if len(found) > 1:
                raise SchemaError(f"the schema declares {len(found)} {modality.value} columns ({', '.join(found)}); "
                                  "at most one is allowed")
        for col in self.of(Modality.VIEW):
            views = {k: col.options.get(k) for k in ("frontal", "lateral")}
            bad = [k for k, v in views.items() if not (isinstance(v, (list, tuple)) and v and all(isinstance(x, str) for x in v))]
            if bad:
                raise SchemaError(f"view column '{col.name}': option '{bad[0]}' must list the cell values of that view "
                                  "(e.g. frontal: [PA, AP], lateral: [L, LATERAL])")
            both = sorted(set(views["frontal"]) & set(views["lateral"]))
            if both:
                raise SchemaError(f"view column '{col.name}': {both} listed as both frontal and lateral")
        if self.of(Modality.TIME, Modality.VIEW) and self.group_column() is None:
            raise SchemaError("time and view columns order and pair the rows of a group: the schema needs a group column "
                              "(e.g. the patient)")
        task = self.label.options.get("task", Task.MULTICLASS.value)
        try:
            Task(task)
        except ValueError:
            raise SchemaError(
                f"label column '{self.label.name}': unknown task '{task}' "
                f"(known: {', '.join(t.value for t in Task)})"
            ) from None

    # ---- views -------------------------------------------------------------------------
    def __getitem__(self, name: str) -> Column:
        for c in self.columns:
            if c.name == name:
                return c
        raise SchemaError(f"unknown column '{name}': the schema has {self.column_names}")

    @property
    def column_names(self) -> list[str]:
        return [c.name for c in self.columns]

    @property
    def label(self) -> Column:
        return next(c for c in self.columns if c.modality == Modality.LABEL)

    @property
    def task(self) -> Task:
        return Task(self.label.options.get("task", Task.MULTICLASS.value))

    def of(self, *modalities: Modality) -> list[Column]:
        return [c for c in self.columns if c.modality in modalities]

    @property
    def categorical(self) -> list[Column]:
        return self.of(Modality.CATEGORICAL)

    @property
    def continuous(self) -> list[Column]:
        return self.of(Modality.CONTINUOUS)

    @property
    def tabular(self) -> list[Column]:
        """Tabular columns, categorical first then continuous (the layout TIP's encoder needs)."""
        return self.categorical + self.continuous

    @property
    def modalities(self) -> list[str]:
        """Names of the input modalities, in a stable order."""
        keys: list[str] = []
        if self.tabular:
            keys.append(TABULAR)
        for c in self.of(Modality.IMAGE, Modality.TEXT, Modality.AUDIO, Modality.TIMESERIES):
            keys.append(c.name)
        return keys

    def modality_type(self, key: str) -> Modality:
        """The kind of a modality key: ``tabular`` or the column's modality."""
        if key == TABULAR:
            return Modality.CONTINUOUS if not self.categorical else Modality.CATEGORICAL
        return self[key].modality

    def id_column(self) -> Column | None:
        found = self.of(Modality.ID)
        return found[0] if found else None

    def group_column(self) -> Column | None:
        found = self.of(Modality.GROUP)
        return found[0] if found else None

    def time_column(self) -> Column | None:
        found = self.of(Modality.TIME)
        return found[0] if found else None

    def view_column(self) -> Column | None:
        found = self.of(Modality.VIEW)
        return found[0] if found else None

    # ---- (de)serialisation -------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {
            "on_unreadable": self.on_unreadable, "on_nonfinite": self.on_nonfinite,
            "allow_outside_root": self.allow_outside_root, "max_image_pixels": self.max_image_pixels,
            "columns": [c.to_dict() for c in self.columns],
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Schema":
        if not isinstance(data, dict) or "columns" not in data:
            raise SchemaError("a schema must be a mapping with a 'columns' list")
        cols = []
        for i, c in enumerate(data["columns"]):
            if "name" not in c or "modality" not in c:
                raise SchemaError(f"schema column #{i} needs 'name' and 'modality'")
            cols.append(Column(c["name"], c["modality"], dict(c.get("options") or {})))
        known = {"columns", "on_unreadable", "on_nonfinite", "allow_outside_root", "max_image_pixels"}
        unknown = sorted(set(data) - known)
        if unknown:
            raise SchemaError(f"unknown schema key(s) {unknown} (known: {sorted(known)})")
        policies = {k: data[k] for k in known - {"columns"} if k in data}
        return cls(cols, **policies)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    @classmethod
    def infer(cls, df: pd.DataFrame, label: str, **hints: Any) -> "Schema":
        """A schema for ``df``; see :func:`infer_schema` (its keyword options: ``image``,
        ``audio``, ``text``, ``categorical``, ``continuous``, ``id``, ``group``, ``ignore``,
        ``task``, ``max_categories``, ``root``), which also says why each column got its
        modality. Named columns get that modality whatever their values; columns named in
        ``ignore`` are left out of the schema (the model never reads them). Every other
        column is typed from its values, and identifiers, constant columns and copies of the
        label are left out with one :class:`InferenceWarning` each."""
        return infer_schema(df, label, **hints).schema

    # ---- validation --------------------------------------------------------------------
    def validate(self, df: pd.DataFrame, *, require_label: bool = True, allow_extra: bool = False) -> None:
        """Check a table against the schema; raise an error that names the column and rows."""
        duplicated = df.columns[df.columns.duplicated()].unique().tolist()
        if duplicated:
            raise SchemaError(f"the data has duplicate column name(s) {', '.join(repr(d) for d in duplicated)}: "
                              "every column needs a name of its own")
        if len(df) == 0:
            raise DataError("the data set is empty: it has no rows")
        expected = [c.name for c in self.columns if require_label or c.modality != Modality.LABEL]
        absent = [n for n in expected if n not in df.columns]
        if absent:
            raise SchemaError(
                f"column(s) {', '.join(repr(a) for a in absent)} declared in the schema are not "
                f"in the data (columns present: {list(df.columns)})"
            )
        extra = [n for n in df.columns if n not in self.column_names]
        if extra and not allow_extra:
            raise SchemaError(
                f"unknown column(s) {', '.join(repr(e) for e in extra)}: not declared in the schema "
                f"(declared: {self.column_names})"
            )
        for col in self.continuous:
            values = df[col.name]
            if not (pd.api.types.is_numeric_dtype(values) or pd.api.types.is_bool_dtype(values)):
                converted = pd.to_numeric(values, errors="coerce")
                bad = values.notna() & converted.isna() & (values.astype(str).str.strip() != "")
                if bad.any():
                    rows = row_list(df.index[bad.to_numpy()])
                    raise SchemaError(
                        f"column '{col.name}' is declared continuous but holds non-numeric values "
                        f"(e.g. {values[bad].iloc[0]!r}) in row(s) {rows}"
                    )
            numbers = continuous_numbers(values)
            bad = nonfinite_mask(numbers)
            if bad.any():
                self._refuse_nonfinite(col, df.index[bad], numbers[bad][0])
        for col in self.of(Modality.TIMESERIES):
            cells = df[col.name].tolist()
            arrays = [series_cell(v) for v in cells]
            malformed = [i for i, a in enumerate(arrays) if a is None]
            if malformed:
                raise SchemaError(
                    f"time-series column '{col.name}': row(s) {row_list(df.index[malformed])} do not hold an "
                    f"array of (time_in_hours, channel_index, value) rows of 3 numbers "
                    f"(row {df.index[malformed[0]]} holds {_describe_cell(cells[malformed[0]])})"
                )
            flags = [nonfinite_mask(a) for a in arrays]
            bad_rows = [i for i, f in enumerate(flags) if f.any()]
            if bad_rows:
                first = bad_rows[0]
                self._refuse_nonfinite(col, df.index[bad_rows], arrays[first][flags[first]][0])
        for col in self.of(Modality.TIME):
            time_values(df[col.name], col.name)  # numbers or dates, else an error naming the rows
        for col in self.of(*FILE_MODALITIES, Modality.TEXT):
            values = df[col.name]
            if col.modality == Modality.IMAGE and col.options.get("source") == "array":
                continue
            ok = values.map(lambda v: v is None or isinstance(v, (str, Path)) or _is_nan(v))
            if not ok.all():
                rows = row_list(df.index[~ok.to_numpy()])
                raise SchemaError(
                    f"column '{col.name}' ({col.modality.value}) must hold file paths or text, "
                    f"found {type(values[~ok].iloc[0]).__name__} in row(s) {rows}"
                )
        if require_label:
            y = df[self.label.name]
            missing = y.isna() if self.task != Task.MULTILABEL else y.map(lambda v: v is None)
            if missing.any():
                raise DataError(
                    f"label column '{self.label.name}' is missing (NaN) in "
                    f"{int(missing.sum())} row(s): {row_list(df.index[missing.to_numpy()])}"
                )

    def _refuse_nonfinite(self, col: Column, rows: pd.Index, example: float) -> None:
        """+-inf and numbers beyond float32's range are an error, unless the schema's
        ``on_nonfinite: missing`` makes them missing values (the preprocessors mask them)."""
        if self.on_nonfinite == "missing":
            return
        raise DataError(
            f"column '{col.name}' ({col.modality.value}) holds infinite or out-of-range numbers (e.g. {example:g}; "
            f"float32 holds magnitudes up to {F32_MAX:.3g}) in row(s) {row_list(rows)}: correct them, "
            f'or set "on_nonfinite": "missing" in the schema to treat them as missing values'
        )


F32_MAX = float(np.finfo(np.float32).max)


def nonfinite_mask(numbers: np.ndarray) -> np.ndarray:
    """True where a number is +-inf or too large for float32 (NaN is a missing value, not flagged)."""
    return np.abs(numbers) > F32_MAX


def continuous_numbers(values: pd.Series) -> np.ndarray:
    """A continuous column as float64, NaN where blank or missing (nullable dtypes included)."""
    return pd.to_numeric(values, errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)


def series_cell(value: Any) -> np.ndarray | None:
    """A time-series cell as a float64 ``(n, 3)`` array of (time, channel, value) rows; a
    missing cell (None, NaN) is an empty one; None when the cell is malformed."""
    if value is None or value is pd.NA or (isinstance(value, (float, np.floating)) and np.isnan(value)):
        return np.zeros((0, 3))
    if isinstance(value, (str, bytes, dict)):
        return None
    if isinstance(value, np.ndarray) and value.dtype == object:
        value = list(value)  # parquet gives a list-of-lists cell back as an array of row arrays
    try:
        array = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError):  # ragged rows, non-numbers
        return None
    if array.size == 0:
        return np.zeros((0, 3))
    return array if array.ndim == 2 and array.shape[1] == 3 else None


def _describe_cell(value: Any) -> str:
    if isinstance(value, (str, bytes)):
        return f"a {type(value).__name__} {value[:40]!r}"
    shape = getattr(value, "shape", None)
    if shape is not None:
        return f"an array of shape {tuple(shape)}"
    if isinstance(value, (list, tuple)):
        lengths = sorted({len(r) if isinstance(r, (list, tuple, np.ndarray)) else 1 for r in value})
        return f"a {type(value).__name__} of rows of length {', '.join(map(str, lengths))}"
    return f"a {type(value).__name__}"


def _is_nan(v: Any) -> bool:
    return isinstance(v, float) and np.isnan(v)


def row_list(index: Iterable[Any], limit: int = 10) -> str:
    items = list(index)
    shown = ", ".join(str(i) for i in items[:limit])
    return shown + (f", ... ({len(items)} rows)" if len(items) > limit else "")


# ---- inference ---------------------------------------------------------------------------
IGNORED = "ignored"  # the modality shown for a column that inference leaves out
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp")
AUDIO_SUFFIXES = (".wav", ".flac", ".mp3", ".ogg")
# an identifier's name: "id", "row_id", "PatientID", "customerId", pandas' saved index
_ID_NAME = re.compile(r"^(id|uuid|guid|index|idx)$|[_\s.-](id|uuid|key|index|idx|no|nr|number)$|^Unnamed: \d+$",
                      re.IGNORECASE)
_ID_NAME_CASED = re.compile(r"[a-z](Id|ID)$")
# whole numbers that name things rather than count them: postal codes, diagnosis codes
_CODE_NAME = re.compile(r"zip|postal|postcode|(^|[_\s.-])code$", re.IGNORECASE)
_CODE_NAME_CASED = re.compile(r"[a-z]Code$")
MIN_ID_ROWS = 10  # below this, a column unique per row is as likely chance as an identifier
TEXT_WORDS = 3.0  # mean words per cell from which a many-valued string column is free text
FILE_SHARE = 0.9  # share of a column's cells naming image (audio) files to make it an image (audio) column


class InferenceWarning(UserWarning):
    """Schema inference left a column out of the model's inputs (an identifier, a constant,
    a copy of the label) or chose something a user should know (a regression task)."""


@dataclass(frozen=True)
class Inferred:
    """Why inference gave ``column`` its ``modality`` (``ignored``: left out of the schema)."""

    column: str
    modality: str
    why: str


@dataclass
class Inference:
    """The result of :func:`infer_schema`: the schema and one reason per column of the data."""

    schema: Schema
    reasons: list[Inferred]

    @property
    def ignored(self) -> list[str]:
        return [r.column for r in self.reasons if r.modality == IGNORED]


def infer_schema(
    df: pd.DataFrame,
    label: str,
    *,
    image: Iterable[str] = (),
    audio: Iterable[str] = (),
    text: Iterable[str] = (),
    categorical: Iterable[str] = (),
    continuous: Iterable[str] = (),
    id: Iterable[str] = (),
    group: Iterable[str] = (),
    ignore: Iterable[str] = (),
    task: str | None = None,
    max_categories: int = 20,
    root: str | Path | None = None,
    warn: bool = True,
) -> Inference:
    """A schema for ``df`` whose label is column ``label``, with the reason for every column.

    Columns named in ``image``, ``audio``, ``text``, ``categorical``, ``continuous``, ``id`` or
    ``group`` (rows sharing a value belong together, e.g. one patient's: a validation split
    keeps them on one side) get that modality; columns named in ``ignore`` are left out (the model never reads them:
    provenance, dates, anything that would leak the label). ``categorical`` is also how to
    keep a column that inference would leave out, or to make codes of whole numbers (postal
    codes, hospital numbers) categories instead of quantities; ``continuous`` does the
    opposite for a few-valued count.

    Every other column is typed from its values:

    * left out, with one :class:`InferenceWarning` each: columns with no value or a single
      value; columns that copy the label (a one-to-one mapping of it, or, for a regression
      label, a linear rescaling) or determine it (each of their values, held by several rows,
      goes with one label value: the label's source); strings unique per row without spaces
      and whole numbers unique per row that count up, fill a range or are named like one
      (``id``, ``row_id``, ``PatientID``), which become ``id`` columns (copied to predictions,
      never model inputs); strings with a distinct value in most rows; dates; array cells;
    * ``image`` / ``audio``: strings naming files with an image (audio) suffix; relative paths
      resolve against ``root`` when given (the column's ``root`` option);
    * ``text``: strings with more than ``max_categories`` distinct values and several words a cell;
    * ``categorical``: strings, booleans, whole numbers named like codes (``zip``,
      ``postal_code``), and small whole numbers (at most ``max_categories`` distinct values,
      all from 0 to ``max_categories``: codes, levels, counts);
    * ``continuous``: other numbers (a float column unique per row is a measurement, not an id).

    The label's task is ``binary`` for two classes, ``multiclass`` for more, and
    ``regression`` for numbers with more than ``max_categories`` distinct values (said in a
    warning); ``task`` overrides it. ``warn=False`` leaves the warnings to the caller, who has
    the same sentences in ``reasons``.
    """
    named: dict[str, Modality] = {}
    for modality, names in ((Modality.IMAGE, image), (Modality.AUDIO, audio), (Modality.TEXT, text),
                            (Modality.CATEGORICAL, categorical), (Modality.CONTINUOUS, continuous), (Modality.ID, id),
                            (Modality.GROUP, group)):
        for name in _names(names):
            if name in named and named[name] != modality:
                raise SchemaError(f"column '{name}' is named as both {named[name].value} and {modality.value}")
            named[name] = modality
    skip = set(_names(ignore))
    both = sorted(skip & set(named))
    if both:
        raise SchemaError(f"column(s) {both} are both ignored and given a modality")
    for name in [label, *named, *skip]:
        if name not in df.columns:
            raise SchemaError(f"unknown column '{name}': not in the data (columns: {list(df.columns)})")
    if label in named or label in skip:
        raise SchemaError(f"the label column '{label}' cannot also be an input or ignored")
    duplicated = df.columns[df.columns.duplicated()].unique().tolist()
    if duplicated:
        raise SchemaError(f"the data has duplicate column name(s) {duplicated}: every column needs a name of its own")

    label_column, label_why = _infer_label(df[label], label, task, max_categories)
    columns: list[Column] = []
    reasons: list[Inferred] = []
    warned: list[str] = []
    for name in df.columns:
        if name == label:
            columns.append(label_column)
            reasons.append(Inferred(name, label_column.modality.value, label_why))
            if label_column.options["task"] == Task.REGRESSION.value and task is None:
                warned.append(f"label '{name}': {label_why}")
            continue
        if name in skip:
            reasons.append(Inferred(name, IGNORED, "named by you to be left out"))
            continue
        values = df[name]
        if name in named:
            modality, why = named[name], f"named by you as {named[name].value}"
            if modality in FILE_MODALITIES:
                options, where = _file_options(values, root)
                why += where
            else:
                options = {}
        else:
            modality, why, options = _infer_column(values, df[label], label_column.options["task"], max_categories, root)
            if modality is None or modality == Modality.ID:
                warned.append(f"column '{name}' " + ("is left out of the schema: " if modality is None else
                              "is left out of the model's inputs and kept as an id column: ") + why)
        if modality is None:
            reasons.append(Inferred(name, IGNORED, why))
            continue
        columns.append(Column(name, modality, options))
        reasons.append(Inferred(name, modality.value, why))
    if warn:
        for message in warned:
            warnings.warn(message, InferenceWarning, stacklevel=2)
    return Inference(Schema(columns), reasons)


def _names(names: Iterable[str] | str) -> list[str]:
    return [names] if isinstance(names, str) else list(names)


def _integral(numbers: pd.Series) -> bool:
    finite = numbers[np.isfinite(numbers.to_numpy(dtype=np.float64))]
    return bool(len(finite)) and bool((finite % 1 == 0).all())


def _is_number(values: pd.Series) -> bool:
    return pd.api.types.is_numeric_dtype(values) and not pd.api.types.is_bool_dtype(values)


def _infer_label(y: pd.Series, name: str, task: str | None, max_categories: int) -> tuple[Column, str]:
    values = y.dropna()
    unlabelled = len(y) - len(values)
    note = f"; {unlabelled} row(s) have no label" if unlabelled else ""
    k = int(values.nunique())
    if task is not None:
        return Column(name, Modality.LABEL, {"task": task}), f"label, task {task} as given{note}"
    if _is_number(values) and k > max_categories:
        kind = "whole numbers" if _integral(values.astype(np.float64)) else "numbers"
        why = (f"{k} distinct {kind}: task regression (set task: multiclass in the schema to classify them "
               "instead)")
        return Column(name, Modality.LABEL, {"task": Task.REGRESSION.value}), why + note
    shown = ", ".join(str(v) for v in sorted(values.unique().tolist(), key=str)[:5]) + (", ..." if k > 5 else "")
    if k == 2:
        return Column(name, Modality.LABEL, {"task": Task.BINARY.value}), f"2 classes ({shown}): task binary{note}"
    return Column(name, Modality.LABEL, {"task": Task.MULTICLASS.value}), f"{k} classes ({shown}): task multiclass{note}"


def _infer_column(values: pd.Series, y: pd.Series, task: str, max_categories: int,
                  root: str | Path | None) -> tuple[Modality | None, str, dict[str, Any]]:
    """(modality or None to leave it out, why, options) of a column nobody named."""
    present = values.dropna()
    if pd.api.types.is_object_dtype(values) or pd.api.types.is_string_dtype(values):
        present = present[present.map(lambda v: not isinstance(v, str) or bool(v.strip()))]
    if len(present) == 0:
        return None, "every cell is empty", {}
    if pd.api.types.is_object_dtype(values) and present.map(lambda v: isinstance(v, (list, tuple, np.ndarray, dict))).any():
        return None, "its cells hold arrays: declare it a timeseries column (with its channels) to use it", {}
    k = int(present.nunique())
    if k == 1:
        first = present.iloc[0]
        first = first.item() if isinstance(first, np.generic) else first
        return None, f"constant: every filled cell holds {first!r}", {}
    leak = _label_copy(values, y, task)
    if leak:
        return None, leak, {}
    if pd.api.types.is_datetime64_any_dtype(values) or pd.api.types.is_timedelta64_dtype(values):
        return None, "dates or times: derive numbers from them (e.g. days since an event) to use them", {}
    if pd.api.types.is_bool_dtype(values):
        return Modality.CATEGORICAL, "true / false", {}
    if isinstance(values.dtype, pd.CategoricalDtype):
        return Modality.CATEGORICAL, f"a pandas category with {k} values", {}
    if _is_number(values):
        return _infer_number(values.name, present.astype(np.float64), k, max_categories)
    return _infer_strings(present.astype(str).str.strip(), k, len(values), max_categories, root)


def _infer_number(name: Any, present: pd.Series, k: int, max_categories: int) -> tuple[Modality | None, str, dict]:
    n = len(present)
    if not _integral(present):
        return Modality.CONTINUOUS, f"numbers, {k} distinct", {}
    if k == n and n >= MIN_ID_ROWS:
        numbers = present.to_numpy()
        steps = np.diff(numbers)
        counting = bool((steps > 0).all() or (steps < 0).all())
        filled = numbers.max() - numbers.min() + 1 <= 1.5 * n
        if counting or filled or _id_name(name):
            how = "counts up row by row" if counting else ("fills the range of its values" if filled else "is named like one")
            return Modality.ID, f"a whole number unique per row that {how}: an identifier", {}
    if _CODE_NAME.search(str(name)) or _CODE_NAME_CASED.search(str(name)):
        return Modality.CATEGORICAL, f"whole-number codes ({k} distinct), named like codes: categories, not quantities", {}
    low, high = int(present.min()), int(present.max())
    # few small non-negative values are codes or levels (1-4, 0-10); few values far from zero
    # (a saturation of 82-99 %, a year) are still quantities
    if k <= max_categories and low >= 0 and high <= max_categories:
        return Modality.CATEGORICAL, (f"{k} distinct whole numbers from {low} to {high}: categories (declare it "
                                      "continuous to keep it a number)"), {}
    return Modality.CONTINUOUS, f"whole numbers from {low} to {high}, {k} distinct", {}


def _infer_strings(present: pd.Series, k: int, rows: int, max_categories: int,
                   root: str | Path | None) -> tuple[Modality | None, str, dict]:
    n = len(present)
    lower = present.str.lower()
    for modality, suffixes in ((Modality.IMAGE, IMAGE_SUFFIXES), (Modality.AUDIO, AUDIO_SUFFIXES)):
        if lower.str.endswith(suffixes).mean() >= FILE_SHARE:
            options, where = _file_options(present, root)
            return modality, f"paths of {modality.value} files ({', '.join(sorted(_suffixes(lower, suffixes)))})" + where, options
    words = present.str.split().map(len)
    if k > max_categories and words.mean() >= TEXT_WORDS:
        return Modality.TEXT, f"free text: {k} distinct values, {words.mean():.1f} words a cell on average", {}
    spaced = bool((words > 1).any())
    if k == n and n >= MIN_ID_ROWS and not spaced:
        return Modality.ID, "a string unique per row, without spaces: an identifier", {}
    if k > max_categories and k >= 0.5 * n and n >= MIN_ID_ROWS:
        return None, (f"{k} distinct values in {n} filled rows: an identifier or code, too many categories to learn "
                      "(declare it categorical to keep it, or group if rows sharing a value belong together, "
                      "e.g. one patient's)"), {}
    return Modality.CATEGORICAL, f"strings, {k} distinct", {}


def _suffixes(lower: pd.Series, suffixes: tuple[str, ...]) -> set[str]:
    return {s for s in suffixes if lower.str.endswith(s).any()}


def _id_name(name: Any) -> bool:
    text = str(name)
    return bool(_ID_NAME.search(text) or _ID_NAME_CASED.search(text))


def _file_options(values: pd.Series, root: str | Path | None) -> tuple[dict[str, Any], str]:
    """A file column's ``root`` option: the given folder when some paths are relative."""
    paths = [v for v in values.dropna().tolist() if isinstance(v, str) and v.strip()]
    if root is None or all(Path(p).is_absolute() for p in paths):
        return {}, ""
    return {"root": str(root)}, f"; relative paths under {root}"


def _label_copy(values: pd.Series, y: pd.Series, task: str) -> str | None:
    """Why ``values`` would leak the label ``y``, or None. Only rows holding both count, and
    they must be most of the labelled rows: a column filled in a handful of rows says little."""
    both = values.notna().to_numpy() & y.notna().to_numpy()
    labelled = int(y.notna().sum())
    if both.sum() < max(MIN_ID_ROWS, 0.5 * labelled):
        return None
    x, target = values[both], y[both]
    if task == Task.REGRESSION.value:
        if not _is_number(x) or pd.api.types.is_bool_dtype(x):
            return None
        a, b = x.to_numpy(dtype=np.float64), target.to_numpy(dtype=np.float64)
        if a.std() == 0 or b.std() == 0:
            return None
        if abs(np.corrcoef(a, b)[0, 1]) >= 0.9999:
            return "a copy of the label (the same numbers up to a linear rescaling): it would leak the target"
        return None
    if task == Task.MULTILABEL.value:
        return None
    xs, ys = pd.factorize(x.map(str))[0], pd.factorize(target.map(str))[0]
    kx, ky = int(xs.max()) + 1, int(ys.max()) + 1
    pairs = len(np.unique(xs.astype(np.int64) * ky + ys))
    if pairs == kx == ky:
        return f"a copy of the label (its {kx} values map one-to-one onto the label's): it would leak the target"
    if pairs == kx and kx >= 2 and len(x) >= 5 * kx:
        return (f"it determines the label (each of its {kx} values goes with a single label value): the label's "
                "source, or a leak of it (declare it categorical if it is a genuine feature)")
    return None
