"""CoMatch: its graphs, memory smoothing and queue on hand-computed examples, and a fit on av_digits."""

import json
import math

import numpy as np
import pandas as pd
import pytest
import torch

import holomodal.methods.semi_supervised.comatch  # noqa: F401  (registers "comatch")
from holomodal.estimator import Classifier
from holomodal.methods.semi_supervised.comatch import (
    CoMatch, graph_contrastive_loss, memory_smoothed, pseudo_label_graph,
)
from semi_supervised_fit import ENCODERS, fit_semi_supervised


def test_pseudo_label_graph_keeps_self_loops_and_strong_edges():
    probs = torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0]])
    graph = pseudo_label_graph(probs, threshold=0.8)
    # p_i . p_j: 0.9 between rows 0 and 1 (kept), 0.1 between rows 1 and 2 (dropped), 0 between 0 and 2
    expected = torch.tensor([[1.0, 0.9, 0.0], [0.9, 1.0, 0.0], [0.0, 0.0, 1.0]])
    assert torch.allclose(graph, expected / expected.sum(dim=1, keepdim=True))


def test_graph_contrastive_loss_by_hand():
    views = torch.eye(2)
    lse = math.log(math.e + 1.0)  # log-sum-exp of one row of the identity logits at temperature 1
    # own view the only positive: -log softmax = log(e + 1) - 1
    assert math.isclose(graph_contrastive_loss(views, views, torch.eye(2), 1.0).item(), lse - 1.0, rel_tol=1e-6)
    # both positives, half each: -(0.5 (1 - lse) + 0.5 (0 - lse))
    half = torch.full((2, 2), 0.5)
    assert math.isclose(graph_contrastive_loss(views, views, half, 1.0).item(), lse - 0.5, rel_tol=1e-6)


def test_memory_smoothing_over_the_filled_queue_entries():
    probs = torch.tensor([[0.5, 0.5]])
    embedding = torch.tensor([[1.0, 0.0]])
    queue = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0]])
    queue_probs = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.0, 1.0]])
    filled = torch.tensor([True, True, False])
    smoothed = memory_smoothed(probs, embedding, queue, queue_probs, filled, alpha=0.9, temperature=1.0)
    w = math.e / (math.e + 1.0)  # weight of the first entry; the empty third one has none
    assert torch.allclose(smoothed, torch.tensor([[0.45 + 0.1 * w, 0.45 + 0.1 * (1 - w)]]))
    empty = memory_smoothed(probs, embedding, queue, queue_probs, torch.zeros(3, dtype=torch.bool), 0.9, 1.0)
    assert torch.equal(empty, probs)


@pytest.fixture(scope="module")
def fitted(av_digits, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("comatch") / "run"
    # 30 % of the rows, labelled and unlabelled, lose one of their two modalities
    # the second epoch trains on pseudo-labels, memory-smoothed, with the contrastive term;
    # co_threshold 0 makes every pseudo-label confident, so that the masked term trains too
    clf, _, _ = fit_semi_supervised(av_digits, "comatch", run_dir, {"co_threshold": 0.0}, absent=False,
                                    missing=["modality:0.3:both"])
    return clf, run_dir


def test_queue_wraps_around_at_its_pointer(fitted):
    model = CoMatch(fitted[0].model_.context, encoders=ENCODERS, dim=8, projection_dim=2, queue_size=5)
    classes = torch.eye(10)  # av_digits has ten classes
    model.enqueue(torch.ones(3, 2), classes[[0, 0, 0]])
    assert torch.equal(model.queue_filled, torch.tensor([True, True, True, False, False]))
    model.enqueue(torch.arange(8.0).view(4, 2), classes[[1, 1, 1, 1]])
    # rows 0-1 of the second write fill slots 3-4, rows 2-3 wrap to slots 0-1
    assert int(model.queue_pointer) == 2 and bool(model.queue_filled.all())
    assert torch.equal(model.queue_embeddings, torch.tensor([[4.0, 5.0], [6.0, 7.0], [1.0, 1.0], [0.0, 1.0], [2.0, 3.0]]))
    assert torch.equal(model.queue_probs[:, 1], torch.tensor([1.0, 1.0, 0.0, 1.0, 1.0]))


def test_fit_logs_finite_terms_and_weights_them_after_the_warm_up(fitted):
    _, run_dir = fitted
    summary = json.loads((run_dir / "data_summary.json").read_text())["train"]
    for rows in (summary, summary["unlabelled"]):  # the fit met absent modalities on both sides
        assert min(rows["synthetic"]["dropped_modalities"].values()) > 0
    log = pd.read_csv(run_dir / "metrics.csv")
    columns = ("train/loss", "train/ce", "train/ce_unlabelled", "train/contrastive", "pseudo/confident_share")
    train = log.dropna(subset=["train/loss"]).set_index("epoch")
    assert len(train) == 2 and np.isfinite(train[list(columns)].to_numpy()).all()
    assert math.isclose(train.loc[0, "train/loss"], train.loc[0, "train/ce"], rel_tol=1e-5)
    assert (train["pseudo/confident_share"] == 1.0).all() and (train["train/ce_unlabelled"] > 0).all()
    # epoch 1: lambda_u = 10, lambda_c = min(1 + 1, 10) = 2
    ramped = train.loc[1, "train/ce"] + 10 * train.loc[1, "train/ce_unlabelled"] + 2 * train.loc[1, "train/contrastive"]
    assert math.isclose(train.loc[1, "train/loss"], ramped, rel_tol=1e-4)


def test_queue_is_sized_by_the_training_rows_and_filled(fitted):
    clf, _ = fitted
    model = clf.model_
    # 40 labelled + 160 unlabelled rows < 2560: the queue holds 200, written out in the options
    assert clf.model["queue_size"] == 200 and model.queue_embeddings.shape == (200, 128)
    assert bool(model.queue_filled.all())
    assert torch.allclose(model.queue_probs.sum(dim=1), torch.ones(200), atol=1e-5)
    # a step writes 56 unlabelled rows, then 8 labelled ones with one-hot labels: the last 200
    # rows written are three whole steps and the labelled end of the one before, 4 x 8 one-hot rows
    assert int((model.queue_probs.max(dim=1).values == 1.0).sum()) == 32


def test_saved_model_predicts_the_same(fitted, av_digits):
    clf, run_dir = fitted
    test = av_digits.split("test").sample(30, random_state=0)
    loaded = Classifier.load(run_dir / "model")
    np.testing.assert_allclose(loaded.predict_proba(test), clf.predict_proba(test), atol=1e-6)
    assert torch.equal(loaded.model_.queue_embeddings, clf.model_.queue_embeddings)
    assert int(loaded.model_.queue_pointer) == int(clf.model_.queue_pointer)
