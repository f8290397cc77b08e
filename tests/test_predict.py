"""`holomodal predict` and `predict_frame`: bad input stops with a message naming the file and
column, through the command line (status 2, message on stderr) and through the API."""

import numpy as np
import pandas as pd
import pytest

from tiny import TINY_ENCODERS, small_schema
from holomodal.cli import main
from holomodal.errors import DataError, SchemaError
from holomodal.estimator import Classifier
from holomodal.prediction import PredictionWarning, predict_frame, read_frame
from holomodal.schema import Schema

ENCODERS = TINY_ENCODERS


@pytest.fixture(scope="module")
def run(covid, tmp_path_factory):
    folder = tmp_path_factory.mktemp("predict") / "run"
    clf = Classifier(small_schema(covid.schema), model={"encoders": ENCODERS}, trainer={"max_epochs": 1, "enable_progress_bar": False},
                     batch_size=16, run_dir=folder, loggers=["csv"])
    clf.fit(covid.split("train").iloc[:48], covid.split("val").iloc[:16])
    clf.save(folder / "model")
    return clf, folder


@pytest.fixture()
def rows(covid):
    # new rows as a user would bring them: no label, no patient id
    return covid.split("test").iloc[:12].drop(columns=["label", "patientid"]).reset_index(drop=True)


def _cli(capsys, run_dir, data, out):
    code = main(["predict", str(run_dir), str(data), "--out", str(out)])
    captured = capsys.readouterr()
    return code, captured.err


def test_good_input_gives_one_row_per_input(run, rows, tmp_path, capsys):
    clf, folder = run
    data, out = tmp_path / "rows.parquet", tmp_path / "preds.parquet"
    rows.to_parquet(data)
    code, err = _cli(capsys, folder, data, out)
    assert code == 0, err
    preds = pd.read_parquet(out)
    assert len(preds) == len(rows)
    assert {"proba_other", "proba_COVID-19", "prediction", "missing_image", "missing_cells"} <= set(preds.columns)
    np.testing.assert_allclose(preds[["proba_other", "proba_COVID-19"]].to_numpy(), clf.predict_proba(rows.assign(patientid=None)), atol=1e-6)


def test_missing_column(run, rows, tmp_path, capsys):
    clf, folder = run
    bad = rows.drop(columns=["age"])
    with pytest.raises(SchemaError, match=r"column\(s\) 'age' needed by the model are missing"):
        predict_frame(clf, bad)
    data = tmp_path / "no_age.csv"
    bad.to_csv(data, index=False)
    code, err = _cli(capsys, folder, data, tmp_path / "out.parquet")
    assert code == 2 and "no_age.csv" in err and "'age'" in err and "missing" in err and "Traceback" not in err
    assert not (tmp_path / "out.parquet").exists()


def test_extra_column_is_ignored_with_one_warning(run, rows, tmp_path, capsys):
    clf, folder = run
    extra = rows.assign(shoe_size=42, ward="B")
    with pytest.warns(PredictionWarning, match=r"column\(s\) 'shoe_size', 'ward' are not used by the model and are ignored"):
        preds = predict_frame(clf, extra)
    np.testing.assert_allclose(preds.filter(like="proba_").to_numpy(), predict_frame(clf, rows).filter(like="proba_").to_numpy())
    with pytest.raises(SchemaError, match=r"unknown column\(s\) 'shoe_size'"):
        predict_frame(clf, extra, extra="error")
    data, out = tmp_path / "extra.parquet", tmp_path / "out.parquet"
    extra.to_parquet(data)
    code, err = _cli(capsys, folder, data, out)
    assert code == 0 and len(pd.read_parquet(out)) == len(rows)
    warned = [line for line in err.splitlines() if line.startswith("warning:")]
    assert len(warned) == 1 and "'shoe_size', 'ward'" in warned[0] and "extra.parquet" in warned[0]


