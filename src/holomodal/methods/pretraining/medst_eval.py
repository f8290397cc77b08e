"""Downstream evaluations of a MedST pre-training run (spec ``dcp_i2m2_medst.md`` 3.6), on a
table of image rows like the one pre-training read:

* :func:`encode_rows`: per row the frozen frontal-view features (the 768-d CLS before the
  projection, as MedST's linear probes use, and the 128-d global embedding) and the report's
  global embedding;
* :func:`linear_probe`: a logistic regression on the CLS features at fractions of the training
  labels (MedST's COVIDx protocol, with scikit-learn's solver in place of a trained Linear);
* :func:`zero_shot`: classes from prompts, by the cosine of each image with each class's
  averaged prompt embedding (MedST's RSNA protocol, for any number of classes), scored on
  probabilities, not on hard predictions (the original's AUROC on hard labels is a pitfall);
* :func:`temporal_order`: which of two studies of one patient is later, a logistic regression
  on the pair's concatenated global embeddings trained on some patients and scored on others
  (the temporal signal, in the spirit of MS-CXR-T's [current; previous] probe).
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from holomodal.errors import DataError
from holomodal.methods.pretraining.medst import MedSTPretraining


def _study_frame(module: MedSTPretraining, frame: pd.DataFrame) -> pd.DataFrame:
    """``frame`` with the study-level columns the run's preprocessing wants: downstream
    reads the frontal view alone, so the lateral column is empty."""
    out = frame.reset_index(drop=True).copy()
    out[module.lateral] = np.nan
    return out


@torch.no_grad()
def encode_rows(module: MedSTPretraining, preprocessor: Any, frame: pd.DataFrame, *, batch_size: int = 64) -> dict[str, np.ndarray]:
    """``cls`` (N, width), ``image`` (N, 128) and ``text`` (N, 128) L2-normalised global
    embeddings, and ``image_present`` / ``text_present`` (N,) of the rows of ``frame``."""
    batch, _ = preprocessor.transform(_study_frame(module, frame), with_target=False)
    module.eval()
    parts: dict[str, list[torch.Tensor]] = {"cls": [], "image": [], "text": []}
    for start in range(0, len(batch), batch_size):
        part = batch.select(list(range(start, min(start + batch_size, len(batch)))))
        cls, _, _ = module.image_encoder(module.pixels(part, module.frontal))
        report, _, _ = module.encode_reports(part)
        parts["cls"].append(cls)
        parts["image"].append(F.normalize(module.image_global(cls), dim=-1))
        parts["text"].append(F.normalize(module.text_global(report), dim=-1))
    out = {k: torch.cat(v).float().numpy() for k, v in parts.items()}
    out["image_present"] = batch.present[module.frontal].numpy()
    out["text_present"] = batch.present[module.text].numpy()
    return out


def linear_probe(train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray, test_y: np.ndarray, *,
                 fraction: float = 1.0, seed: int = 0) -> dict[str, float]:
    """Accuracy (and balanced accuracy) of a logistic regression on standardised features
    fitted on ``fraction`` of the training rows (drawn with ``seed``, at least one per class)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import accuracy_score, balanced_accuracy_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    rows = subset_rows(train_y, fraction, seed)
    probe = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000, C=1.0))
    probe.fit(train_x[rows], train_y[rows])
    predicted = probe.predict(test_x)
    return {"accuracy": float(accuracy_score(test_y, predicted)),
            "balanced_accuracy": float(balanced_accuracy_score(test_y, predicted)), "train_rows": int(len(rows))}


def subset_rows(labels: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """``fraction`` of the rows at random, plus one row of every class the draw missed."""
    if not 0 < fraction <= 1:
        raise DataError(f"a label fraction must be in (0, 1], not {fraction}")
    rng = np.random.default_rng(seed)
    n = max(int(round(len(labels) * fraction)), 1)
    rows = set(rng.permutation(len(labels))[:n].tolist())
    for value in np.unique(labels):
        if not any(labels[r] == value for r in rows):
            rows.add(int(rng.choice(np.flatnonzero(labels == value))))
    return np.array(sorted(rows))


@torch.no_grad()
def zero_shot(module: MedSTPretraining, preprocessor: Any, frame: pd.DataFrame,
              prompts: dict[str, Sequence[str]]) -> tuple[list[str], np.ndarray]:
    """(the class names, (N, classes) softmax over the cosines at MedST's global
    temperature) for the images of ``frame``; each class's prompt embeddings are averaged
    unnormalised, then L2-normalised, as MedST does."""
    if len(prompts) < 2 or any(not p for p in prompts.values()):
        raise DataError("zero-shot classification needs at least two classes, each with at least one prompt")
    names = list(prompts)
    text_col = module.text
    rows = [{text_col: p} for name in names for p in prompts[name]]
    prompt_frame = pd.DataFrame(rows)
    for col in preprocessor.schema.columns:
        if col.name not in prompt_frame.columns and col.modality.value != "label":
            prompt_frame[col.name] = np.nan
    prompt_frame = prompt_frame.astype({text_col: object})
    batch, _ = preprocessor.transform(prompt_frame, with_target=False)
    report, _, _ = module.encode_reports(batch)
    text = module.text_global(report)
    owner = np.repeat(np.arange(len(names)), [len(prompts[n]) for n in names])
    classes = torch.stack([text[torch.as_tensor(owner == i)].mean(0) for i in range(len(names))])
    classes = F.normalize(classes, dim=-1)
    image = torch.from_numpy(encode_rows(module, preprocessor, frame)["image"])
    logits = image @ classes.T / module.global_loss.temperature
    return names, logits.softmax(dim=1).numpy()


def study_pairs(frame: pd.DataFrame, group: str, time: str) -> np.ndarray:
    """(row a, row b, 1 if b is later) for every two rows of a group at different times,
    both orders, so a probe cannot win by always answering "later"."""
    pairs = []
    days = pd.to_numeric(frame[time], errors="coerce").to_numpy()
    for _, rows in frame.reset_index(drop=True).groupby(group, sort=True).indices.items():
        for i_pos, a in enumerate(rows):
            for b in rows[i_pos + 1:]:
                if np.isnan(days[a]) or np.isnan(days[b]) or days[a] == days[b]:
                    continue
                later = int(days[b] > days[a])
                pairs += [(a, b, later), (b, a, 1 - later)]
    return np.array(pairs, dtype=np.int64).reshape(-1, 3)


def temporal_order(train_embeddings: np.ndarray, train_pairs: np.ndarray, test_embeddings: np.ndarray,
                   test_pairs: np.ndarray) -> dict[str, float]:
    """Accuracy of telling which of two studies is later from [a ; b] global embeddings."""
    from sklearn.linear_model import LogisticRegression

    if len(train_pairs) == 0 or len(test_pairs) == 0 or len(np.unique(train_pairs[:, 2])) < 2:
        raise DataError("temporal order needs pairs of studies at different times in both the training and test rows")

    def features(emb: np.ndarray, pairs: np.ndarray) -> np.ndarray:
        return np.concatenate([emb[pairs[:, 0]], emb[pairs[:, 1]]], axis=1)

    probe = LogisticRegression(max_iter=2000).fit(features(train_embeddings, train_pairs), train_pairs[:, 2])
    predicted = probe.predict(features(test_embeddings, test_pairs))
    return {"accuracy": float((predicted == test_pairs[:, 2]).mean()), "test_pairs": int(len(test_pairs))}
