"""Co-training: each modality's head is taught by the other modality's teacher (routing,
threshold and absent-modality masks by hand), the union of the two directions logged as
pseudo-labels, and a real two-epoch run on av_digits that saves and reloads."""

from dataclasses import replace

import numpy as np
import pandas as pd
import pytest
import torch

import holomodal.methods.semi_supervised.cotraining  # noqa: F401  (registers "cotraining")
from holomodal.errors import ConfigError
from holomodal.estimator import Classifier
from holomodal.methods.semi_supervised.cotraining import cross_modal_targets, union_pseudo_labels
from semi_supervised_fit import fit_semi_supervised, tiny_method

PARTNER = {"image": "audio", "audio": "image"}


def logits_of(probs):
    return torch.log(torch.tensor(probs))


def test_each_head_learns_from_the_other_modalitys_teacher_where_it_is_sure_and_both_are_present():
    image = [[0.95, 0.05], [0.5, 0.5], [0.92, 0.08], [0.97, 0.03]]
    audio = [[0.2, 0.8], [0.05, 0.95], [0.01, 0.99], [0.5, 0.5]]
    present = {"image": torch.tensor([True, True, True, False]), "audio": torch.tensor([True, True, False, True])}
    targets = cross_modal_targets({"image": logits_of(image), "audio": logits_of(audio)}, present, 0.9)
    image_target, image_mask = targets["image"]  # the image head learns from the audio teacher
    audio_target, audio_mask = targets["audio"]
    assert torch.allclose(image_target, torch.tensor(audio)) and torch.allclose(audio_target, torch.tensor(image))
    # audio sure on rows 1 and 2, but row 2 has no audio: only row 1 teaches the image head
    assert image_mask.tolist() == [False, True, False, False]
    # image sure on rows 0, 2 and 3: row 2 has no audio to learn, row 3 no image to teach
    assert audio_mask.tolist() == [True, False, False, False]


def test_union_takes_the_more_confident_of_the_confident_teachers():
    targets = {
        "image": (torch.tensor([[0.1, 0.9], [0.05, 0.95], [0.5, 0.5]]), torch.tensor([False, True, False])),  # audio's
        "audio": (torch.tensor([[0.92, 0.08], [0.99, 0.01], [0.6, 0.4]]), torch.tensor([True, True, False])),  # image's
    }
    pseudo = union_pseudo_labels(targets, PARTNER)
    assert pseudo.confident.tolist() == [True, True, False]
    # row 0: only the image teacher is sure (0.92 > an unsure 0.9); row 1: image 0.99 beats audio 0.95
    assert pseudo.labels.tolist()[:2] == [0, 0]
    assert pseudo.cases["audio_teaches"].tolist() == [False, True, False]
    assert pseudo.cases["image_teaches"].tolist() == [True, True, False]


def test_a_step_uses_no_row_whose_partner_is_absent(av_digits):
    method, batch = tiny_method(av_digits, "cotraining", co_threshold=0.0)  # every present teacher is sure
    labelled, unlabelled = batch.select(range(4)), replace(batch.select(range(4, 20)), target=None)
    result = method.semi_supervised_step(labelled, unlabelled)
    assert result.pseudo.confident.all()
    assert result.terms["cross_audio_to_image"] > 0 and result.terms["cross_image_to_audio"] > 0
    no_audio = replace(unlabelled, present={**unlabelled.present, "audio": torch.zeros(16, dtype=torch.bool)})
    result = method.semi_supervised_step(labelled, no_audio)
    assert not result.pseudo.confident.any()
    assert result.terms["cross_audio_to_image"].item() == 0.0 and result.terms["cross_image_to_audio"].item() == 0.0
    # before the pseudo-label epochs the loss is 0.2 of the three supervised cross-entropies
    assert result.loss.item() == pytest.approx(0.2 * (result.terms["ce"] + result.terms["ce_unimodal"]).item())
    method.train()
    assert method.network.training and not method.teacher.training


def test_cotraining_needs_two_modalities(av_digits):
    with pytest.raises(ConfigError, match="two modalities"):
        tiny_method(av_digits, "cotraining", modalities=["image"])


def test_cotraining_fits_av_digits_saves_and_reloads(av_digits, tmp_path):
    run = tmp_path / "run"
    # absent modalities among the unlabelled rows; a threshold an untrained teacher reaches, so
    # that epoch 1 trains across the modalities
    clf, _, val = fit_semi_supervised(av_digits, "cotraining", run, {"co_threshold": 0.12})
    steps = pd.read_csv(run / "metrics.csv").dropna(subset=["train/loss"])
    assert len(steps) == 2
    columns = ("train/ce", "train/ce_unimodal", "train/cross_audio_to_image", "train/cross_image_to_audio",
               "pseudo/confident_share", "pseudo/image_teaches_share", "pseudo/audio_teaches_share")
    for column in columns:
        assert np.isfinite(steps[column]).all(), column
    last = steps.iloc[-1]
    assert last["train/cross_audio_to_image"] > 0 and last["train/cross_image_to_audio"] > 0
    cross = last["train/cross_audio_to_image"] + last["train/cross_image_to_audio"]
    assert last["train/loss"] == pytest.approx(0.2 * (last["train/ce"] + last["train/ce_unimodal"]) + 0.2 * cross, rel=1e-4)
    # the confident rows logged are the union of the two directions
    directions = steps[["pseudo/image_teaches_share", "pseudo/audio_teaches_share"]].max(axis=1)
    assert (steps["pseudo/confident_share"] >= directions).all()
    loaded = Classifier.load(run / "model")
    np.testing.assert_allclose(loaded.predict_proba(val), clf.predict_proba(val), atol=1e-6)
    teacher = clf.model_.teacher.unimodal_heads["audio"].weight
    student = clf.model_.network.unimodal_heads["audio"].weight
    assert torch.equal(loaded.model_.teacher.unimodal_heads["audio"].weight, teacher)
    assert not torch.equal(teacher, student)  # the teacher lags the student
