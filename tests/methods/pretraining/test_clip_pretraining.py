"""CLIP pre-training on real image-caption pairs (coco_mini): the contrastive loss falls, the
temperature is learned, and the run folder is the backbone the prompt methods load."""

import pytest
import torch

from holomodal.backbones.clip import CLIPBackbone, resolve_backbone
from holomodal.cli import main
from holomodal.errors import ConfigError
from holomodal.methods.pretraining.clip import read_clip_run


@pytest.fixture(scope="module")
def clip_run(tmp_path_factory):
    run = tmp_path_factory.mktemp("clip") / "run"
    code = main(["pretrain", "-c", "emoji_clip_pretrain", "data.name=coco_mini", f"run.dir={run}", "trainer.max_epochs=6",
                 "batch_size=32", "optim.lr=0.001", "trainer.enable_progress_bar=false"])
    assert code == 0
    return run


def test_loss_falls_and_temperature_is_learned(clip_run):
    import pandas as pd

    log = pd.read_csv(clip_run / "metrics.csv")
    losses = log["train/loss"].dropna().tolist()
    assert len(losses) == 6 and losses[-1] < losses[0] - 0.2, losses
    temps = log["train/temperature"].dropna().tolist()
    assert temps[-1] != pytest.approx(0.07, abs=1e-4)  # CLIP's initial 1/0.07 moved


def test_the_run_is_a_backbone(clip_run, tmp_path, capsys):
    record = read_clip_run(clip_run, weights=True)
    assert record["image"] == "image" and record["text"] == "caption" and record["backbone"]["weights"] is None
    backbone = CLIPBackbone(resolve_backbone(str(clip_run)))
    backbone.load_weights()
    state = backbone.model.state_dict()
    assert all(torch.equal(state[k], v) for k, v in record["backbone_state"].items())
    assert set(record["backbone_state"]) == set(state)
    # and the prompt methods train on it from the command line
    run = tmp_path / "dcp"
    assert main(["train", "-c", "emoji_dcp", "data.name=coco_mini", f"clip={clip_run}", f"run.dir={run}",
                 "trainer.max_epochs=1", "monitor=val/f1_macro", "trainer.enable_progress_bar=false"]) == 0
    assert (run / "model" / "model.safetensors").is_file() and (run / "missing_masks.json").is_file()


def test_bad_pretraining_options_are_named(capsys):
    from holomodal.data import load_dataset
    from holomodal.pretraining import CLIPPretrainingMethod

    with pytest.raises(ConfigError, match=r"no model option\(s\) \['epochs'\]"):
        CLIPPretrainingMethod().restrict(load_dataset("coco_mini").schema, {"backbone": None, "epochs": 3})
    assert main(["pretrain", "-c", "emoji_clip_pretrain", "data.name=coco_mini", "model.imgae=image"]) == 2
    assert "model.imgae" in capsys.readouterr().err
