"""Studies over time: a table of images (one row each) with a group (the patient), a time
and a view column becomes one row per frontal image, its study's lateral image joined beside
it, and per group an ordered sequence of studies (MedST, spec ``dcp_i2m2_medst.md`` 3.2).

A study is the rows sharing group and time. Each frontal image is a row of its own (as MedST
pairs every frontal image with its study's report and lateral); a missing lateral or report
is a missing modality, a mask like any other. Rows without a group are each their own group;
rows without a time are studies of their own that no sequence holds. The sequences take one
row per study (its first frontal image), in time order, cut into consecutive chunks of
``length``; a chunk shorter than ``length`` (a patient's last studies, or a patient with few)
is kept as a shorter sequence, and a chunk of one study is a lone image-report pair.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from holomodal.errors import SchemaError
from holomodal.schema import Column, Modality, Schema, time_values

LATERAL_SUFFIX = "_lateral"
GROUP_CODE, STUDY_CODE, TIME_VALUE = "_group_code", "_study_code", "_time_days"
SEQUENCE_LENGTH = 4  # MedST's temporal unit


@dataclass
class Studies:
    """``frame``: one row per frontal image with its lateral (column ``<image>_lateral``),
    the study's report, and the codes of its group and study; ``schema``: the study-level
    schema (the frontal image column, its lateral, the text, the label); ``sequences``: row
    indices of ``frame``, each list one group's consecutive studies in time order."""

    frame: pd.DataFrame
    schema: Schema
    sequences: list[list[int]]
    summary: dict[str, Any] = field(default_factory=dict)

    @property
    def lateral(self) -> str:
        return lateral_name(self.schema)


def lateral_name(schema: Schema) -> str:
    return next(c.name for c in schema.of(Modality.IMAGE) if c.name.endswith(LATERAL_SUFFIX))


def _first_text(values: pd.Series) -> Any:
    for v in values:
        if isinstance(v, str) and v.strip():
            return v
    return np.nan


def view_kinds(values: pd.Series, column: Column) -> np.ndarray:
    """``frontal``, ``lateral`` or ``""`` (neither) per cell."""
    text = values.map(lambda v: str(v).strip() if isinstance(v, str) else "")
    frontal, lateral = set(column.options["frontal"]), set(column.options["lateral"])
    return np.where(text.isin(frontal), "frontal", np.where(text.isin(lateral), "lateral", ""))


