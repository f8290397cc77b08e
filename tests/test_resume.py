"""A run killed mid-epoch and resumed ends where an uninterrupted run ends; checkpoints are
written atomically; optional loggers fail clearly."""

import json
import os
import signal
import subprocess
import sys
import time

import pandas as pd
import pytest
import torch
from omegaconf import OmegaConf

from tiny import TINY_ENCODERS, small_schema
from holomodal.cli import main
from holomodal.errors import ConfigError
from holomodal.estimator import AtomicCheckpointIO, Classifier

# The text column is left out to keep the killed and the uninterrupted run short.
ENCODERS = {m: TINY_ENCODERS[m] for m in ("image", "tabular")}


@pytest.fixture(scope="module")
def config(covid, tmp_path_factory):
    folder = tmp_path_factory.mktemp("resume")
    schema = small_schema(covid.schema, drop=("text",))
    names = schema.column_names
    for split, n in (("train", 96), ("val", 32), ("test", 40)):
        covid.split(split)[names].iloc[:n].to_parquet(folder / f"{split}.parquet")
    (folder / "schema.json").write_text(schema.to_json())
    cfg = {"data": {**{s: str(folder / f"{s}.parquet") for s in ("train", "val", "test")}, "schema": str(folder / "schema.json")},
           "model": {"encoders": ENCODERS, "head": {"hidden": 16, "dropout": 0.3}}, "batch_size": 16, "seed": 7,
           "trainer": {"max_epochs": 3, "deterministic": True, "limit_train_batches": 4, "log_every_n_steps": 1,
                       "enable_progress_bar": False, "accelerator": "cpu"},
           "run": {"loggers": ["csv"]}}
    OmegaConf.save(OmegaConf.create(cfg), folder / "tiny.yaml")
    return folder


def _train(*args, env=None, **popen):
    command = [sys.executable, "-m", "holomodal.cli", "train", *args]
    return subprocess.Popen(command, env={**os.environ, **(env or {})}, **popen)


def _epoch(path):
    return torch.load(path, map_location="cpu", weights_only=False)["epoch"]


def _per_epoch(run):
    log = pd.read_csv(run / "metrics.csv")
    return log.groupby("epoch")[["train/loss", "val/loss", "val/auroc"]].last()


def test_killed_run_resumes_to_the_uninterrupted_result(config):
    straight, killed = config / "straight", config / "killed"
    # the test hook sleeps after every step, so that epoch 1 lasts long enough to be killed in
    victim = _train("-c", str(config / "tiny.yaml"), f"run.dir={killed}", env={"HOLOMODAL_TEST_STEP_DELAY": "0.5"},
                    stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    last = killed / "checkpoints" / "last.ckpt"
    deadline = time.monotonic() + 240
    while not (last.exists() and _epoch(last) == 0):  # every read must find a whole checkpoint
        assert victim.poll() is None, victim.stderr.read().decode()[-3000:]
        assert time.monotonic() < deadline, "no checkpoint of epoch 0 appeared"
        time.sleep(0.05)
    time.sleep(1.2)  # two or three steps into epoch 1 (of 4, 0.5 s each)
    assert victim.poll() is None, "the run ended before it could be killed"
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    assert _epoch(last) == 0, "killed after epoch 1 was checkpointed, not during it"
    assert not (killed / "metrics.json").exists()

    resumed = _train("--resume", str(killed), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    # the uninterrupted reference runs here while the resumed process starts
    deterministic = torch.are_deterministic_algorithms_enabled()
    try:
        assert main(["train", "-c", str(config / "tiny.yaml"), f"run.dir={straight}"]) == 0
    finally:
        torch.use_deterministic_algorithms(deterministic)  # trainer.deterministic sets it process-wide
    _, err = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, err.decode()[-3000:]

    a, b = (json.loads((run / "metrics.json").read_text()) for run in (straight, killed))
    worst = max(abs(a[s][m] - b[s][m]) for s in ("val", "test") for m in a[s])
    print(f"largest val/test metric difference, resumed vs uninterrupted: {worst:.3e}")
    assert worst <= 1e-6
    # not only the end: every epoch's losses agree, and the log kept the epoch before the kill
    pd.testing.assert_frame_equal(_per_epoch(straight), _per_epoch(killed), atol=1e-6, rtol=0)


def test_checkpoint_write_is_atomic(tmp_path, monkeypatch):
    io = AtomicCheckpointIO()
    target = tmp_path / "checkpoints" / "last.ckpt"
    io.save_checkpoint({"epoch": 0, "w": torch.ones(3)}, target)
    assert _epoch(target) == 0

    def dies_halfway(obj, fh, *args, **kwargs):
        fh.write(b"PK\x03\x04 half a checkpoint")
        raise KeyboardInterrupt  # as if the process were stopped during the write

    monkeypatch.setattr(torch, "save", dies_halfway)
    with pytest.raises(KeyboardInterrupt):
        io.save_checkpoint({"epoch": 1}, target)
    monkeypatch.undo()
    assert _epoch(target) == 0
    assert sorted(p.name for p in target.parent.iterdir()) == ["last.ckpt"]


def test_mlflow_logger_missing_package_is_named(covid, tmp_path):
    try:
        import mlflow  # noqa: F401
    except ImportError:
        pass
    else:
        pytest.skip("mlflow is installed: the missing-package message cannot show")
    clf = Classifier(covid.schema, loggers=["csv", "tensorboard", "mlflow"], run_dir=tmp_path / "run",
                     trainer={"max_epochs": 1, "enable_progress_bar": False})
    with pytest.raises(ConfigError, match="'mlflow' is not installed.*pip install mlflow"):
        clf.fit(covid.split("train").iloc[:16])
    assert not (tmp_path / "run").exists()  # failed before the run folder was made
    with pytest.raises(ConfigError, match="unknown logger 'wandb'"):
        Classifier(covid.schema, loggers=["wandb"], run_dir=tmp_path / "run").fit(covid.split("train").iloc[:16])


@pytest.mark.optional
def test_mlflow_logger_logs_beside_csv_and_tensorboard(covid, tmp_path):
    mlflow = pytest.importorskip("mlflow", reason="mlflow is optional and not installed here")
    if not os.environ.get("MLFLOW_TRACKING_URI"):
        pytest.importorskip("sqlalchemy", reason="mlflow-skinny alone cannot log to a local database")
    schema = small_schema(covid.schema, drop=("text",))
    run = tmp_path / "run"
    clf = Classifier(schema, model={"encoders": ENCODERS}, loggers=["csv", "tensorboard", "mlflow"], run_dir=run,
                     trainer={"max_epochs": 1, "enable_progress_bar": False}, batch_size=16)
    clf.fit(covid.split("train")[schema.column_names].iloc[:32], covid.split("val")[schema.column_names].iloc[:16])
    assert (run / "metrics.csv").exists() and any((run / "tensorboard").iterdir())
    if not os.environ.get("MLFLOW_TRACKING_URI"):
        mlflow.set_tracking_uri(f"sqlite:///{run / 'mlflow.db'}")
        logged = mlflow.search_runs(search_all_experiments=True)
        assert "metrics.val/loss" in logged.columns and logged["tags.mlflow.runName"].tolist() == ["run"]
