"""Per-pattern greedy ensemble selection on real predictions (covid_cxr table + notes)."""

import dataclasses
import json

import numpy as np
import pytest
import torch

from holomodal.methods import create_method
from holomodal.methods.base import ModelContext, compute_metrics
from holomodal.methods.ensemble import PatternEnsemble, all_patterns, greedy_selection
from holomodal.preprocessing import Preprocessor
from holomodal.schema import Modality


def _auroc(probs, target):
    return compute_metrics("binary", 2, torch.from_numpy(probs).float(), torch.from_numpy(target))["auroc"]


@pytest.fixture(scope="module")
def members(covid):
    schema = dataclasses.replace(covid.schema, columns=[c for c in covid.schema.columns if c.modality != Modality.IMAGE])
    pre = Preprocessor(schema)
    train, val = covid.split("train"), covid.split("val")
    pre.fit(train)
    tb, _ = pre.transform(train)
    vb, _ = pre.transform(val)
    types = {m: schema.modality_type(m).value if m != "tabular" else "tabular" for m in pre.processors}
    ctx = ModelContext(pre.input_specs, types, pre.num_classes, "binary", list(pre.classes_))
    texts_train, texts_val = {"clinical_notes": train["clinical_notes"].fillna("").tolist()}, {"clinical_notes": val["clinical_notes"].fillna("").tolist()}
    models = [create_method(name, ctx).fit(tb, texts_train) for name in ("gbdt", "linear")]
    return models, vb, texts_val


def _predictions(models, batch, texts, pattern):
    dropped = batch.with_masks(present={m: torch.full((len(batch),), m in pattern) for m in batch.present})
    return [m.probabilities(dropped, texts).numpy() for m in models]


def test_ensemble_is_at_least_its_best_member_on_every_validation_pattern(members):
    models, vb, texts = members
    target = vb.target.numpy()
    patterns = all_patterns(list(vb.present))
    assert patterns[0] == frozenset(vb.present) and len(patterns) == 3
    preds = {p: _predictions(models, vb, texts, p) for p in patterns}
    ens = PatternEnsemble(["gbdt", "linear"], list(vb.present)).fit(preds, target, _auroc)
    for p in patterns:
        scores = ens.scores_[p]
        assert scores["ensemble"] >= max(scores["gbdt"], scores["linear"]) - 1e-12
        assert ens.weights_[p].sum() == pytest.approx(1.0)
    # the weights follow the pattern: without the notes the text model loses weight
    table_only = ens.weights_[frozenset({"tabular"})]
    assert table_only[1] < ens.weights_[patterns[0]][1]
    # rows are combined with their own pattern's weights
    mixed = {m: np.array([True, False] * (len(vb) // 2) + [True] * (len(vb) % 2)) if m == "clinical_notes" else np.ones(len(vb), bool)
             for m in vb.present}
    full = ens.combine(preds[patterns[0]], mixed)
    np.testing.assert_allclose(full[0], sum(w * p[0] for w, p in zip(ens.weights_[patterns[0]], preds[patterns[0]])))
    np.testing.assert_allclose(full[1], sum(w * p[1] for w, p in zip(table_only, preds[patterns[0]])))
    # saved as JSON and read back to the same weights
    again = PatternEnsemble.from_dict(json.loads(json.dumps(ens.to_dict())))
    np.testing.assert_array_equal(again.combine(preds[patterns[0]], mixed), full)


def test_unseen_pattern_uses_the_closest_seen_one():
    ens = PatternEnsemble(["a", "b"], ["image", "tabular", "text"])
    ens.weights_ = {frozenset({"image", "tabular", "text"}): np.array([1.0, 0.0]), frozenset({"tabular"}): np.array([0.0, 1.0])}
    assert ens.weights_for(frozenset({"tabular", "text"})).tolist() == [1.0, 0.0]
    assert ens.weights_for(frozenset({"tabular"})).tolist() == [0.0, 1.0]


def test_greedy_selection_starts_from_the_best_member_and_mixes_when_it_helps():
    rng = np.random.default_rng(0)
    target = rng.integers(0, 2, 400)
    signal = target + rng.normal(0, 1.0, (3, 400))
    preds = [np.stack([1 - s, s], axis=1) for s in 1 / (1 + np.exp(-signal))]
    weights = greedy_selection(preds, target, _auroc, rounds=10)
    assert weights.sum() == pytest.approx(1.0) and (weights > 0).sum() >= 2  # independent errors average out
    best = max(_auroc(p, target) for p in preds)
    assert _auroc(sum(w * p for w, p in zip(weights, preds)), target) > best


def test_method_ensemble_through_classifier(covid, tmp_path):
    """method: ensemble fits its members as runs of their own, weighs them per pattern, and is
    saved as JSON plus the members' model folders: loaded back, the same probabilities."""
    from holomodal.estimator import Classifier
    from test_classical_classifier import assert_no_pickle
    from tiny import small_schema

    schema = small_schema(covid.schema, drop=("image",))
    train, val, test = covid.split("train").iloc[:200], covid.split("val").iloc[:80], covid.split("test").iloc[:80]
    run = tmp_path / "ens"
    model = {"members": [{"method": "gbdt"}, {"method": "linear", "model": {"C": 0.5}}]}
    clf = Classifier(schema, method="ensemble", model=model, run_dir=run, loggers=["csv"]).fit(train, val)
    for name in ("gbdt", "linear"):
        assert (run / "members" / name / "model" / "predictor.json").is_file()
        assert (run / "model" / "members" / name / "predictor.json").is_file()
    scores = json.loads((run / "metrics.json").read_text())["ensemble"]
    assert set(scores) == {"tabular+clinical_notes", "tabular", "clinical_notes"}
    for pattern in scores.values():
        assert pattern["ensemble"] >= max(pattern["gbdt"], pattern["linear"]) - 1e-12
    again = Classifier.load(run / "model")
    drop = [{"kind": "modality", "rate": 0.5, "drop": "clinical_notes"}]
    np.testing.assert_array_equal(again.predict_proba(test, missing=drop), clf.predict_proba(test, missing=drop))
    assert_no_pickle(run / "model")
    # rows without notes lean on the trees: their weights are the table-only pattern's
    table_only = clf.model_.ensemble_.weights_for(frozenset({"tabular"}))
    assert table_only[0] >= clf.model_.ensemble_.weights_for(frozenset({"tabular", "clinical_notes"}))[0]
