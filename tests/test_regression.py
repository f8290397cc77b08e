"""Regression end to end on real rows: PhysioNet 2012 length of stay (days), standardised on
the training split, predicted and scored in days by late fusion, gradient boosting and the
Python API's saved model and report."""

import json

import numpy as np
import pytest
import torch

from holomodal.errors import DataError
from holomodal.estimator import Classifier
from holomodal.evaluation import robustness_sweep, worsening, write_sweep
from holomodal.methods import create_method
from holomodal.methods.base import ModelContext
from holomodal.preprocessing import LabelWarning, Preprocessor
from holomodal.report import build_report

LABEL = "length_of_stay"
ENCODERS = {"tabular": {"name": "tabular_mlp", "hidden": 16, "layers": 1}, "timeseries": {"name": "gru", "hidden": 16}}


@pytest.fixture(scope="module")
def stay(data_root):
    from holomodal.data import load_dataset

    bundle = load_dataset("physionet2012", root=data_root, target=LABEL)
    return bundle.schema, bundle.split("train").iloc[:240], bundle.split("val").iloc[:80], bundle.split("test").iloc[:120]


@pytest.fixture(scope="module")
def fitted(stay, tmp_path_factory):
    schema, train, val, _ = stay
    clf = Classifier(schema, model={"encoders": ENCODERS}, batch_size=32, loggers=["csv"],
                     trainer={"max_epochs": 1, "enable_progress_bar": False},
                     run_dir=tmp_path_factory.mktemp("stay") / "late_fusion")
    return clf.fit(train, val)


def _context(pre, schema):
    types = {m: schema.modality_type(m).value if m != "tabular" else "tabular" for m in pre.processors}
    return ModelContext(pre.input_specs, types, pre.num_classes, schema.task.value, list(pre.classes_))


def test_the_label_is_standardised_on_the_training_split_and_decodes_back(stay):
    schema, train, val, _ = stay
    pre = Preprocessor(schema).fit(train)
    days = train[LABEL].to_numpy(dtype=np.float64)
    assert pre.num_classes == 1 and pre.classes_ == []
    assert pre.label_scale == pytest.approx((days.mean(), days.std()))
    encoded = pre.encode_labels(train[LABEL])
    assert encoded.dtype == torch.float32 and encoded.shape == (len(train),)
    assert float(encoded.mean()) == pytest.approx(0.0, abs=1e-5) and float(encoded.std(unbiased=False)) == pytest.approx(1.0, abs=1e-4)
    # another split uses the training scale, and both decode back to days
    np.testing.assert_allclose(pre.decode_values(pre.encode_labels(val[LABEL]).numpy()), val[LABEL], rtol=1e-5)
    np.testing.assert_allclose(pre.decode_values(encoded.numpy()), days, rtol=1e-5)
    batch, _ = pre.transform(val)
    assert batch.target.shape == (len(val),)
    # the scale travels in the JSON state; a state saved before regression existed still loads
    state = json.loads(json.dumps(pre.state_dict()))
    assert Preprocessor.from_state(state).label_scale == pre.label_scale
    old = {k: v for k, v in state.items() if k != "label_scale"}
    assert Preprocessor.from_state(old).label_scale == (0.0, 1.0)


def test_a_constant_label_is_not_divided_by_zero(stay):
    schema, train, _, _ = stay
    rows = train.assign(**{LABEL: 7.0})
    pre = Preprocessor(schema)
    with pytest.warns(LabelWarning, match="same value"):
        pre.check_labels(rows)
    assert pre.label_scale == (7.0, 1.0)
    assert torch.equal(pre.encode_labels(rows[LABEL]), torch.zeros(len(rows)))


def test_a_non_numeric_label_names_the_column_and_row(stay):
    schema, train, val, _ = stay
    bad = train.copy()
    bad[LABEL] = bad[LABEL].astype(object)
    bad.loc[bad.index[3], LABEL] = "two weeks"
    pre = Preprocessor(schema)
    with pytest.raises(DataError, match=rf"'{LABEL}' \(regression\) in the training split.*'two weeks'.*row\(s\) {bad.index[3]}"):
        pre.check_labels(bad)
    pre.fit(train)
    with pytest.raises(DataError, match=rf"'{LABEL}'.*'two weeks'.*row\(s\) {bad.index[3]}"):
        pre.encode_labels(bad[LABEL])


def test_an_infinite_label_names_the_split_and_rows(stay):
    schema, train, val, _ = stay
    bad = val.copy()
    bad.loc[bad.index[[1, 5]], LABEL] = np.inf
    with pytest.raises(DataError, match=rf"'{LABEL}' \(regression\) in the val split: row\(s\) {bad.index[1]}, {bad.index[5]} hold inf"):
        Preprocessor(schema).check_labels(train, val=bad)


