"""DyMo's recovery models on real rows: covid_cxr's clinical table (natural missing cells),
its X-rays, and av_digits' image + audio pairs. What each recoverer writes, where, from
which row, and what it leaves alone."""

import numpy as np
import pandas as pd
import pytest
import torch

from holomodal.batch import Batch
from holomodal.errors import ConfigError
from holomodal.methods import create_method
from holomodal.methods.base import ModelContext
from holomodal.preprocessing import Preprocessor
from holomodal.selection.recoverers import (
    RECOVERERS, IterativeImputerRecoverer, NearestNeighbourRecoverer, OracleRecoverer, Recovered, ShuffledRecoverer,
    TIPReconstructionRecoverer, create_recoverer, missing_cells,
)
from tiny import TINY_ENCODERS, small_schema

SMALL_DYNAMIC = {"dim": 16, "depth": 1, "heads": 2, "projection_dim": 8}


def _copy(batch: Batch) -> Batch:
    return batch.map(lambda t: t.clone())


def _assert_observed_untouched(before: Batch, out: Recovered) -> None:
    """Every observed value bit for bit, the masks unchanged."""
    after = out.batch
    for m, p in before.present.items():
        assert torch.equal(after.present[m], p), m
        if m == "tabular":
            continue  # cell by cell below: a present table may lack cells
        for key, value in before.inputs[m].items():
            shape = (-1,) + (1,) * (value.dim() - 1)
            kept = before.present[m].view(shape).expand_as(value)
            assert torch.equal(after.inputs[m][key][kept], value[kept]), (m, key)
    if before.cell_missing is not None:
        assert torch.equal(after.cell_missing, before.cell_missing)
        observed = ~missing_cells(before)
        n_cat = before.inputs["tabular"]["categorical"].shape[1]
        for key, part in (("categorical", observed[:, :n_cat]), ("continuous", observed[:, n_cat:])):
            assert torch.equal(after.inputs["tabular"][key][part], before.inputs["tabular"][key][part])


# ---- data ----------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def table(covid):
    """(preprocessor, train, test): covid_cxr's clinical table only, every split row."""
    schema = small_schema(covid.schema, drop=("image", "text"))
    pre = Preprocessor(schema).fit(covid.split("train"))
    return pre, pre.transform(covid.split("train"))[0], pre.transform(covid.split("test"))[0]


@pytest.fixture(scope="module")
def xray_table(covid):
    """(preprocessor, context, train, test): 80 / 40 covid_cxr rows, X-ray (32 px) + table."""
    schema = small_schema(covid.schema, drop=("text",))
    train_frame, test_frame = covid.split("train").iloc[:80], covid.split("test").iloc[:40]
    pre = Preprocessor(schema).fit(train_frame)
    types = {m: schema.modality_type(m).value for m in pre.processors}
    context = ModelContext(pre.input_specs, types, 2, schema.task.value, ["0", "1"])
    return pre, context, pre.transform(train_frame)[0], pre.transform(test_frame)[0]


@pytest.fixture(scope="module")
def digits(av_digits):
    """(context, train, test): 40 / 20 av_digits rows (image + audio), all ten classes."""
    frames = {s: av_digits.split(s).sample(n, random_state=0).reset_index(drop=True) for s, n in (("train", 40), ("test", 20))}
    pre = Preprocessor(av_digits.schema).fit(frames["train"])
    types = {m: av_digits.schema.modality_type(m).value for m in pre.processors}
    context = ModelContext(pre.input_specs, types, 10, av_digits.schema.task.value, [str(i) for i in range(10)])
    return context, pre.transform(frames["train"])[0], pre.transform(frames["test"])[0]


def _dynamic(context, encoders):
    torch.manual_seed(0)
    return create_method("dynamic", context, encoders=encoders, **SMALL_DYNAMIC).eval()


# ---- iterative imputation ------------------------------------------------------------------------
def test_iterative_imputer_fills_exactly_the_missing_cells_with_valid_codes(table):
    pre, train, test = table
    cards = pre.input_specs["tabular"]["cardinalities"]
    recoverer = IterativeImputerRecoverer(cardinalities=cards).fit(train)
    # three test rows lose their whole table as well
    absent = torch.ones(len(test), dtype=torch.bool)
    absent[:3] = False
    query = test.with_masks(present={"tabular": absent})
    before = _copy(query)
    out = recoverer.recover(query)

    _assert_observed_untouched(before, out)
    missing = missing_cells(query)
    assert missing[:3].all() and missing.any() and not missing.all()
    assert torch.equal(out.cells, missing)
    assert torch.equal(out.recovered["tabular"], missing.any(dim=1))
    n_cat = len(cards)
    codes = out.batch.inputs["tabular"]["categorical"]
    limit = torch.tensor(cards)[None].expand_as(codes)
    filled = missing[:, :n_cat]
    assert ((codes[filled] >= 1) & (codes[filled] <= limit[filled] - 1)).all()
    assert torch.isfinite(out.batch.inputs["tabular"]["continuous"]).all()
    # the input batch itself is left as it was
    for key in ("categorical", "continuous"):
        assert torch.equal(query.inputs["tabular"][key], before.inputs["tabular"][key])


