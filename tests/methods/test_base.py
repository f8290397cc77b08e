"""What every method shares: a non-finite training loss stops the run with a clear error
(leaving the checkpoints of earlier epochs as they were), and metrics a target cannot
define are NaN with the reason, never 0."""

import math

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from tiny import TINY_ENCODERS, small_schema
from holomodal.cli import main
from holomodal.errors import DataError
from holomodal.estimator import Classifier
from holomodal.methods.base import FiniteLossGuard, UndefinedMetricWarning, compute_metrics
from holomodal.methods.late_fusion import LateFusion

# the flag is read every log_every_n_steps steps (10, more than an epoch here) and at epoch end
QUIET = {"enable_progress_bar": False, "accelerator": "cpu"}


@pytest.fixture()
def tabular(covid):
    """Real covid_cxr rows, table only, so that a run takes a few seconds."""
    schema = small_schema(covid.schema, drop=("image", "text"))
    names = schema.column_names
    return schema, covid.split("train")[names].iloc[:48], covid.split("val")[names].iloc[:16]


def test_nonfinite_loss_stops_the_run_and_keeps_earlier_checkpoints(tabular, tmp_path, monkeypatch):
    schema, train, val = tabular
    plain = LateFusion.training_loss

    def diverges_in_epoch_1(self, batch):
        loss = plain(self, batch)
        return loss * math.inf if self.current_epoch >= 1 else loss

    monkeypatch.setattr(LateFusion, "training_loss", diverges_in_epoch_1)
    run = tmp_path / "run"
    clf = Classifier(schema, model={"encoders": TINY_ENCODERS}, batch_size=16, run_dir=run, loggers=["csv"],
                     trainer={**QUIET, "max_epochs": 3})
    with pytest.raises(DataError, match=r"training loss became non-finite.*at epoch 1 \(step 3\).*optim\.lr \(now 0\.001\)"):
        clf.fit(train, val)
    for name in ("last.ckpt", "best.ckpt"):
        ckpt = torch.load(run / "checkpoints" / name, map_location="cpu", weights_only=True)
        assert ckpt["epoch"] == 0, name
        assert all(torch.isfinite(v).all() for v in ckpt["state_dict"].values() if v.is_floating_point()), name
    assert not (run / "model").exists()
    # the run resumes from the last finite checkpoint once the cause is gone
    monkeypatch.undo()
    clf.fit(train, val, resume=True)
    assert np.isfinite(clf.predict_proba(val)).all()
    assert torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)["epoch"] == 2


def test_loss_flag_is_read_every_log_interval_not_every_step(tabular, tmp_path, monkeypatch):
    schema, train, val = tabular
    reads = []
    monkeypatch.setattr(FiniteLossGuard, "check_loss_finite", lambda self: reads.append(self.trainer.global_step))
    clf = Classifier(schema, model={"encoders": TINY_ENCODERS}, batch_size=4, run_dir=tmp_path / "run", loggers=["csv"],
                     trainer={**QUIET, "max_epochs": 1, "log_every_n_steps": 5})
    clf.fit(train, val)
    # 12 steps: read after steps 5 and 10, after the last one, then before validation and at epoch end
    assert reads == [0, 5, 10, 12, 12, 12]


def test_cli_exits_2_on_a_diverging_run(tabular, tmp_path, capsys):
    schema, train, val = tabular
    for split, frame in (("train", train), ("val", val)):
        frame.to_parquet(tmp_path / f"{split}.parquet")
    (tmp_path / "schema.json").write_text(schema.to_json())
    cfg = {"data": {"train": str(tmp_path / "train.parquet"), "val": str(tmp_path / "val.parquet"),
                    "schema": str(tmp_path / "schema.json")},
           "model": {"encoders": TINY_ENCODERS}, "batch_size": 16, "optim": {"lr": 1e30},
           "trainer": {**QUIET, "max_epochs": 2}, "run": {"loggers": ["csv"]}}
    OmegaConf.save(OmegaConf.create(cfg), tmp_path / "tiny.yaml")
    code = main(["train", "-c", str(tmp_path / "tiny.yaml"), f"run.dir={tmp_path / 'run'}"])
    err = capsys.readouterr().err
    assert code == 2
    assert "error: training loss became non-finite" in err and "now 1e+30" in err
    assert "Traceback" not in err
    assert not (tmp_path / "run" / "metrics.json").exists()


