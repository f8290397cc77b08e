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
from holomodal.preprocessing.image_cache import CACHE_ENV, ImageCache, cache_root, file_key
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

    def _path(self, value: Any) -> Path | None:
        """The file a cell names (relative paths under the column's ``root``), or None."""
        if value is None or isinstance(value, np.ndarray) or (isinstance(value, float) and np.isnan(value)):
            return None
        path = Path(value)
        root = self.column.options.get("root")
        return Path(root) / path if root and not path.is_absolute() else path

    def _load_one(self, value: Any) -> np.ndarray | None:
        """uint8 (C, S, S), or None when the cell is empty."""
        if value is None or (isinstance(value, float) and np.isnan(value)):
            return None
        if isinstance(value, np.ndarray):
            img = Image.fromarray(np.asarray(value, dtype=np.uint8))
        else:
            with Image.open(self._path(value)) as opened:
                img = opened.convert("L" if self.channels == 1 else "RGB")
        img = img.convert("L" if self.channels == 1 else "RGB")
        if img.size != (self.size, self.size):
            img = ImageOps.fit(img, (self.size, self.size), Image.Resampling.BILINEAR)
        arr = np.asarray(img, dtype=np.uint8)
        return arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)

    # ---- the pre-decoded cache (holomodal data cache) ------------------------------------------
    def _cache(self) -> ImageCache | None:
        root = cache_root()
        if root is None or self.column.options.get("cache") is False:
            return None
        cache = ImageCache(root, self.channels, self.size)
        return cache if (cache.folder / "index.json").exists() else None

    def build_cache(self, df: pd.DataFrame, progress: Any = None) -> dict[str, int]:
        """Decode this column's files in ``df`` into the cache (those not cached yet)."""
        root = cache_root()
        if root is None:
            raise DataError(f"the image cache is switched off (${CACHE_ENV}); set it to a folder to build one")
        paths = [p for p in map(self._path, df[self.column.name].tolist()) if p is not None]
        return ImageCache(root, self.channels, self.size).add(paths, self._load_one, progress)

    def _load_checked(self, item: tuple[int, Any]) -> tuple[np.ndarray | None, str | None]:
        row, value = item
        try:
            return self._load_one(value), None
        except Exception as exc:  # PIL raises many types for broken files
            return None, f"row {row}: cannot read image '{value}' in column '{self.column.name}' ({exc.__class__.__name__}: {exc})"

    def decode(self, df: pd.DataFrame, summary: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
        values = df[self.column.name].tolist()
        pixels = np.zeros((len(values), self.channels, self.size, self.size), dtype=np.uint8)
        present = np.zeros(len(values), dtype=bool)
        todo = list(range(len(values)))
        cache = self._cache()
        if cache is not None:
            paths = [self._path(v) for v in values]
            rows, found = cache.lookup([file_key(p) if p is not None else None for p in paths])
            if found.any():
                pixels[found] = cache.gather(rows[found])
                present[found] = True
                todo = np.flatnonzero(~found).tolist()
                summary.setdefault("cached_images", {})[self.column.name] = int(found.sum())
        index = df.index.tolist()
        with ThreadPoolExecutor(max_workers=4) as pool:
            results = dict(zip(todo, pool.map(self._load_checked, [(index[i], values[i]) for i in todo])))
        failures = []
        for i, (arr, error) in results.items():
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
