"""The paper-setting configs check, and point at OpenAI's weights or, offline, a local file."""

import pytest

from holomodal.backbones.clip import resolve_backbone
from holomodal.config import load_config
from holomodal.config_check import checked_config


@pytest.mark.parametrize("name,monitor", [("mmimdb_dcp", "val/f1_macro"), ("food101_dcp", "val/accuracy"),
                                          ("hatefulmemes_dcp", "val/auroc")])
def test_paper_settings(name, monitor, tmp_path):
    cfg = checked_config(load_config([name]), "train")
    assert cfg["method"] == "dcp" and cfg["monitor"] == monitor
    assert cfg["model"]["backbone"] == {"model_name": "ViT-B-16", "weights": "openai"}
    assert cfg["optim"]["lr"] == 0.01 and cfg["optim"]["scheduler"] == "warmup_linear"
    assert cfg["trainer"]["max_epochs"] == 20 and cfg["batch_size"] * cfg["trainer"]["accumulate_grad_batches"] == 256
    assert cfg["missing"] == [{"kind": "modality", "rate": 0.7, "drop": "both"}]
    weights = tmp_path / "ViT-B-16.safetensors"
    weights.write_bytes(b"")  # resolving checks the file is there; loading reads it when training starts
    offline = checked_config(load_config([name], [f"model.backbone.weights={weights}"]), "train")
    assert resolve_backbone(offline["model"]["backbone"])["weights"] == str(weights.resolve())
