"""The merged configuration is checked before any data is read or any file is written: a bad
key names itself, where it was set and the closest valid names; the run folder stays free."""

from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from tiny import TINY_ENCODERS, small_schema
from holomodal.cli import main
from holomodal.config import load_config
from holomodal.config_check import OPTIMIZERS, PYTHON_SOURCE, checked_config
from holomodal.errors import ConfigError
from holomodal.experiment import run_training
from holomodal.methods.base import build_optimizer

EXPERIMENTS = sorted((Path(__file__).resolve().parents[1] / "src" / "holomodal" / "configs" / "experiments").glob("*.yaml"))

# (a bad setting as a config file's content, the same as an override, the key named, the suggestion)
TYPOS = {
    "trainer": ({"trainer": {"max_epoch": 3}}, "trainer.max_epoch=3", "'trainer.max_epoch'", "'max_epochs'"),
    "top-level": ({"epochs": 1}, "epochs=1", "'epochs'", "'trainer.max_epochs'"),
    "encoder": ({"model": {"encoders": {"image": {"chanels": 4}}}}, "model.encoders.image.chanels=4",
                "'model.encoders.image.chanels'", "'channels'"),
    "optimiser": ({"optim": {"weight_decy": 0.1}}, "optim.weight_decy=0.1", "'optim.weight_decy'", "'weight_decay'"),
    "method": ({"method": "late_fusoin"}, "method=late_fusoin", "'method'", "'late_fusion'"),
}


@pytest.fixture(scope="module")
def tiny(covid, tmp_path_factory):
    """A valid config on real covid_cxr rows (image and table, tiny encoders)."""
    folder = tmp_path_factory.mktemp("config")
    schema = small_schema(covid.schema, drop=("text",))
    for split, n in (("train", 32), ("val", 16), ("test", 16)):
        covid.split(split)[schema.column_names].iloc[:n].to_parquet(folder / f"{split}.parquet")
    (folder / "schema.json").write_text(schema.to_json())
    cfg = {"data": {**{s: str(folder / f"{s}.parquet") for s in ("train", "val", "test")}, "schema": str(folder / "schema.json")},
           "model": {"encoders": {m: TINY_ENCODERS[m] for m in ("image", "tabular")}}, "batch_size": 16,
           "trainer": {"max_epochs": 1, "enable_progress_bar": False, "accelerator": "cpu"}, "run": {"loggers": ["csv"]}}
    OmegaConf.save(OmegaConf.create(cfg), folder / "tiny.yaml")
    return folder / "tiny.yaml"


def _refused(capsys, argv, run):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "Traceback" not in err
    assert not run.exists(), "the run folder was created before the configuration was checked"
    return err


@pytest.mark.parametrize("where", ["file", "override"])
@pytest.mark.parametrize("case", sorted(TYPOS))
def test_cli_train_refuses_a_bad_key_before_the_run_folder(tiny, tmp_path, capsys, case, where):
    content, override, key, suggestion = TYPOS[case]
    run = tmp_path / "run"
    if where == "file":
        bad = tmp_path / "bad.yaml"
        OmegaConf.save(OmegaConf.merge(OmegaConf.load(tiny), content), bad)
        err = _refused(capsys, ["train", "-c", str(bad), f"run.dir={run}"], run)
        assert f"from config file '{bad}'" in err
    else:
        err = _refused(capsys, ["train", "-c", str(tiny), f"run.dir={run}", override], run)
        assert f"from command-line override '{override}'" in err
    assert key in err and suggestion in err.partition("did you mean")[2]


