import numpy as np
import pytest

from holomodal.errors import ConfigError
from holomodal.missingness import (
    MissingnessPlan,
    MissingnessSpec,
    importance_ranking,
    modality_keep,
    random_value_mask,
)


def test_rvm_fraction_within_001_of_rate_on_10000_cells():
    for rate in (0.1, 0.3, 0.5, 0.7):
        mask = random_value_mask(1000, 10, rate, seed=3)
        assert mask.shape == (1000, 10)
        assert abs(mask.mean() - rate) <= 0.01


def test_rvm_is_seeded_and_new_per_split():
    plan = MissingnessPlan.from_config(["rvm:0.3"])
    a = plan.masks("train", 200, 8, ["tabular"]).cell_missing
    b = plan.masks("train", 200, 8, ["tabular"]).cell_missing
    c = plan.masks("test", 200, 8, ["tabular"]).cell_missing
    assert np.array_equal(a, b)
    assert not np.array_equal(a, c)


def test_rfm_masks_same_columns_in_every_split():
    plan = MissingnessPlan.from_config(["rfm:0.5"])
    cols = []
    for split, rows in (("train", 300), ("val", 50), ("test", 80)):
        mask = plan.masks(split, rows, 12, ["tabular"]).cell_missing
        whole = np.flatnonzero(mask.all(axis=0))
        assert not mask[:, np.setdiff1d(np.arange(12), whole)].any()
        cols.append(tuple(whole))
    assert len(set(cols)) == 1
    assert len(cols[0]) == 6


def test_mifm_masks_the_column_the_forest_ranks_highest():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(600, 6))
    y = (x[:, 4] > 0).astype(int)  # column 4 alone decides the label
    ranking = importance_ranking(x, y)
    assert ranking[0] == 4
    plan = MissingnessPlan.from_config([{"kind": "mifm", "rate": 1 / 6}]).fit(x, y)
    mask = plan.masks("test", 50, 6, ["tabular"]).cell_missing
    assert np.flatnonzero(mask.all(axis=0)).tolist() == [4]
    least = MissingnessPlan.from_config([{"kind": "lifm", "rate": 0.5}]).fit(x, y)
    assert 4 not in np.flatnonzero(least.masks("test", 50, 6, ["tabular"]).cell_missing.all(axis=0))


def test_importance_ranking_handles_missing_cells():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(400, 3))
    y = (x[:, 1] > 0).astype(int)
    x[rng.random(x.shape) < 0.2] = np.nan
    assert importance_ranking(x, y)[0] == 1


def test_modality_both_at_06_leaves_40_complete_30_without_each():
    keep = modality_keep(1000, ["image", "text"], 0.6, "both", seed=0)
    complete = keep["image"] & keep["text"]
    assert complete.mean() == pytest.approx(0.4)
    assert (~keep["image"]).mean() == pytest.approx(0.3)
    assert (~keep["text"]).mean() == pytest.approx(0.3)
    assert not (~keep["image"] & ~keep["text"]).any()


def test_modality_named_and_split_specific():
    plan = MissingnessPlan.from_config([{"kind": "modality", "rate": 0.5, "drop": "audio", "splits": ["test"]}])
    train = plan.masks("train", 100, 0, ["image", "audio"])
    test = plan.masks("test", 100, 0, ["image", "audio"])
    assert train.keep["audio"].all()
    assert (~test.keep["audio"]).sum() == 50 and test.keep["image"].all()


def test_plan_round_trips_through_dict():
    plan = MissingnessPlan.from_config(["rvm:0.2@5", "modality:0.3:image"])
    plan.ranking_ = [2, 0, 1]
    again = MissingnessPlan.from_dict(plan.to_dict())
    assert again.to_dict() == plan.to_dict()
    a = plan.masks("val", 40, 3, ["tabular", "image"])
    b = again.masks("val", 40, 3, ["tabular", "image"])
    assert np.array_equal(a.cell_missing, b.cell_missing)
    assert np.array_equal(a.keep["image"], b.keep["image"])


@pytest.mark.parametrize("text", ["xyz:0.3", "rvm:abc", "rvm", "modality:0.3", "rvm:1.5"])
def test_bad_specs_give_clear_errors(text):
    with pytest.raises(ConfigError):
        MissingnessSpec.parse(text)
