"""TIP: the [MASK] path, pre-training losses, linear probing and the checkpoint round trip."""

from dataclasses import replace

import numpy as np
import pandas as pd
import pytest
import torch

from holomodal.augment import ImageAugmentation, marginal_corruption
from holomodal.batch import Batch
from holomodal.errors import ConfigError
from holomodal.methods import ModelContext, create_method
from holomodal.methods.tip import TIPPretraining
from holomodal.schema import Column, Modality, Schema

SPECS = {
    "tabular": {"cardinalities": [3, 4], "n_continuous": 2, "columns": ["a", "b", "x", "y"]},
    "xray": {"channels": 1, "size": 32, "mean": [0.5], "std": [0.25]},
}
TYPES = {"tabular": "tabular", "xray": "image"}
TINY = {
    "encoders": {"image": {"model_name": "test_resnet"}, "tabular": {"dim": 16, "depth": 1, "heads": 2}},
    "interaction": {"dim": 16, "depth": 1, "heads": 2},
}


def _batch(n=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    return Batch(
        inputs={
            "tabular": {"categorical": torch.randint(1, 3, (n, 2), generator=g), "continuous": torch.randn(n, 2, generator=g)},
            "xray": {"pixels": torch.randint(0, 256, (n, 1, 32, 32), dtype=torch.uint8, generator=g)},
        },
        present={"tabular": torch.ones(n, dtype=torch.bool), "xray": torch.ones(n, dtype=torch.bool)},
        cell_missing=torch.zeros(n, 4, dtype=torch.bool),
        target=torch.arange(n) % 2,
    )


def _classifier(**kw):
    torch.manual_seed(0)
    context = ModelContext(SPECS, TYPES, num_classes=2, task="binary")
    return create_method("tip", context, **TINY, **kw).eval()


def test_masked_cell_value_never_reaches_the_output():
    model, batch = _classifier(), _batch()
    missing = batch.cell_missing.clone()
    missing[0, 1] = True  # categorical cell
    missing[2, 3] = True  # continuous cell
    batch = replace(batch, cell_missing=missing)
    changed = _batch()
    changed = replace(changed, cell_missing=missing)
    changed.inputs["tabular"]["categorical"][0, 1] = 2 if batch.inputs["tabular"]["categorical"][0, 1] != 2 else 1
    changed.inputs["tabular"]["continuous"][2, 1] += 100.0
    with torch.no_grad():
        torch.testing.assert_close(model(batch), model(changed), rtol=0, atol=0)
        # the same change on an observed cell does move the output
        observed = replace(_batch(), cell_missing=torch.zeros(4, 4, dtype=torch.bool))
        moved = replace(_batch(), cell_missing=torch.zeros(4, 4, dtype=torch.bool))
        moved.inputs["tabular"]["continuous"][2, 1] += 100.0
        assert not torch.allclose(model(observed)[2], model(moved)[2])


def test_reconstruction_mask_replaces_the_masked_cells():
    torch.manual_seed(0)
    pre = TIPPretraining(SPECS, TYPES, model=TINY).eval()
    batch = _batch()
    token_mask = torch.zeros(4, 4, dtype=torch.bool)
    token_mask[:, [0, 3]] = True
    other = _batch()
    other.inputs["tabular"]["categorical"][:, 0] = 3 - other.inputs["tabular"]["categorical"][:, 0]
    other.inputs["tabular"]["continuous"][:, 1] -= 50.0
    with torch.no_grad():
        a, _ = pre.backbone.tabular_tokens(batch, batch.inputs["tabular"], token_mask)
        b, _ = pre.backbone.tabular_tokens(other, other.inputs["tabular"], token_mask)
        torch.testing.assert_close(a, b, rtol=0, atol=0)
        token = pre.backbone.tabular_encoder.mask_token
        assert torch.allclose(pre.backbone.tabular_encoder.embed(batch.inputs["tabular"], token_mask)[:, 1],
                              pre.backbone.tabular_encoder.embed(other.inputs["tabular"], token_mask)[:, 1])
        assert token.shape == (16,)


def test_pretraining_step_trains_every_module_with_the_mean_of_three_losses():
    torch.manual_seed(0)
    pre = TIPPretraining(SPECS, TYPES, model={**TINY, "augment": {"preset": "medical", "rate": 0.95}})
    out = pre.ssl_losses(_batch(6), augment=True)
    assert set(out) == {"itc", "itm", "itm_acc", "mtr", "loss"}
    torch.testing.assert_close(out["loss"], (out["itc"] + out["itm"] + out["mtr"]) / 3)
    out["loss"].backward()
    unused = [n for n, p in pre.named_parameters() if p.grad is None]
    assert not unused


def test_losses_option_selects_objectives():
    contrastive = TIPPretraining(SPECS, TYPES, model={**TINY, "losses": ["itc"]})
    assert contrastive.itm is None and contrastive.mtr is None
    out = contrastive.ssl_losses(_batch(), augment=False)
    torch.testing.assert_close(out["loss"], out["itc"])
    with pytest.raises(ConfigError, match="needs 'itc'"):
        TIPPretraining(SPECS, TYPES, model={**TINY, "losses": ["itm", "mtr"]})


def test_absent_image_is_not_fused():
    model = _classifier()
    batch = _batch()
    batch = replace(batch, present={**batch.present, "xray": torch.tensor([True, False, True, True])}).zero_missing()
    b = model.backbone
    with torch.no_grad():
        table, _ = b.tabular_tokens(batch)
        image, _ = b.image_tokens(batch)
        fused = b.fuse(table, image, batch.present["xray"])
        other = b.fuse(table, torch.randn_like(image), batch.present["xray"])
    torch.testing.assert_close(fused[1], other[1], rtol=0, atol=0)
    assert not torch.allclose(fused[0], other[0])


def test_augmentations_keep_shape_range_and_observed_marginals():
    images = torch.rand(5, 3, 32, 32)
    out = ImageAugmentation(hue=0.2, rotate=30)(images)
    assert out.shape == images.shape and out.min() >= 0 and out.max() <= 1
    torch.testing.assert_close(ImageAugmentation(rate=0.0)(images), images)
    batch = _batch(8)
    missing = torch.zeros(8, 4, dtype=torch.bool)
    missing[:4, 2] = True
    values = batch.inputs["tabular"]["continuous"].masked_fill(missing[:, 2:], 0.0)
    new, replaced = marginal_corruption({**batch.inputs["tabular"], "continuous": values}, missing, 0.5)
    assert torch.all(replaced.sum(dim=1) <= 2) and not replaced[missing].any()
    donors = set(values[4:, 0].tolist())  # only observed values of the column may come in
    assert set(new["continuous"][replaced[:, 2], 0].tolist()) <= donors


def _frame(n=24, seed=0):
    rng = np.random.default_rng(seed)
    label = np.arange(n) % 2
    images = [(rng.integers(0, 60, (32, 32)) + 150 * y).astype(np.uint8) for y in label]
    frame = pd.DataFrame({
        "xray": pd.Series(images, dtype=object), "a": rng.choice(["p", "q", "r"], n), "b": rng.choice(["u", "v"], n),
        "x": rng.normal(size=n) + label, "y": rng.normal(size=n), "label": label,
    })
    frame.loc[::5, "x"] = np.nan
    return frame


def _schema():
    return Schema([
        Column("xray", Modality.IMAGE, {"channels": 1, "size": 32, "source": "array"}),
        Column("a", Modality.CATEGORICAL), Column("b", Modality.CATEGORICAL),
        Column("x", Modality.CONTINUOUS), Column("y", Modality.CONTINUOUS),
        Column("label", Modality.LABEL, {"task": "binary", "classes": ["0", "1"]}),
    ])


@pytest.mark.parametrize("probe_bn", ["train", "eval"])
def test_pretrain_then_linear_probe_round_trip(tmp_path, probe_bn):
    from holomodal.estimator import Classifier
    from holomodal.methods.tip import backbone_state, read_pretrained
    from holomodal.pretraining import Pretrainer

    frame = _frame()
    unlabelled = frame.assign(label=pd.array([None] * len(frame), dtype="Int64"))
    quiet = {"max_epochs": 1, "enable_progress_bar": False}
    pre = Pretrainer(_schema(), model=TINY, batch_size=8, trainer=quiet, run_dir=tmp_path / "pre").fit(unlabelled, frame)
    assert pre.checkpoint_.exists()
    model = {"checkpoint": str(tmp_path / "pre"), **({} if probe_bn == "train" else {"probe_bn": probe_bn})}
    clf = Classifier(_schema(), method="tip", model=model, batch_size=8, trainer=quiet,
                     run_dir=tmp_path / "probe", loggers=["csv"], missing=["rvm:0.3"])
    clf.fit(frame, frame)
    # linear probing: the backbone's parameters are exactly the pre-trained ones; its batch-norm
    # running statistics follow the fine-tuning data by default (TIP), or stay as pre-trained
    saved = backbone_state(read_pretrained(pre.checkpoint_, weights=True)["state_dict"])
    state = clf.model_.backbone.state_dict()
    statistics = [n for n in state if n.endswith(("running_mean", "running_var", "num_batches_tracked"))]
    assert statistics
    for name, value in state.items():
        if name not in statistics:
            torch.testing.assert_close(value, saved[name], rtol=0, atol=0, msg=name)
    moved = [n for n in statistics if not torch.equal(state[n], saved[n])]
    assert (moved == statistics) if probe_bn == "train" else not moved
    assert all(not p.requires_grad for p in clf.model_.backbone.parameters())
    clf.save(tmp_path / "model")
    again = Classifier.load(tmp_path / "model")
    np.testing.assert_allclose(clf.predict_proba(frame), again.predict_proba(frame), atol=1e-6)
    with pytest.raises(ConfigError, match="linear probes"):
        _classifier(finetune="linear")
    with pytest.raises(ConfigError, match="probe_bn must be 'train' or 'eval'"):
        _classifier(probe_bn="frozen")


def test_interaction_module_is_a_registered_fusion():
    from holomodal.fusion import create_fusion, list_fusions

    assert "cross_attention" in list_fusions()
    fusion = create_fusion("cross_attention", {"tabular": 8, "xray": 12}, dim=8, depth=2, heads=2)
    tokens = {"tabular": torch.randn(3, 5, 8), "xray": torch.randn(3, 4, 12)}
    assert fusion(tokens, {"xray": torch.ones(3, dtype=torch.bool)}).shape == (3, 8)
    assert fusion.forward_tokens(tokens).shape == (3, 5, 8)
    with pytest.raises(ConfigError, match="exactly two"):
        create_fusion("cross_attention", {"tabular": 8})
