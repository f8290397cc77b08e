"""STiL: the consensus table, the label smoothing, prototypes, a fit on real rows."""

import math

import numpy as np
import pandas as pd
import pytest
import torch

from holomodal.methods.semi_supervised.stil import consensus_pseudo_labels, smoothed_pseudo_labels

ENCODERS = {"image": {"name": "lenet", "channels": 2, "blocks": 1}, "audio": {"name": "lenet", "channels": 2, "blocks": 2}}
QUIET = {"max_epochs": 1, "enable_progress_bar": False, "accelerator": "cpu"}


def _logits(classes):
    """Two-class logits whose argmax is ``classes``, distinct values so averages are checkable."""
    out = torch.zeros(len(classes), 2)
    for i, c in enumerate(classes):
        out[i, c] = 1.0 + i
    return out


def test_each_consensus_case_trains_the_heads_of_the_table():
    # rows: all agree; m = a != b; m = b != a; a = b != m
    m, a, b = _logits([0, 0, 0, 0]), _logits([0, 0, 1, 1]), _logits([0, 1, 0, 1])
    heads = consensus_pseudo_labels(m, a, b, ("image", "tabular"), coin=torch.tensor([True, True, True, True]))
    assert heads.cases["case1"].tolist() == [True, False, False, False]
    assert heads.cases["case2_image"].tolist() == [False, True, False, False]
    assert heads.cases["case2_tabular"].tolist() == [False, False, True, False]
    assert heads.cases["case3"].tolist() == [False, False, False, True]
    assert heads.learners["multimodal"].tolist() == [True, False, False, False]
    # case 2: only the dissenting modality learns; case 3: the coin's modality
    assert heads.learners["image"].tolist() == [True, False, True, True]
    assert heads.learners["tabular"].tolist() == [True, True, False, False]
    tails = consensus_pseudo_labels(m, a, b, ("image", "tabular"), coin=torch.zeros(4, dtype=torch.bool))
    assert tails.learners["image"].tolist() == [True, False, True, False]
    assert tails.learners["tabular"].tolist() == [True, True, False, True]
    # the targets: softmax of the mean of the agreeing heads' logits
    torch.testing.assert_close(heads.target[0], torch.softmax((m[0] + a[0] + b[0]) / 3, 0))
    torch.testing.assert_close(heads.target[1], torch.softmax((m[1] + a[1]) / 2, 0))
    torch.testing.assert_close(heads.target[2], torch.softmax((m[2] + b[2]) / 2, 0))
    torch.testing.assert_close(heads.target[3], torch.softmax(m[3], 0))


def test_a_row_missing_a_modality_trains_the_present_head_on_the_multimodal_softmax():
    m, a, b = _logits([0, 1]), _logits([0, 1]), _logits([0, 1])
    out = consensus_pseudo_labels(m, a, b, ("image", "tabular"), torch.tensor([True, True]),
                                  present_a=torch.tensor([True, False]), present_b=torch.tensor([True, True]))
    assert out.cases["incomplete"].tolist() == [False, True]
    assert out.learners["multimodal"].tolist() == [True, False]
    assert out.learners["image"].tolist() == [True, False]
    assert out.learners["tabular"].tolist() == [True, True]
    torch.testing.assert_close(out.target[1], torch.softmax(m[1], 0))


def test_label_smoothing_mix_and_confidence_mask_by_hand():
    consensus = torch.tensor([[0.8, 0.2]])
    teacher = torch.log(torch.tensor([[0.9, 0.1]]))  # softmax gives back (0.9, 0.1)
    prototypes = torch.tensor([[0.5, 0.5]])
    smoothed, blended, confident = smoothed_pseudo_labels(consensus, teacher, prototypes, rate=0.9, threshold=0.85)
    torch.testing.assert_close(smoothed, torch.tensor([[0.77, 0.23]]))  # 0.9 * 0.8 + 0.1 * 0.5
    torch.testing.assert_close(blended, torch.tensor([[0.86, 0.14]]))  # 0.9 * 0.9 + 0.1 * 0.5
    assert confident.tolist() == [True]
    assert smoothed_pseudo_labels(consensus, teacher, prototypes, rate=0.9, threshold=0.9)[2].tolist() == [False]


