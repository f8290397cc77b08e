"""``linear``: TF-IDF of every text column plus the one-hot / standardised table, then
logistic regression (classification) or ridge regression.

A missing cell is an all-zero one-hot block or a zero number, with a missing-indicator
feature beside it; an absent text is an all-zero TF-IDF row. Other modalities (images,
audio, series) are not read. Saved as JSON (vocabularies, options) and safetensors
(weights, IDF): no pickle.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp

from holomodal.batch import Batch
from holomodal.errors import ConfigError
from holomodal.methods import register_method
from holomodal.methods.base import ModelContext
from holomodal.methods.classical.base import ClassicalMethod, tabular_features, texts_of
from holomodal.schema import TABULAR

TFIDF_DEFAULTS = {"ngram_range": [1, 2], "min_df": 2, "max_features": 50_000, "sublinear_tf": True}


@register_method("linear")
class LinearBaseline(ClassicalMethod):
    uses_text = True

    def __init__(self, context: ModelContext, seed: int = 0, C: float = 1.0, alpha: float = 1.0,
                 max_iter: int = 2000, tfidf: dict[str, Any] | None = None) -> None:
        super().__init__(context, seed)
        self.text_columns = [m for m, kind in context.modality_types.items() if kind == "text"]
        if TABULAR not in context.input_specs and not self.text_columns:
            raise ConfigError("method 'linear' reads tabular and text columns and the data has neither")
        self.C, self.alpha, self.max_iter = float(C), float(alpha), int(max_iter)
        self.tfidf = {**TFIDF_DEFAULTS, **(tfidf or {})}
        spec = context.input_specs.get(TABULAR)
        self.cardinalities = list(spec["cardinalities"]) if spec else []
        self.vectorizers_: dict[str, Any] = {}
        self.model_: Any = None

    def _vectorizer(self, vocabulary: dict[str, int] | None = None) -> Any:
        from sklearn.feature_extraction.text import TfidfVectorizer

        options = {**self.tfidf, "ngram_range": tuple(self.tfidf["ngram_range"])}
        if vocabulary is not None:
            options.update(vocabulary=vocabulary, min_df=1, max_features=None)
        return TfidfVectorizer(dtype=np.float32, **options)

    def _table(self, batch: Batch) -> sp.csr_matrix:
        if TABULAR not in batch.inputs:
            return sp.csr_matrix((len(batch), 0))
        from sklearn.preprocessing import OneHotEncoder

        codes, numbers, missing = tabular_features(batch, len(self.cardinalities))
        blocks = [sp.csr_matrix(np.nan_to_num(numbers, nan=0.0)), sp.csr_matrix(missing.astype(np.float64))]
        if self.cardinalities:
            # the categories are the preprocessor's codes, so nothing is learnt here; a missing
            # cell (NaN) is an unknown category: an all-zero block
            encoder = OneHotEncoder(categories=[np.arange(k, dtype=np.float64) for k in self.cardinalities],
                                    handle_unknown="ignore", dtype=np.float64)
            blocks.insert(0, encoder.fit(codes[:1]).transform(codes))
        return sp.hstack(blocks, format="csr")

    def _features(self, batch: Batch, texts: dict[str, list[str]] | None, fit: bool = False) -> sp.csr_matrix:
        blocks = [self._table(batch)]
        for column in self.text_columns:
            docs = texts_of(batch, texts, column)
            if fit:
                vectorizer = self._vectorizer()
                try:
                    blocks.append(vectorizer.fit_transform(docs))
                except ValueError:  # every text blank, or no term in min_df documents
                    vectorizer = self._vectorizer({"[empty]": 0})
                    blocks.append(vectorizer.fit_transform(docs))
                self.vectorizers_[column] = vectorizer
            else:
                blocks.append(self.vectorizers_[column].transform(docs))
        return sp.hstack(blocks, format="csr")

    def fit_arrays(self, batch: Batch, texts: dict[str, list[str]] | None, target: np.ndarray) -> None:
        from sklearn.linear_model import LogisticRegression, Ridge

        x = self._features(batch, texts, fit=True)
        if self.is_regression:
            self.model_ = Ridge(alpha=self.alpha)
        else:
            self.model_ = LogisticRegression(C=self.C, max_iter=self.max_iter, random_state=self.seed)
        self.model_.fit(x, target)

    def predict_arrays(self, batch: Batch, texts: dict[str, list[str]] | None) -> np.ndarray:
        x = self._features(batch, texts)
        if self.is_regression:
            return self.model_.predict(x)
        proba = np.zeros((len(batch), self.context.num_classes))
        proba[:, self.model_.classes_.astype(int)] = self.model_.predict_proba(x)
        return proba

    # ---- persistence -------------------------------------------------------------------
    def config(self) -> dict[str, Any]:
        return {
            "C": self.C, "alpha": self.alpha, "max_iter": self.max_iter, "tfidf": self.tfidf,
            "vocabularies": {c: {t: int(i) for t, i in v.vocabulary_.items()} for c, v in self.vectorizers_.items()},
            "classes": None if self.is_regression else self.model_.classes_.tolist(),
        }

    def arrays(self) -> dict[str, np.ndarray]:
        out = {"coef": np.asarray(self.model_.coef_, dtype=np.float64),
               "intercept": np.atleast_1d(np.asarray(self.model_.intercept_, dtype=np.float64))}
        out.update({f"idf.{c}": v.idf_.astype(np.float64) for c, v in self.vectorizers_.items()})
        return out

    def restore(self, config: dict[str, Any], arrays: dict[str, np.ndarray], folder: Path) -> None:
        from sklearn.linear_model import LogisticRegression, Ridge

        self.C, self.alpha, self.max_iter, self.tfidf = config["C"], config["alpha"], config["max_iter"], config["tfidf"]
        self.vectorizers_ = {}
        for column, vocabulary in config["vocabularies"].items():
            vectorizer = self._vectorizer(vocabulary)
            vectorizer.idf_ = arrays[f"idf.{column}"]
            self.vectorizers_[column] = vectorizer
        self.model_ = Ridge(alpha=self.alpha) if self.is_regression else LogisticRegression(C=self.C)
        self.model_.coef_ = arrays["coef"]
        self.model_.intercept_ = arrays["intercept"] if not self.is_regression or arrays["coef"].ndim > 1 else float(arrays["intercept"][0])
        if config["classes"] is not None:
            self.model_.classes_ = np.asarray(config["classes"])
