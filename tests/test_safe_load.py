"""No load path runs code from a file: a checkpoint crafted to run code when unpickled is
refused on every path (resume, best-epoch reload, TIP's model.checkpoint, load, evaluate,
export, pre-training resume), with TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1 set, and the code
never runs (issue 10, item 4)."""

import pickle
import shutil
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from tiny import TINY_ENCODERS, small_schema
from holomodal.cli import main
from holomodal.errors import HolomodalError
from holomodal.estimator import Classifier
from holomodal.safe_load import DamagedFileError, UnsafeFileError, load_checkpoint, pickle_globals
from holomodal.training import AtomicCheckpointIO

REFUSED = r"damaged file|not a weights-only"


class Payload:
    """Unpickling this creates ``marker``: what an attacker's code would do, made visible."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return exec, (f"open({self.marker!r}, 'w').close()",)


@pytest.fixture()
def marker(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")
    return tmp_path / "code-ran"


def _zip_payload(path, marker):
    """A real torch archive (as torch.save writes it) carrying the payload beside weights."""
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"state_dict": {"w": torch.ones(2)}, "epoch": 0, "holomodal_tip": Payload(marker)}, path)


def _plain_payload(path, marker):
    """A bare pickle, which torch.load reads with its legacy (non-zip) loader."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(pickle.dumps({"state_dict": Payload(marker)}, protocol=4))


PAYLOADS = {"torch-zip": _zip_payload, "bare-pickle": _plain_payload}


@pytest.fixture(scope="module")
def run(covid, tmp_path_factory):
    """A finished one-epoch run made by `holomodal train` (config.yaml, checkpoints, model/)."""
    folder = tmp_path_factory.mktemp("safe_load")
    schema = small_schema(covid.schema, drop=("text",))
    for split, n in (("train", 48), ("val", 16), ("test", 16)):
        covid.split(split)[schema.column_names].iloc[:n].to_parquet(folder / f"{split}.parquet")
    (folder / "schema.json").write_text(schema.to_json())
    cfg = {"data": {**{s: str(folder / f"{s}.parquet") for s in ("train", "val", "test")}, "schema": str(folder / "schema.json")},
           "model": {"encoders": {m: TINY_ENCODERS[m] for m in ("image", "tabular")}}, "batch_size": 16, "seed": 3,
           "trainer": {"max_epochs": 1, "enable_progress_bar": False, "accelerator": "cpu"}, "run": {"loggers": ["csv"]}}
    OmegaConf.save(OmegaConf.create(cfg), folder / "tiny.yaml")
    assert main(["train", "-c", str(folder / "tiny.yaml"), f"run.dir={folder / 'run'}"]) == 0
    return folder / "run"


def _copy(run, tmp_path):
    target = tmp_path / "run"
    shutil.copytree(run, target)
    return target


def test_the_payload_is_real_and_the_variable_matters(marker, tmp_path):
    """Without holomodal's loader the payload runs: this is what the other tests guard against."""
    ckpt = tmp_path / "evil.ckpt"
    _zip_payload(ckpt, marker)
    with pytest.warns(UserWarning, match="TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD"):
        torch.load(ckpt)  # weights_only left unset: the variable turns it off
    assert marker.exists()
    marker.unlink()
    with pytest.raises(UnsafeFileError, match="not a weights-only checkpoint.*builtins.exec"):
        load_checkpoint(ckpt)
    assert not marker.exists()


@pytest.mark.parametrize("kind", PAYLOADS)
def test_checkpoint_reader_refuses_payloads(kind, marker, tmp_path):
    ckpt = tmp_path / "last.ckpt"
    PAYLOADS[kind](ckpt, marker)
    for read in (load_checkpoint, lambda p: AtomicCheckpointIO().load_checkpoint(p, weights_only=False)):
        with pytest.raises(HolomodalError, match=REFUSED):
            read(ckpt)
    assert not marker.exists()


@pytest.mark.parametrize("kind", PAYLOADS)
def test_resume_refuses_a_crafted_last_checkpoint(kind, run, marker, tmp_path, capsys):
    run = _copy(run, tmp_path)
    PAYLOADS[kind](run / "checkpoints" / "last.ckpt", marker)
    assert main(["train", "--resume", str(run)]) == 2
    err = capsys.readouterr().err
    assert "last.ckpt" in err and ("not a weights-only" in err or "damaged file" in err) and "Traceback" not in err
    assert not marker.exists()


def test_resume_from_a_crafted_best_checkpoint_is_refused(run, marker, tmp_path, capsys):
    run = _copy(run, tmp_path)
    (run / "checkpoints" / "last.ckpt").unlink()  # resume then starts from best.ckpt
    _zip_payload(run / "checkpoints" / "best.ckpt", marker)
    assert main(["train", "--resume", str(run)]) == 2
    assert "best.ckpt' is not a weights-only checkpoint" in capsys.readouterr().err
    assert not marker.exists()


