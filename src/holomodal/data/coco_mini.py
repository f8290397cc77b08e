"""COCO-MINI: 159 COCO 2017 images with captions; 80-way multi-label object categories."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from holomodal.data import DatasetBundle, register_dataset
from holomodal.schema import Column, Modality, Schema


def _read_part(folder: Path, part: str, join_captions: bool) -> tuple[pd.DataFrame, list[dict]]:
    captions = json.loads((folder / "annotations" / f"captions_{part}.json").read_text())
    instances = json.loads((folder / "annotations" / f"instances_{part}.json").read_text())
    categories = sorted(instances["categories"], key=lambda c: c["id"])
    index = {c["id"]: i for i, c in enumerate(categories)}
    texts: dict[int, list[str]] = {}
    for ann in sorted(captions["annotations"], key=lambda a: a["id"]):
        texts.setdefault(ann["image_id"], []).append(ann["caption"].strip())
    labels: dict[int, set[int]] = {}
    for ann in instances["annotations"]:
        labels.setdefault(ann["image_id"], set()).add(index[ann["category_id"]])
    rows = []
    for img in sorted(instances["images"], key=lambda i: i["id"]):
        caps = texts.get(img["id"], [])
        rows.append({
            "image_id": img["id"],
            "image": str(folder / "images" / part / img["file_name"]),
            "caption": (" ".join(caps) if join_captions else caps[0]) if caps else None,
            "categories": sorted(labels.get(img["id"], set())),
            "part": part,
        })
    return pd.DataFrame(rows), categories


@register_dataset("coco_mini")
def load_coco_mini(root: Path, seed: int = 0, captions: str = "first", image_size: int = 224) -> DatasetBundle:
    folder = root / "coco_mini"
    train, categories = _read_part(folder, "train2017", captions == "all")
    val, _ = _read_part(folder, "val2017", captions == "all")
    frame = pd.concat([train, val], ignore_index=True)
    in_train = np.flatnonzero(frame["part"].to_numpy() == "train2017")
    shuffled = np.random.default_rng(seed).permutation(in_train)
    n_val = len(in_train) // 5
    splits = {
        "train": np.sort(shuffled[n_val:]),
        "val": np.sort(shuffled[:n_val]),
        "test": np.flatnonzero(frame["part"].to_numpy() == "val2017"),
    }
    frame = frame.drop(columns=["part"])
    schema = Schema([
        Column("image_id", Modality.ID),
        Column("image", Modality.IMAGE, {"channels": 3, "size": image_size}),
        Column("caption", Modality.TEXT, {"max_length": 64 if captions == "first" else 192, "vocab_size": 1000}),
        Column("categories", Modality.LABEL, {"task": "multilabel", "classes": [c["name"] for c in categories]}),
    ])
    return DatasetBundle("coco_mini", frame, schema, splits)
