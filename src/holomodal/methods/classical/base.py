"""What the scikit-learn baselines share: features from a masked batch, save and load."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

from holomodal.batch import Batch
from holomodal.errors import DataError
from holomodal.methods.base import REGRESSION, ModelContext
from holomodal.schema import TABULAR, Modality, Schema


def is_classical(method: Any) -> bool:
    return isinstance(method, ClassicalMethod) or (isinstance(method, type) and issubclass(method, ClassicalMethod))


def tabular_features(batch: Batch, n_categorical: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(categorical codes, standardised numbers, missing mask) with NaN where a cell is missing."""
    tab = batch.inputs[TABULAR]
    missing = batch.cell_missing.numpy()
    codes = tab["categorical"].numpy().astype(np.float64)
    numbers = tab["continuous"].numpy().astype(np.float64)
    codes[missing[:, :n_categorical]] = np.nan
    numbers[missing[:, n_categorical:]] = np.nan
    return codes, numbers, missing


def raw_texts(schema: Schema, frame: Any) -> dict[str, list[str]]:
    """The raw text of every text column of ``schema`` that ``frame`` holds ('' where blank)."""
    return {c.name: [v if isinstance(v, str) else "" for v in frame[c.name].tolist()]
            for c in schema.of(Modality.TEXT) if c.name in frame.columns}


def texts_of(batch: Batch, texts: dict[str, list[str]] | None, column: str) -> list[str]:
    """The raw text of a column, blank where the batch says the modality is absent (so a
    synthetic modality drop reaches the baseline as it reaches the deep models)."""
    if texts is None or column not in texts:
        raise DataError(f"the linear baseline needs the raw text of column '{column}'")
    present = batch.present[column].numpy()
    return [t if ok else "" for t, ok in zip(texts[column], present)]


class ClassicalMethod:
    """A scikit-learn model fitted on a whole encoded split at once.

    Subclasses implement :meth:`fit_arrays`, :meth:`predict_arrays`, :meth:`arrays` /
    :meth:`config` (what is saved) and :meth:`restore`.
    """

    is_classical = True
    # fitted by Classifier in one call on the whole split, without a Lightning trainer
    fits_directly = True
    uses_text = False

    def __init__(self, context: ModelContext, seed: int = 0) -> None:
        self.context = context
        self.task = context.task
        self.seed = seed

    @property
    def is_regression(self) -> bool:
        return self.task == REGRESSION

    @classmethod
    def resolve_options(cls, context: ModelContext, options: dict[str, Any]) -> dict[str, Any]:
        return dict(options)

    def fit(self, batch: Batch, texts: dict[str, list[str]] | None = None) -> "ClassicalMethod":
        self.fit_arrays(batch, texts, batch.target.numpy())
        return self

    def probabilities(self, batch: Batch, texts: dict[str, list[str]] | None = None) -> torch.Tensor:
        """Class probabilities (rows x classes), or predicted values (rows x 1) for regression."""
        out = np.asarray(self.predict_arrays(batch, texts), dtype=np.float32)
        return torch.from_numpy(out.reshape(len(batch), -1))

    # ---- persistence: JSON + safetensors (+ skops for trees), never pickle -------------
    def save(self, folder: Path) -> None:
        from safetensors.numpy import save_file

        folder.mkdir(parents=True, exist_ok=True)
        (folder / "classical.json").write_text(json.dumps(self.config(), indent=2))
        save_file({k: np.ascontiguousarray(v) for k, v in self.arrays().items()}, str(folder / "classical.safetensors"))

    def load(self, folder: Path) -> "ClassicalMethod":
        from safetensors.numpy import load_file

        try:
            config = json.loads((folder / "classical.json").read_text())
            arrays = load_file(str(folder / "classical.safetensors"))
        except (OSError, ValueError) as exc:
            raise DataError(f"damaged file in '{folder}': {exc}") from None
        self.restore(config, arrays, folder)
        return self

    # ---- to implement ------------------------------------------------------------------
    def fit_arrays(self, batch: Batch, texts: dict[str, list[str]] | None, target: np.ndarray) -> None:
        raise NotImplementedError

    def predict_arrays(self, batch: Batch, texts: dict[str, list[str]] | None) -> np.ndarray:
        raise NotImplementedError

    def config(self) -> dict[str, Any]:
        return {}

    def arrays(self) -> dict[str, np.ndarray]:
        return {}

    def restore(self, config: dict[str, Any], arrays: dict[str, np.ndarray], folder: Path) -> None:
        raise NotImplementedError
