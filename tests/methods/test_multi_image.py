"""More than one image column: late fusion and TIP use every one the schema declares.

Real rows of the bundled emoji set, whose every emoji has two pictures (the Google and the
Twitter style), a few dozen of them at 32 pixels, tiny encoders and one epoch.
"""

from dataclasses import replace

import numpy as np
import pandas as pd
import pytest
import torch

from holomodal.errors import ConfigError
from holomodal.estimator import Classifier
from holomodal.fusion import create_fusion
from holomodal.methods.tip import TIPPretraining
from holomodal.preprocessing import Preprocessor
from holomodal.schema import Column, Modality, Schema

QUIET = {"max_epochs": 1, "enable_progress_bar": False, "accelerator": "cpu"}
VIEWS = ["google", "twitter"]
LATE_FUSION = {"encoders": {"image": {"name": "lenet", "channels": 2, "blocks": 1},
                            "tabular": {"name": "tabular_mlp", "hidden": 16, "layers": 1}}}
TIP_TINY = {
    "encoders": {"image": {"model_name": "test_resnet"}, "tabular": {"dim": 16, "depth": 1, "heads": 2}},
    "interaction": {"dim": 16, "depth": 1, "heads": 2},
}


@pytest.fixture(scope="module")
def emoji(data_root):
    """(schema, frame): 16 flags and 16 smileys with both pictures, and three table columns."""
    root = data_root / "emoji"
    table = pd.read_csv(root / "emoji.csv")
    table = table[table["category"].isin(["Flags", "Smileys & Emotion"])].groupby("category").head(16)
    table = table.reset_index(drop=True)
    frame = pd.DataFrame({
        "google": table["google"], "twitter": table["twitter"], "subcategory": table["subcategory"],
        "added_in": table["added_in"].astype(float), "sort_order": table["sort_order"].astype(float),
        "label": (table["category"] == "Flags").astype(int),
    })
    picture = {"channels": 3, "size": 32, "root": str(root)}
    schema = Schema([
        Column("google", Modality.IMAGE, dict(picture)), Column("twitter", Modality.IMAGE, dict(picture)),
        Column("subcategory", Modality.CATEGORICAL), Column("added_in", Modality.CONTINUOUS),
        Column("sort_order", Modality.CONTINUOUS),
        Column("label", Modality.LABEL, {"task": "binary", "classes": ["smiley", "flag"]}),
    ])
    return schema, frame


def _other_pictures(frame, column):
    """Every row given another emoji's picture in ``column`` only."""
    return frame.assign(**{column: np.roll(frame[column].to_numpy(), 1)})


def _check_uses_both_columns(clf, frame):
    probs = clf.predict_proba(frame)
    np.testing.assert_array_equal(probs, clf.predict_proba(frame))  # so any change below is the input's
    for column in VIEWS:
        assert np.abs(clf.predict_proba(_other_pictures(frame, column)) - probs).max() > 1e-6, column
    blanked = frame.copy()
    blanked.loc[0, "twitter"] = None  # the second picture missing
    blanked.loc[1, VIEWS] = None  # both missing
    changed = clf.predict_proba(blanked)
    assert np.isfinite(changed).all()
    np.testing.assert_allclose(changed.sum(axis=1), 1.0, rtol=1e-5)
    assert np.abs(changed[0] - probs[0]).max() > 1e-6
    np.testing.assert_allclose(changed[2:], probs[2:], rtol=0, atol=1e-6)


@pytest.mark.parametrize("fusion", [{"name": "concat"}, {"name": "cross_attention", "dim": 8, "depth": 1, "heads": 2}])
def test_late_fusion_has_an_encoder_per_image_column_and_uses_both(emoji, tmp_path, fusion):
    schema, frame = emoji
    clf = Classifier(schema, method="late_fusion", model={**LATE_FUSION, "fusion": fusion}, batch_size=8, trainer=QUIET,
                     run_dir=tmp_path / "late", loggers=["csv"]).fit(frame, frame)
    assert sorted(clf.model_.encoders) == ["google", "tabular", "twitter"]
    used = clf.model_.fusion.modalities if fusion["name"] == "concat" else clf.model_.fusion.memories
    assert [m for m in used if m != "tabular"] == VIEWS
    _check_uses_both_columns(clf, frame)


