"""Bundled real data sets: each loader returns a DataFrame, its Schema and deterministic splits."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pandas as pd

from holomodal._registry import Registry
from holomodal.data.paths import cache_dir, resolve_data_root
from holomodal.schema import Schema

DATASETS = Registry("data set")
list_datasets = DATASETS.list


@dataclass
class DatasetBundle:
    name: str
    frame: pd.DataFrame
    schema: Schema
    splits: dict[str, np.ndarray]

    def split(self, name: str) -> pd.DataFrame:
        return self.frame.iloc[self.splits[name]].reset_index(drop=True)


def register_dataset(name: str, folder: str | None = None) -> Callable:
    """Register ``fn(root: Path, **options) -> DatasetBundle``; ``folder`` is the sub-folder
    of the data root it needs (default: the name)."""

    def decorator(fn: Callable[..., DatasetBundle]) -> Callable[..., DatasetBundle]:
        fn.data_folder = folder or name  # type: ignore[attr-defined]
        return DATASETS.register(name)(fn)

    return decorator


def load_dataset(name: str, root: str | Path | None = None, **options: Any) -> DatasetBundle:
    loader = DATASETS.get(name)
    base = resolve_data_root(root, loader.data_folder)
    bundle = loader(base, **options)
    for split, rows in bundle.splits.items():
        bundle.schema.validate(bundle.frame.iloc[rows], require_label=split != "unlabelled")
    return bundle


from holomodal.data import av_digits, coco_mini, covid_cxr, mnist5k, physionet2012  # noqa: E402,F401

__all__ = ["DatasetBundle", "cache_dir", "list_datasets", "load_dataset", "register_dataset", "resolve_data_root"]