def test_tip_pretraining_stops_on_a_nonfinite_loss(tmp_path):
    import pandas as pd

    from holomodal.pretraining import Pretrainer
    from holomodal.schema import Column, Modality, Schema

    rng = np.random.default_rng(0)
    n = 16
    frame = pd.DataFrame({
        "xray": pd.Series([rng.integers(0, 255, (32, 32)).astype(np.uint8) for _ in range(n)], dtype=object),
        "a": rng.choice(["p", "q"], n), "x": rng.normal(size=n), "label": np.arange(n) % 2,
    })
    schema = Schema([Column("xray", Modality.IMAGE, {"channels": 1, "size": 32, "source": "array"}),
                     Column("a", Modality.CATEGORICAL), Column("x", Modality.CONTINUOUS),
                     Column("label", Modality.LABEL, {"task": "binary", "classes": ["0", "1"]})])
    model = {"encoders": {"image": {"model_name": "test_resnet"}, "tabular": {"dim": 16, "depth": 1, "heads": 2}},
             "interaction": {"dim": 16, "depth": 1, "heads": 2}}
    pre = Pretrainer(schema, model=model, optim={"lr": 1e30, "scheduler": "none"}, batch_size=8,
                     trainer={**QUIET, "max_epochs": 2, "log_every_n_steps": 1}, run_dir=tmp_path / "pre")
    with pytest.raises(DataError, match="training loss became non-finite.*now 1e\\+30"):
        pre.fit(frame.assign(label=pd.array([None] * n, dtype="Int64")), frame)


def test_metrics_undefined_on_the_target_are_nan_with_the_reason():
    probs = torch.tensor([[0.3, 0.7], [0.6, 0.4], [0.2, 0.8]])
    with pytest.warns(UndefinedMetricWarning, match="auroc: the target holds the single class 'COVID-19'"):
        scores = compute_metrics("binary", 2, probs, torch.tensor([1, 1, 1]), class_names=["other", "COVID-19"])
    assert math.isnan(scores["auroc"]) and math.isnan(scores["balanced_accuracy"])
    assert scores["accuracy"] == pytest.approx(2 / 3) and scores["auprc"] == pytest.approx(1.0)
    assert set(scores.undefined) == {"auroc", "balanced_accuracy"}
    assert "class(es) ['other'] are absent" in scores.undefined["balanced_accuracy"]
    with pytest.warns(UndefinedMetricWarning, match="auprc: the target holds no row of the positive class"):
        scores = compute_metrics("binary", 2, probs, torch.tensor([0, 0, 0]))
    assert math.isnan(scores["auprc"])
    three = torch.tensor([[0.5, 0.3, 0.2], [0.1, 0.8, 0.1]])
    with pytest.warns(UndefinedMetricWarning, match=r"one-vs-rest AUROC"):
        scores = compute_metrics("multiclass", 3, three, torch.tensor([0, 1]), class_names=["a", "b", "c"])
    assert math.isnan(scores["auroc"]) and scores["accuracy"] == 1.0
    assert "['c']" in scores.undefined["auroc"]
    labels = torch.tensor([[1, 0], [1, 1]])
    with pytest.warns(UndefinedMetricWarning, match=r"label\(s\) \['0'\] are all positive"):
        scores = compute_metrics("multilabel", 2, torch.tensor([[0.9, 0.2], [0.7, 0.6]]), labels)
    assert math.isnan(scores["auroc"]) and not math.isnan(scores["auprc"])
    # a target with every class gives plain numbers, and no reason
    scores = compute_metrics("binary", 2, probs, torch.tensor([1, 0, 1]))
    assert scores.undefined == {} and scores["auroc"] == 1.0
