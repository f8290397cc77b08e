"""The prompt methods trained on real image-caption data (coco_mini, 80-way multi-label):
the frozen backbone gets no gradient and ends bit-identical, checkpoints hold every prompt
tensor and reload strictly, and every method sees the same persisted missingness masks."""

import json

import pytest
import torch
from safetensors.torch import save_file

from holomodal import Classifier
from holomodal.backbones.clip import TINY_CLIP, CLIPBackbone, resolve_backbone
from holomodal.methods import create_method
from holomodal.safe_load import load_checkpoint

TRAINER = {"max_epochs": 1, "enable_progress_bar": False, "accelerator": "cpu", "devices": 1}


@pytest.fixture(scope="module")
def coco(data_root):
    from holomodal.data import load_dataset

    return load_dataset("coco_mini", root=data_root)


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    torch.manual_seed(7)
    state = CLIPBackbone(resolve_backbone(None)).model.state_dict()
    path = tmp_path_factory.mktemp("clip") / "tiny.safetensors"
    save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    return path, state


def fit(coco, method, weights, folder, **model):
    clf = Classifier(coco.schema, method=method, model={"backbone": {"model_name": TINY_CLIP, "weights": str(weights)}, **model},
                     batch_size=16, trainer=TRAINER, run_dir=folder, missing=["modality:0.7:both"])
    return clf.fit(coco.split("train"), coco.split("val"))


@pytest.mark.parametrize("method", ["dcp", "mmp"])
def test_backbone_frozen_and_prompts_checkpointed(coco, weights, tmp_path, method):
    path, state = weights
    clf = fit(coco, method, path, tmp_path / "run")
    model = clf.model_
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    for name, param in model.backbone.model.named_parameters():
        if f"backbone.model.{name}" in trainable:
            continue  # DCP's ln_post / ln_final / image projection, trained as the released code
        assert param.grad is None, name
        assert torch.equal(param.detach(), state[name]), f"{name} changed"
    assert any(not torch.equal(p.detach(), state[n]) for n, p in model.backbone.model.named_parameters()
               if f"backbone.model.{n}" in trainable) or method == "mmp"
    prompt_keys = {k for k in model.state_dict() if not k.startswith(("backbone.", "head.", "val_metrics", "test_metrics"))}
    assert prompt_keys, "no prompt tensors"
    ckpt = load_checkpoint(tmp_path / "run" / "checkpoints" / "last.ckpt")
    assert prompt_keys <= set(ckpt["state_dict"])
    fresh = create_method(method, clf._context(), **clf.model)
    fresh.load_state_dict(ckpt["state_dict"], strict=True)
    for key in prompt_keys:
        assert torch.equal(fresh.state_dict()[key], ckpt["state_dict"][key]), key
    # the saved model predicts as the fitted one, rebuilt without the weights file
    clf.save(tmp_path / "model")
    path.rename(path.with_suffix(".moved"))
    try:
        again = Classifier.load(tmp_path / "model")
        test = coco.split("test").head(12)
        torch.testing.assert_close(torch.from_numpy(again.predict_proba(test)), torch.from_numpy(clf.predict_proba(test)))
    finally:
        path.with_suffix(".moved").rename(path)


def test_every_method_sees_the_same_masks(coco, weights, tmp_path):
    path, _ = weights
    masks = []
    for method in ("clip_baseline", "clip_finetune"):
        fit(coco, method, path, tmp_path / method, **({} if method == "clip_baseline" else {}))
        masks.append(json.loads((tmp_path / method / "missing_masks.json").read_text()))
    assert masks[0] == masks[1]
    train = masks[0]["train"]
    n = len(coco.split("train"))
    dropped = {m: len(rows) for m, rows in train.items()}
    assert set(dropped) == {"image", "caption"} and not set(train["image"]) & set(train["caption"])
    assert sum(dropped.values()) == round(0.7 * n) and abs(dropped["image"] - dropped["caption"]) <= 1  # eta/2 each
    # the text protocol by modality type, whatever the column is called
    clf = fit(coco, "clip_baseline", path, tmp_path / "text_only_missing")
    scores = clf.evaluate(coco.split("test"), missing=["modality:0.5:text"])
    assert 0.0 <= scores["f1_macro"] <= 1.0 and clf.model_.task == "multilabel"
