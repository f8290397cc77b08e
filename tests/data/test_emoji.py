"""The bundled emoji set: picture(s) + name -> category, Component rows left out, stratified splits."""

import numpy as np
import pytest

from holomodal.data import load_dataset
from holomodal.errors import ConfigError
from holomodal.preprocessing import Preprocessor


@pytest.fixture(scope="module")
def emoji(data_root):
    return load_dataset("emoji", root=data_root)


def test_rows_classes_and_columns(emoji):
    assert len(emoji.frame) == 1911 - 5  # the 5 "Component" rows are left out
    classes = emoji.schema.label.options["classes"]
    assert len(classes) == 9 and "Component" not in classes
    assert [c.name for c in emoji.schema.columns] == ["unified", "image", "name", "category"]
    assert emoji.frame.loc[emoji.frame["name"] == "Egypt Flag", "category"].item() == "Flags"


def test_splits_are_disjoint_and_stratified(emoji):
    sizes = {k: len(v) for k, v in emoji.splits.items()}
    assert sizes == {"train": 1143, "val": 381, "test": 382}
    rows = np.concatenate(list(emoji.splits.values()))
    assert len(np.unique(rows)) == len(emoji.frame)
    share = emoji.split("train")["category"].value_counts(normalize=True)
    overall = emoji.frame["category"].value_counts(normalize=True)
    assert (share - overall).abs().max() < 0.01


def test_options(data_root):
    both = load_dataset("emoji", root=data_root, pictures="both", target="subcategory")
    assert [c.name for c in both.schema.columns if c.modality.value == "image"] == ["google", "twitter"]
    counts = both.frame["subcategory"].value_counts()
    assert counts.min() >= 5 and len(counts) == len(both.schema.label.options["classes"])
    with pytest.raises(ConfigError, match="pictures='svg'"):
        load_dataset("emoji", root=data_root, pictures="svg")


def test_pictures_on_white_and_clip_tokens(emoji):
    rows = emoji.split("train").head(6)
    pre = Preprocessor(emoji.schema).fit(rows)
    batch, _ = pre.transform(rows)
    pixels = batch.inputs["image"]["pixels"]
    assert pixels.shape == (6, 3, 64, 64) and batch.present["image"].all()
    assert (pixels[:, :, 0, 0] == 255).all()  # the transparent corner, laid on white
    ids = batch.inputs["name"]["input_ids"]
    assert ids.shape == (6, 77) and (ids[:, 0] == 49406).all()  # CLIP's start-of-text token