def test_tip_fuses_every_image_column_through_one_shared_encoder(emoji, tmp_path):
    schema, frame = emoji
    # a larger step than the default, so that one epoch moves the small initial head off ~0.5
    clf = Classifier(schema, method="tip", model=TIP_TINY, optim={"lr": 1e-2}, batch_size=8, trainer=QUIET,
                     run_dir=tmp_path / "tip", loggers=["csv"]).fit(frame, frame)
    backbone = clf.model_.backbone
    assert backbone.views == VIEWS and clf.model_.backbone_config["image_modality"] == VIEWS
    # one image encoder for both columns, told apart by a learned view embedding
    assert backbone.interaction.memories == VIEWS
    assert backbone.interaction.memory_embedding.shape == (2, 16)
    assert not any("twitter" in key or "google" in key for key in clf.model_.state_dict())
    _check_uses_both_columns(clf, frame)
    # the saved model rebuilds both views from its record
    clf.save(tmp_path / "model")
    again = Classifier.load(tmp_path / "model")
    np.testing.assert_allclose(again.predict_proba(frame), clf.predict_proba(frame), atol=1e-6)


def test_tip_image_modality_names_the_columns_to_use(emoji, tmp_path):
    schema, frame = emoji
    one = Classifier(schema, method="tip", model={**TIP_TINY, "image_modality": "google"}, batch_size=8,
                     trainer=QUIET, run_dir=tmp_path / "one", loggers=["csv"]).fit(frame)
    assert one.model_.backbone.views == ["google"] and one.model_.backbone.interaction.memory_embedding is None
    with pytest.raises(ConfigError, match=r"\['photo'\] are not image modalities.*'google', 'twitter'"):
        Classifier(schema, method="tip", model={**TIP_TINY, "image_modality": ["google", "photo"]}, batch_size=8,
                   trainer=QUIET, run_dir=tmp_path / "bad", loggers=["csv"]).fit(frame)
    per_column = {**TIP_TINY["encoders"], "google": {"model_name": "resnet18"}, "twitter": {"model_name": "test_resnet"}}
    with pytest.raises(ConfigError, match=r"one shared image encoder.*\['google', 'twitter'\] differently"):
        Classifier(schema, method="tip", model={**TIP_TINY, "encoders": per_column}, batch_size=8, trainer=QUIET,
                   run_dir=tmp_path / "differ", loggers=["csv"]).fit(frame)


def test_tip_pretraining_losses_with_two_views_train_every_module(emoji):
    schema, frame = emoji
    pre = Preprocessor(schema).fit(frame)
    batch, _ = pre.transform(frame.iloc[:8])
    present = batch.present["twitter"].clone()
    present[[1, 5]] = False  # rows with their second picture missing
    batch = replace(batch, present={**batch.present, "twitter": present}).zero_missing()
    types = {"tabular": "tabular", "google": "image", "twitter": "image"}
    torch.manual_seed(0)
    module = TIPPretraining(pre.input_specs, types, model=TIP_TINY)
    assert module.record["backbone"]["image_modality"] == VIEWS
    out = module.ssl_losses(batch, augment=True)
    assert all(torch.isfinite(out[k]) for k in ("itc", "itm", "mtr", "loss"))
    out["loss"].backward()
    assert not [n for n, p in module.named_parameters() if p.grad is None]
    # both views' tokens reach the losses through their own view embedding
    assert (module.backbone.interaction.memory_embedding.grad.abs().sum(dim=1) > 0).all()