def test_iterative_imputer_learns_from_training_rows_only(table):
    _, train, test = table
    recoverer = IterativeImputerRecoverer().fit(train)
    cat, con = IterativeImputerRecoverer.matrices(train)
    _, test_con = IterativeImputerRecoverer.matrices(test)
    statistics = recoverer.continuous_imputer_.initial_imputer_.statistics_.copy()
    np.testing.assert_allclose(statistics, np.nanmean(con, axis=0))
    assert not np.allclose(statistics, np.nanmean(np.concatenate([con, test_con]), axis=0))
    modes = [pd.Series(cat[:, j]).dropna().mode().min() for j in range(cat.shape[1])]
    np.testing.assert_array_equal(recoverer.categorical_imputer_.initial_imputer_.statistics_, modes)
    # the cardinalities come from the codes training saw
    assert recoverer.cardinalities_ == [int(np.nanmax(cat[:, j])) + 1 for j in range(cat.shape[1])]

    first = recoverer.recover(test)
    # recovering reads the test rows but fits nothing on them
    np.testing.assert_array_equal(recoverer.continuous_imputer_.initial_imputer_.statistics_, statistics)
    again = recoverer.recover(test)
    assert torch.equal(first.batch.inputs["tabular"]["continuous"], again.batch.inputs["tabular"]["continuous"])
    # the original's transductive fit (train + test) would give other values
    transductive = IterativeImputerRecoverer().fit(Batch.cat([train, test])).recover(test)
    assert not torch.equal(first.batch.inputs["tabular"]["continuous"], transductive.batch.inputs["tabular"]["continuous"])


# ---- nearest neighbour ---------------------------------------------------------------------------
class _Counting:
    def __init__(self, embed):
        self.embed, self.calls = embed, 0

    def __call__(self, batch, usage):
        self.calls += 1
        return self.embed(batch, usage)


def test_nearest_neighbour_returns_a_training_rows_own_dropped_modality(digits):
    context, train, _ = digits
    model = _dynamic(context, {"image": TINY_ENCODERS["image"], "audio": {"name": "lenet", "channels": 2, "blocks": 1}})
    embed = _Counting(model.subset_features)
    recoverer = NearestNeighbourRecoverer(embed, model.modality_order).fit(train)
    keep_image, keep_audio = torch.ones(len(train), dtype=torch.bool), torch.ones(len(train), dtype=torch.bool)
    keep_image[:10] = False
    keep_audio[10:20] = False
    keep_image[20:22] = keep_audio[20:22] = False
    query = train.with_masks(present={"image": keep_image, "audio": keep_audio})
    before = _copy(query)
    out = recoverer.recover(query)

    _assert_observed_untouched(before, out)
    assert torch.equal(out.recovered["image"], torch.arange(len(train)) < 10)
    assert torch.equal(out.recovered["audio"], (torch.arange(len(train)) >= 10) & (torch.arange(len(train)) < 20))
    assert torch.equal(out.batch.inputs["image"]["pixels"][:10], train.inputs["image"]["pixels"][:10])
    assert torch.equal(out.batch.inputs["audio"]["spectrogram"][10:20], train.inputs["audio"]["spectrogram"][10:20])
    # a row with nothing observed is left to the caller
    assert not out.batch.inputs["image"]["pixels"][20:22].any() and not out.batch.inputs["audio"]["spectrogram"][20:22].any()
    assert out.cells is None
    # batched per observed pattern: two query groups, two training embeddings
    assert embed.calls == 4
    recoverer.recover(query)
    assert embed.calls == 6  # the training embeddings are kept


