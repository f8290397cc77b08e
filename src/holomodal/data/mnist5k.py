"""MNIST, 5,000-digit subset (500 per digit), images held as uint8 arrays."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.model_selection import train_test_split

from holomodal.data import DatasetBundle, register_dataset
from holomodal.schema import Column, Modality, Schema

DIGITS = [str(d) for d in range(10)]


def read_mnist5k(root: Path) -> tuple[np.ndarray, np.ndarray]:
    table = pd.read_csv(root / "mnist5k" / "mnist_5k.csv.gz", header=None).to_numpy()
    return table[:, :784].astype(np.uint8).reshape(-1, 28, 28), table[:, 784].astype(np.int64)


def image_column(name: str = "image") -> Column:
    return Column(name, Modality.IMAGE, {"source": "array", "channels": 1, "size": 28})


@register_dataset("mnist5k")
def load_mnist5k(root: Path, seed: int = 0) -> DatasetBundle:
    images, labels = read_mnist5k(root)
    frame = pd.DataFrame({"image": list(images), "digit": labels})
    rows = np.arange(len(frame))
    train, rest = train_test_split(rows, test_size=0.2, stratify=labels, random_state=seed)
    val, test = train_test_split(rest, test_size=0.5, stratify=labels[rest], random_state=seed)
    schema = Schema([image_column(), Column("digit", Modality.LABEL, {"task": "multiclass", "classes": DIGITS})])
    return DatasetBundle("mnist5k", frame, schema, {"train": np.sort(train), "val": np.sort(val), "test": np.sort(test)})
