"""MMatch: the FIFO memory bank and its smoothing on a tiny hand-made bank, the unimodal
pseudo-label loss over confident, present rows, one step's bank contents, and a real
two-epoch run on av_digits that saves and reloads (bank included)."""

import math
from dataclasses import replace

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F

import holomodal.methods.semi_supervised.mmatch  # noqa: F401  (registers "mmatch")
from holomodal.errors import ConfigError
from holomodal.estimator import Classifier
from holomodal.methods.semi_supervised.base import NetworkOutput
from holomodal.methods.semi_supervised.mmatch import MemoryBank, unimodal_pseudo_label_loss
from semi_supervised_fit import fit_semi_supervised, tiny_method


def test_bank_is_fifo_and_wraps():
    bank = MemoryBank(3, 2, 2)
    bank.push(torch.tensor([[1.0, 0.0], [0.0, 1.0]]), torch.tensor([[1.0, 0.0], [0.0, 1.0]]))
    assert int(bank.filled) == 2 and int(bank.pointer) == 2
    bank.push(torch.tensor([[0.6, 0.8], [0.8, 0.6]]), torch.tensor([[0.3, 0.7], [0.9, 0.1]]))
    # the fourth row overwrote the oldest, slot 0
    assert torch.allclose(bank.embeddings, torch.tensor([[0.8, 0.6], [0.0, 1.0], [0.6, 0.8]]))
    assert torch.allclose(bank.probabilities, torch.tensor([[0.9, 0.1], [0.0, 1.0], [0.3, 0.7]]))
    assert int(bank.filled) == 3 and int(bank.pointer) == 1
    # more rows than slots: the last three are kept
    bank.push(torch.eye(2).repeat(3, 1)[:5], torch.arange(10.0).view(5, 2))
    assert int(bank.filled) == 3 and int(bank.pointer) == 1
    assert sorted(bank.probabilities[:, 0].tolist()) == [4.0, 6.0, 8.0]


def test_bank_smoothing_by_hand_ignores_unwritten_slots():
    bank = MemoryBank(4, 2, 2)
    query = torch.tensor([[1.0, 0.0]])
    own = torch.tensor([[0.5, 0.5]])
    assert torch.equal(bank.smooth(query, own, 0.9, 0.1), own)  # an empty bank changes nothing
    bank.push(torch.tensor([[1.0, 0.0], [0.0, 1.0]]), torch.tensor([[1.0, 0.0], [0.0, 1.0]]))
    smoothed = bank.smooth(query, own, 0.9, 0.1)
    # similarities 1 and 0 over temperature 0.1: weights e^10 / (e^10 + 1) and 1 / (e^10 + 1);
    # the two empty slots (similarity 0 too) must get no weight
    near = math.exp(10) / (math.exp(10) + 1)
    assert smoothed.tolist()[0] == pytest.approx([0.45 + 0.1 * near, 0.45 + 0.1 * (1 - near)])
    assert smoothed.sum().item() == pytest.approx(1.0)


def test_unimodal_loss_counts_confident_rows_where_the_modality_is_present():
    image = torch.log(torch.tensor([[0.5, 0.5], [0.8, 0.2], [0.1, 0.9]]))
    audio = torch.log(torch.tensor([[0.25, 0.75], [0.5, 0.5], [0.6, 0.4]]))
    out = NetworkOutput(torch.zeros(3, 2), {"image": image, "audio": audio}, torch.zeros(3, 4),
                        {"image": torch.tensor([True, True, False]), "audio": torch.tensor([True, False, True])})
    labels, mask = torch.tensor([1, 0, 1]), torch.tensor([True, True, False])
    loss = unimodal_pseudo_label_loss(out, labels, mask)
    # image: rows 0 and 1 (row 2 absent); audio: row 0 (row 1 absent, row 2 not confident); mean over 3 rows
    expected = (-math.log(0.5) - math.log(0.8)) / 3 + (-math.log(0.75)) / 3
    assert loss.item() == pytest.approx(expected, rel=1e-6)


def test_a_step_fills_the_bank_with_aligned_and_one_hot_rows(av_digits):
    method, batch = tiny_method(av_digits, "mmatch", bank_size=20)
    labelled, unlabelled = batch.select(range(4)), replace(batch.select(range(4, 20)), target=None)
    result = method.semi_supervised_step(labelled, unlabelled)
    assert int(method.bank.filled) == 20 and int(method.bank.pointer) == 0
    # slots 0-15 the unlabelled rows' aligned probabilities, 16-19 the labelled rows' labels
    assert method.bank.probabilities[:16].sum(dim=1).tolist() == pytest.approx([1.0] * 16)
    assert torch.equal(method.bank.probabilities[16:], F.one_hot(labelled.target, 10).float())
    assert method.bank.embeddings.norm(dim=1).tolist() == pytest.approx([1.0] * 20, rel=1e-5)
    assert set(result.terms) == {"ce", "ce_unimodal", "ce_unlabelled"}
    # an untrained ten-class model is never 0.6 sure: nothing confident, no unlabelled loss
    assert not result.pseudo.confident.any() and result.terms["ce_unlabelled"].item() == 0.0
    assert result.loss.item() == pytest.approx((result.terms["ce"] + result.terms["ce_unimodal"]).item())
    without = tiny_method(av_digits, "mmatch", bank_size=20, bank_labelled=False)[0]
    without.semi_supervised_step(labelled, unlabelled)
    assert int(without.bank.filled) == 16


def test_bad_bank_options_are_config_errors(av_digits):
    with pytest.raises(ConfigError, match="bank_size"):
        tiny_method(av_digits, "mmatch", bank_size=0)


def test_mmatch_fits_av_digits_saves_and_reloads(av_digits, tmp_path):
    run = tmp_path / "run"
    # absent modalities among the unlabelled rows; a threshold an untrained model reaches, so
    # that epoch 1 trains the unimodal heads on pseudo-labels
    clf, _, val = fit_semi_supervised(av_digits, "mmatch", run, {"threshold": 0.12, "bank_size": 100})
    steps = pd.read_csv(run / "metrics.csv").dropna(subset=["train/loss"])
    assert len(steps) == 2
    for column in ("train/ce", "train/ce_unimodal", "train/ce_unlabelled", "pseudo/confident_share"):
        assert np.isfinite(steps[column]).all(), column
    last = steps.iloc[-1]
    assert last["pseudo/confident_share"] > 0 and last["train/ce_unlabelled"] > 0
    assert last["train/loss"] == pytest.approx(last["train/ce"] + last["train/ce_unimodal"] + 5.0 * last["train/ce_unlabelled"],
                                               rel=1e-4)
    # 5 steps an epoch of 56 unlabelled + 8 labelled rows through a 100-slot bank (the model
    # kept is the best epoch's, the first or the second)
    bank = clf.model_.bank
    assert int(bank.filled) == 100 and int(bank.pointer) in ((5 * 64) % 100, (10 * 64) % 100)
    loaded = Classifier.load(run / "model")
    np.testing.assert_allclose(loaded.predict_proba(val), clf.predict_proba(val), atol=1e-6)
    assert torch.equal(loaded.model_.bank.embeddings, bank.embeddings)
    assert torch.equal(loaded.model_.alignment.queue, clf.model_.alignment.queue)
    assert not hasattr(clf.model_, "teacher")