def test_best_epoch_reload_refuses_a_swapped_checkpoint(covid, marker, tmp_path, monkeypatch):
    """best.ckpt replaced while the run trains: the reload at the end of fit() refuses it."""
    real = AtomicCheckpointIO.save_checkpoint

    def swapped(self, checkpoint, path, storage_options=None):
        real(self, checkpoint, path, storage_options)
        if Path(path).name == "best.ckpt":
            _zip_payload(Path(path), marker)

    monkeypatch.setattr(AtomicCheckpointIO, "save_checkpoint", swapped)
    schema = small_schema(covid.schema, drop=("text",))
    clf = Classifier(schema, model={"encoders": {m: TINY_ENCODERS[m] for m in ("image", "tabular")}}, batch_size=16,
                     trainer={"max_epochs": 1, "enable_progress_bar": False}, loggers=[], run_dir=tmp_path / "run")
    with pytest.raises(UnsafeFileError, match="best.ckpt' is not a weights-only checkpoint"):
        clf.fit(covid.split("train")[schema.column_names].iloc[:32], covid.split("val")[schema.column_names].iloc[:16])
    assert not marker.exists()


@pytest.mark.parametrize("kind", PAYLOADS)
def test_tip_pretrained_checkpoint_is_refused(kind, covid, marker, tmp_path):
    from holomodal.methods.tip import read_pretrained

    pre = tmp_path / "pre"
    PAYLOADS[kind](pre / "checkpoints" / "last.ckpt", marker)
    with pytest.raises(HolomodalError, match=REFUSED):
        read_pretrained(pre)
    schema = small_schema(covid.schema, drop=("text",))
    clf = Classifier(schema, method="tip", model={"checkpoint": str(pre)}, trainer={"max_epochs": 1}, run_dir=tmp_path / "ft")
    with pytest.raises(HolomodalError, match=REFUSED):
        clf.fit(covid.split("train")[schema.column_names].iloc[:16])
    assert not marker.exists() and not (tmp_path / "ft").exists()


def test_pretraining_resume_refuses_a_crafted_checkpoint(covid, marker, tmp_path):
    from holomodal.pretraining import Pretrainer

    run = tmp_path / "pre"
    _zip_payload(run / "checkpoints" / "last.ckpt", marker)
    schema = small_schema(covid.schema, drop=("text",))
    with pytest.raises(UnsafeFileError, match="not a weights-only"):
        Pretrainer(schema, run_dir=run).fit(covid.split("train")[schema.column_names].iloc[:16], resume=True)
    assert not marker.exists()


@pytest.mark.parametrize("name", ["model.safetensors", "predictor.json"])
def test_saved_model_load_evaluate_export_refuse_a_pickle(name, run, marker, tmp_path, capsys):
    from holomodal.export import export_run

    run = _copy(run, tmp_path)
    target = run / "model" / name
    target.unlink()
    _zip_payload(target, marker)
    with pytest.raises(DamagedFileError, match=f"damaged file {target}"):
        Classifier.load(run / "model")
    assert main(["evaluate", str(run), "--missing", "rvm", "--rates", "0.5", "--n-boot", "0"]) == 2
    err = capsys.readouterr().err
    assert f"error: damaged file {target}" in err and "Traceback" not in err
    with pytest.raises(DamagedFileError):
        export_run(run, tmp_path / "model.onnx")
    assert not marker.exists() and not (tmp_path / "model.onnx").exists()


def test_static_scan_follows_memoised_names():
    """STACK_GLOBAL operands fetched from the memo are still seen (no execution needed)."""
    data = (b"\x80\x04" + b"\x8c\x08builtins\x94" + b"0" + b"\x8c\x04exec\x94" + b"0"
            + b"h\x00h\x01\x93" + b".")
    assert "builtins.exec" in pickle_globals(data)
    assert pickle_globals(pickle.dumps(Payload("x"), protocol=2)) == {"builtins.exec"}
    assert pickle_globals(pickle.dumps(Payload("x"), protocol=4)) == {"builtins.exec"}


def test_what_holomodal_writes_loads_weights_only(run):
    for name in ("last.ckpt", "best.ckpt"):
        assert load_checkpoint(run / "checkpoints" / name)["state_dict"]


def test_a_checkpoint_that_would_not_load_weights_only_is_not_written(tmp_path):
    with pytest.raises(TypeError, match="weights-only load refuses.*pathlib"):
        AtomicCheckpointIO().save_checkpoint({"epoch": 0, "where": tmp_path}, tmp_path / "last.ckpt")
    assert list(tmp_path.iterdir()) == []
