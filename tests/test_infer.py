"""Schema inference on real tables: identifiers, constants and copies or sources of the label are
left out with one warning each, free text becomes text, whole-number codes categories, a
many-valued numeric label regression; the CLI prints the reasons and writes YAML that reads back."""

import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from holomodal.cli import main
from holomodal.data import load_dataset
from holomodal.errors import SchemaError
from holomodal.experiment import read_schema
from holomodal.schema import IGNORED, InferenceWarning, Modality, Schema, infer_schema


@pytest.fixture(scope="module")
def covid_table(data_root):
    """covid_cxr as a user would export it: string classes, a row number, a copy of the label
    and the finding it was derived from (the real column of the source metadata)."""
    by_finding = load_dataset("covid_cxr", root=data_root, target="finding")
    bundle = load_dataset("covid_cxr", root=data_root)
    rows = np.concatenate([bundle.splits[s] for s in ("train", "val", "test")])
    frame = bundle.frame.iloc[rows].reset_index(drop=True)
    classes = bundle.schema.label.options["classes"]
    frame["label"] = frame["label"].map(lambda code: classes[code])
    findings = by_finding.schema.label.options["classes"]
    frame["finding"] = by_finding.frame["label"].iloc[rows].map(lambda code: findings[code]).to_numpy()
    frame.insert(0, "row_id", np.arange(len(frame)) + 1000)
    frame["is_covid"] = frame["label"].map({"COVID-19": "yes", "other": "no"})
    frame["site"] = "montreal"
    return frame


def _infer(frame, label, **kw):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        inference = infer_schema(frame, label, **kw)
    return inference, [str(w.message) for w in caught if issubclass(w.category, InferenceWarning)]


def test_ids_copies_sources_and_constants_are_left_out_once_each(covid_table):
    inference, warned = _infer(covid_table, "label")
    schema, why = inference.schema, {r.column: r for r in inference.reasons}
    assert schema["row_id"].modality == Modality.ID and "counts up" in why["row_id"].why
    for column, fragment in (("is_covid", "copy of the label"), ("finding", "determines the label"),
                             ("site", "constant"), ("patientid", "distinct values in")):
        assert column not in schema.column_names and why[column].modality == IGNORED
        assert fragment in why[column].why, (column, why[column].why)
    # one warning per column left out (or made an id), each naming its column
    assert len(warned) == 5
    for column in ("row_id", "is_covid", "finding", "site", "patientid"):
        assert sum(f"'{column}'" in w for w in warned) == 1
    assert schema["clinical_notes"].modality == Modality.TEXT and "free text" in why["clinical_notes"].why
    assert schema["image"].modality == Modality.IMAGE
    assert schema["sex"].modality == schema["view"].modality == Modality.CATEGORICAL
    assert schema["temperature"].modality == schema["age"].modality == Modality.CONTINUOUS
    assert schema.task.value == "binary" and len(why) == len(covid_table.columns)
    # the same schema, without reasons, from the classmethod
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", InferenceWarning)
        assert Schema.infer(covid_table, "label").to_dict() == schema.to_dict()


def test_what_the_user_names_wins(covid_table):
    inference, warned = _infer(covid_table, "label", categorical=["finding"], group=["patientid"],
                               ignore=["image", "site"], continuous=["row_id"])
    schema = inference.schema
    assert schema["finding"].modality == Modality.CATEGORICAL and schema["patientid"].modality == Modality.GROUP
    assert schema["row_id"].modality == Modality.CONTINUOUS and "image" not in schema.column_names
    assert [w for w in warned if "'finding'" in w or "'row_id'" in w or "'site'" in w] == []
    with pytest.raises(SchemaError, match="'no_such': not in the data"):
        infer_schema(covid_table, "label", text=["no_such"])
    with pytest.raises(SchemaError, match="'age' is named as both categorical and continuous"):
        infer_schema(covid_table, "label", categorical=["age"], continuous=["age"])
    with pytest.raises(SchemaError, match="label column 'label' cannot also be"):
        infer_schema(covid_table, "label", ignore=["label"])


