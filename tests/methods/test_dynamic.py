"""DyMo's subset-aware classifier (method 'dynamic') on real av_digits rows: token masking,
subset sampling, the prototype loss and its epoch-level prototypes, and a fit end to end."""

import math

import numpy as np
import pytest
import torch

from holomodal.errors import ConfigError
from holomodal.estimator import Classifier
from holomodal.methods import create_method
from holomodal.methods.base import ModelContext
from holomodal.preprocessing import Preprocessor
from tiny import TINY_ENCODERS

ENCODERS = {"image": TINY_ENCODERS["image"], "audio": {"name": "lenet", "channels": 2, "blocks": 1}}
SMALL = {"encoders": ENCODERS, "dim": 16, "depth": 1, "heads": 2, "projection_dim": 8}


@pytest.fixture(scope="module")
def encoded(av_digits):
    """(context, batch): 40 preprocessed training rows of classes 0-8 (class 9 left out), one batch."""
    train = av_digits.split("train")
    frame = train[train["digit"].astype(str) != "9"].sample(40, random_state=0).reset_index(drop=True)
    pre = Preprocessor(av_digits.schema).fit(frame)
    types = {m: av_digits.schema.modality_type(m).value for m in pre.processors}
    # all ten classes, so that class 9 is a class no row of the batch holds
    context = ModelContext(pre.input_specs, types, 10, av_digits.schema.task.value, [str(i) for i in range(10)])
    batch = pre.transform(frame)[0]
    batch.target = torch.tensor(frame["digit"].astype(int).to_numpy())
    return context, batch


def _model(context, **options):
    torch.manual_seed(0)
    return create_method("dynamic", context, **{**SMALL, **options})


def _with_absent(batch):
    """The batch with rows 0-4 lacking the image, 5-9 the audio and 10-11 both."""
    n = len(batch)
    keep_image, keep_audio = torch.ones(n, dtype=torch.bool), torch.ones(n, dtype=torch.bool)
    keep_image[[*range(5), 10, 11]] = False
    keep_audio[5:12] = False
    return batch.with_masks(present={"image": keep_image, "audio": keep_audio})


def test_an_unused_modality_has_no_effect_and_a_used_absent_one_is_read(encoded):
    context, batch = encoded
    model = _model(context).eval()
    assert model.modality_order == ["image", "audio"]
    n = len(batch)
    image_only = torch.tensor([[True, False]]).expand(n, -1)
    noisy = batch.map(lambda t: t)
    noisy.inputs["audio"] = {"spectrogram": torch.randn_like(batch.inputs["audio"]["spectrogram"]) * 5}
    with torch.no_grad():
        logits, z = model.forward_subset(batch, image_only)
        assert torch.equal(model.forward_subset(noisy, image_only)[0], logits)
        # the unused token's own embeddings are never attended to either: its keys are masked
        model.modality_embedding.weight[1].add_(3.0)
        model.position_embedding[0, 2].add_(3.0)
        assert torch.equal(model.forward_subset(batch, image_only)[0], logits)
        # ... while the used modality's inputs matter
        both = torch.ones(n, 2, dtype=torch.bool)
        assert not torch.allclose(model.forward_subset(noisy, both)[0], model.forward_subset(batch, both)[0])
        # a modality the batch marks absent but holds (a recoverer filled it in) is read when used
        recovered = batch.map(lambda t: t)
        recovered.present = {**batch.present, "audio": torch.zeros(n, dtype=torch.bool)}
        assert torch.equal(model.forward_subset(recovered, both)[0], model.forward_subset(batch, both)[0])
        assert not torch.allclose(model(recovered), model.forward_subset(recovered, both)[0])
    assert z.shape == (n, 8)
    torch.testing.assert_close(z.norm(dim=1), torch.ones(n))


