"""The command line end to end, on real data with tiny models."""

import json
from pathlib import Path

import pandas as pd
import pytest

from holomodal.cli import main
from holomodal.errors import HolomodalError


def test_data_list_and_check(capsys):
    assert main(["data", "list"]) == 0
    assert capsys.readouterr().out.split() == ["av_digits", "coco_mini", "covid_cxr", "emoji", "mnist5k", "physionet2012"]
    assert main(["data", "check", "covid_cxr"]) == 0
    out = capsys.readouterr().out
    assert "751 rows" in out
    assert "image" in out and "missing     98" in out  # 751 rows, 653 images
    assert "check train:" in out and "absent modalities" in out


def test_train_writes_a_complete_run_folder(tmp_path, capsys):
    run = tmp_path / "run"
    code = main([
        "train", "-c", "av_digits_late_fusion", f"run.dir={run}", "trainer.max_epochs=2",
        "trainer.limit_train_batches=3", "model.encoders.image.channels=2", "model.encoders.audio.channels=2",
        "trainer.enable_progress_bar=false", "missing=[modality:0.3:both]",
    ])
    assert code == 0
    for name in ("config.yaml", "schema.json", "missingness.json", "data_summary.json", "metrics.json",
                 "results.csv", "metrics.csv", "training_curves.png", "checkpoints/last.ckpt",
                 "model/predictor.json", "model/model.safetensors"):
        assert (run / name).exists(), name
    metrics = json.loads((run / "metrics.json").read_text())
    assert 0.0 <= metrics["test"]["accuracy"] <= 1.0
    assert list(pd.read_csv(run / "results.csv")["split"]) == ["val", "test"]
    summary = json.loads((run / "data_summary.json").read_text())
    dropped = summary["train"]["synthetic"]["dropped_modalities"]
    assert dropped["image"] == dropped["audio"] == 360  # 2400 rows x 0.3, half each
    plan = json.loads((run / "missingness.json").read_text())
    assert plan["specs"][0]["kind"] == "modality" and plan["specs"][0]["seed"] == 2021
    assert "test" in capsys.readouterr().out


def test_bad_override_is_a_clear_error(capsys, tmp_path):
    assert main(["train", "-c", "av_digits_late_fusion", "trainer.max_epochs"]) == 2
    assert "key=value" in capsys.readouterr().err
    assert main(["train", "-c", "no_such_config"]) == 2
    assert "no_such_config" in capsys.readouterr().err


@pytest.mark.parametrize("argv, fragment", [
    (["evaluate", "RUN", "--n-boot", "-1"], "argument --n-boot: must be >= 0, got -1"),
    (["evaluate", "RUN", "--n-boot", "many"], "argument --n-boot: 'many' is not a whole number"),
    (["evaluate", "RUN", "--seed", "1.5"], "argument --seed: '1.5' is not a whole number"),
    (["evaluate", "RUN", "--rates", "0,1.5"], "argument --rates: missing rate 1.5 is outside [0, 1]"),
    (["evaluate", "RUN", "--rates", "0,lots"], "argument --rates: missing rate 'lots' is not a number"),
    (["evaluate", "RUN", "--missing", "rvm,rvx"], "argument --missing: unknown missingness kind(s) ['rvx']"),
    (["evaluate", "RUN", "--mask-seeds", "0,x"], "argument --mask-seeds: 'x' is not a whole number"),
    (["evaluate", "RUN", "--mask-seeds", "0,-1"], "argument --mask-seeds: seeds must be >= 0, got -1"),
    (["evaluate", "RUN", "--mask-seeds", "1,1"], "argument --mask-seeds: seed(s) given twice in '1,1'"),
    (["export", "RUN", "--onnx", "--rows", "0"], "argument --rows: must be >= 1, got 0"),
    (["data", "prepare", "dvm", "--min-adverts", "0"], "argument --min-adverts: must be >= 1, got 0"),
])
def test_cli_arguments_are_range_checked(argv, fragment, tmp_path, capsys):
    run = tmp_path / "run"
    with pytest.raises(SystemExit) as info:
        main([str(run) if a == "RUN" else a for a in argv])
    err = capsys.readouterr().err
    assert info.value.code == 2 and fragment in err and "usage:" in err and "Traceback" not in err
    assert not run.exists()


def test_data_commands_name_what_they_need(capsys):
    assert main(["data", "check"]) == 2
    err = capsys.readouterr().err
    assert "needs a data set name" in err and "--schema FILE --table TABLE" in err
    assert main(["data", "infer", "--label", "y"]) == 2
    assert "needs a table" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    out = capsys.readouterr().out
    for flag in ("--train", "--val", "--test", "--schema", "--label", "--image", "--text", "--ignore", "--group"):
        assert flag in out
    with pytest.raises(SystemExit):
        main(["predict", "--help"])
    out = capsys.readouterr().out
    assert "--keep" in out and "--on-unreadable" in out


