"""A run killed mid-epoch and resumed ends where an uninterrupted run ends; checkpoints are
written atomically; optional loggers fail clearly."""

import json
import re
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
from holomodal.estimator import Classifier
from holomodal.training import AtomicCheckpointIO

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


# ---- the final save is atomic; --resume repairs (issue 10, items 3 and 8) ----------------------
import errno
import shutil
import textwrap

import numpy as np

from holomodal.errors import HolomodalError
from holomodal.runs import DiskFullError, write_json
from holomodal.safe_load import DamagedFileError


def _test_rows(config):
    return pd.read_parquet(config / "test.parquet")


@pytest.fixture(scope="module")
def quick(config):
    """A two-epoch variant of the tiny config (48 rows), and one finished run of it."""
    cfg = OmegaConf.load(config / "tiny.yaml")
    cfg.trainer.max_epochs, cfg.trainer.limit_train_batches = 2, 3
    path = config / "quick.yaml"
    OmegaConf.save(cfg, path)
    finished = config / "finished"
    deterministic = torch.are_deterministic_algorithms_enabled()
    try:
        assert main(["train", "-c", str(path), f"run.dir={finished}"]) == 0
    finally:
        torch.use_deterministic_algorithms(deterministic)
    return path, finished


def _copy(run, tmp_path):
    target = tmp_path / run.name
    shutil.copytree(run, target)
    return target


def _resume(run, *overrides):
    deterministic = torch.are_deterministic_algorithms_enabled()
    try:
        return main(["train", "--resume", str(run), *overrides])
    finally:
        torch.use_deterministic_algorithms(deterministic)


def _proba(run, rows):
    return Classifier.load(run / "model").predict_proba(rows)