def test_forward_uses_the_present_modalities_and_a_row_with_none_is_finite(encoded):
    context, batch = encoded
    model = _model(context).eval()
    partial = _with_absent(batch)
    usage = model.usage_from_present(partial)
    assert usage[:5].tolist() == [[False, True]] * 5 and usage[10:12].tolist() == [[False, False]] * 2
    with torch.no_grad():
        logits = model(partial)
        torch.testing.assert_close(logits, model.forward_subset(partial, usage)[0], atol=1e-6, rtol=0)
        features = model.subset_features(partial, usage)
    assert model.training is False and not features.requires_grad
    assert torch.isfinite(logits).all() and logits.shape == (len(batch), 10)
    # rows that use nothing predict from CLS alone: the same for every such row
    assert torch.equal(logits[10], logits[11])
    assert not torch.allclose(logits[0], logits[1])


def test_each_batch_draws_k_distinct_non_empty_subsets(encoded):
    context, batch = encoded
    model = _model(context, subsets_per_batch=2)
    for _ in range(30):
        subsets = model.draw_subsets(len(batch))
        assert subsets.shape == (2, len(batch), 2)
        assert (subsets == subsets[:, :1]).all()  # one subset for the whole batch
        assert subsets.any(dim=2).all() and not torch.equal(subsets[0, 0], subsets[1, 0])
    # more subsets asked than exist: each of the three, once
    every = _model(context, subsets_per_batch=5).draw_subsets(4)
    assert sorted(map(tuple, every[:, 0].tolist())) == [(False, True), (True, False), (True, True)]

    per_row = _model(context, subsets_per_batch=2, per_sample_subsets=True)
    subsets = per_row.draw_subsets(64)
    assert subsets.any(dim=2).all() and (subsets[0] != subsets[1]).any(dim=1).all()
    assert len({tuple(r) for r in subsets[0].tolist()}) == 3  # rows draw their own subsets

    # in training a modality is used only where the row holds it
    usages = model.training_usages(_with_absent(batch))
    assert not usages[:, :5, 0].any() and not usages[:, 5:12, 1].any()


@pytest.mark.parametrize("metric", ["cos", "sqeuclid"])
def test_prototype_loss_is_weighted_zero_before_its_start_epoch(encoded, metric):
    context, batch = encoded
    for start, weight in ((3, 0.0), (0, 0.5)):
        model = _model(context, metric=metric, prototype_start_epoch=start, prototype_weight=weight or 0.5).train()
        torch.manual_seed(1)
        loss = model.training_loss(batch)
        torch.manual_seed(1)
        ce, pt, _, _ = model.subset_losses(batch, model.training_usages(batch))
        torch.testing.assert_close(loss, ce + weight * pt)
        # epoch 0's prototypes are zero: every class is equally similar, L_pt = log C
        torch.testing.assert_close(pt, torch.tensor(math.log(10.0)))
        loss.backward()  # every parameter takes part, also while L_pt is weighted 0 (DDP)
        assert all(p.grad is not None for p in model.parameters())


@pytest.mark.parametrize("metric", ["cos", "sqeuclid"])
def test_prototypes_are_the_epochs_per_class_mean_of_z(encoded, metric):
    context, batch = encoded
    model = _model(context, metric=metric, prototype_start_epoch=0).train()
    drawn = []
    draw = model.draw_subsets
    model.draw_subsets = lambda n: drawn.append(draw(n)) or drawn[-1]
    marker = torch.full((8,), 0.25)
    model.prototypes[9] = marker
    parts = [_with_absent(batch).select(range(0, 20)), batch.select(range(20, 40))]
    model.on_train_epoch_start()
    for part in parts:
        model.training_loss(part).backward()  # no optimiser step: z can be recomputed below
    model.on_train_epoch_end()

    sums, counts = torch.zeros(10, 8), torch.zeros(10)
    with torch.no_grad():
        for part, subsets in zip(parts, drawn):
            for subset in subsets & model.usage_from_present(part)[None]:
                rows = subset.any(dim=1)
                z = model.forward_subset(part, subset)[1][rows]
                sums.index_add_(0, part.target[rows], z)
                counts.index_add_(0, part.target[rows], torch.ones(int(rows.sum())))
    seen = counts > 0
    assert seen[:9].all() and not seen[9]
    torch.testing.assert_close(model.prototypes[seen], sums[seen] / counts[seen, None], atol=1e-5, rtol=1e-4)
    assert torch.equal(model.prototypes[9], marker)  # a class no row had keeps its prototype
    assert "prototypes" in model.state_dict() and "prototype_sum" not in model.state_dict()
    assert model.prototype_count.sum() == 0  # the sums start afresh


