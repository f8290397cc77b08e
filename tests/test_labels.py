"""Degenerate labels are diagnosed per split before training (and before the run folder
exists); metrics a split cannot define are NaN with the reason; no prediction is ever a
non-finite probability."""

import json
import math
import warnings

import numpy as np
import pandas as pd
import pytest
from omegaconf import OmegaConf

from tiny import TINY_ENCODERS, small_schema
from holomodal.cli import main
from holomodal.errors import DataError
from holomodal.estimator import Classifier
from holomodal.evaluation import robustness_sweep
from holomodal.methods.base import UndefinedMetricWarning
from holomodal.preprocessing import LabelWarning
from holomodal.schema import Schema

QUIET = {"max_epochs": 1, "enable_progress_bar": False, "accelerator": "cpu"}


def _classifier(schema, run_dir):
    return Classifier(schema, model={"encoders": TINY_ENCODERS}, batch_size=16, run_dir=run_dir, loggers=["csv"],
                      trainer=QUIET)


@pytest.fixture(scope="module")
def tabular(covid):
    """Real covid_cxr rows, table only (label 1 = 'COVID-19', 0 = 'other')."""
    schema = small_schema(covid.schema, drop=("image", "text"))
    names = schema.column_names
    train = covid.split("train")[names].iloc[:48].reset_index(drop=True)
    return schema, train, covid.split("val")[names].reset_index(drop=True)


@pytest.fixture(scope="module")
def fitted(tabular, tmp_path_factory):
    """A tiny model whose validation split lacks the class 'other': fit warns once."""
    schema, train, val = tabular
    covid_only = val[val["label"] == 1].iloc[:16]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        clf = _classifier(schema, tmp_path_factory.mktemp("labels") / "run").fit(train, covid_only)
    return clf, [w for w in caught if issubclass(w.category, LabelWarning)]


def test_one_class_training_label_fails_before_the_run_folder(tabular, tmp_path):
    schema, train, val = tabular
    one_class = train[train["label"] == 1]
    with pytest.raises(DataError, match=rf"label column 'label': all {len(one_class)} rows of the training split "
                                        r"hold the single class 'COVID-19'"):
        _classifier(schema, tmp_path / "run").fit(one_class, val)
    assert not (tmp_path / "run").exists()


def test_three_classes_under_binary_fail_before_training(tabular, tmp_path):
    schema, train, _ = tabular
    columns = [{**c, "options": {"task": "binary"}} if c["modality"] == "label" else c for c in schema.to_dict()["columns"]]
    binary = Schema.from_dict({**schema.to_dict(), "columns": columns})
    three = train.assign(label=np.array(["covid", "other", "pneumonia"])[np.arange(len(train)) % 3])
    with pytest.raises(DataError, match=r"label column 'label' is declared task: binary but has 3 classes "
                                        r"\['covid', 'other', 'pneumonia'\]: set task: multiclass"):
        _classifier(binary, tmp_path / "run").fit(three)
    assert not (tmp_path / "run").exists()


def test_unknown_validation_labels_name_the_rows(tabular, tmp_path):
    schema, train, val = tabular
    bad = val.iloc[:16].copy()
    bad["label"] = bad["label"].astype("Int64")
    bad.loc[[3, 7], "label"] = 5
    with pytest.raises(DataError, match=r"label column 'label' in the val split: value\(s\) \['5'\] in row\(s\) 3, 7 "
                                        r"are not among the classes \['other', 'COVID-19'\]"):
        _classifier(schema, tmp_path / "run").fit(train, bad)
    assert not (tmp_path / "run").exists()


def test_bad_test_label_fails_in_the_cli_before_training(tabular, tmp_path, capsys):
    schema, train, val = tabular
    test = val.iloc[16:32].reset_index(drop=True).astype({"label": "Int64"})
    test.loc[2, "label"] = 9
    for split, frame in (("train", train), ("val", val.iloc[:16]), ("test", test)):
        frame.to_parquet(tmp_path / f"{split}.parquet")
    (tmp_path / "schema.json").write_text(schema.to_json())
    cfg = {"data": {**{s: str(tmp_path / f"{s}.parquet") for s in ("train", "val", "test")},
                    "schema": str(tmp_path / "schema.json")},
           "model": {"encoders": TINY_ENCODERS}, "batch_size": 16, "trainer": QUIET, "run": {"loggers": ["csv"]}}
    OmegaConf.save(OmegaConf.create(cfg), tmp_path / "tiny.yaml")
    code = main(["train", "-c", str(tmp_path / "tiny.yaml"), f"run.dir={tmp_path / 'run'}"])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    assert "error: label column 'label' in the test split: value(s) ['9'] in row(s) 2" in err
    assert not (tmp_path / "run").exists()


def test_class_absent_from_validation_warns_once(fitted):
    _, label_warnings = fitted
    assert len(label_warnings) == 1
    assert "training class(es) ['other'] are absent from the val split" in str(label_warnings[0].message)


def test_metric_undefined_on_one_row_is_nan_with_the_reason(fitted, tabular):
    clf, _ = fitted
    _, _, val = tabular
    one_row = val.iloc[:1]
    with pytest.warns(UndefinedMetricWarning, match="auroc: the target holds the single class"):
        scores = clf.evaluate(one_row)
    assert math.isnan(scores["auroc"]) and scores["auroc"] != 0.0
    assert "single class" in scores.undefined["auroc"]
    assert scores["accuracy"] in (0.0, 1.0)
    with pytest.warns(UndefinedMetricWarning):
        sweep = robustness_sweep(clf, one_row, ["none"], [0.0], n_boot=3)
    auroc = sweep[sweep["metric"] == "auroc"]["value"]
    assert auroc.isna().all() and "auroc" in sweep.attrs["undefined"]


def test_predictions_stay_finite_on_extreme_valid_values(fitted, tabular):
    clf, _ = fitted
    _, _, val = tabular
    rows = val.iloc[:8].drop(columns="label").copy()
    for col in clf.schema.continuous:
        rows[col.name] = rows[col.name].astype(float)
    cols = [c.name for c in clf.schema.continuous]
    rows.loc[rows.index[:4], cols] = np.array([[1e30], [-1e30], [3.4e38], [-3.4e38]]) * np.ones(len(cols))
    proba = clf.predict_proba(rows)
    assert np.isfinite(proba).all() and np.allclose(proba.sum(axis=1), 1.0)
    rows.loc[rows.index[5], cols[0]] = 1e300
    with pytest.raises(DataError, match=rf"column '{cols[0]}' \(continuous\) holds infinite or out-of-range.*row\(s\) 5"):
        clf.predict_proba(rows)


def test_nonfinite_as_missing_trains_counts_and_predicts(tabular, tmp_path):
    schema, train, val = tabular
    lenient = Schema.from_dict({**schema.to_dict(), "on_nonfinite": "missing"})
    col = schema.continuous[0].name
    bad = train.astype({col: float})
    bad.loc[[0, 5], col] = [np.inf, 1e300]
    clf = _classifier(lenient, tmp_path / "run").fit(bad, val.iloc[:16])
    summary = json.loads((tmp_path / "run" / "data_summary.json").read_text())
    assert summary["train"]["nonfinite_cells"] == {col: 2}
    assert np.isfinite(clf.preprocessor_.processors["tabular"].std_[col])
    probe = val.iloc[:4].drop(columns="label").astype({col: float})
    probe.loc[probe.index[1], col] = -np.inf
    proba = clf.predict_proba(probe)
    assert np.isfinite(proba).all()
    assert pd.Series(clf.predict(probe)).isin(["other", "COVID-19"]).all()
