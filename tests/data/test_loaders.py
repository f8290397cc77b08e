"""The five loaders against the real data: counts as published, splits, schema conventions."""

from __future__ import annotations

import re
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from holomodal.data import list_datasets, load_dataset, resolve_data_root
from holomodal.data.physionet2012 import SERIES
from holomodal.errors import ConfigError, DataError


@pytest.fixture(scope="module")
def root() -> Path:
    return resolve_data_root()


@pytest.fixture(scope="module")
def mnist(root):
    return load_dataset("mnist5k", root=root)


@pytest.fixture(scope="module")
def av(root):
    return load_dataset("av_digits", root=root)


@pytest.fixture(scope="module")
def covid(root):
    return load_dataset("covid_cxr", root=root)


@pytest.fixture(scope="module")
def coco(root):
    return load_dataset("coco_mini", root=root)


@pytest.fixture(scope="module")
def physionet_timed(root, tmp_path_factory):
    """Loaded twice into an empty cache: the first load parses the archive, the second reads the cache."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HOLOMODAL_CACHE", str(tmp_path_factory.mktemp("cache")))
        start = time.perf_counter()
        parsed = load_dataset("physionet2012", root=root)
        middle = time.perf_counter()
        cached = load_dataset("physionet2012", root=root)
        end = time.perf_counter()
    return parsed, cached, middle - start, end - middle


def _check_bundle(bundle, sizes=None):
    assert list(bundle.frame.columns) == bundle.schema.column_names
    assert isinstance(bundle.frame.index, pd.RangeIndex)
    assert {"train", "val", "test"} <= set(bundle.splits)
    seen = np.concatenate(list(bundle.splits.values()))
    assert len(seen) == len(np.unique(seen)), "a row is in two splits"
    for rows in bundle.splits.values():
        assert rows.dtype == np.int64
    if sizes is not None:
        assert {k: len(v) for k, v in bundle.splits.items()} == sizes
    bundle.schema.validate(bundle.split("train"))


def test_registry_lists_the_five_sets():
    assert list_datasets() == ["av_digits", "coco_mini", "covid_cxr", "emoji", "mnist5k", "physionet2012"]


def test_mnist5k_5000_images_500_per_digit_stratified(mnist, root):
    frame = mnist.frame
    assert len(frame) == 5000
    assert (frame["digit"].value_counts() == 500).all()
    cell = frame["image"].iloc[0]
    assert cell.shape == (28, 28) and cell.dtype == np.uint8
    _check_bundle(mnist, {"train": 4000, "val": 500, "test": 500})
    assert (mnist.split("test")["digit"].value_counts() == 50).all()
    again = load_dataset("mnist5k", root=root)
    assert all(np.array_equal(mnist.splits[k], again.splits[k]) for k in mnist.splits)
    other = load_dataset("mnist5k", root=root, seed=1)
    assert not np.array_equal(mnist.splits["test"], other.splits["test"])


def test_av_digits_pairs_3000_fsdd_clips_with_distinct_images_of_their_digit(av, mnist):
    frame = av.frame
    assert len(frame) == 3000
    assert list(frame.columns) == ["image", "audio", "speaker", "digit"]
    _check_bundle(av, {"train": 2400, "val": 300, "test": 300})
    assert (frame["digit"].value_counts() == 300).all()
    assert all(Path(p).is_absolute() and Path(p).is_file() for p in frame["audio"].iloc[::97])
    take = frame["audio"].map(lambda p: int(Path(p).stem.split("_")[2]))
    assert (take.iloc[av.splits["test"]] <= 4).all()
    assert take.iloc[av.splits["val"]].between(5, 9).all()
    assert (take.iloc[av.splits["train"]] >= 10).all()
    mnist_digit = {img.tobytes(): d for img, d in zip(mnist.frame["image"], mnist.frame["digit"])}
    keys = [img.tobytes() for img in frame["image"]]
    assert len(set(keys)) == 3000  # each MNIST image used at most once
    assert [mnist_digit[k] for k in keys] == frame["digit"].tolist()


def test_physionet2012_8000_stays_554_deaths_36_channels(physionet_timed):
    bundle, cached, parse_s, cache_s = physionet_timed
    frame = bundle.frame
    assert len(frame) == 8000 and frame["RecordID"].is_unique
    _check_bundle(bundle, {"train": 3200, "val": 800, "test": 4000})
    set_a = np.concatenate([bundle.splits["train"], bundle.splits["val"]])
    assert int(frame["in_hospital_death"].iloc[set_a].sum()) == 554
    val_rate = frame["in_hospital_death"].iloc[bundle.splits["val"]].mean()
    assert abs(val_rate - 554 / 4000) < 0.005  # stratified
    channels = bundle.schema["timeseries"].options["channels"]
    assert len(channels) == 36 and channels == list(SERIES) and "Weight" not in channels
    assert bundle.schema["timeseries"].options["hours"] == 48
    static = frame[["Age", "Height", "Weight"]]
    assert (static.min() >= 0).all() and static["Height"].isna().sum() > 0  # -1 became NaN
    assert frame["Gender"].isna().sum() == 8 and set(frame["Gender"].dropna()) == {"female", "male"}
    cells = frame["timeseries"]
    assert all(c.dtype == np.float32 and c.ndim == 2 and c.shape[1] == 3 for c in cells)
    flat = np.concatenate(cells.tolist())
    assert flat[:, 0].min() >= 0 and flat[:, 0].max() <= 48
    assert set(np.unique(flat[:, 1]).astype(int)) == set(range(36))
    assert (flat[:, 2] >= 0).all()
    assert parse_s < 30 and cache_s < 3, (parse_s, cache_s)
    pd.testing.assert_frame_equal(bundle.frame.drop(columns="timeseries"), cached.frame.drop(columns="timeseries"))
    assert all(np.array_equal(a, b) for a, b in zip(cells, cached.frame["timeseries"]))


def test_covid_cxr_751_rows_653_images_no_patient_or_image_in_two_splits(covid):
    frame = covid.frame
    assert len(frame) == 751
    present = frame["image"].map(lambda p: isinstance(p, str) and Path(p).is_file())
    assert int(present.sum()) == 653 and int(frame["image"].notna().sum()) == 653
    _check_bundle(covid)
    labelled = {k: v for k, v in covid.splits.items() if k != "unlabelled"}
    for column in ("patientid", "image"):
        owners = {}
        for split, rows in labelled.items():
            for value in frame[column].iloc[rows].dropna().unique():
                assert owners.setdefault(value, split) == split, f"{column} {value} in two splits"
    assert sum(len(v) for v in covid.splits.values()) == 751
    shares = np.array([len(labelled[k]) for k in ("train", "val", "test")]) / sum(map(len, labelled.values()))
    assert np.allclose(shares, [0.7, 0.15, 0.15], atol=0.05)
    assert frame["label"].iloc[covid.splits["unlabelled"]].isna().all()
    assert covid.schema.label.options == {"task": "binary", "classes": ["other", "COVID-19"]}
    for name in ("sex", "intubated", "went_icu", "view", "age", "pO2_saturation", "clinical_notes"):
        assert name in frame.columns
    for column in covid.schema.categorical:
        assert not frame[column.name].isin(["?", "Not visible", "Would have been stated"]).any()


def test_covid_cxr_other_targets(root):
    finding = load_dataset("covid_cxr", root=root, target="finding")
    assert finding.schema.task.value == "multiclass" and "todo" not in finding.schema.label.options["classes"]
    survival = load_dataset("covid_cxr", root=root, target="survival")
    assert len(survival.frame) == 277 and "unlabelled" not in survival.splits  # blank/"?" survival dropped
    assert survival.frame["label"].dtype == np.int64
    _check_bundle(survival)
    with pytest.raises(ConfigError, match="target"):
        load_dataset("covid_cxr", root=root, target="age")


def test_coco_mini_159_images_80_categories(coco, root):
    frame = coco.frame
    assert len(frame) == 159
    _check_bundle(coco, {"train": 64, "val": 16, "test": 79})
    classes = coco.schema.label.options["classes"]
    assert len(classes) == 80 and classes[0] == "person" and coco.schema.task.value == "multilabel"
    assert all(isinstance(c, list) and c and all(0 <= i < 80 for i in c) for c in frame["categories"])
    assert all(isinstance(c, str) and c for c in frame["caption"])
    assert all(Path(p).is_file() for p in frame["image"])
    assert all("val2017" in p for p in coco.split("test")["image"])
    joined = load_dataset("coco_mini", root=root, captions="all")
    assert (joined.frame["caption"].str.len() > frame["caption"].str.len()).all()


def test_missing_root_says_where_it_looked_and_how_to_fix(tmp_path, monkeypatch):
    missing = tmp_path / "nowhere"
    with pytest.raises(DataError, match=re.escape(str(missing / "covid_cxr"))) as err:
        load_dataset("covid_cxr", root=missing)
    assert "HOLOMODAL_DATA" in str(err.value)
    monkeypatch.setenv("HOLOMODAL_DATA", str(missing))
    with pytest.raises(DataError, match=re.escape(str(missing))):
        resolve_data_root()
    with pytest.raises(DataError, match=re.escape(str(tmp_path / "fsdd"))):
        load_dataset("av_digits", root=tmp_path)


def test_unknown_data_set_or_option_is_a_config_error(root):
    with pytest.raises(ConfigError, match="covid_cxr"):
        load_dataset("no_such_set", root=root)
    with pytest.raises(ConfigError, match="'sead'"):
        load_dataset("mnist5k", root=root, sead=1)
