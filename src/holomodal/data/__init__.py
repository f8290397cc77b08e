"""Loaders for the real data sets: each returns a table, its Schema and deterministic splits.

>>> from holomodal.data import load_dataset
>>> bundle = load_dataset("covid_cxr", target="survival")   # root: argument, $HOLOMODAL_DATA, ../shared/data
>>> train = bundle.split("train")
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from holomodal.data._registry import (
    DatasetBundle,
    check_options,
    dataset_folders,
    get_loader,
    list_datasets,
    register_dataset,
)
from holomodal.data.paths import cache_dir, resolve_data_root


def load_dataset(name: str, root: str | Path | None = None, **options: Any) -> DatasetBundle:
    """Load a registered data set; ``options`` are the loader's keyword options (e.g. ``seed``)."""
    loader = get_loader(name)
    check_options(name, loader, options)
    base = resolve_data_root(root, dataset_folders(name))
    return loader(base, **options)


# imported for their registration side effect, after the names they import exist
from holomodal.data import av_digits, coco_mini, covid_cxr, emoji, mnist5k, physionet2012  # noqa: E402,F401

__all__ = [
    "DatasetBundle", "cache_dir", "list_datasets", "load_dataset", "register_dataset", "resolve_data_root",
]
