"""MNIST, 5,000-digit subset (500 per digit); images are held in the table as uint8 arrays."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from holomodal.data._registry import DatasetBundle, make_bundle, object_cells, register_dataset, stratified_split
from holomodal.errors import DataError
from holomodal.schema import Column, Modality, Schema

DIGITS = [str(d) for d in range(10)]
FILE = Path("mnist5k") / "mnist_5k.csv.gz"


def read_mnist5k(root: Path) -> tuple[np.ndarray, np.ndarray]:
    """Images ``(n, 28, 28)`` uint8 and labels ``(n,)`` int64, in file order."""
    path = Path(root) / FILE
    if not path.is_file():
        raise DataError(f"MNIST file not found: {path}")
    table = pd.read_csv(path, header=None, dtype=np.int64).to_numpy()
    if table.shape[1] != 785:
        raise DataError(f"{path}: expected 784 pixel columns and a label, found {table.shape[1]} columns")
    return table[:, :784].astype(np.uint8).reshape(-1, 28, 28), table[:, 784].astype(np.int64)


def image_column(name: str = "image") -> Column:
    return Column(name, Modality.IMAGE, {"source": "array", "channels": 1, "size": 28})


def digit_column(name: str = "digit") -> Column:
    return Column(name, Modality.LABEL, {"task": "multiclass", "classes": list(DIGITS)})


@register_dataset("mnist5k")
def load_mnist5k(root: Path, seed: int = 0) -> DatasetBundle:
    images, labels = read_mnist5k(root)
    frame = pd.DataFrame({"image": object_cells(images), "digit": labels})
    splits = stratified_split(labels, {"train": 0.8, "val": 0.1, "test": 0.1}, seed)
    schema = Schema([image_column(), digit_column()])
    return make_bundle("mnist5k", frame, schema, splits)
