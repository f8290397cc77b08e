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


class Task(str, Enum):
    BINARY = "binary"
    MULTICLASS = "multiclass"
    MULTILABEL = "multilabel"


TABULAR_MODALITIES = (Modality.CATEGORICAL, Modality.CONTINUOUS)
FILE_MODALITIES = (Modality.IMAGE, Modality.AUDIO)


@dataclass
class Column:
    """One column: its name, modality and modality-specific options.

    Options used by the preprocessors:
      image: ``root`` (folder for relative paths), ``channels`` (1 or 3), ``size``.
      audio: ``root``, ``sample_rate``, ``n_mels``, ``duration`` (seconds).
      text: ``max_length``.
      timeseries: ``channels`` (names, in order), ``hours`` (window length), cells hold an
        array of rows ``(time_in_hours, channel_index, value)``.
      label: ``task`` (binary / multiclass / multilabel), ``classes`` (optional, in order).
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
    """

    columns: list[Column]
    on_unreadable: str = "error"

    def __post_init__(self) -> None:
        names = [c.name for c in self.columns]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise SchemaError(f"column(s) declared twice in the schema: {', '.join(dup)}")
        labels = [c for c in self.columns if c.modality == Modality.LABEL]
        if len(labels) != 1:
            raise SchemaError(f"the schema needs exactly one label column, found {len(labels)}")
        if self.on_unreadable not in ("error", "missing"):
            raise SchemaError(
                f"on_unreadable must be 'error' or 'missing', not '{self.on_unreadable}'"
            )
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

    # ---- (de)serialisation -------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {"on_unreadable": self.on_unreadable, "columns": [c.to_dict() for c in self.columns]}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Schema":
        if not isinstance(data, dict) or "columns" not in data:
            raise SchemaError("a schema must be a mapping with a 'columns' list")
        cols = []
        for i, c in enumerate(data["columns"]):
            if "name" not in c or "modality" not in c:
                raise SchemaError(f"schema column #{i} needs 'name' and 'modality'")
            cols.append(Column(c["name"], c["modality"], dict(c.get("options") or {})))
        return cls(cols, on_unreadable=data.get("on_unreadable", "error"))

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    @classmethod
    def infer(
        cls,
        df: pd.DataFrame,
        label: str,
        *,
        image: Iterable[str] = (),
        audio: Iterable[str] = (),
        text: Iterable[str] = (),
        categorical: Iterable[str] = (),
        ignore: Iterable[str] = (),
        task: str | None = None,
        max_categories: int = 20,
    ) -> "Schema":
        """Build a schema from a DataFrame; columns not named explicitly are typed by dtype.

        Numeric columns with more than ``max_categories`` distinct values are continuous,
        the rest (and strings) categorical.
        """
        named = {**{c: Modality.IMAGE for c in image}, **{c: Modality.AUDIO for c in audio},
                 **{c: Modality.TEXT for c in text}, **{c: Modality.CATEGORICAL for c in categorical}}
        skip = set(ignore)
        for c in [label, *named, *skip]:
            if c not in df.columns:
                raise SchemaError(f"unknown column '{c}': not in the data (columns: {list(df.columns)})")
        cols: list[Column] = []
        for name in df.columns:
            if name in skip:
                continue
            if name == label:
                y = df[name].dropna()
                t = task or (Task.BINARY.value if y.nunique() == 2 else Task.MULTICLASS.value)
                cols.append(Column(name, Modality.LABEL, {"task": t}))
            elif name in named:
                cols.append(Column(name, named[name]))
            elif pd.api.types.is_numeric_dtype(df[name]) and df[name].nunique() > max_categories:
                cols.append(Column(name, Modality.CONTINUOUS))
            else:
                cols.append(Column(name, Modality.CATEGORICAL))
        return cls(cols)

    # ---- validation --------------------------------------------------------------------
    def validate(self, df: pd.DataFrame, *, require_label: bool = True, allow_extra: bool = False) -> None:
        """Check a table against the schema; raise an error that names the column and rows."""
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
            if pd.api.types.is_numeric_dtype(values) or pd.api.types.is_bool_dtype(values):
                continue
            converted = pd.to_numeric(values, errors="coerce")
            bad = values.notna() & converted.isna() & (values.astype(str).str.strip() != "")
            if bad.any():
                rows = _row_list(df.index[bad.to_numpy()])
                raise SchemaError(
                    f"column '{col.name}' is declared continuous but holds non-numeric values "
                    f"(e.g. {values[bad].iloc[0]!r}) in row(s) {rows}"
                )
        for col in self.of(*FILE_MODALITIES, Modality.TEXT):
            values = df[col.name]
            if col.modality == Modality.IMAGE and col.options.get("source") == "array":
                continue
            ok = values.map(lambda v: v is None or isinstance(v, (str, Path)) or _is_nan(v))
            if not ok.all():
                rows = _row_list(df.index[~ok.to_numpy()])
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
                    f"{int(missing.sum())} row(s): {_row_list(df.index[missing.to_numpy()])}"
                )


def _is_nan(v: Any) -> bool:
    return isinstance(v, float) and np.isnan(v)


def _row_list(index: Iterable[Any], limit: int = 10) -> str:
    items = list(index)
    shown = ", ".join(str(i) for i in items[:limit])
    return shown + (f", ... ({len(items)} rows)" if len(items) > limit else "")