def _stil(tmp_path, av_digits, name="run", **model):
    from holomodal.estimator import Classifier

    train = av_digits.split("train").sample(160, random_state=0).reset_index(drop=True)
    labelled, unlabelled = train.iloc[:40].reset_index(drop=True), train.iloc[40:].reset_index(drop=True)
    options = {"encoders": ENCODERS, "dim": 16, "heads": 2, "projection_dim": 8, "start_epoch": 0, **model}
    clf = Classifier(av_digits.schema, method="stil", model=options, batch_size=32, loggers=["csv"], trainer=QUIET,
                     run_dir=tmp_path / name)
    return clf, labelled, unlabelled


def test_prototypes_are_the_weighted_mean_of_the_confident_teacher_embeddings(tmp_path, av_digits, monkeypatch):
    from holomodal.losses.prototype import PrototypeBank

    calls, epochs = [], []
    accumulate, finish = PrototypeBank.accumulate, PrototypeBank.finish_epoch

    def recording(self, embeddings, labels, weights):
        calls.append((embeddings.detach().clone(), labels.clone(), weights.clone()))
        accumulate(self, embeddings, labels, weights)

    def finishing(self, all_reduce=None):
        epochs.append(list(calls))
        calls.clear()
        return finish(self, all_reduce)

    monkeypatch.setattr(PrototypeBank, "accumulate", recording)
    monkeypatch.setattr(PrototypeBank, "finish_epoch", finishing)
    # epoch 1 is past the warm-up (start_epoch 0); threshold 0 makes every unlabelled row confident
    clf, labelled, unlabelled = _stil(tmp_path, av_digits, start_epoch=0, threshold=0.0)
    clf.trainer = {**clf.trainer, "max_epochs": 2}
    clf.fit(labelled, None, unlabeled=unlabelled)
    assert len(epochs) == 2
    first = torch.cat([w for _, _, w in epochs[0]])
    n_l = 4  # 32 rows at 1 : 7
    assert torch.allclose(first[:n_l], torch.full((n_l,), 1.0 / clf.model_.repeat_ratio))
    assert float(first[n_l:32].sum()) == 0.0  # warm-up: no unlabelled row builds prototypes
    embeddings, labels, weights = (torch.cat(x) for x in zip(*epochs[1]))
    assert float(weights[n_l:32].sum()) == 28.0  # after it, every confident one does, with weight 1
    expected = torch.zeros(10, embeddings.shape[1], dtype=torch.float64)
    expected.index_add_(0, labels, embeddings.double() * weights.double()[:, None])
    total = torch.zeros(10, dtype=torch.float64).index_add_(0, labels, weights.double())
    filled = total > 0
    got = clf.model_.bank.prototypes
    torch.testing.assert_close(got[filled].double(), expected[filled] / total[filled, None], rtol=1e-5, atol=1e-6)


def test_warm_up_keeps_unlabelled_rows_out_of_loss_and_prototypes(tmp_path, av_digits):
    clf, labelled, unlabelled = _stil(tmp_path, av_digits, start_epoch=5, threshold=0.0)
    clf.fit(labelled, None, unlabeled=unlabelled)
    log = pd.read_csv(tmp_path / "run" / "metrics.csv")
    assert log["pseudo/confident_share"].dropna().iloc[-1] == 0.0
    assert log["pseudo/case1_share"].notna().any()