def test_a_run_folder_is_free_after_a_config_error(tiny, tmp_path, capsys):
    run = tmp_path / "run"
    _refused(capsys, ["train", "-c", str(tiny), f"run.dir={run}", "trainer.max_epoch=1"], run)
    assert main(["train", "-c", str(tiny), f"run.dir={run}", "trainer.limit_train_batches=1"]) == 0
    assert (run / "model" / "predictor.json").is_file()
    assert OmegaConf.load(run / "config.yaml").trainer.limit_train_batches == 1
    # what --resume reloads passes the same checks
    checked_config(load_config([str(run / "config.yaml")], [f"run.dir={run}"]))
    capsys.readouterr()
    # evaluate's arguments arrive parsed (kinds, rates) and range-checked
    assert main(["evaluate", str(run), "--missing", "rvm", "--rates", "0,0.5", "--n-boot", "2", "--seed", "3"]) == 0
    assert "rvm" in capsys.readouterr().out


def test_cli_pretrain_checks_its_config_first(tmp_path, capsys):
    run = tmp_path / "pre"
    err = _refused(capsys, ["pretrain", "-c", "covid_cxr_tip_pretrain", f"run.dir={run}", "trainer.max_epoch=3"], run)
    assert "'trainer.max_epoch'" in err and "did you mean 'max_epochs'" in err
    # pre-training has its own scheduler and only the tip method
    err = _refused(capsys, ["pretrain", "-c", "covid_cxr_tip_pretrain", f"run.dir={run}", "optim.scheduler=cosine"], run)
    assert "'optim.scheduler'" in err and "'warmup_cosine'" in err
    err = _refused(capsys, ["pretrain", "-c", "covid_cxr_tip_pretrain", f"run.dir={run}", "method=late_fusion"], run)
    assert "pre-training method" in err and "tip" in err


def test_run_training_checks_a_python_config(tiny, tmp_path):
    run = tmp_path / "run"
    with pytest.raises(ConfigError, match=r"'trainer\.max_epoch' \(from command-line override 'trainer\.max_epoch=3'\)"):
        run_training(load_config([str(tiny)], [f"run.dir={run}", "trainer.max_epoch=3"]))
    cfg = load_config([str(tiny)], [f"run.dir={run}"])
    cfg.model.encoders.image.chanels = 4  # set in Python, after loading
    with pytest.raises(ConfigError, match=rf"'model\.encoders\.image\.chanels' \(from {PYTHON_SOURCE}\).*'channels'"):
        run_training(cfg)
    plain = OmegaConf.to_container(load_config([str(tiny)], [f"run.dir={run}"]))
    plain["trainer"]["max_epoch"] = 3
    with pytest.raises(ConfigError, match=rf"'trainer\.max_epoch' \(from {PYTHON_SOURCE}\)"):
        run_training(plain)
    assert not run.exists()


@pytest.mark.parametrize("path", EXPERIMENTS, ids=lambda p: p.stem)
def test_every_bundled_experiment_config_is_valid(path):
    from holomodal.methods import METHODS
    from holomodal.pretraining import PRETRAINING

    mode = "pretrain" if "pretrain" in path.stem else "train"
    cfg = checked_config(load_config([str(path)]), mode)
    assert cfg["method"] in (PRETRAINING if mode == "pretrain" else METHODS)
    if path.stem.startswith("dvm"):
        # `dvm` only feeds ${dvm} interpolations: resolved into its uses, not kept as a key
        assert "dvm" not in cfg and cfg["data"]["train"] == "prepared/dvm/train.parquet"