def test_pretraining_uses_every_image_column_and_fine_tuning_never_drops_one(emoji, tmp_path):
    from holomodal.methods.tip import read_pretrained
    from holomodal.pretraining import Pretrainer

    schema, frame = emoji
    both = Pretrainer(schema, model=TIP_TINY, batch_size=8, trainer=QUIET, run_dir=tmp_path / "pre0").fit(frame)
    assert read_pretrained(both.run_dir_)["backbone"]["image_modality"] == ["google", "twitter"]
    pre = Pretrainer(schema, model={**TIP_TINY, "image_modality": "google"}, batch_size=8, trainer=QUIET,
                     run_dir=tmp_path / "pre").fit(frame)
    fine = {"checkpoint": str(pre.run_dir_), "finetune": "full"}
    with pytest.raises(ConfigError, match=r"encodes the image column\(s\) \['google'\].*also has \['twitter'\]"):
        Classifier(schema, method="tip", model=fine, batch_size=8, trainer=QUIET, run_dir=tmp_path / "ft0",
                   loggers=["csv"]).fit(frame)
    clf = Classifier(schema, method="tip", model={**fine, "image_modality": "google"}, batch_size=8, trainer=QUIET,
                     run_dir=tmp_path / "ft", loggers=["csv"]).fit(frame)
    assert clf.model_.backbone.views == ["google"]


def test_cross_attention_masks_absent_views_and_keeps_two_modality_keys():
    torch.manual_seed(0)
    two = create_fusion("cross_attention", {"tabular": 8, "a": 6}, dim=8, depth=1, heads=2)
    assert "memory_embedding" not in dict(two.named_parameters())
    fusion = create_fusion("cross_attention", {"tabular": 8, "a": 6, "b": 6}, dim=8, depth=2, heads=2)
    tokens = {"tabular": torch.randn(3, 4, 8), "a": torch.randn(3, 5, 6), "b": torch.randn(3, 2, 6)}
    present = {"a": torch.tensor([True, True, False]), "b": torch.tensor([True, False, False])}
    noisy = {**tokens, "b": torch.randn(3, 2, 6)}
    with torch.no_grad():
        out, other = fusion.forward_tokens(tokens, present), fusion.forward_tokens(noisy, present)
    # row 0 sees b; rows 1 and 2 do not, and row 2 (nothing present) stays finite
    assert not torch.allclose(out[0], other[0])
    torch.testing.assert_close(out[1:], other[1:], rtol=0, atol=0)
    assert torch.isfinite(out).all()
    # pooled (B, D) embeddings, as late fusion gives, are one token each
    assert fusion({"tabular": torch.randn(3, 8), "a": torch.randn(3, 6), "b": torch.randn(3, 6)}, present).shape == (3, 8)
    with pytest.raises(ConfigError, match="widths must agree"):
        create_fusion("cross_attention", {"tabular": 8, "a": 6, "b": 4})


def test_shared_encoder_normalises_each_view_with_its_own_statistics(emoji):
    from holomodal.methods.tip import TIPBackbone, resolve_backbone_config

    schema, frame = emoji
    pre = Preprocessor(schema).fit(frame)
    specs = pre.input_specs
    assert specs["google"]["mean"] != specs["twitter"]["mean"]
    types = {"tabular": "tabular", "google": "image", "twitter": "image"}
    encoders = {**TIP_TINY["encoders"], "image": {"model_name": "test_resnet", "normalize": True}}
    torch.manual_seed(0)
    backbone = TIPBackbone(**resolve_backbone_config(specs, types, None, encoders, TIP_TINY["interaction"])).eval()
    for normalizer, view in zip(backbone.view_pixels, VIEWS):
        torch.testing.assert_close(normalizer.mean.flatten(), torch.tensor(specs[view]["mean"]))
    batch, _ = pre.transform(frame.iloc[:4])
    same = replace(batch, inputs={**batch.inputs, "twitter": batch.inputs["google"]})
    with torch.no_grad():
        images = backbone.encode_images(same)
    # the same pixels in both columns, normalised with each column's statistics
    assert not torch.allclose(images.tokens["google"], images.tokens["twitter"])
    assert not any(key.startswith("view_pixels") for key in backbone.state_dict())