def test_id_and_kept_columns_are_copied(covid, tmp_path, capsys):
    """A schema id column is copied to the output by itself; --keep copies any other column."""
    train = covid.split("train").iloc[:48].assign(case=lambda f: [f"case-{i}" for i in range(len(f))])
    base = small_schema(covid.schema, drop=("image", "text")).to_dict()
    schema = Schema.from_dict({**base, "columns": [{"name": "case", "modality": "id"}, *base["columns"]]})
    folder = tmp_path / "run"
    clf = Classifier(schema, model={"encoders": ENCODERS}, trainer={"max_epochs": 1, "enable_progress_bar": False},
                     batch_size=16, run_dir=folder, loggers=["csv"])
    clf.fit(train.drop(columns=["image", "clinical_notes"]))
    clf.save(folder / "model")
    new = covid.split("test").iloc[:9].drop(columns=["label"]).reset_index(drop=True)
    new.insert(0, "case", [f"new-{i}" for i in range(len(new))])
    preds = predict_frame(clf, new, keep=["patientid"], extra="ignore")
    assert list(preds.columns[:2]) == ["case", "patientid"] and preds["case"].tolist() == new["case"].tolist()
    assert preds["patientid"].tolist() == new["patientid"].tolist() and "proba_COVID-19" in preds
    data, out = tmp_path / "new.csv", tmp_path / "preds.csv"
    new.to_csv(data, index=False)
    assert main(["predict", str(folder), str(data), "--out", str(out), "--keep", "sex"]) == 0
    written = pd.read_csv(out)
    assert written["case"].tolist() == new["case"].tolist() and written["sex"].equals(new["sex"])
    assert main(["predict", str(folder), str(data), "--out", str(tmp_path / "p2.csv"), "--keep", "shoe"]) == 2
    assert "'shoe' to keep are not in the data" in capsys.readouterr().err


def test_wrong_dtype(run, rows, tmp_path, capsys):
    clf, folder = run
    bad = rows.astype({"temperature": object})
    bad.loc[4, "temperature"] = "warm"
    with pytest.raises(SchemaError, match=r"column 'temperature' is declared continuous.*'warm'.*row\(s\) 4"):
        predict_frame(clf, bad)
    data = tmp_path / "typed.csv"
    bad.to_csv(data, index=False)
    code, err = _cli(capsys, folder, data, tmp_path / "out.csv")
    assert code == 2 and "typed.csv" in err and "'temperature'" in err and "'warm'" in err


def test_unreadable_file(run, tmp_path, capsys):
    _, folder = run
    data = tmp_path / "broken.parquet"
    data.write_bytes(b"this is not parquet at all")
    with pytest.raises(DataError, match=r"cannot read data file '.*broken.parquet' as parquet"):
        read_frame(data)
    code, err = _cli(capsys, folder, data, tmp_path / "out.parquet")
    assert code == 2 and "broken.parquet" in err and "Traceback" not in err
    code, err = _cli(capsys, folder, tmp_path / "absent.csv", tmp_path / "out.parquet")
    assert code == 2 and "absent.csv" in err and "not found" in err
    odd = tmp_path / "rows.xlsx"
    odd.write_bytes(b"x")
    code, err = _cli(capsys, folder, odd, tmp_path / "out.parquet")
    assert code == 2 and "unsupported format" in err


def test_unreadable_image_names_file_and_row(run, rows, tmp_path, capsys):
    clf, folder = run
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"not a jpeg")
    bad = rows.copy()
    bad.loc[3, "image"] = str(broken)
    with pytest.raises(DataError, match=r"row 3: cannot read image '.*broken.jpg'"):
        predict_frame(clf, bad)
    data = tmp_path / "rows.parquet"
    bad.to_parquet(data)
    code, err = _cli(capsys, folder, data, tmp_path / "out.parquet")
    assert code == 2 and "broken.jpg" in err


def test_on_unreadable_missing_overrides_the_saved_policy_for_one_run(run, rows, tmp_path, capsys):
    clf, folder = run
    assert clf.schema.on_unreadable == "error"
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"not a jpeg")
    bad = rows.copy()
    bad.loc[3, "image"] = str(broken)
    with pytest.warns(PredictionWarning, match="1 file\\(s\\) in column 'image' could not be read"):
        preds = predict_frame(clf, bad, on_unreadable="missing")
    assert preds["missing_image"].tolist() == [True if i == 3 else m for i, m in enumerate(predict_frame(clf, rows)["missing_image"])]
    with pytest.raises(DataError, match="row 3: cannot read image"):  # the saved policy is back
        predict_frame(clf, bad)
    data, out = tmp_path / "rows.parquet", tmp_path / "out.csv"
    bad.to_parquet(data)
    assert main(["predict", str(folder), str(data), "--out", str(out), "--on-unreadable", "missing"]) == 0
    err = capsys.readouterr().err
    assert "warning:" in err and "could not be read" in err and pd.read_csv(out)["missing_image"][3]
    with pytest.raises(SystemExit):
        main(["predict", str(folder), str(data), "--out", str(out), "--on-unreadable", "skip"])
    assert "invalid choice: 'skip'" in capsys.readouterr().err


def test_output_is_never_overwritten(run, rows, tmp_path, capsys):
    _, folder = run
    data, out = tmp_path / "rows.parquet", tmp_path / "preds.csv"
    rows.to_parquet(data)
    out.write_text("keep")
    code, err = _cli(capsys, folder, data, out)
    assert code == 2 and "will not overwrite" in err and out.read_text() == "keep"
