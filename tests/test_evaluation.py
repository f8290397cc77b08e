"""Robustness sweeps: metrics against missing rate, with bootstrap intervals, on real rows."""

import json
import logging

import numpy as np
import pandas as pd
import pytest
from omegaconf import OmegaConf
from PIL import Image

from tiny import TINY_ENCODERS, small_schema
from holomodal.cli import main
from holomodal.errors import DataError
from holomodal.estimator import Classifier
from holomodal.evaluation import COLUMNS, robustness_sweep

ENCODERS = TINY_ENCODERS
KINDS = ["rvm", "rfm", "mifm", "lifm", "modality"]
BINARY_METRICS = {"accuracy", "balanced_accuracy", "f1_macro", "auroc", "auprc"}


def _tiny(schema, run_dir):
    return Classifier(schema, model={"encoders": ENCODERS}, trainer={"max_epochs": 1, "enable_progress_bar": False},
                      batch_size=16, run_dir=run_dir, loggers=["csv"])


@pytest.fixture(scope="module")
def fitted(covid, tmp_path_factory):
    train, test = covid.split("train").iloc[:64], covid.split("test").iloc[:48]
    clf = _tiny(small_schema(covid.schema), tmp_path_factory.mktemp("sweep") / "run").fit(train, covid.split("val").iloc[:16])
    return clf, train, test


def test_sweep_is_tidy_and_consistent_with_evaluate(fitted):
    clf, train, test = fitted
    result = robustness_sweep(clf, test, KINDS, [0, 0.5, 0.9], n_boot=30, train=train)
    assert list(result.columns) == COLUMNS
    assert set(result["kind"]) == set(KINDS) and set(result["metric"]) == BINARY_METRICS
    assert len(result) == len(KINDS) * 3 * len(BINARY_METRICS)
    assert (result["ci_low"] <= result["ci_high"]).all()
    # at rate 0 every kind is the data as it is: the metrics of Classifier.evaluate
    clean = result[result["rate"] == 0]
    reference = clf.evaluate(test)
    for kind in KINDS:
        values = clean[clean["kind"] == kind].set_index("metric")["value"]
        for name, value in reference.items():
            assert values[name] == pytest.approx(value, abs=1e-6)
    # hiding 90 % of the inputs changes the model's scores
    auroc = result[(result["metric"] == "auroc") & (result["rate"] == 0.9)]["value"]
    assert not np.allclose(auroc.to_numpy(), reference["auroc"])
    assert result.attrs["ranking"]["source"] == "fitted on the training split"
    assert sorted(result.attrs["ranking"]["columns"]) == list(range(len(clf.schema.tabular)))


def test_bootstrap_is_seeded(fitted):
    clf, _, test = fitted
    a = robustness_sweep(clf, test, ["rvm"], [0.3], n_boot=20, seed=1)
    b = robustness_sweep(clf, test, ["rvm"], [0.3], n_boot=20, seed=1)
    pd.testing.assert_frame_equal(a, b)


def test_mask_seeds_redraw_the_masks_and_average_over_draws(fitted):
    clf, _, test = fitted

    def auroc(result):
        return result[result["metric"] == "auroc"].iloc[0]

    singles = [auroc(robustness_sweep(clf, test, ["rvm"], [0.5], n_boot=20, mask_seeds=[s])) for s in (0, 1, 2)]
    assert len({round(r["value"], 9) for r in singles}) > 1  # a different seed is a different mask
    pooled = robustness_sweep(clf, test, ["rvm"], [0.5], n_boot=60, mask_seeds=[0, 1, 2])
    assert auroc(pooled)["value"] == pytest.approx(np.mean([r["value"] for r in singles]), abs=1e-9)
    assert pooled.attrs["mask_seeds"] == [0, 1, 2]
    # the pooled interval spans the mask draws' own values
    assert auroc(pooled)["ci_low"] <= min(r["value"] for r in singles)
    assert auroc(pooled)["ci_high"] >= max(r["value"] for r in singles)


