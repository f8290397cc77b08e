"""Bad input gets a clear message naming the column, file or row, and never touches
what an existing run folder holds."""


import numpy as np
import pytest

from holomodal.cli import main
from holomodal.errors import DataError, RunFolderError, SchemaError
from holomodal.estimator import Classifier
from holomodal.preprocessing import Preprocessor, UnseenCategoryWarning
from holomodal.schema import Schema


@pytest.fixture()
def small(covid):
    """Real covid_cxr rows: table + X-ray + notes."""
    return covid.frame.iloc[:40].reset_index(drop=True)


@pytest.fixture()
def existing_run(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.json").write_text('{"test": {"auroc": 0.9}}')
    return run


def _tiny_classifier(schema, existing_run):
    run_dir = existing_run.parent / "new_run"
    encoders = {"image": {"name": "lenet", "channels": 2, "blocks": 1}}
    return Classifier(schema, model={"encoders": encoders}, trainer={"max_epochs": 1, "enable_progress_bar": False},
                      run_dir=run_dir, loggers=["csv"])


def _untouched(run):
    """The earlier run is as it was, and the failed run wrote no folder of its own."""
    assert sorted(p.name for p in run.iterdir()) == ["metrics.json"]
    assert run.joinpath("metrics.json").read_text() == '{"test": {"auroc": 0.9}}'
    assert not (run.parent / "new_run").exists()


def test_unknown_column_is_named(covid, small, existing_run):
    bad = small.assign(shoe_size=42)
    with pytest.raises(SchemaError, match="unknown column.*'shoe_size'"):
        covid.schema.validate(bad)
    schema = Schema.from_dict({**covid.schema.to_dict(), "columns": covid.schema.to_dict()["columns"] + [{"name": "height", "modality": "continuous"}]})
    with pytest.raises(SchemaError, match="'height'.*not in the data"):
        _tiny_classifier(schema, existing_run).fit(small)
    _untouched(existing_run)


def test_nan_label_names_column_and_row(covid, small, existing_run):
    label = covid.schema.label.name
    bad = small.copy()
    bad[label] = bad[label].astype(float)
    bad.loc[7, label] = np.nan
    with pytest.raises(DataError, match=rf"label column '{label}' is missing.*: 7"):
        _tiny_classifier(covid.schema, existing_run).fit(bad)
    _untouched(existing_run)


def test_wrong_dtype_names_column_and_row(covid, small):
    col = covid.schema.continuous[0].name
    bad = small.astype({col: object})
    bad.loc[3, col] = "forty"
    with pytest.raises(SchemaError, match=rf"column '{col}' is declared continuous.*'forty'.*row\(s\) 3"):
        covid.schema.validate(bad)


def test_unreadable_image_names_file_and_row(covid, small, tmp_path, existing_run):
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"this is not a jpeg")
    bad = small.copy()
    bad.loc[5, "image"] = str(broken)
    with pytest.raises(DataError, match=r"row 5: cannot read image '.*broken.jpg' in column 'image'"):
        _tiny_classifier(covid.schema, existing_run).fit(bad)
    _untouched(existing_run)
    # the per-data-set policy can treat it as a missing modality, counted in the summary
    lenient = Schema.from_dict({**covid.schema.to_dict(), "on_unreadable": "missing"})
    pre = Preprocessor(lenient).fit(small)
    batch, summary = pre.transform(bad)
    assert summary["unreadable_files"] == {"image": 1}
    assert not batch.present["image"][5]
    assert int(batch.inputs["image"]["pixels"][5].abs().sum()) == 0


def test_unseen_category_maps_to_unknown_with_warning(covid, small):
    col = covid.schema.categorical[0].name
    pre = Preprocessor(covid.schema).fit(small)
    bad = small.copy()
    bad[col] = bad[col].astype(object)
    bad.loc[2, col] = "never-seen-value"
    with pytest.warns(UnseenCategoryWarning, match=rf"column '{col}'.*never-seen-value.*'unknown'"):
        batch, summary = pre.transform(bad)
    assert batch.inputs["tabular"]["categorical"][2, 0] == 0
    assert not batch.cell_missing[2, 0]
    assert summary["unseen_categories"] == {col: 1}


def test_empty_data_set(covid, small, existing_run):
    with pytest.raises(DataError, match="empty"):
        _tiny_classifier(covid.schema, existing_run).fit(small.iloc[:0])
    _untouched(existing_run)


def test_existing_run_folder_is_never_overwritten(covid, small, existing_run):
    clf = _tiny_classifier(covid.schema, existing_run)
    clf.run_dir = existing_run
    with pytest.raises(RunFolderError, match="already exists"):
        clf.fit(small)
    _untouched(existing_run)


def test_cli_prints_message_not_traceback(capsys, existing_run):
    code = main(["train", "-c", "av_digits_late_fusion", f"run.dir={existing_run}", "data.name=no_such_set"])
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith("error: ") and "no_such_set" in err and "Traceback" not in err
    _untouched(existing_run)