def test_classifier_predicts_days_and_scores_in_days(fitted, stay):
    _, train, _, test = stay
    clf = fitted
    assert clf.monitor_metric == "val/rmse" and clf.monitor_mode == "min"
    assert clf.preprocessor_.num_classes == 1 and list(clf.model_.head.modules())[-1].out_features == 1
    predicted = clf.predict(test)
    assert predicted.shape == (len(test),) and np.isfinite(predicted).all()
    # days, not standardised values: near the training split's mean stay (13.7 days)
    assert 3.0 < predicted.mean() < 30.0
    scores = clf.evaluate(test)
    assert set(scores) == {"rmse", "mae", "r2"}
    truth = test[LABEL].to_numpy(dtype=np.float64)
    assert scores["rmse"] == pytest.approx(np.sqrt(np.mean((predicted - truth) ** 2)), rel=1e-4)
    assert scores["mae"] == pytest.approx(np.mean(np.abs(predicted - truth)), rel=1e-4)
    assert scores["r2"] == pytest.approx(1 - np.sum((predicted - truth) ** 2) / np.sum((truth - truth.mean()) ** 2), abs=1e-4)
    metrics = json.loads((clf.run_dir_ / "metrics.json").read_text())
    assert set(metrics["val"]) == {"rmse", "mae", "r2"} and metrics["val"]["rmse"] > 1.0  # days


def test_a_saved_regression_model_predicts_the_same_days(fitted, stay, tmp_path):
    _, _, _, test = stay
    loaded = Classifier.load(fitted.save(tmp_path / "model"))
    assert loaded.preprocessor_.label_scale == fitted.preprocessor_.label_scale
    np.testing.assert_allclose(loaded.predict(test), fitted.predict(test), rtol=1e-6)


def test_gbdt_regresses_on_the_table(stay):
    schema, train, _, test = stay
    pre = Preprocessor(schema).fit(train)
    model = create_method("gbdt", _context(pre, schema), max_iter=30).fit(pre.transform(train)[0])
    out = model.probabilities(pre.transform(test)[0])
    assert out.shape == (len(test), 1) and torch.isfinite(out).all()
    days = pre.decode_values(out[:, 0].numpy())
    assert train[LABEL].min() <= days.min() and days.max() <= train[LABEL].max()
    assert days.std() > 0  # it uses the inputs, not only the mean


def test_a_regression_sweep_and_report_point_the_right_way(fitted, stay, tmp_path):
    _, _, _, test = stay
    result = robustness_sweep(fitted, test, ["rvm", "modality"], [0, 0.9], n_boot=10)
    assert result.attrs["lower_is_better"] == ["mae", "rmse"]
    change = worsening(result)
    rmse = change[change["metric"] == "rmse"]
    np.testing.assert_allclose(rmse["worse"], rmse["value"] - rmse["clean"])
    r2 = change[change["metric"] == "r2"]
    np.testing.assert_allclose(r2["worse"], r2["clean"] - r2["value"])
    write_sweep(result, fitted.run_dir_)
    # a second run that is worse on every error: the report's bold best is the smaller RMSE
    other = tmp_path / "other"
    other.mkdir()
    val = json.loads((fitted.run_dir_ / "metrics.json").read_text())["val"]
    worse = {k: (v * 2 if k in ("rmse", "mae") else v - 1) for k, v in val.items()}
    (other / "metrics.json").write_text(json.dumps({"val": worse}))
    page = build_report([fitted.run_dir_, other], tmp_path / "report").read_text()
    row = page.split('id="results-val"')[1].split("</table>")[0]
    mine = row.split(f'data-run="{fitted.run_dir_.name}"')[1].split("</tr>")[0]
    theirs = row.split('data-run="other"')[1].split("</tr>")[0]
    assert mine.count('class="best"') == 3 and theirs.count('class="best"') == 0
    assert 'id="worsening"' in page


def test_feature_importance_masking_ranks_a_regression_target(fitted, stay):
    from holomodal.missingness import importance_ranking

    schema, train, _, test = stay
    pre = fitted.preprocessor_
    x = pre.tabular_matrix(train)
    ranking = importance_ranking(x, pre.encode_labels(train[LABEL]).numpy())
    assert sorted(ranking.tolist()) == list(range(x.shape[1]))
    result = robustness_sweep(fitted, test, ["mifm"], [0, 0.5], n_boot=5, train=train)
    assert np.isfinite(result[result["metric"] == "rmse"]["value"]).all()


def test_the_training_log_reports_errors_in_the_labels_units(fitted, stay):
    import pandas as pd

    _, _, val, _ = stay
    log = pd.read_csv(fitted.run_dir_ / "metrics.csv")
    logged = log["val/rmse"].dropna().iloc[-1]
    # one epoch: the logged validation RMSE is the saved model's, in days, not in standard deviations
    assert logged == pytest.approx(fitted.evaluate(val, split="val")["rmse"], rel=1e-4)
    assert logged > 2.0  # a length of stay's spread is several days; standardised errors are near 1