def test_ranking_needs_the_training_split(fitted):
    clf, _, test = fitted
    with pytest.raises(DataError, match="ranking.*training split"):
        robustness_sweep(clf, test, ["mifm"], [0.5], n_boot=5)


def test_data_without_tabular_columns_skips_tabular_kinds(covid, tmp_path, capsys, caplog):
    schema = small_schema(covid.schema, drop=("categorical", "continuous"))
    names = schema.column_names
    run = tmp_path / "run"
    clf = _tiny(schema, run).fit(covid.split("train")[names].iloc[:48], covid.split("val")[names].iloc[:16])
    clf.save(run / "model")
    test = covid.split("test")[names].iloc[:32]
    with caplog.at_level(logging.WARNING, logger="holomodal"):
        result = robustness_sweep(clf, test, ["rvm", "mifm", "modality"], [0, 0.5], n_boot=10)
    assert set(result["kind"]) == {"modality"}
    assert result.attrs["skipped"] == {"rvm": "the data has no tabular columns", "mifm": "the data has no tabular columns"}
    assert "skipping 'rvm'" in caplog.text

    data = tmp_path / "test.parquet"
    test.to_parquet(data)
    code = main(["evaluate", str(run), "--missing", "rvm,modality", "--rates", "0,0.5", "--n-boot", "5", "--data", str(data)])
    err = capsys.readouterr().err
    assert code == 0 and "skipped 'rvm': the data has no tabular columns" in err


def _train_run(covid, folder, name):
    """A run made by `holomodal train` on real covid_cxr rows written as files."""
    for split, n in (("train", 64), ("val", 24), ("test", 48)):
        covid.split(split).iloc[:n].to_parquet(folder / f"{split}.parquet")
    (folder / "schema.json").write_text(small_schema(covid.schema).to_json())
    cfg = {"data": {**{s: str(folder / f"{s}.parquet") for s in ("train", "val", "test")}, "schema": str(folder / "schema.json")},
           "model": {"encoders": ENCODERS}, "batch_size": 16,
           "trainer": {"max_epochs": 1, "enable_progress_bar": False}, "run": {"dir": str(folder / name), "loggers": ["csv"]}}
    OmegaConf.save(OmegaConf.create(cfg), folder / "tiny.yaml")
    assert main(["train", "-c", str(folder / "tiny.yaml")]) == 0
    return folder / name


def test_cli_writes_new_csv_json_png_each_time(covid, tmp_path, capsys):
    run = _train_run(covid, tmp_path, "run")
    args = ["evaluate", str(run), "--missing", "rvm,rfm,mifm,lifm,modality", "--rates", "0,0.1,0.3,0.5,0.7,0.9", "--n-boot", "5"]
    assert main(args) == 0
    first = {p: p.read_bytes() for p in run.glob("evaluation-*")}
    assert sorted(p.suffix for p in first) == [".csv", ".json", ".png"]
    # again within the same second: new names, the first files untouched
    assert main(["evaluate", str(run), "--missing", "rvm", "--rates", "0", "--n-boot", "5"]) == 0
    out = capsys.readouterr().out
    assert len(list(run.glob("evaluation-*"))) == 6
    assert all(p.read_bytes() == data for p, data in first.items())
    csvs = [p for p in first if p.suffix == ".csv"]
    table = pd.read_csv(csvs[0])
    assert list(table.columns) == COLUMNS
    assert sorted(table["rate"].unique()) == [0, 0.1, 0.3, 0.5, 0.7, 0.9]
    assert set(table["kind"]) == set(KINDS)
    meta = json.loads(csvs[0].with_suffix(".json").read_text())
    assert meta["ranking"]["source"] == "fitted on the training split" and meta["n_boot"] == 5
    png = np.asarray(Image.open(csvs[0].with_suffix(".png")).convert("L"), dtype=float)
    assert png.std() > 5
    assert "written:" in out and "rvm" in out


