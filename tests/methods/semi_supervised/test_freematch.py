"""FreeMatch: the self-adaptive threshold and its running averages against hand-computed
values, the fairness term, the mask applied to (or, as STiL's code has it, left off) the
unlabelled cross-entropy, and a real two-epoch run on av_digits that saves and reloads."""

import math
from dataclasses import replace

import numpy as np
import pandas as pd
import pytest
import torch

import holomodal.methods.semi_supervised.freematch  # noqa: F401  (registers "freematch")
from holomodal.estimator import Classifier
from holomodal.methods.semi_supervised.freematch import SelfAdaptiveThreshold, fairness_loss
from semi_supervised_fit import fit_semi_supervised, tiny_method

PROBS = torch.tensor([[0.7, 0.2, 0.1], [0.2, 0.5, 0.3], [0.1, 0.1, 0.8], [0.4, 0.35, 0.25]])


def test_sat_averages_and_mask_by_hand():
    sat = SelfAdaptiveThreshold(3, momentum=0.5)
    third = 1 / 3
    assert sat.global_threshold.item() == pytest.approx(third)
    sat.update(PROBS)
    # max-probs 0.7, 0.5, 0.8, 0.4: mean 0.6
    assert sat.global_threshold.item() == pytest.approx(0.5 * third + 0.5 * 0.6)
    # column means 0.35, 0.2875, 0.3625
    expected_confidence = [0.5 * third + 0.5 * v for v in (0.35, 0.2875, 0.3625)]
    assert sat.class_confidence.tolist() == pytest.approx(expected_confidence)
    # hard labels 0, 1, 2, 0
    assert sat.label_histogram.tolist() == pytest.approx([0.5 * third + 0.5 * v for v in (0.5, 0.25, 0.25)])
    tau = 0.5 * third + 0.5 * 0.6
    thresholds = [tau * c / max(expected_confidence) for c in expected_confidence]
    assert sat.class_thresholds().tolist() == pytest.approx(thresholds)  # about 0.458, 0.416, 0.467
    labels, mask = sat.mask(PROBS)
    assert labels.tolist() == [0, 1, 2, 0]
    assert mask.tolist() == [True, True, True, False]  # 0.4 < 0.458, the class-0 threshold


def test_sat_update_ignores_an_empty_batch_and_keeps_fixed_shapes():
    sat = SelfAdaptiveThreshold(4)
    sat.update(torch.zeros(0, 4))
    assert torch.isfinite(sat.global_threshold) and sat.global_threshold.item() == pytest.approx(0.25)
    state = sat.state_dict()
    assert {k: tuple(v.shape) for k, v in state.items()} == {
        "global_threshold": (), "class_confidence": (4,), "label_histogram": (4,)}


def test_fairness_loss_by_hand_and_only_through_confident_rows():
    strong = torch.log(torch.tensor([[0.6, 0.3, 0.1], [0.2, 0.7, 0.1], [0.1, 0.3, 0.6], [0.9, 0.05, 0.05]]))
    strong.requires_grad_(True)
    mask = torch.tensor([True, True, True, False])
    confidence, histogram = torch.tensor([0.5, 0.3, 0.2]), torch.tensor([0.5, 0.25, 0.25])
    loss = fairness_loss(strong, mask, confidence, histogram)
    # each class predicted once: b is the plain mean of the three rows; a = SumNorm(1, 1.2, 0.8)
    a = [1 / 3, 0.4, 0.8 / 3]
    b = [0.3, 1.3 / 3, 0.8 / 3]
    assert loss.item() == pytest.approx(sum(x * math.log(y) for x, y in zip(a, b)), rel=1e-5)
    loss.backward()
    assert strong.grad[3].abs().sum() == 0 and strong.grad[:3].abs().sum() > 0
    none = fairness_loss(strong, torch.zeros(4, dtype=torch.bool), confidence, histogram)
    assert none.item() == 0.0


def tiny_freematch(av_digits, **options):
    method, batch = tiny_method(av_digits, "freematch", **options)
    return method.eval(), batch


def unlabelled_terms(method, batch, apply_mask):
    method.apply_mask = apply_mask
    torch.manual_seed(0)  # the same views in both calls
    return method.semi_supervised_step(batch.select(range(8)), replace(batch.select(range(8, 24)), target=None))


def test_mask_is_applied_to_the_unlabelled_ce_unless_turned_off(av_digits):
    method, batch = tiny_freematch(av_digits, sat_momentum=1.0)  # averages frozen at what is set here
    method.sat.global_threshold.fill_(2.0)  # no probability reaches it: no row confident
    masked = unlabelled_terms(method, batch, apply_mask=True)
    unmasked = unlabelled_terms(method, batch, apply_mask=False)
    assert not masked.pseudo.confident.any()
    assert masked.terms["ce_unlabelled"].item() == 0.0
    assert unmasked.terms["ce_unlabelled"].item() > 1.0  # every hard label counts (about log 10)
    assert masked.terms["fairness"].item() == unmasked.terms["fairness"].item() == 0.0
    method.sat.global_threshold.fill_(0.0)  # every row confident: the two agree
    all_masked = unlabelled_terms(method, batch, apply_mask=True)
    all_unmasked = unlabelled_terms(method, batch, apply_mask=False)
    assert all_masked.pseudo.confident.all()
    assert all_masked.terms["ce_unlabelled"].item() == pytest.approx(unmasked.terms["ce_unlabelled"].item(), rel=1e-5)
    assert all_masked.terms["ce_unlabelled"].item() == pytest.approx(all_unmasked.terms["ce_unlabelled"].item(), rel=1e-6)


def test_teacher_stays_in_eval_mode_and_follows_the_student(av_digits):
    method, batch = tiny_freematch(av_digits)
    method.train()
    assert method.network.training and not method.teacher.training
    assert not any(p.requires_grad for p in method.teacher.parameters())
    with torch.no_grad():
        next(method.network.classifier.parameters()).add_(1.0)
    before = next(method.teacher.classifier.parameters()).clone()
    unlabelled_terms(method, batch, apply_mask=True)
    after = next(method.teacher.classifier.parameters())
    assert torch.allclose(after, before + 0.004, atol=1e-5)  # (1 - 0.996) of the student's step


def test_freematch_fits_av_digits_saves_and_reloads(av_digits, tmp_path):
    run = tmp_path / "run"
    clf, _, val = fit_semi_supervised(av_digits, "freematch", run)  # absent modalities among the unlabelled rows
    log = pd.read_csv(run / "metrics.csv")
    steps = log.dropna(subset=["train/loss"])
    assert len(steps) == 2
    for column in ("train/ce", "train/ce_unlabelled", "train/fairness", "train/sat_threshold", "pseudo/confident_share"):
        assert np.isfinite(steps[column]).all(), column
    # epoch 1 trains on pseudo-labels: its loss is more than the labelled cross-entropy
    last = steps.iloc[-1]
    assert last["train/loss"] > last["train/ce"] + 0.5 * last["train/ce_unlabelled"]
    assert (steps["train/fairness"] <= 0).all()
    # the threshold starts at 1/C and moves with the teacher's confidence
    sat = clf.model_.sat
    assert sat.global_threshold.item() != pytest.approx(0.1, abs=1e-7)
    loaded = Classifier.load(run / "model")
    np.testing.assert_allclose(loaded.predict_proba(val), clf.predict_proba(val), atol=1e-6)
    assert torch.equal(loaded.model_.sat.class_confidence, sat.class_confidence)
    assert torch.equal(loaded.model_.teacher.classifier.weight, clf.model_.teacher.classifier.weight)