def build_studies(frame: pd.DataFrame, schema: Schema, *, image: str | None = None, text: str | None = None,
                  length: int = SEQUENCE_LENGTH) -> Studies:
    """The studies of ``frame`` (see the module docstring); ``image`` / ``text`` name the
    columns when the schema has several."""
    group, time, view = schema.group_column(), schema.time_column(), schema.view_column()
    missing = [kind for kind, col in (("group", group), ("time", time), ("view", view)) if col is None]
    if missing:
        raise SchemaError(f"studies over time need a {', '.join(missing)} column in the schema (modality "
                          f"{' / '.join(missing)}): the patient, the study date or day, the frontal/lateral view")
    image_col = _one_of(schema, Modality.IMAGE, image)
    text_col = _one_of(schema, Modality.TEXT, text)
    if length < 1:
        raise SchemaError(f"sequence length must be at least 1, not {length}")
    rows = frame.reset_index(drop=True)
    kinds = view_kinds(rows[view.name], view)
    has_image = rows[image_col.name].map(lambda v: isinstance(v, str) and bool(v.strip())).to_numpy()
    groups = rows[group.name].map(lambda v: None if v is None or (isinstance(v, float) and np.isnan(v)) else str(v))
    lone = groups.isna().to_numpy()
    group_key = np.where(lone, "\0row" + rows.index.astype(str), groups.fillna("").to_numpy())
    days = time_values(rows[time.name], time.name)
    untimed = np.isnan(days)
    study_key = pd.Series([f"{g}\0{'row' + str(i) if np.isnan(d) else repr(float(d))}"
                           for i, (g, d) in enumerate(zip(group_key, days))])
    work = rows.assign(**{GROUP_CODE: pd.factorize(group_key)[0], STUDY_CODE: pd.factorize(study_key)[0],
                          TIME_VALUE: days})
    lateral_of: dict[int, str] = {}
    for code, path, kind, ok in zip(work[STUDY_CODE], work[image_col.name], kinds, has_image):
        if kind == "lateral" and ok and code not in lateral_of:
            lateral_of[int(code)] = path
    report_of = work.groupby(STUDY_CODE)[text_col.name].agg(_first_text)
    frontal = work[(kinds == "frontal") & has_image].copy()
    frontal[image_col.name + LATERAL_SUFFIX] = frontal[STUDY_CODE].map(lambda c: lateral_of.get(int(c), np.nan))
    frontal[text_col.name] = frontal[STUDY_CODE].map(report_of)
    frontal = frontal.sort_values([GROUP_CODE, TIME_VALUE, STUDY_CODE], kind="stable").reset_index(drop=True)
    sequences = study_sequences(frontal, length)
    keep = [c for c in schema.columns if c.modality in (Modality.LABEL, Modality.GROUP, Modality.TIME, Modality.ID)]
    lateral_col = Column(image_col.name + LATERAL_SUFFIX, Modality.IMAGE, dict(image_col.options))
    study_schema = dataclasses.replace(schema, columns=[Column(image_col.name, image_col.modality, dict(image_col.options)),
                                                         lateral_col, Column(text_col.name, text_col.modality, dict(text_col.options)),
                                                         *[Column(c.name, c.modality, dict(c.options)) for c in keep]])
    lengths = [len(s) for s in sequences]
    summary = {
        "image_rows": int(has_image.sum()), "frontal_images": len(frontal),
        "lateral_images": int(((kinds == "lateral") & has_image).sum()),
        "rows_of_neither_view": int(((kinds == "") & has_image).sum()),
        "frontal_with_lateral": int(frontal[lateral_col.name].notna().sum()),
        "frontal_with_report": int(frontal[text_col.name].map(lambda v: isinstance(v, str)).sum()),
        "studies": int(frontal[STUDY_CODE].nunique()), "groups": int(frontal[GROUP_CODE].nunique()),
        "untimed_rows": int(untimed.sum()), "sequence_length": length,
        "sequences": {n: lengths.count(n) for n in sorted(set(lengths))},
    }
    return Studies(frontal, study_schema, sequences, summary)


def study_sequences(frame: pd.DataFrame, length: int) -> list[list[int]]:
    """Row indices of ``frame`` (sorted by group, time): per group its first row of each
    timed study, in time order, in chunks of ``length``; every other row a chunk of its own."""
    first_of_study = ~frame[STUDY_CODE].duplicated()
    timed = frame[TIME_VALUE].notna()
    chunks: list[list[int]] = []
    for _, rows in frame[first_of_study & timed].groupby(GROUP_CODE, sort=True).groups.items():
        ordered = list(rows)  # the frame is already in time order within a group
        chunks.extend(ordered[i:i + length] for i in range(0, len(ordered), length))
    chunks.extend([int(i)] for i in frame.index[~(first_of_study & timed)])
    return [[int(i) for i in c] for c in chunks]


def _one_of(schema: Schema, modality: Modality, name: str | None) -> Column:
    found = schema.of(modality)
    if name is not None:
        match = [c for c in found if c.name == name]
        if not match:
            raise SchemaError(f"'{name}' is not a {modality.value} column of the schema ({[c.name for c in found]})")
        return match[0]
    if len(found) != 1:
        raise SchemaError(f"studies over time need one {modality.value} column; the schema has {len(found)} "
                          f"({[c.name for c in found]}): name the one to use")
    return found[0]