def test_evaluate_help_documents_drop_and_mask_seeds(capsys):
    with pytest.raises(SystemExit):
        main(["evaluate", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert "--drop WHICH for --missing modality, which modality" in out and "'all' (default;" in out
    assert "--mask-seeds SEEDS comma-separated seeds, e.g. 0,1,2" in out and "--encoding" in out


@pytest.fixture(scope="module")
def latin1_run(covid, tmp_path_factory):
    """A tiny tabular run trained on UTF-8 tables whose 'view' column holds a non-ASCII value,
    and the test table again in latin-1."""
    import yaml

    from tiny import TINY_ENCODERS

    folder = tmp_path_factory.mktemp("latin1")
    columns = ["sex", "view", "age", "offset", "label"]
    train = covid.split("train")[columns].iloc[:96].copy()
    test = covid.split("test")[columns].iloc[:40].copy()
    for frame in (train, test):
        frame.loc[frame["view"] == "AP", "view"] = "AP écran"
    train.to_csv(folder / "train.csv", index=False)
    test.to_csv(folder / "test.csv", index=False, encoding="latin-1")
    config = folder / "tiny.yaml"
    config.write_text(yaml.safe_dump({"model": {"encoders": {"tabular": TINY_ENCODERS["tabular"]}}, "batch_size": 16,
                                      "run": {"loggers": ["csv"]}, "trainer": {"max_epochs": 1}}))
    run = folder / "run"
    assert main(["train", "-c", str(config), "--train", str(folder / "train.csv"), "--label", "label",
                 f"run.dir={run}"]) == 0
    return run, folder / "test.csv"


def test_evaluate_reads_a_table_in_the_encoding_given_and_redraws_masks_per_seed(latin1_run, capsys):
    run, table = latin1_run
    capsys.readouterr()
    assert main(["evaluate", str(run), "--data", str(table), "--n-boot", "2"]) == 2
    assert "utf-8" in capsys.readouterr().err.lower()
    assert main(["evaluate", str(run), "--data", str(table), "--encoding", "latin-1", "--missing", "rvm",
                 "--rates", "0.5", "--n-boot", "4", "--mask-seeds", "3,7"]) == 0
    out, err = capsys.readouterr()
    assert "never seen in training" not in err  # 'AP écran' read as in training
    written = out.strip().splitlines()[-1].removeprefix("written: ").split(", ")
    record = json.loads(next(Path(p) for p in written if p.endswith(".json")).read_text())
    assert record["mask_seeds"] == [3, 7] and record["data"] == str(table)


def test_evaluate_encoding_is_for_a_table_given_with_data(tmp_path, capsys):
    assert main(["evaluate", str(tmp_path), "--encoding", "latin-1"]) == 2
    assert "--encoding is the text encoding of the CSV table given with --data" in capsys.readouterr().err


def test_train_baselines_flag_is_the_baselines_override(monkeypatch, tmp_path, capsys):
    import holomodal.experiment as experiment

    seen = {}

    def fake_run_training(cfg, resume=False):
        seen["cfg"], seen["resume"] = cfg, resume
        raise HolomodalError("stop here")

    monkeypatch.setattr(experiment, "run_training", fake_run_training)
    assert main(["train", "-c", "av_digits_late_fusion", "--baselines", f"run.dir={tmp_path / 'run'}"]) == 2
    assert seen["cfg"].baselines is True and seen["resume"] is False
    assert main(["train", "-c", "av_digits_late_fusion", f"run.dir={tmp_path / 'run'}"]) == 2
    assert seen["cfg"].baselines is False


def test_pretrain_resume_continues_the_run_with_its_own_config(monkeypatch, tmp_path, capsys):
    import holomodal.pretraining as pretraining
    from omegaconf import OmegaConf

    from holomodal.config import load_config

    run = tmp_path / "pre"
    assert main(["pretrain", "--resume", str(run)]) == 2
    assert f"cannot resume '{run}': it holds no config.yaml" in capsys.readouterr().err
    run.mkdir()
    recorded = load_config(["covid_cxr_tip_pretrain"], [f"run.dir={run}", "trainer.max_epochs=2", "batch_size=8"])
    OmegaConf.save(recorded, run / "config.yaml")
    seen = {}

    def fake_run_pretraining(cfg, resume=False):
        seen["cfg"], seen["resume"] = cfg, resume
        return {"run_dir": str(run), "checkpoint": "", "fit_seconds": 0.5, "metrics": {"train/loss": 1.0}}

    monkeypatch.setattr(pretraining, "run_pretraining", fake_run_pretraining)
    assert main(["pretrain", "--resume", str(run), "trainer.max_epochs=4"]) == 0
    cfg = seen["cfg"]
    assert seen["resume"] is True and cfg["run"]["dir"] == str(run)
    assert cfg["trainer"]["max_epochs"] == 4 and cfg["batch_size"] == 8  # the run's settings, the override on top
    assert f"run folder: {run}" in capsys.readouterr().out