def test_damaged_model_files_are_named_and_resume_remakes_them(quick, config, tmp_path, capsys):
    _, finished = quick
    rows = _test_rows(config)
    expected = _proba(finished, rows)
    for name in ("model.safetensors", "predictor.json"):
        run = _copy(finished, tmp_path / name)
        file = run / "model" / name
        file.write_bytes(file.read_bytes()[: file.stat().st_size // 2])  # as a kill or a full disk would leave it
        with pytest.raises(DamagedFileError, match=f"damaged file {re.escape(str(file))}: "):
            Classifier.load(run / "model")
        assert main(["predict", str(run), str(config / "test.parquet"), "--out", str(tmp_path / "p.parquet")]) == 2
        err = capsys.readouterr().err
        assert f"error: damaged file {file}" in err and "Traceback" not in err
        assert _resume(run) == 0
        assert float(np.abs(_proba(run, rows) - expected).max()) <= 1e-6
    # a model/ that is gone altogether is made again too
    run = _copy(finished, tmp_path / "gone")
    shutil.rmtree(run / "model")
    assert _resume(run) == 0
    assert float(np.abs(_proba(run, rows) - expected).max()) <= 1e-6


def test_damaged_last_checkpoint_is_named_with_the_way_out(quick, tmp_path, capsys):
    run = _copy(quick[1], tmp_path)
    last = run / "checkpoints" / "last.ckpt"
    last.write_bytes(last.read_bytes()[:1000])
    before = {p: p.read_bytes() for p in run.rglob("*") if p.is_file()}
    assert _resume(run) == 2
    err = capsys.readouterr().err
    assert f"error: damaged file {last}: " in err and "best.ckpt" in err and "Traceback" not in err
    assert {p: p.read_bytes() for p in run.rglob("*") if p.is_file()} == before  # nothing changed


def test_resume_from_best_checkpoint_alone(quick, config, tmp_path):
    run = _copy(quick[1], tmp_path)
    (run / "checkpoints" / "last.ckpt").unlink()  # e.g. the disk filled at the first last.ckpt
    shutil.rmtree(run / "model")
    assert _resume(run) == 0
    rows = _test_rows(config)
    assert float(np.abs(_proba(run, rows) - _proba(quick[1], rows)).max()) <= 1e-6


def test_finished_run_resumed_with_more_epochs_trains_on(quick, tmp_path):
    run = _copy(quick[1], tmp_path)
    assert _epoch(run / "checkpoints" / "last.ckpt") == 1
    assert _resume(run, "trainer.max_epochs=3") == 0
    assert _epoch(run / "checkpoints" / "last.ckpt") == 2
    assert sorted(pd.read_csv(run / "metrics.csv")["epoch"].dropna().unique()) == [0, 1, 2]
    assert OmegaConf.load(run / "config.yaml").trainer.max_epochs == 3  # the record says what was trained
    # resuming the finished run again trains nothing more and keeps the log
    assert _resume(run) == 0
    assert _epoch(run / "checkpoints" / "last.ckpt") == 2
    assert sorted(pd.read_csv(run / "metrics.csv")["epoch"].dropna().unique()) == [0, 1, 2]


def _no_space(*args, **kwargs):
    raise OSError(errno.ENOSPC, "No space left on device")


def test_full_disk_while_saving_the_model_says_what_is_intact(quick, tmp_path, monkeypatch, capsys):
    import safetensors.torch

    clf = Classifier.load(quick[1] / "model")
    monkeypatch.setattr(safetensors.torch, "save_file", _no_space)
    with pytest.raises(DiskFullError, match="the disk is full.*Nothing was written"):
        clf.save(tmp_path / "saved")
    assert not (tmp_path / "saved").exists() and list(tmp_path.iterdir()) == []  # no temporary folder left
    # the run's own model/, replaced by a resume: the one saved before stays
    run = _copy(quick[1], tmp_path / "run")
    before = (run / "model" / "model.safetensors").read_bytes()
    assert _resume(run) == 2
    err = capsys.readouterr().err
    assert "error: the disk is full" in err and "is unchanged" in err and "Traceback" not in err
    assert (run / "model" / "model.safetensors").read_bytes() == before
    assert not [p for p in run.iterdir() if p.name.startswith(".model.")]


def test_full_disk_while_checkpointing_or_writing_records(tmp_path, monkeypatch):
    io = AtomicCheckpointIO()
    target = tmp_path / "checkpoints" / "last.ckpt"
    io.save_checkpoint({"epoch": 0, "w": torch.ones(3)}, target)

    def fills_the_disk(obj, fh, *args, **kwargs):
        fh.write(b"PK\x03\x04 part")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch, "save", fills_the_disk)
    with pytest.raises(DiskFullError, match="disk is full.*last.ckpt' keeps the checkpoint of an earlier epoch"):
        io.save_checkpoint({"epoch": 1}, target)
    monkeypatch.undo()
    assert _epoch(target) == 0 and sorted(p.name for p in target.parent.iterdir()) == ["last.ckpt"]

    record = tmp_path / "metrics.json"
    write_json(record, {"a": 1})
    monkeypatch.setattr(os, "fsync", _no_space)
    with pytest.raises(DiskFullError, match="metrics.json' keeps its previous version"):
        write_json(record, {"a": 2})
    assert json.loads(record.read_text()) == {"a": 1} and sorted(p.name for p in tmp_path.iterdir()) == ["checkpoints", "metrics.json"]


KILLED_SAVE = textwrap.dedent(
    """
    import pathlib, sys, time
    import safetensors.torch
    from holomodal.cli import main

    config, run, signal = sys.argv[1:]
    real = safetensors.torch.save_file

    def stalls(tensors, filename, metadata=None):
        real(tensors, filename, metadata)
        path = pathlib.Path(filename)
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])  # half the weights on disk
        pathlib.Path(signal).touch()
        time.sleep(600)  # killed here

    safetensors.torch.save_file = stalls
    sys.exit(main(["train", "-c", config, f"run.dir={run}"]))
    """
)


def test_kill_during_final_save_then_resume_predicts_as_an_uninterrupted_run(quick, config, tmp_path):
    path, straight = quick
    run, signal_file, script = tmp_path / "killed", tmp_path / "saving", tmp_path / "killed_save.py"
    script.write_text(KILLED_SAVE)
    victim = subprocess.Popen([sys.executable, str(script), str(path), str(run), str(signal_file)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 240
    while not signal_file.exists():
        assert victim.poll() is None, victim.stderr.read().decode()[-3000:]
        assert time.monotonic() < deadline, "the run never reached its final save"
        time.sleep(0.05)
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    assert not (run / "model").exists()  # the partial model is in a temporary folder, not in model/
    assert [p.name for p in run.iterdir() if p.name.startswith(".model.tmp-")]
    with pytest.raises(HolomodalError, match="no saved model.*interrupted.*--resume"):
        Classifier.load(run / "model")

    assert _resume(run) == 0
    assert not [p.name for p in run.iterdir() if p.name.startswith(".model.")]
    rows = _test_rows(config)
    worst = float(np.abs(_proba(run, rows) - _proba(straight, rows)).max())
    print(f"killed during the final save, resumed: max abs probability difference {worst:.3e}")
    assert worst <= 1e-6