@pytest.mark.parametrize("metric, epochs", [("cos", 1), ("sqeuclid", 2)])
def test_fit_and_predict_with_modalities_missing_in_the_test_rows(av_digits, tmp_path, metric, epochs):
    train = av_digits.split("train").sample(64, random_state=0)
    val = av_digits.split("val").sample(32, random_state=0)
    test = av_digits.split("test").sample(16, random_state=0).reset_index(drop=True)
    test.loc[:4, "image"] = None
    test.loc[4:8, "audio"] = None
    clf = Classifier(av_digits.schema, method="dynamic", model={**SMALL, "metric": metric, "prototype_start_epoch": 1},
                     batch_size=16, run_dir=tmp_path / "run", loggers=["csv"],
                     trainer={"max_epochs": epochs, "val_check_interval": 4, "enable_progress_bar": False,
                              "accelerator": "cpu"})
    clf.fit(train, val)
    proba = clf.predict_proba(test)
    assert proba.shape == (16, 10) and np.isfinite(proba).all()
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, atol=1e-5)
    assert set(clf.predict(test)) <= set(av_digits.schema.label.options["classes"])
    # validating every 4 batches (the epoch's 64 rows), the checkpoints are written at validation
    # end, before the epoch-end hooks: they hold the epoch's prototypes only because the last
    # batch updates them (after one epoch they would still be zero)
    assert (clf.model_.prototypes.abs().sum(dim=1) > 0).all()
    log = (tmp_path / "run" / "metrics.csv").read_text()
    assert "train/prototype_loss" in log and "train/ce" in log


def test_a_regression_task_is_refused(encoded):
    context, _ = encoded
    regression = ModelContext(context.input_specs, context.modality_types, 1, "regression")
    with pytest.raises(ConfigError, match="classifies one class per row"):
        create_method("dynamic", regression, **SMALL)
    with pytest.raises(ConfigError, match="metric"):
        create_method("dynamic", context, **{**SMALL, "metric": "l1"})


def test_subset_statistics_are_measured_after_fit_and_saved(av_digits, tmp_path):
    """After fit the model holds DyMo's subset statistics; a saved and reloaded model keeps
    them (they are buffers in its safetensors weights)."""
    bundle = av_digits
    clf = Classifier(bundle.schema, method="dynamic", model={"encoders": ENCODERS, "dim": 16, "heads": 2, "depth": 1,
                                                             "projection_dim": 8},
                     batch_size=32, trainer={"max_epochs": 1, "enable_progress_bar": False}, run_dir=tmp_path / "run")
    train = bundle.split("train").sample(200, random_state=0).reset_index(drop=True)
    clf.fit(train, bundle.split("val").sample(60, random_state=0).reset_index(drop=True))
    stats = clf.model_.subset_statistics()
    assert stats.prototypes.shape == (3, 10, 8) and torch.all(stats.scales > 0)
    torch.testing.assert_close(stats.overall, stats.prototypes.mean(0))
    # subset 0 (the first modality alone): the prototype of a class is its rows' mean feature
    batch, _ = clf.preprocessor_.transform(train)
    usage = torch.zeros(len(batch), 2, dtype=torch.bool)
    usage[:, 0] = True
    z = clf.model_.subset_features(batch, usage)
    rows = batch.target == 3
    torch.testing.assert_close(stats.prototypes[0, 3], z[rows].mean(0), rtol=1e-4, atol=1e-5)
    clf.save(tmp_path / "saved")
    again = Classifier.load(tmp_path / "saved")
    torch.testing.assert_close(again.model_.subset_statistics().prototypes, stats.prototypes)
