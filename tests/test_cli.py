"""The command line end to end, on real data with tiny models."""

import json

import pandas as pd
import pytest

from holomodal.cli import main


def test_data_list_and_check(capsys):
    assert main(["data", "list"]) == 0
    assert capsys.readouterr().out.split() == ["av_digits", "coco_mini", "covid_cxr", "mnist5k", "physionet2012"]
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
