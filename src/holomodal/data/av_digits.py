"""Audio-visual digits in the style of AV-MNIST: FSDD spoken digits paired with MNIST images.

The two sources share nothing but the digit, so each clip is paired with an image of its
digit: per digit the 500 images are shuffled with the seed and the digit's 300 clips take
the first 300, so no image appears twice and the pairing is reproducible. FSDD's customary
test split (takes 0-4) is the test split, takes 5-9 are validation, the rest train.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from holomodal.data._registry import DatasetBundle, make_bundle, object_cells, register_dataset
from holomodal.data.mnist5k import digit_column, image_column, read_mnist5k
from holomodal.errors import DataError
from holomodal.schema import Column, Modality, Schema

AUDIO_OPTIONS = {"sample_rate": 8000, "n_mels": 40, "duration": 1.0}


def read_fsdd(root: Path) -> pd.DataFrame:
    """One row per clip (path, digit, speaker, take), sorted by digit, speaker, take."""
    folder = Path(root) / "fsdd" / "recordings"
    rows = []
    for clip in folder.glob("*.wav"):
        parts = clip.stem.split("_")
        if len(parts) != 3 or not parts[0].isdigit() or not parts[2].isdigit():
            raise DataError(f"FSDD clip '{clip}' is not named <digit>_<speaker>_<take>.wav")
        rows.append((str(clip), int(parts[0]), parts[1], int(parts[2])))
    if not rows:
        raise DataError(f"no FSDD clips (*.wav) in {folder}")
    clips = pd.DataFrame(rows, columns=["audio", "digit", "speaker", "take"])
    return clips.sort_values(["digit", "speaker", "take"], ignore_index=True)


@register_dataset("av_digits", folders=("fsdd", "mnist5k"))
def load_av_digits(root: Path, seed: int = 0) -> DatasetBundle:
    root = Path(root).resolve()
    clips = read_fsdd(root)
    images, labels = read_mnist5k(root)
    rng = np.random.default_rng(seed)
    image_of_clip = np.empty(len(clips), dtype=np.int64)
    digits = clips["digit"].to_numpy()
    for digit in range(10):
        clip_rows = np.flatnonzero(digits == digit)
        pool = rng.permutation(np.flatnonzero(labels == digit))
        if len(pool) < len(clip_rows):
            raise DataError(f"digit {digit}: {len(clip_rows)} clips but only {len(pool)} MNIST images to pair them with")
        image_of_clip[clip_rows] = pool[: len(clip_rows)]
    frame = pd.DataFrame({
        "image": object_cells(images[image_of_clip]),
        "audio": clips["audio"],
        "speaker": clips["speaker"],
        "digit": digits.astype(np.int64),
    })
    take = clips["take"].to_numpy()
    splits = {
        "train": np.flatnonzero(take >= 10),
        "val": np.flatnonzero((take >= 5) & (take < 10)),
        "test": np.flatnonzero(take < 5),
    }
    schema = Schema([
        image_column(),
        Column("audio", Modality.AUDIO, dict(AUDIO_OPTIONS)),
        Column("speaker", Modality.GROUP),
        digit_column(),
    ])
    return make_bundle("av_digits", frame, schema, splits)