@pytest.mark.parametrize("override, key, fragment", [
    ("batch_size=0", "'batch_size'", "whole number >= 1, got 0"),
    ("batch_size=2.5", "'batch_size'", "whole number >= 1, got 2.5"),
    ("seed=abc", "'seed'", "whole number from 0 to 4294967295, got 'abc'"),
    ("trainer.max_epochs=0", "'trainer.max_epochs'", "or -1: no limit"),
    ("trainer.accelerator=gpux", "'trainer.accelerator'", "did you mean 'gpu'"),
    ("trainer.logger=false", "'trainer.logger'", "set run.loggers"),
    ("optim.lr=-1", "'optim.lr'", "Invalid learning rate"),
    ("optim.name=adamx", "'optim.name'", "did you mean 'adam' or 'adamw'"),
    ("optim.scheduler=cosin", "'optim.scheduler'", "did you mean 'cosine'"),
    ("monitor=val/aucroc", "'monitor'", "did you mean 'val/auroc'"),
    ("data.label_fraction=2", "'data.label_fraction'", "at most 1"),
    ("data.unlabelled=[a]", "'data.unlabelled'", "path of a table"),
    ("missing=[rvm:2]", "'missing[0]'", "rate must lie in [0, 1]"),
    ("missing=rvm:0.3", "'missing'", "missing=[rvm:0.3]"),
    ("missing=[{kind: rvm, rat: 0.3}]", "'missing[0].rat'", "did you mean 'rate'"),
    ("run.loggers=[csv, tensorbord]", "'run.loggers[1]'", "did you mean 'tensorboard'"),
    ("model.head={hiden: 8}", "'model.head.hiden'", "did you mean 'hidden'"),
    ("model.fusion={name: concat, dim: 8}", "'model.fusion.dim'", "fusion 'concat' has no option 'dim'"),
    ("model.optim={lr: 1}", "'model.optim'", "top-level optim section"),
    ("data.name=covid", "'data.name'", "did you mean 'covid_cxr'"),
    ("data.train=${nowhere}/train.parquet", "'data.train'", "cannot be resolved"),
    ("trainer.early_stopping.patiense=3", "'trainer.early_stopping.patiense'", "did you mean 'patience'"),
    ("trainer.early_stopping.patience=0", "'trainer.early_stopping.patience'", "whole number >= 1, got 0"),
    ("trainer.early_stopping.monitor=val/loss", "'trainer.early_stopping.monitor'", "top-level monitor"),
    ("baselines=3", "'baselines'", "must be true or false, got 3"),
])
def test_values_and_nested_keys_are_checked(tiny, override, key, fragment):
    with pytest.raises(ConfigError) as info:
        checked_config(load_config([str(tiny)], [override]))
    message = str(info.value)
    assert f"{key} (from command-line override '{override}')" in message and fragment in message


def test_tip_options_are_checked_against_their_modules():
    for override, fragment in (("model.itc.projection_dm=8", "did you mean 'projection_dim'"),
                               ("model.encoders.tabular.dept=2", "encoder 'tabular_transformer' has no option 'dept'"),
                               ("model.augment.preset=medicl", "did you mean 'medical'")):
        with pytest.raises(ConfigError, match=override.split("=")[0].replace(".", r"\.")) as info:
            checked_config(load_config(["covid_cxr_tip_pretrain"], [override]), "pretrain")
        assert fragment in str(info.value)


def test_a_config_file_that_is_not_yaml_is_named(tmp_path, capsys):
    for name, text, fragment in (("broken.yaml", "trainer: [1,\n", "is not valid YAML"),
                                 ("list.yaml", "- 1\n", "must hold a mapping")):
        (tmp_path / name).write_text(text)
        err = _refused(capsys, ["train", "-c", str(tmp_path / name), f"run.dir={tmp_path / 'run'}"], tmp_path / "run")
        assert f"config file '{tmp_path / name}'" in err and fragment in err


def test_optimiser_table_matches_build_optimizer():
    device = "cuda" if torch.cuda.is_available() else "cpu"  # fused Adam wants CUDA parameters there
    for name, cls in OPTIMIZERS.items():
        assert type(build_optimizer([torch.nn.Parameter(torch.zeros(1, device=device))], name)) is cls


def test_every_accepted_seed_can_seed_an_epoch():
    from types import SimpleNamespace

    from holomodal.training import EpochSeed

    for seed in (0, 4295, 2**32 - 1):  # 4295 * 1_000_003 is past numpy's seed range
        assert checked_config(load_config([], [f"seed={seed}"]))["seed"] == seed
        EpochSeed(seed).on_train_epoch_start(SimpleNamespace(current_epoch=2), None)
        assert torch.initial_seed() == (seed * 1_000_003 + 2) % 2**32
    with pytest.raises(ConfigError, match=r"'seed' \(from command-line override 'seed=4294967296'\)"):
        checked_config(load_config([], ["seed=4294967296"]))
