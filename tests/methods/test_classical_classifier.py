"""gbdt and linear as first-class methods of Classifier, on real covid_cxr rows (table + notes):
fit, predict, evaluation under a modality drop, saving without pickle, the command line."""

import io
import json
import zipfile

import numpy as np
import pandas as pd
import pytest

from holomodal.cli import main
from holomodal.errors import DataError
from holomodal.estimator import Classifier
from holomodal.evaluation import robustness_sweep
from tiny import small_schema

DROP_NOTES = [{"kind": "modality", "rate": 1.0, "drop": "clinical_notes"}]
PICKLE_PROTOCOL = b"\x80"  # a pickle of protocol 2 or later starts with PROTO (0x80) and its number


@pytest.fixture(scope="module")
def tables(covid):
    schema = small_schema(covid.schema, drop=("image",))
    return schema, covid.split("train").iloc[:200], covid.split("val").iloc[:80], covid.split("test").iloc[:80]


@pytest.fixture(scope="module", params=["gbdt", "linear"])
def fitted(request, tables, tmp_path_factory):
    schema, train, val, _ = tables
    run = tmp_path_factory.mktemp(request.param) / "run"
    return Classifier(schema, method=request.param, run_dir=run, loggers=["csv"]).fit(train, val)


def _is_pickle(data: bytes) -> bool:
    return data[:1] == PICKLE_PROTOCOL and len(data) > 1 and 2 <= data[1] <= 5


def assert_no_pickle(folder):
    """No file, nor member of a zip (skops), is a pickle; arrays load with pickling refused."""
    files = [p for p in folder.rglob("*") if p.is_file()]
    assert files
    for path in files:
        assert path.suffix not in (".pkl", ".pickle", ".joblib"), path
        data = path.read_bytes()
        assert not _is_pickle(data), path
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as archive:
                for member in archive.namelist():
                    inner = archive.read(member)
                    assert not _is_pickle(inner), f"{path}:{member}"
                    if member.endswith(".npy"):
                        np.load(io.BytesIO(inner), allow_pickle=False)  # an object array would need pickle
                    elif member.endswith(".json"):
                        json.loads(inner)


def test_fit_predict_evaluate_under_a_modality_drop(fitted, tables):
    schema, _, _, test = tables
    run = fitted.run_dir_
    for name in ("config.yaml", "metrics.json", "results.csv", "model/predictor.json", "model/classical.json"):
        assert (run / name).is_file(), name
    assert json.loads((run / "metrics.json").read_text())["val"]["auroc"] > 0.5
    labels = fitted.predict(test.drop(columns=["label"]))
    assert set(labels) <= set(fitted.preprocessor_.classes_) and len(labels) == len(test)
    full, dropped = fitted.evaluate(test), fitted.evaluate(test, missing=DROP_NOTES)
    assert full["auroc"] > 0.55
    if fitted.method == "linear":  # reads the notes: dropping them reaches it and costs AUROC
        assert dropped["auroc"] < full["auroc"]
    else:  # trees read the table only
        assert dropped["auroc"] == full["auroc"]


def test_save_load_round_trip_and_no_pickle(fitted, tables, tmp_path):
    _, _, _, test = tables
    again = Classifier.load(fitted.run_dir_ / "model")
    np.testing.assert_array_equal(again.predict_proba(test), fitted.predict_proba(test))
    np.testing.assert_array_equal(again.predict_proba(test, missing=DROP_NOTES), fitted.predict_proba(test, missing=DROP_NOTES))
    assert_no_pickle(fitted.run_dir_ / "model")
    saved = fitted.save(tmp_path / "copy")
    assert_no_pickle(saved)
    if fitted.method == "gbdt":
        assert (saved / "gbdt.skops").is_file()


def test_a_gbdt_file_with_untrusted_types_is_refused(tables, tmp_path):
    import datetime

    import skops.io as sio

    schema, train, val, _ = tables
    clf = Classifier(schema, method="gbdt", run_dir=tmp_path / "run", loggers=["csv"]).fit(train.iloc[:120], val)
    folder = clf.save(tmp_path / "model")
    (folder / "gbdt.skops").unlink()
    sio.dump({"model": clf.model_.model_, "when": datetime.timedelta(days=1)}, folder / "gbdt.skops")
    with pytest.raises(DataError, match="refusing to load.*timedelta"):
        Classifier.load(folder)


def test_robustness_sweep_and_a_stale_batch(fitted, tables):
    schema, train, _, test = tables
    result = robustness_sweep(fitted, test, ["modality"], [0.0, 1.0], drop="clinical_notes", n_boot=5)
    auroc = result[result["metric"] == "auroc"].set_index("rate")["value"]
    assert auroc.notna().all()
    if fitted.method == "linear":
        assert auroc[1.0] < auroc[0.0]
        batch, _ = fitted._encode(test, "test", None)
        fitted._encode(train, "train", None)  # another table encoded since: its text is not the batch's
        with pytest.raises(DataError, match="raw text"):
            fitted._probabilities(batch)


def test_the_command_line_opens_a_gbdt_run(tables, tmp_path):
    schema, train, val, test = tables
    run = tmp_path / "gbdt-run"
    Classifier(schema, method="gbdt", run_dir=run, loggers=["csv"]).fit(train, val)
    table = tmp_path / "test.csv"
    test.to_csv(table, index=False)
    assert main(["evaluate", str(run), "--data", str(table), "--missing", "rvm", "--rates", "0,0.5", "--n-boot", "5"]) == 0
    assert list(run.glob("evaluation-*.csv"))
    assert main(["predict", str(run), str(table), "--out", str(tmp_path / "pred.csv")]) == 0
    preds = pd.read_csv(tmp_path / "pred.csv")
    assert len(preds) == len(test) and preds.filter(like="proba_").sum(axis=1).round(5).eq(1).all()
    assert main(["report", str(run), "--out", str(tmp_path / "report")]) == 0
    assert list((tmp_path / "report").glob("*.html"))


def test_resume_is_refused_for_a_method_without_epochs(tables, tmp_path):
    from holomodal.errors import RunFolderError

    schema, train, val, _ = tables
    with pytest.raises(RunFolderError, match="nothing to resume"):
        Classifier(schema, method="linear", run_dir=tmp_path / "r").fit(train, val, resume=True)


def test_linear_on_a_table_without_text(covid, tmp_path):
    schema = small_schema(covid.schema, drop=("image", "text"))
    train, val = covid.split("train").iloc[:160], covid.split("val").iloc[:60]
    clf = Classifier(schema, method="linear", run_dir=tmp_path / "run", loggers=["csv"]).fit(train, val)
    assert 0.0 <= clf.evaluate(val)["auroc"] <= 1.0
    assert clf.predict_proba(val).shape == (len(val), 2)


def test_onnx_export_of_a_classical_model_is_a_clear_error(fitted, tables, tmp_path, capsys):
    from holomodal.cli import main

    clf = fitted
    assert main(["export", str(clf.run_dir_), "--onnx", "--out", str(tmp_path / "m.onnx")]) == 2
    err = capsys.readouterr().err
    assert f"method '{clf.method}' is not one" in err and "Traceback" not in err
    assert not (tmp_path / "m.onnx").exists()
