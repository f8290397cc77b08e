"""One place builds the Trainer (holomodal.training) for supervised and self-supervised
runs; pre-training methods are registered by name (issue 17, item 12)."""

import dataclasses
import inspect

import lightning as L
import pandas as pd
import pytest
import torch

from tiny import TINY_ENCODERS, small_schema
import holomodal.estimator as estimator
import holomodal.pretraining as pretraining
import holomodal.training as training
from holomodal.config import load_config
from holomodal.config_check import checked_config
from holomodal.errors import ConfigError
from holomodal.estimator import Classifier
from holomodal.pretraining import PRETRAINING, PretrainingMethod, Pretrainer, run_pretraining
from holomodal.schema import Modality
from holomodal.training import AtomicCheckpointIO, EpochSeed, LastCheckpoint, build_trainer, merge_log, read_log

QUIET = {"max_epochs": 1, "enable_progress_bar": False, "accelerator": "cpu"}


class ReconstructTable(L.LightningModule):
    """A toy self-supervised module: a linear map that learns to reproduce the numbers."""

    def __init__(self, n: int) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(n, n)

    def training_step(self, batch, batch_idx):
        x = batch.inputs["tabular"]["continuous"]
        loss = ((self.layer(x) - x) ** 2).mean()
        self.log("train/loss", loss, batch_size=len(batch), on_epoch=True)
        return loss

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01)


class TableOnly(PretrainingMethod):
    def restrict(self, schema, model):
        keep = (Modality.CATEGORICAL, Modality.CONTINUOUS, Modality.LABEL)
        return dataclasses.replace(schema, columns=[c for c in schema.columns if c.modality in keep])

    def build(self, preprocessor, schema, model, optim):
        return ReconstructTable(len(schema.of(Modality.CONTINUOUS)))


@pytest.fixture()
def table_only(monkeypatch):
    monkeypatch.setitem(PRETRAINING._entries, "table_only", TableOnly)
    return "table_only"


@pytest.fixture()
def rows(covid):
    schema = small_schema(covid.schema, drop=("text",))
    return schema, covid.split("train")[schema.column_names].iloc[:48]


def test_pretraining_borrows_nothing_private_from_the_estimator():
    source = inspect.getsource(pretraining)
    assert "from holomodal.estimator import" not in source and "holomodal.experiment import _" not in source
    # the training pieces live in holomodal.training only: the estimator keeps no copies or aliases
    assert not hasattr(estimator, "AtomicCheckpointIO") and not hasattr(estimator, "EpochSeed")
    assert AtomicCheckpointIO.__module__ == EpochSeed.__module__ == "holomodal.training"


def test_classifier_and_pretrainer_get_the_same_trainer_pieces(rows, table_only, tmp_path, monkeypatch):
    built = []
    real = build_trainer

    def spy(*args, **kwargs):
        built.append(real(*args, **kwargs))
        return built[-1]

    # the estimator imports holomodal.training when it trains, and calls build_trainer through it
    monkeypatch.setattr(training, "build_trainer", spy)
    monkeypatch.setattr(pretraining, "build_trainer", spy)
    schema, frame = rows
    Classifier(schema, model={"encoders": {m: TINY_ENCODERS[m] for m in ("image", "tabular")}}, batch_size=16,
               trainer=QUIET, loggers=["csv"], run_dir=tmp_path / "clf").fit(frame)
    Pretrainer(schema, method=table_only, batch_size=16, trainer=QUIET, run_dir=tmp_path / "pre").fit(frame)
    assert len(built) == 2
    for trainer in built:
        kinds = {type(c) for c in trainer.callbacks}
        assert {EpochSeed, LastCheckpoint} <= kinds
        assert isinstance(trainer.strategy.checkpoint_io, AtomicCheckpointIO)
    for run in ("clf", "pre"):
        assert (tmp_path / run / "checkpoints" / "last.ckpt").exists() and (tmp_path / run / "metrics.csv").exists()


def test_pretrainer_takes_a_registered_method_by_name(rows, table_only, tmp_path):
    schema, frame = rows
    with pytest.raises(ConfigError, match="unknown pre-training method 'nope'.*table_only.*tip"):
        Pretrainer(schema, method="nope")
    pre = Pretrainer(schema, method=table_only, batch_size=16, trainer=QUIET, run_dir=tmp_path / "pre").fit(frame)
    assert isinstance(pre.module_, ReconstructTable)
    assert torch.load(pre.checkpoint_, weights_only=True)["epoch"] == 0
    assert "tip" in PRETRAINING and "tip" in pretraining.PRETRAINING_METHODS