def test_nearest_neighbour_picks_the_closest_training_row_in_the_embedding(digits):
    context, train, test = digits
    model = _dynamic(context, {"image": TINY_ENCODERS["image"], "audio": {"name": "lenet", "channels": 2, "blocks": 1}})
    recoverer = NearestNeighbourRecoverer(model.subset_features, model.modality_order).fit(train)
    no_image = torch.zeros(len(test), dtype=torch.bool)
    out = recoverer.recover(test.with_masks(present={"image": no_image}))
    audio_only = torch.tensor([[False, True]])
    query = model.subset_features(test, audio_only.expand(len(test), -1))
    reference = model.subset_features(train, audio_only.expand(len(train), -1))
    nearest = ((query[:, None] - reference[None]) ** 2).sum(-1).argmin(dim=1)
    assert torch.equal(out.batch.inputs["image"]["pixels"], train.inputs["image"]["pixels"][nearest])
    assert out.recovered["image"].all() and not out.recovered["audio"].any()


def test_nearest_neighbour_copies_a_whole_absent_table_and_single_missing_cells(xray_table):
    pre, context, train, _ = xray_table
    model = _dynamic(context, {"image": TINY_ENCODERS["image"], "tabular": TINY_ENCODERS["tabular"]})
    recoverer = NearestNeighbourRecoverer(model.subset_features, model.modality_order).fit(train)
    n_cat = len(pre.input_specs["tabular"]["cardinalities"])
    has_image = train.present["image"]
    rows = torch.nonzero(has_image).flatten()[:8]
    # rows[:4] lose their table; rows[4:] lose their observed 'age' cells (continuous column 0)
    keep_table = torch.ones(len(train), dtype=torch.bool)
    keep_table[rows[:4]] = False
    extra = torch.zeros_like(train.cell_missing)
    age = n_cat
    extra[rows[4:], age] = True
    query = train.with_masks(cell_missing=extra, present={"tabular": keep_table})
    before = _copy(query)
    out = recoverer.recover(query)
    _assert_observed_untouched(before, out)

    own_observed = ~missing_cells(train)
    tab, got = train.inputs["tabular"], out.batch.inputs["tabular"]
    # a training row queried without its table finds itself: its whole table comes back
    assert torch.equal(out.cells[rows[:4]], own_observed[rows[:4]])
    assert torch.equal(got["categorical"][rows[:4]], tab["categorical"][rows[:4]])
    assert torch.equal(got["continuous"][rows[:4]], tab["continuous"][rows[:4]])
    # a missing cell comes from the nearest training row that observed it
    usage = model.usage_from_present(query)[rows[4:]]
    query_z = model.subset_features(query.select(rows[4:]), usage)
    held = model.usage_from_present(train)
    reference = model.subset_features(train, held & usage[:1])
    distance = torch.cdist(query_z, reference)
    candidates = own_observed[:, age] & held.all(dim=1)
    nearest = distance.masked_fill(~candidates[None], float("inf")).argmin(dim=1)
    lacking = missing_cells(query)[rows[4:]]
    # a cell no training row observed stays missing
    assert torch.equal(out.cells[rows[4:]], lacking & own_observed.any(dim=0))
    assert out.cells[rows[4:], age].all()
    assert torch.equal(got["continuous"][rows[4:], 0], tab["continuous"][nearest, 0])
    assert torch.equal(out.recovered["tabular"], missing_cells(query).any(dim=1) & out.cells.any(dim=1))
    assert not out.recovered["image"][has_image].any()


# ---- oracle and shuffled -------------------------------------------------------------------------
def test_oracle_returns_the_true_values(xray_table):
    _, _, _, test = xray_table
    n = len(test)
    keep_image = torch.arange(n) % 3 != 0
    extra = torch.zeros_like(test.cell_missing)
    extra[::2, :] = torch.rand(extra[::2].shape, generator=torch.Generator().manual_seed(0)) < 0.5
    masked = test.with_masks(cell_missing=extra, present={"image": keep_image})
    before = _copy(masked)
    out = OracleRecoverer(test).recover(masked)
    _assert_observed_untouched(before, out)
    truly = ~missing_cells(test)
    assert torch.equal(out.cells, missing_cells(masked) & truly)
    assert torch.equal(out.recovered["image"], ~keep_image & test.present["image"])
    assert torch.equal(out.batch.inputs["image"]["pixels"], test.inputs["image"]["pixels"])
    for key, part in (("categorical", truly[:, :6]), ("continuous", truly[:, 6:])):
        assert torch.equal(out.batch.inputs["tabular"][key][part], test.inputs["tabular"][key][part])
    assert out.recovered["tabular"].any()


