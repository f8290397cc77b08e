"""Emoji: a picture (Google's or Twitter's style, or both) and a name -> the emoji's category.

1,911 base emoji of emoji-datasource 16.0.0 (``emoji/SOURCE.md``): 64 x 64 RGBA pictures
(transparent pixels are laid on white by the image preprocessing) and names such as
"Egypt Flag". The 9-way ``category`` target drops the 5 "Component" rows (skin-tone and hair
pieces: parts of other emoji, not pictures of a category), leaving 1,906; the
``subcategory`` target keeps the subcategories with at least 5 rows (so each of train, val
and test can hold one). Splits: stratified 60 / 20 / 20 by the target, seeded.

The names contain many category words ("... FLAG"), so the text alone is strong: report
picture-only results beside picture + name.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from holomodal.data._registry import DatasetBundle, choice, make_bundle, register_dataset, stratified_split
from holomodal.errors import DataError
from holomodal.schema import Column, Modality, Schema

DROPPED_CATEGORY = "Component"
MIN_SUBCATEGORY_ROWS = 5
FRACTIONS = {"train": 0.6, "val": 0.2, "test": 0.2}


@register_dataset("emoji")
def load_emoji(root: Path, seed: int = 0, pictures: str = "google", target: str = "category", image_size: int = 64,
               text_tokenizer: str = "clip", text_max_length: int = 77) -> DatasetBundle:
    choice("emoji", "pictures", pictures, ("google", "twitter", "both"))
    choice("emoji", "target", target, ("category", "subcategory"))
    choice("emoji", "text_tokenizer", text_tokenizer, ("clip", "wordpiece"))
    folder = Path(root).resolve() / "emoji"
    table = folder / "emoji.csv"
    if not table.is_file():
        raise DataError(f"emoji table not found: {table}")
    frame = pd.read_csv(table, dtype=str, keep_default_na=False)
    frame = frame[frame["category"] != DROPPED_CATEGORY]
    if target == "subcategory":
        counts = frame["subcategory"].value_counts()
        frame = frame[frame["subcategory"].map(counts) >= MIN_SUBCATEGORY_ROWS]
    styles = ("google", "twitter") if pictures == "both" else (pictures,)
    out = pd.DataFrame({"unified": frame["unified"].to_numpy()})
    for style in styles:
        out["image" if len(styles) == 1 else style] = [str(folder / p) for p in frame[style]]
    out["name"] = frame["name"].to_numpy()
    out[target] = frame[target].to_numpy()
    classes = sorted(out[target].unique())
    text_options = {"tokenizer": text_tokenizer, "max_length": int(text_max_length)}
    if text_tokenizer == "wordpiece":
        text_options["vocab_size"] = 1000
    picture_columns = [Column("image" if len(styles) == 1 else s, Modality.IMAGE, {"channels": 3, "size": int(image_size)})
                       for s in styles]
    schema = Schema([
        Column("unified", Modality.ID), *picture_columns, Column("name", Modality.TEXT, text_options),
        Column(target, Modality.LABEL, {"task": "multiclass", "classes": classes}),
    ])
    codes = np.searchsorted(classes, out[target].to_numpy())
    return make_bundle("emoji", out, schema, stratified_split(codes, FRACTIONS, seed))
