"""The data-set registry, the bundle every loader returns, and helpers the loaders share.

Kept apart from ``holomodal.data.__init__`` so that loader modules can import it without a
circular import while ``__init__`` imports every loader to register it.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np
import pandas as pd

from holomodal._registry import Registry
from holomodal.errors import ConfigError
from holomodal.schema import Schema

Loader = Callable[..., "DatasetBundle"]

# rows of these splits have no label (e.g. covid_cxr findings still marked "todo"); they
# exist for self-supervised pre-training and are never train/val/test rows
UNLABELLED_SPLITS = ("unlabelled",)

DATASETS = Registry("data set")
_FOLDERS: dict[str, tuple[str, ...]] = {}


@dataclass
class DatasetBundle:
    """A loaded data set: one row per sample, its schema and fixed row positions per split."""

    name: str
    frame: pd.DataFrame
    schema: Schema
    splits: dict[str, np.ndarray]

    def split(self, name: str) -> pd.DataFrame:
        if name not in self.splits:
            raise ConfigError(
                f"data set '{self.name}' has no split '{name}' (splits: {', '.join(self.splits)})"
            )
        return self.frame.iloc[self.splits[name]].reset_index(drop=True)


def register_dataset(name: str, *, folders: Sequence[str] | None = None) -> Callable[[Loader], Loader]:
    """Register ``loader(root: Path, **options) -> DatasetBundle`` under ``name``.

    ``root`` is the data root; ``folders`` are the sub-folders the loader reads (default:
    the name), checked before the loader runs so a missing copy gives one clear error.
    """

    def decorator(loader: Loader) -> Loader:
        DATASETS.register(name)(loader)
        _FOLDERS[name] = tuple(folders) if folders else (name,)
        return loader

    return decorator


def list_datasets() -> list[str]:
    return DATASETS.list()


def get_loader(name: str) -> Loader:
    return DATASETS.get(name)


def dataset_folders(name: str) -> tuple[str, ...]:
    DATASETS.get(name)
    return _FOLDERS[name]


def check_options(name: str, loader: Loader, options: Mapping[str, Any]) -> None:
    """Reject unknown loader options by name instead of a TypeError from deep inside."""
    params = list(inspect.signature(loader).parameters.values())[1:]
    if any(p.kind == p.VAR_KEYWORD for p in params):
        return
    known = [p.name for p in params]
    unknown = sorted(set(options) - set(known))
    if unknown:
        raise ConfigError(
            f"data set '{name}' has no option(s) {', '.join(repr(u) for u in unknown)} "
            f"(options: {', '.join(known) or 'none'})"
        )


def choice(dataset: str, option: str, value: Any, allowed: Iterable[Any]) -> Any:
    allowed = list(allowed)
    if value not in allowed:
        raise ConfigError(
            f"data set '{dataset}': option {option}={value!r} is not one of {', '.join(repr(a) for a in allowed)}"
        )
    return value


def stratified_split(labels: np.ndarray, fractions: Mapping[str, float], seed: int) -> dict[str, np.ndarray]:
    """Seeded split whose class proportions match in every part.

    Each class is shuffled and cut at the rounded cumulative fractions, so the part sizes
    of a class differ from the exact share by less than one row.
    """
    labels = np.asarray(labels)
    names = list(fractions)
    bounds = np.cumsum([fractions[n] for n in names])
    if not np.isclose(bounds[-1], 1.0):
        raise ValueError(f"split fractions must sum to 1, not {bounds[-1]}")
    rng = np.random.default_rng(seed)
    parts: dict[str, list[np.ndarray]] = {n: [] for n in names}
    for cls in np.unique(labels):
        rows = rng.permutation(np.flatnonzero(labels == cls))
        cuts = np.concatenate([[0], np.round(bounds * len(rows)).astype(np.int64)])
        for name, lo, hi in zip(names, cuts[:-1], cuts[1:]):
            parts[name].append(rows[lo:hi])
    return {n: np.sort(np.concatenate(p)).astype(np.int64) for n, p in parts.items()}


def object_cells(values: Iterable[Any]) -> np.ndarray:
    """A 1-D object array holding one array per cell.

    Filled cell by cell because numpy and pandas read a list of equal-shaped arrays as
    one bigger array instead of one object per row.
    """
    values = list(values)
    cells = np.empty(len(values), dtype=object)
    for i, value in enumerate(values):
        cells[i] = value
    return cells


def make_bundle(name: str, frame: pd.DataFrame, schema: Schema, splits: Mapping[str, Any]) -> DatasetBundle:
    """Normalise the splits, check they are disjoint and in range, validate the table."""
    frame = frame.reset_index(drop=True)
    rows = {k: np.sort(np.asarray(v, dtype=np.int64)) for k, v in splits.items()}
    seen = np.zeros(len(frame), dtype=np.int64)
    for k, v in rows.items():
        if v.size and (v[0] < 0 or v[-1] >= len(frame)):
            raise AssertionError(f"{name}: split '{k}' holds row positions outside the table")
        np.add.at(seen, v, 1)
    if (seen > 1).any():
        raise AssertionError(f"{name}: {int((seen > 1).sum())} row(s) are in more than one split")
    labelled = [k for k in rows if k not in UNLABELLED_SPLITS]
    if len(labelled) == len(rows):
        schema.validate(frame)
    else:
        # the table as a whole may hold unlabelled rows; every labelled split must not
        schema.validate(frame, require_label=False)
        schema.validate(frame.iloc[np.concatenate([rows[k] for k in labelled])])
    return DatasetBundle(name, frame, schema, rows)
