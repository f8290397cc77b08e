"""Image columns: decoded once to fixed-size uint8 tensors; normalisation lives in the encoder.

Decoding and resizing every image once, at materialisation, replaces per-sample decoding
in every epoch; augmentation then runs on whole batches of tensors (see
:mod:`holomodal.augment`).
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from PIL import Image, ImageOps

from holomodal.errors import DataError
from holomodal.schema import Column


class ImageProcessor:
    def __init__(self, column: Column, on_unreadable: str = "error") -> None:
        self.column = column
        self.channels = int(column.options.get("channels", 3))
        self.size = int(column.options.get("size", 128))
        self.normalize = column.options.get("normalize", "dataset")
        self.on_unreadable = on_unreadable
        self.mean_: list[float] = [0.0] * self.channels
        self.std_: list[float] = [1.0] * self.channels

    def _load_one(self, value: Any) -> np.ndarray | None:
        """uint8 (C, S, S), or None when the cell is empty."""
        if value is None or (isinstance(value, float) and np.isnan(value)):
            return None
        if isinstance(value, np.ndarray):
            img = Image.fromarray(np.asarray(value, dtype=np.uint8))
        else:
            path = Path(value)
            root = self.column.options.get("root")
            if root and not path.is_absolute():
                path = Path(root) / path
            with Image.open(path) as opened:
                img = opened.convert("L" if self.channels == 1 else "RGB")
        img = img.convert("L" if self.channels == 1 else "RGB")
        if img.size != (self.size, self.size):
            img = ImageOps.fit(img, (self.size, self.size), Image.Resampling.BILINEAR)
        arr = np.asarray(img, dtype=np.uint8)
        return arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)

    def _load_checked(self, item: tuple[int, Any]) -> tuple[np.ndarray | None, str | None]:
        row, value = item
        try:
            return self._load_one(value), None
        except Exception as exc:  # PIL raises many types for broken files
            return None, f"row {row}: cannot read image '{value}' in column '{self.column.name}' ({exc.__class__.__name__}: {exc})"

    def decode(self, df: pd.DataFrame, summary: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
        values = df[self.column.name].tolist()
        with ThreadPoolExecutor(max_workers=4) as pool:
            results = list(pool.map(self._load_checked, zip(df.index.tolist(), values)))
        pixels = np.zeros((len(values), self.channels, self.size, self.size), dtype=np.uint8)
        present = np.zeros(len(values), dtype=bool)
        failures = []
        for i, (arr, error) in enumerate(results):
            if error:
                failures.append(error)
            elif arr is not None:
                pixels[i], present[i] = arr, True
        if failures and self.on_unreadable == "error":
            more = f" (and {len(failures) - 1} more)" if len(failures) > 1 else ""
            raise DataError(failures[0] + more + "; set the schema's on_unreadable: missing to treat such files as a missing modality")
        if failures:
            summary.setdefault("unreadable_files", {})[self.column.name] = len(failures)
        return torch.from_numpy(pixels), torch.from_numpy(present)

    def fit(self, df: pd.DataFrame) -> "ImageProcessor":
        if self.normalize == "imagenet":
            from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD

            self.mean_ = list(IMAGENET_DEFAULT_MEAN[: self.channels]) if self.channels == 3 else [0.449]
            self.std_ = list(IMAGENET_DEFAULT_STD[: self.channels]) if self.channels == 3 else [0.226]
        elif self.normalize == "dataset":
            pixels, present = self.decode(df, {})
            seen = pixels[present].float() / 255.0
            if len(seen):
                self.mean_ = seen.mean(dim=(0, 2, 3)).tolist()
                self.std_ = seen.std(dim=(0, 2, 3)).clamp_min(1e-3).tolist()
        return self

    def transform(self, df: pd.DataFrame, summary: dict[str, Any]) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        pixels, present = self.decode(df, summary)
        return {"pixels": pixels}, present

    def spec(self) -> dict[str, Any]:
        return {"channels": self.channels, "size": self.size, "mean": self.mean_, "std": self.std_}

    def state(self) -> dict[str, Any]:
        return {"mean": self.mean_, "std": self.std_}

    def load_state(self, state: dict[str, Any]) -> None:
        self.mean_, self.std_ = state["mean"], state["std"]
