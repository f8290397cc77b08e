"""Each loader against the real counts of its data set."""

from pathlib import Path

import numpy as np
import pytest

from holomodal.data import list_datasets, load_dataset
from holomodal.errors import DataError


def _disjoint(splits):
    names = [k for k in splits]
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            assert not np.intersect1d(splits[a], splits[b]).size, (a, b)


def test_registry_lists_the_five_sets():
    assert list_datasets() == ["av_digits", "coco_mini", "covid_cxr", "mnist5k", "physionet2012"]


def test_av_digits_pairs_3000_fsdd_clips_with_distinct_mnist_images(av_digits):
    frame = av_digits.frame
    assert len(frame) == 3000
    assert {k: len(v) for k, v in av_digits.splits.items()} == {"train": 2400, "val": 300, "test": 300}
    assert frame["mnist_index"].is_unique  # each image used at most once
    test = av_digits.split("test")
    assert all(int(Path(p).stem.split("_")[2]) <= 4 for p in test["audio"])  # FSDD takes 0-4
    assert (frame["digit"].value_counts() == 300).all()
    _disjoint(av_digits.splits)


def test_mnist5k_has_5000_images_500_per_digit(data_root):
    b = load_dataset("mnist5k", root=data_root)
    assert len(b.frame) == 5000
    assert (b.frame["digit"].value_counts() == 500).all()
    assert b.frame["image"].iloc[0].shape == (28, 28)
    _disjoint(b.splits)


def test_physionet2012_8000_stays_554_deaths_in_set_a(data_root):
    b = load_dataset("physionet2012", root=data_root)
    assert len(b.frame) == 8000
    set_a = np.concatenate([b.splits["train"], b.splits["val"]])
    assert len(set_a) == 4000 and len(b.splits["test"]) == 4000
    assert int(b.frame["in_hospital_death"].iloc[set_a].sum()) == 554
    assert len(b.schema["timeseries"].options["channels"]) == 36
    assert b.frame[["Age", "Height", "Weight"]].min().min() >= 0  # -1 became NaN
    assert b.frame["Height"].isna().sum() > 0
    _disjoint(b.splits)


def test_covid_cxr_751_rows_653_images_grouped_by_patient(covid):
    frame = covid.frame
    assert len(frame) == 751
    present = frame["image"].map(lambda p: isinstance(p, str) and Path(p).exists())
    assert int(present.sum()) == 653
    patients = {k: set(frame["patientid"].iloc[v]) for k, v in covid.splits.items() if k != "unlabelled"}
    assert not patients["train"] & patients["val"]
    assert not patients["train"] & patients["test"]
    assert not patients["val"] & patients["test"]
    assert sum(len(v) for v in covid.splits.values()) == 751


def test_coco_mini_159_images_80_categories(data_root):
    b = load_dataset("coco_mini", root=data_root)
    assert len(b.frame) == 159
    assert len(b.schema.label.options["classes"]) == 80
    assert len(b.splits["test"]) == 79
    assert all(isinstance(c, str) and c for c in b.frame["caption"])


def test_missing_root_says_where_it_looked(tmp_path):
    with pytest.raises(DataError, match=str(tmp_path / "nowhere")):
        load_dataset("covid_cxr", root=tmp_path / "nowhere")
