"""``gbdt``: scikit-learn's histogram gradient boosting on the tabular columns.

Missing cells stay NaN (the trees learn which side missing values go), categorical
columns are native categorical features, and other modalities are not read. Saved in
skops' format, loaded with a fixed list of trusted types: no pickle, no code execution.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from holomodal.batch import Batch
from holomodal.errors import ConfigError, DataError
from holomodal.methods import register_method
from holomodal.methods.base import ModelContext
from holomodal.methods.classical.base import ClassicalMethod, tabular_features
from holomodal.schema import TABULAR

# histogram gradient boosting bins a categorical feature into at most 255 categories
MAX_NATIVE_CATEGORIES = 254
MODEL_FILE = "gbdt.skops"
# the only types a saved model may hold beyond skops' defaults; anything else is refused
TRUSTED_TYPES = [
    "functools.partial",
    "sklearn.ensemble._hist_gradient_boosting.predictor.TreePredictor",
    "sklearn.utils.validation.check_array",
]


@register_method("gbdt")
class GradientBoosting(ClassicalMethod):
    def __init__(self, context: ModelContext, seed: int = 0, **options: Any) -> None:
        super().__init__(context, seed)
        if TABULAR not in context.input_specs:
            raise ConfigError("method 'gbdt' reads tabular columns and the data has none: use 'linear' or a deep method")
        self.options = {"random_state": seed, **options}
        spec = context.input_specs[TABULAR]
        self.n_categorical = len(spec["cardinalities"])
        self.native = [j for j, k in enumerate(spec["cardinalities"]) if k <= MAX_NATIVE_CATEGORIES]
        self.model_: Any = None
        self.kept: list[int] | None = None  # the columns with a value in some training row
        self._estimator()  # an unknown or invalid option fails here, before any run folder is made

    def _estimator(self) -> Any:
        from sklearn.ensemble import HistGradientBoostingClassifier, HistGradientBoostingRegressor

        kind = HistGradientBoostingRegressor if self.is_regression else HistGradientBoostingClassifier
        try:
            native = self.native if self.kept is None else [i for i, j in enumerate(self.kept) if j in self.native]
            estimator = kind(categorical_features=native or None, **self.options)
            check = getattr(estimator, "_validate_params", None)  # scikit-learn >= 1.2
            if check is not None:
                check()
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"method 'gbdt' ({kind.__name__}): {exc}") from None
        return estimator

    def _matrix(self, batch: Batch) -> np.ndarray:
        codes, numbers, _ = tabular_features(batch, self.n_categorical)
        x = np.concatenate([codes, numbers], axis=1)
        return x if self.kept is None else x[:, self.kept]

    def fit_arrays(self, batch: Batch, texts: Any, target: np.ndarray) -> None:
        self.kept = None
        x = self._matrix(batch)
        # a column missing in every training row carries nothing, and scikit-learn cannot bin it
        self.kept = np.flatnonzero(~np.isnan(x).all(axis=0)).tolist()
        if not self.kept:
            raise DataError("method 'gbdt': every tabular cell of the training table is missing")
        self.model_ = self._estimator()
        self.model_.fit(x[:, self.kept], target)

    def predict_arrays(self, batch: Batch, texts: Any) -> np.ndarray:
        x = self._matrix(batch)
        if self.is_regression:
            return self.model_.predict(x)
        proba = np.zeros((len(x), self.context.num_classes))
        proba[:, self.model_.classes_.astype(int)] = self.model_.predict_proba(x)
        return proba

    def config(self) -> dict[str, Any]:
        return {"options": self.options, "native": self.native, "kept": self.kept}

    def save(self, folder: Path) -> None:
        import skops.io as sio

        super().save(folder)
        sio.dump(self.model_, folder / MODEL_FILE)

    def restore(self, config: dict[str, Any], arrays: dict[str, np.ndarray], folder: Path) -> None:
        import skops.io as sio

        path = folder / MODEL_FILE
        try:
            untrusted = set(sio.get_untrusted_types(file=path))
        except Exception as exc:  # a damaged zip raises zipfile/json errors of several types
            raise DataError(f"damaged file {path}: {exc}") from None
        if not untrusted <= set(TRUSTED_TYPES):
            raise DataError(f"refusing to load {path}: it holds types a gbdt model never holds {sorted(untrusted - set(TRUSTED_TYPES))}")
        self.model_ = sio.load(path, trusted=TRUSTED_TYPES)
        self.options, self.native, self.kept = config["options"], config["native"], config.get("kept")
