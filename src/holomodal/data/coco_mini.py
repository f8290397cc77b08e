"""COCO-MINI: 159 COCO 2017 images with 5 captions each; 80-way multi-label categories.

The label of an image is the set of categories with at least one instance in it. The
val2017 images are the test split; the train2017 images are split train/val with the seed.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from holomodal.data._registry import DatasetBundle, choice, make_bundle, register_dataset
from holomodal.errors import DataError
from holomodal.schema import Column, Modality, Schema

PARTS = ("train2017", "val2017")


def _read_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise DataError(f"COCO annotation file not found: {path}")
    return json.loads(path.read_text(encoding="utf-8"))


def _read_part(folder: Path, part: str, join: bool) -> tuple[pd.DataFrame, list[dict[str, Any]]]:
    captions = _read_json(folder / "annotations" / f"captions_{part}.json")
    instances = _read_json(folder / "annotations" / f"instances_{part}.json")
    categories = sorted(instances["categories"], key=lambda c: c["id"])
    index_of = {c["id"]: i for i, c in enumerate(categories)}
    texts: dict[int, list[str]] = {}
    # annotation-id order makes "the first caption" independent of the file's list order
    for ann in sorted(captions["annotations"], key=lambda a: a["id"]):
        text = " ".join(str(ann["caption"]).split())
        if text:
            texts.setdefault(ann["image_id"], []).append(text)
    present: dict[int, set[int]] = {}
    for ann in instances["annotations"]:
        present.setdefault(ann["image_id"], set()).add(index_of[ann["category_id"]])
    rows = []
    for image in sorted(instances["images"], key=lambda i: i["id"]):
        caps = texts.get(image["id"], [])
        rows.append({
            "image_id": int(image["id"]),
            "image": str(folder / "images" / part / image["file_name"]),
            "caption": (" ".join(caps) if join else caps[0]) if caps else np.nan,
            "categories": sorted(present.get(image["id"], set())),
            "part": part,
        })
    return pd.DataFrame(rows), categories


@register_dataset("coco_mini")
def load_coco_mini(root: Path, seed: int = 0, captions: str = "first", image_size: int = 224,
                   val_fraction: float = 0.2) -> DatasetBundle:
    choice("coco_mini", "captions", captions, ("first", "all"))
    folder = Path(root).resolve() / "coco_mini"
    tables, category_lists = zip(*(_read_part(folder, part, captions == "all") for part in PARTS))
    if category_lists[0] != category_lists[1]:
        raise DataError(f"{folder}: train2017 and val2017 annotations list different categories")
    frame = pd.concat(tables, ignore_index=True)
    part = frame.pop("part").to_numpy()
    train_images = np.flatnonzero(part == "train2017")
    shuffled = np.random.default_rng(seed).permutation(train_images)
    n_val = int(round(len(train_images) * val_fraction))
    splits = {"train": shuffled[n_val:], "val": shuffled[:n_val], "test": np.flatnonzero(part == "val2017")}
    schema = Schema([
        Column("image_id", Modality.ID),
        Column("image", Modality.IMAGE, {"channels": 3, "size": int(image_size)}),
        Column("caption", Modality.TEXT, {"max_length": 32 if captions == "first" else 128, "vocab_size": 1000}),
        Column("categories", Modality.LABEL,
               {"task": "multilabel", "classes": [c["name"] for c in category_lists[0]]}),
    ])
    return make_bundle("coco_mini", frame, schema, splits)