@pytest.fixture(scope="module")
def physionet_table(data_root):
    return load_dataset("physionet2012", root=data_root).frame.drop(columns=["timeseries"])


def test_measurements_unique_per_row_stay_and_codes_become_categories(physionet_table):
    frame = physionet_table
    frame = frame.sample(frac=1.0, random_state=0).reset_index(drop=True)  # ids no longer count up
    rng = np.random.default_rng(0)
    frame["bmi"] = frame["Weight"] / (frame["Height"] / 100) ** 2 + rng.normal(0, 1e-6, len(frame))
    frame["icu_code"] = frame["ICUType"].map({n: i + 1 for i, n in enumerate(sorted(frame["ICUType"].unique()))})
    frame["zip"] = rng.integers(10000, 99999, len(frame))
    inference, warned = _infer(frame, "in_hospital_death")
    schema = inference.schema
    assert frame["bmi"].dropna().is_unique and schema["bmi"].modality == Modality.CONTINUOUS
    assert schema["RecordID"].modality == Modality.ID  # named like an id, unique per row
    assert schema["icu_code"].modality == Modality.CATEGORICAL  # 4 whole numbers
    assert schema["zip"].modality == Modality.CATEGORICAL  # a code, not a quantity
    assert schema["Age"].modality == Modality.CONTINUOUS and schema.task.value == "binary"
    assert len(warned) == 1 and "'RecordID'" in warned[0]


def test_a_many_valued_numeric_label_is_regression_and_says_so(physionet_table):
    frame = physionet_table.dropna(subset=["Weight"])
    frame["weight_lb"] = frame["Weight"] * 2.20462
    inference, warned = _infer(frame, "Weight")
    assert inference.schema.task.value == "regression"
    assert "weight_lb" not in inference.schema.column_names
    assert any("'Weight'" in w and "regression" in w for w in warned)
    assert any("'weight_lb'" in w and "copy of the label" in w for w in warned)
    assert infer_schema(frame, "Weight", task="multiclass", warn=False).schema.task.value == "multiclass"


def test_relative_file_paths_get_the_table_folder_as_root(covid_table, tmp_path):
    images = covid_table["image"].dropna()
    folder = Path(images.iloc[0]).parent
    frame = covid_table.assign(image=covid_table["image"].map(lambda p: f"images/{Path(p).name}" if isinstance(p, str) else p))
    schema = infer_schema(frame, "label", root=folder.parent, warn=False).schema
    assert schema["image"].options == {"root": str(folder.parent)}
    assert infer_schema(covid_table, "label", root=folder.parent, warn=False).schema["image"].options == {}  # absolute


def test_cli_prints_reasons_and_writes_yaml_that_reads_back(covid_table, tmp_path, capsys):
    table = tmp_path / "covid.csv"
    covid_table.to_csv(table, index=False)
    out = tmp_path / "schema.yaml"
    assert main(["data", "infer", str(table), "--label", "label", "--group", "patientid", "--out", str(out)]) == 0
    captured = capsys.readouterr()
    assert "clinical_notes" in captured.out and "free text" in captured.out and "schema written to" in captured.out
    warned = [line for line in captured.err.splitlines() if line.startswith("warning:")]
    assert len(warned) == 4 and any("'is_covid'" in w for w in warned)
    schema = read_schema(out)
    expected = infer_schema(pd.read_csv(table), "label", group=["patientid"], root=tmp_path, warn=False).schema
    assert schema.to_dict() == expected.to_dict()
    assert "# - {name: is_covid" in out.read_text()  # left-out columns listed, ready to put back
    assert main(["data", "infer", str(table), "--label", "label", "--out", str(out)]) == 2
    assert "will not overwrite" in capsys.readouterr().err
    assert main(["data", "infer", str(table)]) == 2
    assert "--label" in capsys.readouterr().err
