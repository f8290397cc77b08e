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


# ---- TIP's draws, nested rates, seeds that follow the run --------------------------------

def test_rfm_at_03_on_dvm_columns_selects_tips_columns():
    from holomodal.data.dvm import CATEGORICAL, CONTINUOUS

    features = list(CATEGORICAL) + list(CONTINUOUS)  # TIP's order: categorical columns first
    assert len(features) == 17
    np.random.seed(2022)
    expected = np.sort(np.random.choice(17, 5, replace=False))
    masks = MissingnessPlan.from_config(["rfm:0.3"]).masks("test", 40, 17, ["tabular"])
    masked = np.flatnonzero(masks.cell_missing.all(axis=0))
    np.testing.assert_array_equal(masked, expected)
    assert "Entry_price" not in [features[i] for i in masked]  # default_rng(2021) would mask it
    numpy = MissingnessPlan.from_config([{"kind": "rfm", "rate": 0.3, "generator": "numpy"}])
    assert not np.array_equal(np.flatnonzero(numpy.masks("test", 40, 17, ["tabular"]).cell_missing.all(axis=0)), expected)


def test_rvm_draws_tips_cells_with_its_split_seeds():
    plan = MissingnessPlan.from_config(["rvm:0.3"])
    for split, seed in (("train", 2021), ("val", 2022), ("test", 2023)):
        np.random.seed(seed)
        chosen = np.random.choice(50 * 17, int(50 * 17 * 0.3), replace=False)
        expected = np.zeros(50 * 17, dtype=bool)
        expected[chosen] = True
        np.testing.assert_array_equal(plan.masks(split, 50, 17, ["tabular"]).cell_missing, expected.reshape(50, 17))


@pytest.mark.parametrize("generator", ["tip", "numpy"])
@pytest.mark.parametrize("kind", ["rvm", "rfm"])
def test_masks_are_nested_across_rates(kind, generator):
    def cells(rate):
        spec = {"kind": kind, "rate": rate, "generator": generator, "seed": 7}
        return MissingnessPlan.from_config([spec]).masks("test", 120, 13, ["tabular"]).cell_missing

    lower, middle, higher = cells(0.3), cells(0.5), cells(0.7)
    assert lower.sum() < middle.sum() < higher.sum()
    assert not (lower & ~middle).any() and not (middle & ~higher).any()


def test_dropped_modalities_are_nested_across_rates():
    def lost(rate):
        keep = MissingnessPlan.from_config([f"modality:{rate}:image"]).masks("test", 300, 0, ["image", "audio"]).keep
        return ~keep["image"]

    assert lost(0.5).sum() == 150 and not (lost(0.5) & ~lost(0.7)).any()


def test_masks_follow_the_run_seed_when_asked():
    fixed = MissingnessPlan.from_config(["rvm:0.5"])
    following = MissingnessPlan.from_config(["rvm:0.5@run"])
    assert following.specs[0].follow_run_seed and following.specs[0].seed == 2021
    as_dict = MissingnessPlan.from_config([{"kind": "rvm", "rate": 0.5, "seed": "run"}])
    assert as_dict.specs[0].follow_run_seed

    def cells_of(plan, run_seed):
        return plan.for_run(run_seed).masks("test", 80, 10, ["tabular"]).cell_missing

    np.testing.assert_array_equal(cells_of(following, 0), cells_of(fixed, 0))  # run 0: TIP's masks
    assert not np.array_equal(cells_of(following, 1), cells_of(following, 2))
    np.testing.assert_array_equal(cells_of(fixed, 1), cells_of(fixed, 2))
    resolved = following.for_run(3)
    assert resolved.specs[0].seed == 2021 + 3 * 1000 and not resolved.specs[0].follow_run_seed
    # the saved plan re-makes the run's masks without knowing its seed
    again = MissingnessPlan.from_dict(resolved.to_dict())
    np.testing.assert_array_equal(again.masks("test", 80, 10, ["tabular"]).cell_missing,
                                  resolved.masks("test", 80, 10, ["tabular"]).cell_missing)


def test_plan_saved_before_generators_re_makes_its_masks():
    old = {"specs": [{"kind": "rvm", "rate": 0.3, "seed": 2021, "drop": None, "splits": ["train", "val", "test"]}],
           "ranking": None}
    expected = np.zeros(40 * 6, dtype=bool)
    expected[np.random.default_rng(2023).choice(40 * 6, int(40 * 6 * 0.3), replace=False)] = True
    cells = MissingnessPlan.from_dict(old).masks("test", 40, 6, ["tabular"]).cell_missing
    np.testing.assert_array_equal(cells, expected.reshape(40, 6))


def test_bad_generator_and_seed_name_the_problem():
    with pytest.raises(ConfigError, match="generator must be one of tip, numpy"):
        MissingnessSpec("rvm", 0.3, generator="legacy")
    with pytest.raises(ConfigError, match="seed 'x' is neither a number nor 'run'"):
        MissingnessSpec.parse("rvm:0.3@x")
    with pytest.raises(ConfigError, match="seed must be an integer"):
        MissingnessSpec("rvm", 0.3, seed="7")