def test_pretraining_resume_trains_the_further_epochs(rows, table_only, tmp_path):
    schema, frame = rows
    run = tmp_path / "pre"
    Pretrainer(schema, method=table_only, batch_size=16, trainer=QUIET, run_dir=run).fit(frame)
    pre = Pretrainer(schema, method=table_only, batch_size=16, trainer={**QUIET, "max_epochs": 3}, run_dir=run)
    pre.fit(frame, resume=True, record={"config.yaml": {"trainer": {"max_epochs": 3}}})
    assert torch.load(pre.checkpoint_, weights_only=True)["epoch"] == 2
    assert sorted(pd.read_csv(run / "metrics.csv")["epoch"].unique()) == [0, 1, 2]


def test_last_checkpoint_is_the_last_epoch_even_when_the_metric_did_not_improve(covid, tmp_path, monkeypatch):
    """Lightning 2.6's save_last only writes last.ckpt in epochs that improved the monitored
    metric; holomodal writes it every epoch (else a resume would repeat epochs)."""
    schema = small_schema(covid.schema, drop=("text",))
    # "max" on the validation loss (holomodal minimises a loss): it only falls, so epoch 0 stays the best
    monkeypatch.setattr(Classifier, "monitor_mode", property(lambda self: "max"))
    clf = Classifier(schema, model={"encoders": {m: TINY_ENCODERS[m] for m in ("image", "tabular")}}, batch_size=16,
                     trainer={**QUIET, "max_epochs": 3}, monitor="val/loss", loggers=[], run_dir=tmp_path / "run")
    clf.fit(covid.split("train")[schema.column_names].iloc[:48], covid.split("val")[schema.column_names].iloc[:16])
    epochs = {n: torch.load(tmp_path / "run" / "checkpoints" / f"{n}.ckpt", weights_only=True)["epoch"] for n in ("best", "last")}
    assert epochs["last"] == 2 and epochs["best"] < 2


def test_early_stopping_option_stops_the_run(covid, tmp_path, monkeypatch):
    schema = small_schema(covid.schema, drop=("text",))
    # a falling loss read as "max": no epoch after the first improves, so patience 1 stops after epoch 1
    monkeypatch.setattr(Classifier, "monitor_mode", property(lambda self: "max"))
    clf = Classifier(schema, model={"encoders": {m: TINY_ENCODERS[m] for m in ("image", "tabular")}}, batch_size=16,
                     trainer={**QUIET, "max_epochs": 6, "early_stopping": {"patience": 1}}, monitor="val/loss",
                     loggers=[], run_dir=tmp_path / "run")
    clf.fit(covid.split("train")[schema.column_names].iloc[:48], covid.split("val")[schema.column_names].iloc[:16])
    assert torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", weights_only=True)["epoch"] == 1


def test_run_pretraining_checks_its_config_and_checking_twice_is_harmless(tmp_path):
    cfg = load_config(["covid_cxr_tip_pretrain"], [f"run.dir={tmp_path / 'pre'}"])
    once = checked_config(cfg, "pretrain")
    assert checked_config(once, "pretrain") == once
    bad = load_config(["covid_cxr_tip_pretrain"], [f"run.dir={tmp_path / 'pre'}", "trainer.max_epoch=3"])
    with pytest.raises(ConfigError, match="trainer.max_epoch"):
        run_pretraining(bad)
    assert not (tmp_path / "pre").exists()


def test_training_log_survives_a_cut_line_and_a_resume_that_trained_nothing(tmp_path):
    log = tmp_path / "metrics.csv"
    for cut in ('2,8,0.3,"ha', "2,8,0.3,0.1,9"):  # a kill mid-line: an open quote, or fields run together
        log.write_text(f"epoch,step,train/loss\n0,2,0.5\n1,5,0.4\n{cut}")
        assert read_log(log)["epoch"].tolist() == [0, 1]
    earlier = read_log(log)
    assert earlier["epoch"].tolist() == [0, 1]
    log.unlink()  # Lightning's CSV logger deletes the log when a resume starts
    merge_log(log, earlier)
    assert pd.read_csv(log)["epoch"].tolist() == [0, 1]
