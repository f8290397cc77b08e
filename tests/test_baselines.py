"""`holomodal train ... --baselines` (the override baselines=true) on covid_cxr exported as CSV files: gbdt, linear and the
ensemble with the model fitted on the same split, compared, recorded, warned about."""

import json

import numpy as np
import pandas as pd
import pytest
import yaml

from holomodal.cli import main
from holomodal.estimator import Classifier
from tiny import TINY_ENCODERS, covid_csv_files

# one optimiser step: a model no better than chance, so the baselines beat it
ONE_STEP = {"model": {"encoders": TINY_ENCODERS}, "batch_size": 16, "run": {"loggers": ["csv"]},
            "trainer": {"max_epochs": 1, "limit_train_batches": 1, "enable_progress_bar": False}}


@pytest.fixture(scope="module")
def csv_files(covid, tmp_path_factory):
    folder = tmp_path_factory.mktemp("own")
    paths = covid_csv_files(covid, folder, {"train": 120, "test": 40})
    config = folder / "one_step.yaml"
    config.write_text(yaml.safe_dump(ONE_STEP))
    return paths, config


def test_train_with_baselines_compares_records_and_warns(csv_files, tmp_path, capsys):
    paths, config = csv_files
    run = tmp_path / "run"
    code = main(["train", "-c", str(config), "--train", str(paths["train"]), "--test", str(paths["test"]),
                 "--label", "outcome", "--group", "patientid", "--baselines", f"run.dir={run}"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "model vs baselines" in captured.out
    for name in ("gbdt", "linear", "ensemble"):
        assert name in captured.out
        folder = run / "baselines" / name
        assert (folder / "model" / "predictor.json").is_file() and (folder / "config.yaml").is_file()
        assert list(pd.read_csv(folder / "results.csv")["split"]) == ["val", "test"]
    table = pd.read_csv(run / "baselines.csv")
    assert set(table["run"]) == {"model", "gbdt", "linear", "ensemble"} and set(table["split"]) == {"val", "test"}
    val = table[table["split"] == "val"].set_index("run")["auroc"]
    assert val["model"] < max(val["gbdt"], val["linear"])
    best = "gbdt" if val["gbdt"] >= val["linear"] else "linear"
    assert f"the model is worse than {best} on validation: auroc {val['model']:.4f} vs {val[best]:.4f}" in captured.err
    # the ensemble is at least its best member on complete validation rows (its weights' own pattern)
    scores = json.loads((run / "baselines" / "ensemble" / "metrics.json").read_text())["ensemble"]
    complete = scores["tabular+image+clinical_notes"]
    assert complete["ensemble"] >= max(complete[m] for m in ("model", "gbdt", "linear")) - 1e-9
    # each baseline is a run the command line opens; the ensemble predicts from its own folder
    out = tmp_path / "pred.csv"
    assert main(["predict", str(run / "baselines" / "ensemble"), str(paths["test"]), "--out", str(out)]) == 0
    ens = Classifier.load(run / "baselines" / "ensemble" / "model")
    test = pd.read_csv(paths["test"])
    np.testing.assert_allclose(pd.read_csv(out).filter(like="proba_").to_numpy(), ens.predict_proba(test), atol=1e-6)
    assert main(["evaluate", str(run / "baselines" / "linear"), "--missing", "modality", "--drop", "clinical_notes",
                 "--rates", "0,1", "--n-boot", "5"]) == 0
