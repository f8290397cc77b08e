"""Under ``on_nonfinite: missing`` infinite and beyond-float32 numbers are missing cells,
counted in the summary; statistics come from finite values only and standardised values
stay finite whatever the input."""

import numpy as np
import pytest
import torch

from holomodal.data import load_dataset
from holomodal.preprocessing import Preprocessor
from holomodal.preprocessing.tabular import STANDARD_LIMIT
from holomodal.schema import Schema


def _lenient(schema):
    return Schema.from_dict({**schema.to_dict(), "on_nonfinite": "missing"})


@pytest.fixture()
def small(covid):
    return covid.frame.iloc[:40].reset_index(drop=True)


def test_nonfinite_cells_are_missing_and_counted(covid, small):
    col = covid.schema.continuous[0].name
    bad = small.copy()
    bad.loc[[1, 2, 3], col] = [np.inf, -np.inf, 1e300]
    pre = Preprocessor(_lenient(covid.schema)).fit(bad)
    clean = small[col].drop(index=[1, 2, 3]).astype(float)
    tab = pre.processors["tabular"]
    # fitted on the finite values only, and in float64
    assert tab.mean_[col] == pytest.approx(clean.mean(), rel=1e-12)
    assert tab.std_[col] == pytest.approx(clean.std(ddof=0), rel=1e-12)
    batch, summary = pre.transform(bad)
    j = tab.names.index(col)
    assert summary["nonfinite_cells"] == {col: 3}
    assert summary["missing_cells"][col] == 3 + int(clean.isna().sum())
    assert batch.cell_missing[[1, 2, 3], j].all()
    continuous = batch.inputs["tabular"]["continuous"]
    assert torch.isfinite(continuous).all() and (continuous[[1, 2, 3], j - len(covid.schema.categorical)] == 0).all()
    _, clean_summary = pre.transform(small)
    assert "nonfinite_cells" not in clean_summary


def test_statistics_never_overflow_and_standardised_values_are_clipped(covid, small):
    col = covid.schema.continuous[0].name
    huge = small.copy()
    f32_max = float(np.finfo(np.float32).max)
    huge[col] = np.where(np.arange(len(huge)) % 2 == 0, f32_max, -f32_max)
    pre = Preprocessor(covid.schema).fit(huge)
    std = pre.processors["tabular"].std_[col]
    assert np.isfinite(std) and std == pytest.approx(f32_max)
    # a tiny training spread and an extreme value at prediction time: |z| would be ~1e70
    tiny = small.copy()
    tiny[col] = np.where(np.arange(len(tiny)) % 2 == 0, 1e-40, 0.0)
    pre = Preprocessor(covid.schema).fit(tiny)
    probe = tiny.copy()
    probe.loc[0, col] = 1e30
    batch, _ = pre.transform(probe)
    values = batch.inputs["tabular"]["continuous"][:, 0]
    assert torch.isfinite(values).all() and float(values[0]) == STANDARD_LIMIT


def test_nonfinite_timeseries_observations_are_dropped_and_counted(data_root):
    bundle = load_dataset("physionet2012", root=data_root)
    frame = bundle.split("train").iloc[:40].reset_index(drop=True)
    bad = frame.copy()
    cell = bad.at[0, "timeseries"].astype(np.float64)
    cell[:2, 2] = [np.inf, 1e300]
    bad.at[0, "timeseries"] = cell
    pre = Preprocessor(_lenient(bundle.schema)).fit(bad)
    reference = Preprocessor(bundle.schema).fit(frame.assign(timeseries=[cell[2:]] + list(frame["timeseries"][1:])))
    np.testing.assert_allclose(pre.processors["timeseries"].mean_, reference.processors["timeseries"].mean_)
    np.testing.assert_allclose(pre.processors["timeseries"].std_, reference.processors["timeseries"].std_)
    batch, summary = pre.transform(bad)
    assert summary["nonfinite_cells"] == {"timeseries": 2}
    assert all(torch.isfinite(t).all() for t in batch.inputs["timeseries"].values())
