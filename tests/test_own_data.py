"""Your own files, from the command line only: covid_cxr exported as CSV tables with image paths
relative to the tables' folder, trained with `holomodal train --train ... --label ...` (schema
inferred, validation split off), checked with `holomodal data check --schema ... --table ...`."""

import json

import numpy as np
import pandas as pd
import pytest
import yaml

from holomodal.cli import main
from holomodal.errors import ConfigError, DataError
from holomodal.experiment import load_splits, split_off_validation
from holomodal.schema import Modality
from tiny import TINY_ENCODERS, covid_csv_files

TINY = {"model": {"encoders": TINY_ENCODERS}, "batch_size": 16, "run": {"loggers": ["csv"]},
        "trainer": {"max_epochs": 1, "enable_progress_bar": False}}


@pytest.fixture(scope="module")
def own_files(covid, tmp_path_factory):
    """train.csv / test.csv in a folder of their own, beside images/ holding their X-rays."""
    folder = tmp_path_factory.mktemp("own")
    paths = covid_csv_files(covid, folder, {"train": 80, "test": 40})
    config = folder / "tiny.yaml"
    config.write_text(yaml.safe_dump(TINY))
    return folder, paths, config


def test_train_on_own_csv_files_without_a_schema(own_files, tmp_path, capsys):
    folder, paths, config = own_files
    run = tmp_path / "run"
    code = main(["train", "-c", str(config), "--train", str(paths["train"]), "--test", str(paths["test"]),
                 "--label", "outcome", "--group", "patientid", f"run.dir={run}"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "schema inferred from" in captured.out and "clinical_notes" in captured.out
    assert "validation: 20% of the rows" in captured.out
    results = pd.read_csv(run / "results.csv")
    assert list(results["split"]) == ["val", "test"] and results["auroc"].between(0, 1).all()
    recorded = yaml.safe_load((run / "config.yaml").read_text())["data"]
    columns = {c["name"]: c for c in recorded["schema"]["columns"]}
    # relative image paths resolve against the tables' folder; the group keeps patients together
    assert columns["image"]["options"] == {"root": str(folder)}
    assert columns["clinical_notes"]["modality"] == "text" and columns["patientid"]["modality"] == "group"
    summary = json.loads((run / "data_summary.json").read_text())
    assert summary["train"]["rows"] + summary["val"]["rows"] == 80
    assert "unreadable_files" not in summary["train"]  # every relative path was found
    splits = load_splits(recorded)  # what evaluate and --resume read back: the same split
    assert len(splits.val) == summary["val"]["rows"]
    assert not set(splits.train["patientid"]) & set(splits.val["patientid"])


def test_split_off_validation_is_stratified_and_seeded(covid):
    train = covid.split("train")
    schema = covid.schema
    from holomodal.schema import Schema

    no_groups = Schema.from_dict({**schema.to_dict(), "columns": [c for c in schema.to_dict()["columns"]
                                                                   if c["modality"] != "group"]})
    kept, val = split_off_validation(train, no_groups, 0.2, seed=3)
    assert len(val) == round(0.2 * (train["label"] == 0).sum()) + round(0.2 * (train["label"] == 1).sum())
    assert abs(val["label"].mean() - train["label"].mean()) < 0.02
    again, val_again = split_off_validation(train, no_groups, 0.2, seed=3)
    pd.testing.assert_frame_equal(val, val_again)
    _, other = split_off_validation(train, no_groups, 0.2, seed=4)
    assert not val["image"].equals(other["image"])
    kept, val = split_off_validation(train, schema, 0.2, seed=3)  # whole patients
    assert not set(kept["patientid"]) & set(val["patientid"]) and 0.1 < len(val) / len(train) < 0.3
    with pytest.raises(ConfigError, match="val_fraction"):
        split_off_validation(train, schema, 1.5, seed=0)
    with pytest.raises(DataError, match="too few to split"):
        split_off_validation(train.iloc[:2], no_groups, 0.2, seed=0)


def test_data_check_of_own_files(own_files, tmp_path, capsys):
    folder, paths, _ = own_files
    schema = folder / "schema.yaml"
    if not schema.exists():
        assert main(["data", "infer", str(paths["train"]), "--label", "outcome", "--out", str(schema)]) == 0
    capsys.readouterr()
    assert main(["data", "check", "--schema", str(schema), "--table", str(paths["train"]),
                 "--table", str(paths["test"])]) == 0
    out = capsys.readouterr().out
    assert "80 rows, fits the schema" in out and "40 rows, fits the schema" in out
    assert "0 file(s) not found" in out and "label 'outcome'" in out
    # a table with a word in a number column, and one with a lost image file
    bad = pd.read_csv(paths["test"]).astype({"temperature": object})
    bad.loc[5, "temperature"] = "warm"
    bad.to_csv(tmp_path / "bad.csv", index=False)
    assert main(["data", "check", "--schema", str(schema), "--table", str(tmp_path / "bad.csv")]) == 2
    err = capsys.readouterr().err
    assert "bad.csv" in err and "'temperature'" in err and "'warm'" in err and "row(s) 5" in err
    assert "Traceback" not in err
    lost = pd.read_csv(paths["test"])
    first = lost["image"].first_valid_index()
    lost.loc[first, "image"] = "images/gone.jpg"
    lost.to_csv(folder / "lost.csv", index=False)
    assert main(["data", "check", "--schema", str(schema), "--table", str(folder / "lost.csv")]) == 0
    assert f"1 file(s) not found, e.g. row {first}" in capsys.readouterr().out
    outside = pd.read_csv(paths["test"]).assign(image="../../etc/passwd.jpg")
    outside.to_csv(folder / "outside.csv", index=False)
    assert main(["data", "check", "--schema", str(schema), "--table", str(folder / "outside.csv")]) == 2
    assert "outside the column's root" in capsys.readouterr().err
    assert main(["data", "check", "--schema", str(schema)]) == 2
    assert "--table" in capsys.readouterr().err


def test_own_data_mistakes_are_clear(own_files, tmp_path, capsys):
    folder, paths, config = own_files
    run = tmp_path / "run"
    for argv, fragment in (
        (["--label", "outcome"], "add --train TABLE"),
        (["--train", str(paths["train"])], "data.label (--label)"),
        (["--train", str(paths["train"]), "--label", "result"], "unknown column 'result'"),
        (["--train", str(folder / "absent.csv"), "--label", "outcome"], "absent.csv' not found"),
        (["--train", str(paths["train"]), "--label", "outcome", "--text", "age", "--continuous", "age"],
         "'age' is named as both"),
        (["--train", str(paths["train"]), "--schema", str(folder / "schema.yaml"), "--image", "image"],
         "--image steer schema inference"),
    ):
        assert main(["train", "-c", str(config), *argv, f"run.dir={run}"]) == 2, argv
        err = capsys.readouterr().err
        assert fragment in err and "Traceback" not in err, (argv, err)
        assert not run.exists()
    assert main(["train", "--resume", str(run), "--train", str(paths["train"])]) == 2
    assert "--resume continues a run" in capsys.readouterr().err
    with pytest.raises(ConfigError, match="data.label is 'other'"):
        load_splits({"train": str(paths["train"]), "label": "other",
                     "schema": {"columns": [{"name": "outcome", "modality": "label"}]}})
    splits = load_splits({"train": str(paths["train"]), "label": "outcome", "val_fraction": None, "ignore": ["image"]})
    assert splits.val is None and len(splits.train) == 80 and "image" not in splits.schema.column_names
    assert splits.schema["clinical_notes"].modality == Modality.TEXT and np.isfinite(splits.train["age"]).any()