def test_shuffled_values_come_from_a_row_of_another_class(digits):
    _, _, test = digits
    n = len(test)
    drop_image, drop_audio = torch.arange(n) % 2 == 0, torch.arange(n) % 5 == 1
    masked = test.with_masks(present={"image": ~drop_image, "audio": ~drop_audio})
    before = _copy(masked)
    recoverer = ShuffledRecoverer(test, seed=3)
    out = recoverer.recover(masked)
    _assert_observed_untouched(before, out)
    assert torch.equal(out.recovered["image"], drop_image) and torch.equal(out.recovered["audio"], drop_audio)
    for m, key, dropped in (("image", "pixels", drop_image), ("audio", "spectrogram", drop_audio)):
        values = test.inputs[m][key].flatten(1)
        for row in torch.nonzero(dropped).flatten().tolist():
            same = (values == out.batch.inputs[m][key][row].flatten()[None]).all(dim=1)
            assert same.any() and (test.target[same] != test.target[row]).all(), (m, row)
    again = recoverer.recover(masked)
    assert torch.equal(again.batch.inputs["image"]["pixels"], out.batch.inputs["image"]["pixels"])
    other = ShuffledRecoverer(test, seed=4).recover(masked)
    assert not torch.equal(other.batch.inputs["image"]["pixels"], out.batch.inputs["image"]["pixels"])


# ---- TIP's reconstruction head -------------------------------------------------------------------
def test_tip_reconstruction_fills_missing_cells_from_the_mtr_head(covid, tmp_path):
    from holomodal.pretraining import Pretrainer

    schema = small_schema(covid.schema, drop=("text",))
    frame = covid.split("train").iloc[:48]
    tiny = {
        "encoders": {"image": {"model_name": "test_resnet"}, "tabular": {"dim": 16, "depth": 1, "heads": 2}},
        "interaction": {"dim": 16, "depth": 1, "heads": 2}, "losses": ["mtr"],
    }
    pretrainer = Pretrainer(schema, model=tiny, batch_size=16, trainer={"max_epochs": 1, "enable_progress_bar": False},
                            run_dir=tmp_path / "tip").fit(frame)
    pre = pretrainer.preprocessor_
    spec = pre.input_specs["tabular"]
    recoverer = create_recoverer("tip", run=tmp_path / "tip", tabular_spec=spec)
    test = pre.transform(covid.split("test").iloc[:30])[0]
    keep_table = torch.arange(len(test)) >= 2
    query = test.with_masks(present={"tabular": keep_table})
    before = _copy(query)
    out = recoverer.recover(query)

    _assert_observed_untouched(before, out)
    missing = missing_cells(query)
    assert torch.equal(out.cells, missing) and torch.equal(out.recovered["tabular"], missing.any(dim=1))
    codes, values = recoverer.predict(query)
    n_cat = len(spec["cardinalities"])
    got = out.batch.inputs["tabular"]
    assert torch.equal(got["categorical"][missing[:, :n_cat]], codes[missing[:, :n_cat]])
    assert torch.equal(got["continuous"][missing[:, n_cat:]], values[missing[:, n_cat:]])
    limit = torch.tensor(spec["cardinalities"])[None].expand_as(codes)
    assert ((codes >= 1) & (codes < limit)).all()

    wider = {**spec, "cardinalities": [k + 1 for k in spec["cardinalities"]]}
    with pytest.raises(ConfigError, match="cardinalities"):
        TIPReconstructionRecoverer(tmp_path / "tip", tabular_spec=wider)
    narrow = query.map(lambda t: t)
    table = query.inputs["tabular"]
    narrow.inputs = {**query.inputs, "tabular": {**table, "continuous": table["continuous"][:, 1:]}}
    with pytest.raises(ConfigError, match="continuous"):
        recoverer.recover(narrow)


# ---- by name -------------------------------------------------------------------------------------
def test_recoverers_by_name(table):
    # MoPoE registers itself from holomodal.selection.mopoe, imported with the package
    assert sorted(RECOVERERS) == ["iterative", "mopoe", "nearest", "oracle", "shuffled", "tip"]
    assert isinstance(create_recoverer("iterative", max_iter=2), IterativeImputerRecoverer)
    assert type(create_recoverer("mopoe")).__name__ == "MoPoERecoverer"
    with pytest.raises(ConfigError, match="unknown recoverer 'magic'") as refused:
        create_recoverer("magic")
    assert all(name in str(refused.value) for name in RECOVERERS)
    with pytest.raises(ConfigError, match="recoverer 'oracle'"):
        create_recoverer("oracle", seed=1)
    with pytest.raises(ConfigError, match="fit"):
        IterativeImputerRecoverer().recover(table[2])
