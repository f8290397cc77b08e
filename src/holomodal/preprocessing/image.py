"""Image columns: decoded once to fixed-size uint8 tensors; normalisation lives in the encoder.

Decoding and resizing every image once, at materialisation, replaces per-sample decoding
in every epoch; augmentation then runs on whole batches of tensors (see
:mod:`holomodal.augment`).
"""

from __future__ import annotations

import warnings
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pandas as pd
import torch
from PIL import Image, ImageOps

from holomodal.errors import DataError
from holomodal.preprocessing.files import UnreadableFile, open_regular, resolve_files
from holomodal.preprocessing.image_cache import CACHE_ENV, ImageCache, cache_root
from holomodal.schema import Column


@contextmanager
def _quiet_pil_size_warning() -> Iterator[None]:
    """PIL warns on opening a file above its own pixel limit; the size check that follows the
    open refuses such a file with a message instead. The filter is process-wide (worker
    threads read the same list), so it is set once around a whole decoding pass."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        yield


class ImageProcessor:
    """An image column. Cells name files (see :mod:`holomodal.preprocessing.files` for
    ``root``, ``allow_outside_root`` and the regular-file check) or, with ``source: array``,
    hold pixel arrays. A file above ``max_image_pixels`` (width x height, read from its header)
    is refused before it is decoded and counts as unreadable."""

    def __init__(self, column: Column, on_unreadable: str = "error", allow_outside_root: bool = False,
                 max_image_pixels: int = 50_000_000) -> None:
        self.column = column
        self.channels = int(column.options.get("channels", 3))
        self.size = int(column.options.get("size", 128))
        self.normalize = column.options.get("normalize", "dataset")
        self.on_unreadable = on_unreadable
        self.allow_outside_root = allow_outside_root
        self.max_image_pixels = int(max_image_pixels)
        self.mean_: list[float] = [0.0] * self.channels
        self.std_: list[float] = [1.0] * self.channels

    def _paths(self, df: pd.DataFrame) -> list[Path | None]:
        return resolve_files(self.column, df[self.column.name].tolist(), df.index.tolist(), self.allow_outside_root)

    def _fitted(self, img: Image.Image) -> np.ndarray:
        """uint8 (C, S, S) of a decoded image."""
        if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
            # transparent pixels keep whatever colour lies under alpha 0 (black in most PNGs);
            # laid on white, they look as a viewer shows them
            rgba = img.convert("RGBA")
            img = Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba)
        img = img.convert("L" if self.channels == 1 else "RGB")
        if img.size != (self.size, self.size):
            img = ImageOps.fit(img, (self.size, self.size), Image.Resampling.BILINEAR)
        arr = np.asarray(img, dtype=np.uint8)
        return arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)

    def _read_file(self, path: Path) -> np.ndarray:
        """A regular file's pixels; its size is checked on the header, before any decoding."""
        with open_regular(path) as fh:
            try:
                opened = Image.open(fh)
            except Image.DecompressionBombError:  # PIL's own limit, beyond which it will not even open a file
                raise UnreadableFile(f"more than {2 * Image.MAX_IMAGE_PIXELS} pixels, which PIL refuses to open; "
                                     f"the schema's max_image_pixels is {self.max_image_pixels}") from None
            with opened:
                width, height = opened.size
                if width * height > self.max_image_pixels:
                    raise UnreadableFile(f"{width} x {height} = {width * height} pixels, more than the schema's "
                                         f"max_image_pixels of {self.max_image_pixels}")
                return self._fitted(opened)

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
        paths = [p for p in self._paths(df) if p is not None]
        with _quiet_pil_size_warning():
            return ImageCache(root, self.channels, self.size).add(paths, self._read_file, progress)

    def _load_checked(self, item: tuple[Any, Any, Path | None]) -> tuple[np.ndarray | None, str | None]:
        row, value, path = item
        try:
            if isinstance(value, np.ndarray):
                return self._fitted(Image.fromarray(np.asarray(value, dtype=np.uint8))), None
            return (self._read_file(path) if path is not None else None), None
        except UnreadableFile as exc:
            reason = str(exc)
        except Exception as exc:  # PIL raises many types for broken files
            reason = f"{exc.__class__.__name__}: {exc}"
        return None, f"row {row}: cannot read image '{value}' in column '{self.column.name}' ({reason})"

    def decode(self, df: pd.DataFrame, summary: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
        values = df[self.column.name].tolist()
        paths = self._paths(df)
        pixels = np.zeros((len(values), self.channels, self.size, self.size), dtype=np.uint8)
        present = np.zeros(len(values), dtype=bool)
        cache = self._cache()
        todo = list(range(len(values))) if cache is None else cache.fill(paths, pixels, present)
        if present.any():
            summary.setdefault("cached_images", {})[self.column.name] = int(present.sum())
        index = df.index.tolist()
        with ThreadPoolExecutor(max_workers=4) as pool, _quiet_pil_size_warning():
            results = dict(zip(todo, pool.map(self._load_checked, [(index[i], values[i], paths[i]) for i in todo])))
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
        elif self.normalize == "clip":  # the statistics CLIP was trained with
            from holomodal.backbones.clip import CLIP_MEAN, CLIP_STD

            self.mean_, self.std_ = list(CLIP_MEAN), list(CLIP_STD)
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