def test_a_regression_sweep_scores_in_the_label_units_of_evaluate(data_root, tmp_path):
    from holomodal.data import load_dataset

    stay = load_dataset("physionet2012", root=data_root, target="length_of_stay")
    encoders = {"tabular": ENCODERS["tabular"], "timeseries": {"name": "gru", "hidden": 16}}
    clf = Classifier(stay.schema, model={"encoders": encoders}, trainer={"max_epochs": 1, "enable_progress_bar": False},
                     batch_size=32, run_dir=tmp_path / "run", loggers=["csv"])
    clf.fit(stay.split("train").iloc[:160], stay.split("val").iloc[:48])
    test = stay.split("test").iloc[:96]
    result = robustness_sweep(clf, test, ["rvm", "rfm", "modality"], [0, 0.5], n_boot=20)
    assert set(result["metric"]) == {"rmse", "mae", "r2"}
    reference = clf.evaluate(test)
    clean = result[result["rate"] == 0]
    for kind in ("rvm", "rfm", "modality"):
        values = clean[clean["kind"] == kind].set_index("metric")["value"]
        for name, value in reference.items():
            assert values[name] == pytest.approx(value, rel=1e-5)
    # errors in days (stays of 1 to 146 days), each with a finite bootstrap interval around it
    rmse = result[result["metric"] == "rmse"]
    assert (rmse["value"] > 1.0).all()
    assert np.isfinite(result[["ci_low", "ci_high"]].to_numpy()).all()
    assert (result["ci_low"] <= result["ci_high"]).all()


# ---- intervals over repeated runs (seeds, masks) and test rows -------------------------

def _runs_on_covid_labels(covid, accuracies, seed=0):
    """Binary probabilities for covid_cxr's real test labels, one array per run, each right
    on about the given share of rows."""
    from holomodal.preprocessing import Preprocessor

    test = covid.split("test")
    target = Preprocessor(covid.schema).fit(covid.split("train")).encode_labels(test["label"]).numpy()
    rng = np.random.default_rng(seed)
    runs = []
    for accuracy in accuracies:
        right = rng.random(len(target)) < accuracy
        p_true = np.where(right, 0.8, 0.2)
        p_one = np.where(target == 1, p_true, 1 - p_true)
        runs.append(np.stack([1 - p_one, p_one], axis=1).astype(np.float32))
    return runs, target


def test_seed_bootstrap_covers_the_spread_between_runs(covid):
    from holomodal.evaluation import seed_bootstrap

    agreeing, target = _runs_on_covid_labels(covid, [0.8, 0.8, 0.8])
    spread, _ = _runs_on_covid_labels(covid, [0.6, 0.8, 0.95])
    same = seed_bootstrap([[p] for p in agreeing], target, "binary", 2, "accuracy", n_boot=300)
    wide = seed_bootstrap([[p] for p in spread], target, "binary", 2, "accuracy", n_boot=300)
    accuracy = [float(((p[:, 1] > 0.5) == target).mean()) for p in spread]
    assert wide["value"] == pytest.approx(np.mean(accuracy))
    assert same["low"] < same["value"] < same["high"]
    # the runs' disagreement widens the interval beyond what the rows alone give
    assert wide["high"] - wide["low"] > 1.5 * (same["high"] - same["low"])


def test_paired_seed_bootstrap_tells_a_win_from_noise(covid):
    from holomodal.errors import ConfigError
    from holomodal.evaluation import seed_bootstrap

    strong, target = _runs_on_covid_labels(covid, [0.95, 0.95, 0.95], seed=1)
    weak, _ = _runs_on_covid_labels(covid, [0.6, 0.6, 0.6], seed=2)
    win = seed_bootstrap(list(zip(strong, weak)), target, "binary", 2, "auroc", n_boot=300)
    assert win["value"] > 0 and win["low"] > 0
    tie = seed_bootstrap(list(zip(strong, strong)), target, "binary", 2, "auroc", n_boot=100)
    assert tie == {"value": 0.0, "low": 0.0, "high": 0.0}  # the same rows for both sides of a pair
    with pytest.raises(ConfigError, match="metric 'rmse' is not one of task 'binary'"):
        seed_bootstrap([[strong[0]]], target, "binary", 2, "rmse")