def test_stil_fits_logs_diagnostics_and_reloads(tmp_path, av_digits):
    from holomodal.estimator import Classifier

    clf, labelled, unlabelled = _stil(tmp_path, av_digits, threshold=0.0)
    clf.trainer = {**clf.trainer, "max_epochs": 2}
    val = av_digits.split("val").sample(40, random_state=0).reset_index(drop=True)
    clf.fit(labelled, val, unlabeled=unlabelled)  # unlabelled keeps its labels: hidden, for pseudo/accuracy only
    log = pd.read_csv(tmp_path / "run" / "metrics.csv")
    for column in ("train/ce", "train/itc", "train/club", "train/pt", "train/ce_unlabelled_multimodal",
                   "pseudo/confident_share", "pseudo/accuracy", "pseudo/case3_share"):
        values = log[column].dropna()
        assert len(values) and np.isfinite(values).all(), column
    assert 0.0 <= log["pseudo/accuracy"].dropna().iloc[-1] <= 1.0
    assert (tmp_path / "run" / "pseudo_labels.png").stat().st_size > 0
    summary = pd.read_json(tmp_path / "run" / "data_summary.json", typ="series")
    assert summary["train"]["unlabelled"]["hidden_labels"] == len(unlabelled)
    # the EMA teacher moved away from its initial copy but is not the student
    student, teacher = clf.model_.network.state_dict(), clf.model_.teacher.state_dict()
    assert any(not torch.equal(student[k], teacher[k]) for k in student)
    again = Classifier.load(tmp_path / "run" / "model")
    np.testing.assert_allclose(clf.predict_proba(val), again.predict_proba(val), atol=1e-6)


def test_stil_needs_unlabelled_rows_and_two_modalities(tmp_path, av_digits):
    from holomodal.errors import ConfigError, DataError

    clf, labelled, _ = _stil(tmp_path, av_digits)
    with pytest.raises(DataError, match="unlabelled rows too, and there are none"):
        clf.fit(labelled, None)
    clf, labelled, unlabelled = _stil(tmp_path, av_digits, name="one", modalities=["image"])
    with pytest.raises(ConfigError, match="two modalities"):
        clf.fit(labelled, None, unlabeled=unlabelled)


def test_stil_starts_from_a_tip_pretraining_run(tmp_path, covid):
    from holomodal.estimator import Classifier
    from holomodal.methods.tip import backbone_state, read_pretrained
    from holomodal.pretraining import Pretrainer
    from tiny import small_schema

    schema = small_schema(covid.schema, drop=("text",))
    rows = covid.split("train").head(48).reset_index(drop=True)
    tiny = {"encoders": {"image": {"model_name": "test_resnet"}, "tabular": {"dim": 16, "depth": 1, "heads": 2}},
            "interaction": {"dim": 16, "depth": 1, "heads": 2}}
    pre = Pretrainer(schema, model=tiny, batch_size=16, trainer=QUIET, run_dir=tmp_path / "pre").fit(rows, None)
    clf = Classifier(schema, method="stil", model={"checkpoint": str(tmp_path / "pre"), "dim": 16, "heads": 2,
                                                   "projection_dim": 8, "start_epoch": 0},
                     optim={"lr": 0.0}, batch_size=16, trainer=QUIET, run_dir=tmp_path / "stil", loggers=["csv"])
    clf.fit(rows.iloc[:12], None, unlabeled=rows.iloc[12:])
    assert clf.model["modalities"] == ["image", "tabular"]
    saved = backbone_state(read_pretrained(pre.checkpoint_, weights=True)["state_dict"])
    # with a learning rate of 0 the parameters are exactly the pre-trained ones
    for prefix, encoder in (("image_encoder.", clf.model_.network.encoders["image"]),
                            ("tabular_encoder.", clf.model_.network.encoders["tabular"])):
        for name, value in encoder.named_parameters():
            torch.testing.assert_close(value, saved[prefix + name], rtol=0, atol=0, msg=name)
    assert math.isfinite(clf.evaluate(covid.split("val").head(20))["accuracy"])
