"""A saved model and its ONNX export give the predictions of the fitted model, on real rows
with missing cells and missing modalities."""

import json

import numpy as np
import pytest

from tiny import TINY_ENCODERS, small_schema
from holomodal.cli import main
from holomodal.estimator import Classifier
from holomodal.export import flatten_batch, onnx_probabilities

pytest.importorskip("onnxruntime")

ENCODERS = TINY_ENCODERS


@pytest.fixture(scope="module")
def fitted(covid, tmp_path_factory):
    """A one-epoch model on real covid_cxr rows (table + X-ray + notes), saved as a run."""
    run = tmp_path_factory.mktemp("export") / "run"
    clf = Classifier(small_schema(covid.schema), model={"encoders": ENCODERS, "head": {"hidden": 8, "dropout": 0.2}},
                     trainer={"max_epochs": 1, "enable_progress_bar": False}, batch_size=16,
                     run_dir=run, loggers=["csv"])
    clf.fit(covid.split("train").iloc[:64], covid.split("val").iloc[:24])
    clf.save(run / "model")
    rows = covid.split("test").iloc[:40].copy()
    # more holes on top of the natural ones: a cell, a whole X-ray, a whole note
    rows.loc[rows.index[1], "age"] = np.nan
    rows.loc[rows.index[2], "image"] = None
    rows.loc[rows.index[3], "clinical_notes"] = None
    return clf, run, rows


def test_rows_have_missing_cells_and_modalities(fitted):
    clf, _, rows = fitted
    batch, _ = clf.preprocessor_.transform(rows)
    assert int(batch.cell_missing.sum()) > 0
    assert not batch.present["image"].all() and not batch.present["clinical_notes"].all()


def test_save_load_reproduces_predictions(fitted, tmp_path):
    clf, _, rows = fitted
    before = clf.predict_proba(rows)
    clf.save(tmp_path / "saved")
    after = Classifier.load(tmp_path / "saved").predict_proba(rows)
    diff = float(np.abs(before - after).max())
    print(f"save/load max abs diff: {diff:.3e}")
    assert diff <= 1e-5


def test_onnx_export_reproduces_predictions(fitted, tmp_path, capsys):
    clf, run, rows = fitted
    data = tmp_path / "rows.parquet"
    rows.to_parquet(data)
    out = tmp_path / "model.onnx"
    assert main(["export", str(run), "--onnx", "--out", str(out), "--data", str(data), "--rows", "4"]) == 0
    assert "max abs diff" in capsys.readouterr().out

    import onnx

    model = onnx.load(str(out))
    names = [i.name for i in model.graph.input]
    assert {"present_tabular", "present_image", "present_clinical_notes", "cell_missing",
            "image.pixels", "tabular.continuous", "clinical_notes.input_ids"} <= set(names)
    meta = {p.key: p.value for p in model.metadata_props}
    assert json.loads(meta["holomodal.classes"]) == list(clf.preprocessor_.classes_)

    # traced on 4 rows, run on 40 and on 1: the batch axis is free
    batch, _ = clf.preprocessor_.transform(rows, with_target=False)
    expected = clf.predict_proba(rows)
    diff = float(np.abs(onnx_probabilities(out, batch) - expected).max())
    one = float(np.abs(onnx_probabilities(out, batch.select([2])) - expected[2:3]).max())
    print(f"ONNX max abs diff: {diff:.3e} (40 rows), {one:.3e} (1 row)")
    assert diff <= 1e-4 and one <= 1e-4

    # the graph zeroes what the masks hide, so values under a mask do not matter
    feeds = flatten_batch(batch)
    noisy = batch.select(list(range(len(batch))))
    hidden = ~feeds["present_image"]
    noisy.inputs["image"]["pixels"][hidden] = 255
    assert float(np.abs(onnx_probabilities(out, noisy) - expected).max()) <= 1e-4


def test_export_never_overwrites(fitted, tmp_path, capsys):
    _, run, rows = fitted
    data = tmp_path / "rows.parquet"
    rows.to_parquet(data)
    out = tmp_path / "taken.onnx"
    out.write_bytes(b"keep me")
    assert main(["export", str(run), "--onnx", "--out", str(out), "--data", str(data)]) == 2
    assert "will not overwrite" in capsys.readouterr().err
    assert out.read_bytes() == b"keep me"
