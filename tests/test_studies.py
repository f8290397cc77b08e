"""Studies over time: the schema's group, time and view columns; frontal rows with their
study's lateral and report; sequences ordered by time within a patient, never across
patients or splits."""

import numpy as np
import pandas as pd
import pytest

from holomodal.errors import SchemaError
from holomodal.schema import Column, Modality, Schema, time_values
from holomodal.studies import GROUP_CODE, STUDY_CODE, TIME_VALUE, build_studies

VIEWS = {"frontal": ["PA", "AP"], "lateral": ["L"]}


def _schema(**time_options):
    return Schema([Column("patient", Modality.GROUP), Column("day", Modality.TIME, time_options),
                   Column("view", Modality.VIEW, VIEWS), Column("image", Modality.IMAGE), Column("report", Modality.TEXT),
                   Column("y", Modality.LABEL, {"task": "binary", "classes": [0, 1]})])


def _frame():
    rows = [  # patient, day, view, image, report
        ("p1", 5, "PA", "a5.jpg", "day five"), ("p1", 5, "L", "a5l.jpg", None), ("p1", 1, "AP", "a1.jpg", None),
        ("p1", 1, "L", "a1l.jpg", "day one"), ("p1", 9, "PA", "a9.jpg", "nine"), ("p1", 3, "PA", "a3.jpg", "three"),
        ("p1", 7, "PA", "a7.jpg", "seven"), ("p1", 7, "PA", "a7b.jpg", "seven"),  # a second frontal image of day 7
        ("p2", 2, "PA", "b2.jpg", "two"), ("p2", 1, "PA", "b1.jpg", "one"), ("p2", None, "PA", "bx.jpg", "undated"),
        ("p3", 4, "?", "c4.jpg", "neither view"), (None, 1, "PA", "d1.jpg", "no patient"),
        ("p4", 2, "L", "e2l.jpg", "lateral only"),
    ]
    frame = pd.DataFrame(rows, columns=["patient", "day", "view", "image", "report"])
    frame["y"] = 0
    return frame


def test_frontal_rows_join_their_study_lateral_and_report():
    studies = build_studies(_frame(), _schema())
    f = studies.frame.set_index("image")
    assert studies.lateral == "image_lateral"
    assert f.loc["a1.jpg", "image_lateral"] == "a1l.jpg" and f.loc["a1.jpg", "report"] == "day one"
    assert f.loc["a5.jpg", "image_lateral"] == "a5l.jpg" and pd.isna(f.loc["a9.jpg", "image_lateral"])
    assert "c4.jpg" not in f.index and "e2l.jpg" not in f.index  # neither view; no frontal image
    assert studies.summary["rows_of_neither_view"] == 1 and studies.summary["frontal_images"] == 10
    assert [c.name for c in studies.schema.of(Modality.IMAGE)] == ["image", "image_lateral"]


def test_sequences_are_time_ordered_chunks_of_one_patient():
    studies = build_studies(_frame(), _schema(), length=4)
    frame = studies.frame
    images = [list(frame["image"].iloc[s]) for s in studies.sequences]
    # p1's studies on days 1, 3, 5, 7, 9 (day 7 once, by its first frontal image): a chunk of
    # four and a remainder of one; p2's dated studies in order; everything else alone
    assert ["a1.jpg", "a3.jpg", "a5.jpg", "a7.jpg"] in images and ["a9.jpg"] in images
    assert ["b1.jpg", "b2.jpg"] in images
    for name in ("a7b.jpg", "bx.jpg", "d1.jpg"):
        assert [name] in images
    assert sorted(i for s in studies.sequences for i in s) == list(range(len(frame)))  # every row once
    for seq in studies.sequences:
        assert frame[GROUP_CODE].iloc[seq].nunique() == 1
        days = frame[TIME_VALUE].iloc[seq].to_numpy()
        assert np.all(np.diff(days) > 0) and frame[STUDY_CODE].iloc[seq].is_unique
    assert studies.summary["sequences"] == {1: 4, 2: 1, 4: 1}


def test_sequences_never_cross_splits_on_covid_cxr(data_root):
    from holomodal.data import load_dataset

    bundle = load_dataset("covid_cxr", root=data_root, studies=True)
    seen = {}
    for split in ("train", "val", "test"):
        studies = build_studies(bundle.split(split), bundle.schema)
        patients = set(studies.frame["patientid"])
        assert all(patients.isdisjoint(p) for p in seen.values())
        seen[split] = patients
        for seq in (s for s in studies.sequences if len(s) > 1):
            assert studies.frame["patientid"].iloc[seq].nunique() == 1
            assert np.all(np.diff(studies.frame["offset"].iloc[seq].to_numpy()) > 0)
    everything = build_studies(bundle.frame, bundle.schema)
    long = [s for s in everything.sequences if len(s) > 1]
    assert len(long) > 100 and everything.summary["frontal_with_lateral"] > 30


def test_time_column_numbers_and_dates():
    assert time_values(pd.Series(["3", None, "1.5"]), "t").tolist()[::2] == [3.0, 1.5]
    days = time_values(pd.Series(["2020-01-02", "2020-01-03 12:00"]), "t")
    assert days[1] - days[0] == 1.5
    with pytest.raises(SchemaError, match="time column 't' holds values that are neither numbers nor dates"):
        time_values(pd.Series(["soon"]), "t")


def test_schema_checks_view_options_and_needs_a_group():
    with pytest.raises(SchemaError, match="view column 'view': option 'lateral' must list"):
        Schema([Column("g", Modality.GROUP), Column("view", Modality.VIEW, {"frontal": ["PA"]}),
                Column("y", Modality.LABEL)])
    with pytest.raises(SchemaError, match="the schema needs a group column"):
        Schema([Column("day", Modality.TIME), Column("y", Modality.LABEL)])
    with pytest.raises(SchemaError, match="studies over time need a time, view column"):
        build_studies(_frame(), Schema([Column("patient", Modality.GROUP), Column("image", Modality.IMAGE),
                                        Column("report", Modality.TEXT), Column("y", Modality.LABEL)]))
