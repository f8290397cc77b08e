"""SimMatch: its label propagation on a hand-computed bank, and a fit on av_digits."""

import json
import math

import numpy as np
import pandas as pd
import pytest
import torch

import holomodal.methods.semi_supervised.simmatch  # noqa: F401  (registers "simmatch")
from holomodal.estimator import Classifier
from holomodal.methods.semi_supervised.simmatch import SimMatch, bank_log_distribution, unfold_and_aggregate
from semi_supervised_fit import ENCODERS, fit_semi_supervised


def test_unfolding_and_aggregation_on_a_three_slot_bank():
    # three filled slots (labels 0, 1, 0) and one empty slot, which must carry nothing
    labels = torch.tensor([0, 1, 0, -1])
    instance = torch.tensor([[0.5, 0.3, 0.2, 0.0]])
    probs = torch.tensor([[0.6, 0.4]])
    unfolded, smoothed = unfold_and_aggregate(instance, probs, labels, c_smooth=0.9)
    # q_k p_{y_k} = 0.30, 0.12, 0.12 (sum 0.54)
    assert torch.allclose(unfolded, torch.tensor([[0.30 / 0.54, 0.12 / 0.54, 0.12 / 0.54, 0.0]]))
    # class mass in the bank: 0.7 for class 0, 0.3 for class 1; 0.9 p + 0.1 a
    assert torch.allclose(smoothed, torch.tensor([[0.61, 0.39]]))


def test_propagation_under_bf16_autocast_takes_the_bf16_bank_distribution_in_fp32():
    # under autocast the bank similarities come in bf16 and the class softmax in fp32
    labels = torch.tensor([0, 1, 0, -1])
    instance = torch.tensor([[0.5, 0.3, 0.2, 0.0]], dtype=torch.bfloat16)
    unfolded, smoothed = unfold_and_aggregate(instance, torch.tensor([[0.6, 0.4]]), labels, c_smooth=0.9)
    assert unfolded.dtype == smoothed.dtype == torch.float32
    assert torch.allclose(smoothed, torch.tensor([[0.61, 0.39]]), atol=1e-3)


def test_an_empty_bank_leaves_the_class_probabilities():
    unfolded, smoothed = unfold_and_aggregate(torch.zeros(1, 2), torch.tensor([[0.3, 0.7]]), torch.tensor([-1, -1]), 0.9)
    assert torch.equal(unfolded, torch.zeros(1, 2))
    assert torch.allclose(smoothed, torch.tensor([[0.3, 0.7]]))


def test_bank_distribution_skips_empty_slots():
    bank = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0]])
    filled = torch.tensor([True, True, False])
    log_q = bank_log_distribution(torch.tensor([[1.0, 0.0]]), bank, filled, temperature=0.5)
    # logits 2 and 0 over the two filled slots; the empty slot's log-probability reads 0
    z = math.exp(2.0) + 1.0
    assert torch.allclose(log_q, torch.tensor([[2.0 - math.log(z), -math.log(z), 0.0]]))


@pytest.fixture(scope="module")
def fitted(av_digits, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("simmatch") / "run"
    # 30 % of the rows, labelled and unlabelled, lose one of their two modalities
    # the second epoch trains on the pseudo-labels; threshold 0 makes every one confident, so
    # that the masked term trains too
    clf, labelled, _ = fit_semi_supervised(av_digits, "simmatch", run_dir, {"threshold": 0.0}, absent=False,
                                           missing=["modality:0.3:both"])
    return clf, run_dir, labelled


def test_fit_logs_finite_terms_and_weights_them_after_the_warm_up(fitted):
    _, run_dir, _ = fitted
    summary = json.loads((run_dir / "data_summary.json").read_text())["train"]
    for rows in (summary, summary["unlabelled"]):  # the fit met absent modalities on both sides
        assert min(rows["synthetic"]["dropped_modalities"].values()) > 0
    log = pd.read_csv(run_dir / "metrics.csv")
    columns = ["train/loss", "train/ce", "train/ce_unlabelled", "train/instance", "pseudo/confident_share"]
    train = log.dropna(subset=["train/loss"]).set_index("epoch")
    assert len(train) == 2 and np.isfinite(train[columns].to_numpy()).all()
    assert (train["pseudo/confident_share"] == 1.0).all() and (train["train/ce_unlabelled"] > 0).all()
    # the warm-up epoch trains on the labelled rows alone; then lambda_u = 10, lambda_in = 5
    assert math.isclose(train.loc[0, "train/loss"], train.loc[0, "train/ce"], rel_tol=1e-5)
    weighted = train.loc[1, "train/ce"] + 10 * train.loc[1, "train/ce_unlabelled"] + 5 * train.loc[1, "train/instance"]
    assert math.isclose(train.loc[1, "train/loss"], weighted, rel_tol=1e-4)


def test_bank_holds_the_labelled_rows_seen(fitted):
    clf, _, labelled = fitted
    model = clf.model_
    # an epoch is 5 steps of 8 labelled rows (the longer loader, cycled): every slot written
    assert model.bank_labels.shape == (40,) and bool((model.bank_labels >= 0).all())
    targets = clf.preprocessor_.encode_labels(labelled[clf.schema.label.name])
    assert torch.equal(model.bank_labels, targets)
    norms = model.bank_embeddings.norm(dim=1)
    assert torch.allclose(norms, torch.ones_like(norms), atol=1e-5)


def test_bank_writes_only_the_given_rows(fitted):
    model = SimMatch(fitted[0].model_.context, encoders=ENCODERS, dim=8, projection_dim=4)
    embeddings = torch.nn.functional.normalize(torch.randn(2, 4), dim=1)
    model.update_bank(embeddings, torch.tensor([3, 1]), torch.tensor([5, 0]))
    assert torch.equal(torch.nonzero(model.bank_labels >= 0).flatten(), torch.tensor([0, 5]))
    assert model.bank_labels[5] == 3 and model.bank_labels[0] == 1
    assert torch.equal(model.bank_embeddings[[5, 0]], embeddings)


def test_saved_model_predicts_the_same(fitted, av_digits):
    clf, run_dir, _ = fitted
    test = av_digits.split("test").sample(30, random_state=0)
    loaded = Classifier.load(run_dir / "model")
    np.testing.assert_allclose(loaded.predict_proba(test), clf.predict_proba(test), atol=1e-6)
    assert torch.equal(loaded.model_.bank_labels, clf.model_.bank_labels)
