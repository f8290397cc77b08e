"""The Python API's run folder and recorded recipe: early stopping, resolved encoders, and a
run made in Python opened by the command line."""

import json

import pandas as pd
import pytest
import yaml

from holomodal.cli import main
from holomodal.estimator import Classifier
from holomodal.methods.base import SMALL_DATA_ENCODERS
from tiny import TINY_ENCODERS, small_schema


@pytest.fixture(scope="module")
def tabular(covid):
    schema = small_schema(covid.schema, drop=("image", "text"))
    return schema, covid.split("train").iloc[:160], covid.split("val").iloc[:64], covid.split("test").iloc[:64]


def _classifier(schema, run_dir, **kw):
    kw.setdefault("model", {"encoders": {"tabular": TINY_ENCODERS["tabular"]}})
    return Classifier(schema, batch_size=32, run_dir=run_dir, loggers=["csv"], **kw)


def test_early_stopping_stops_a_run(tabular, tmp_path):
    schema, train, val, _ = tabular
    # no epoch can improve AUROC by 2: the run stops after the first epoch plus `patience`
    trainer = {"max_epochs": 8, "enable_progress_bar": False, "early_stopping": {"patience": 1, "min_delta": 2.0}}
    clf = _classifier(schema, tmp_path / "stopped", trainer=trainer).fit(train, val)
    epochs = pd.read_csv(tmp_path / "stopped" / "metrics.csv")["epoch"].dropna().max() + 1
    assert epochs == 2
    off = _classifier(schema, tmp_path / "full", trainer={**trainer, "max_epochs": 3, "early_stopping": None}).fit(train, val)
    assert pd.read_csv(tmp_path / "full" / "metrics.csv")["epoch"].dropna().max() + 1 == 3
    assert clf.trainer["early_stopping"] == {"patience": 1, "min_delta": 2.0} and off.trainer["early_stopping"] is None


def test_early_stopping_is_on_by_default(tabular):
    from holomodal.config import default_config

    assert Classifier(tabular[0]).trainer["early_stopping"] == {"patience": 10, "min_delta": 0.0002}
    assert default_config()["trainer"]["early_stopping"] == {"patience": 10, "min_delta": 0.0002}


def test_the_record_names_the_encoders_the_defaults_chose(tabular, tmp_path):
    schema, train, val, _ = tabular
    clf = _classifier(schema, tmp_path / "run", model={}, trainer={"max_epochs": 1, "enable_progress_bar": False})
    clf.fit(train, val)
    config = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())
    saved = json.loads((tmp_path / "run" / "model" / "predictor.json").read_text())
    # 160 training rows: the small-data default for the table
    from holomodal.methods.base import DEFAULT_ENCODERS
    expected = SMALL_DATA_ENCODERS.get("tabular") or DEFAULT_ENCODERS["tabular"]
    assert config["model"]["encoders"]["tabular"] == expected
    assert saved["params"]["model"]["encoders"] == config["model"]["encoders"]
    assert saved["context"]["train_rows"] == 160


def test_a_python_run_opens_with_the_command_line(tabular, tmp_path, capsys):
    schema, train, val, test = tabular
    run = tmp_path / "py-run"
    _classifier(schema, run, trainer={"max_epochs": 1, "enable_progress_bar": False}).fit(train, val)
    for name in ("config.yaml", "model/predictor.json", "model/model.safetensors", "results.csv", "metrics.json",
                 "training_curves.png", "metrics.csv"):
        assert (run / name).is_file(), name
    assert list(pd.read_csv(run / "results.csv")["split"]) == ["val"]
    table = tmp_path / "test.csv"
    test.to_csv(table, index=False)
    assert main(["evaluate", str(run), "--data", str(table), "--missing", "rvm", "--rates", "0,0.5", "--n-boot", "5"]) == 0
    assert list(run.glob("evaluation-*.csv"))
    assert main(["predict", str(run), str(table), "--out", str(tmp_path / "pred.csv")]) == 0
    assert len(pd.read_csv(tmp_path / "pred.csv")) == len(test)
    assert main(["report", str(run), "--out", str(tmp_path / "report")]) == 0
    assert (tmp_path / "report" / "index.html").exists() or list((tmp_path / "report").glob("*.html"))


def test_loading_never_asks_for_pretrained_weights(tabular, tmp_path):
    from holomodal.estimator import without_pretrained

    nested = {"encoders": {"image": {"name": "timm", "pretrained": "auto"}, "tabular": {"name": "tabular_mlp"}},
              "inter": {"encoders": {"image": {"pretrained": True}}}}
    off = without_pretrained(nested)
    assert off["encoders"]["image"]["pretrained"] is False and off["inter"]["encoders"]["image"]["pretrained"] is False
    assert off["encoders"]["tabular"] == {"name": "tabular_mlp"}
