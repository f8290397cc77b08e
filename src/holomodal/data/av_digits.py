"""Audio-visual digits: FSDD spoken digits paired by digit with MNIST images (AV-MNIST style).

Within each digit the 500 images are shuffled with the seed and the digit's 300 clips take
distinct images, so no image is used twice. FSDD's customary test split (takes 0-4) is the
test split; takes 5-9 are validation.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from holomodal.data import DatasetBundle, register_dataset
from holomodal.data.mnist5k import DIGITS, image_column, read_mnist5k
from holomodal.schema import Column, Modality, Schema


@register_dataset("av_digits", folder="fsdd")
def load_av_digits(root: Path, seed: int = 0) -> DatasetBundle:
    clips = sorted((root / "fsdd" / "recordings").glob("*.wav"))
    parts = [c.stem.split("_") for c in clips]
    audio = pd.DataFrame({
        "audio": [str(c) for c in clips],
        "digit": [int(p[0]) for p in parts],
        "speaker": [p[1] for p in parts],
        "take": [int(p[2]) for p in parts],
    })
    images, labels = read_mnist5k(root)
    rng = np.random.default_rng(seed)
    image_of_clip = np.empty(len(audio), dtype=np.int64)
    for digit in range(10):
        clip_rows = np.flatnonzero(audio["digit"].to_numpy() == digit)
        pool = rng.permutation(np.flatnonzero(labels == digit))
        image_of_clip[clip_rows] = pool[: len(clip_rows)]
    frame = pd.DataFrame({
        "image": [images[i] for i in image_of_clip],
        "audio": audio["audio"],
        "speaker": audio["speaker"],
        "digit": audio["digit"],
        "mnist_index": image_of_clip,
    })
    take = audio["take"].to_numpy()
    splits = {
        "train": np.flatnonzero(take >= 10),
        "val": np.flatnonzero((take >= 5) & (take < 10)),
        "test": np.flatnonzero(take < 5),
    }
    schema = Schema([
        image_column(),
        Column("audio", Modality.AUDIO, {"sample_rate": 8000, "n_mels": 40, "duration": 1.0}),
        Column("speaker", Modality.GROUP),
        Column("mnist_index", Modality.ID),
        Column("digit", Modality.LABEL, {"task": "multiclass", "classes": DIGITS}),
    ])
    return DatasetBundle("av_digits", frame, schema, splits)
