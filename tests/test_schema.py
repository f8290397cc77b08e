"""Schema validation on real rows: duplicate column names, malformed time-series cells, and
infinite or beyond-float32 numbers, named by column and row before anything is fitted."""

import numpy as np
import pandas as pd
import pytest

from holomodal.data import load_dataset
from holomodal.errors import DataError, SchemaError
from holomodal.preprocessing import Preprocessor
from holomodal.schema import Schema


@pytest.fixture(scope="module")
def physionet(data_root):
    bundle = load_dataset("physionet2012", root=data_root)
    return bundle.schema, bundle.split("train").iloc[:40].reset_index(drop=True)


@pytest.fixture()
def small(covid):
    return covid.frame.iloc[:40].reset_index(drop=True)


def test_duplicate_column_names_are_named(covid, small):
    col = covid.schema.continuous[0].name
    bad = pd.concat([small, small[[col]]], axis=1)
    with pytest.raises(SchemaError, match=rf"duplicate column name\(s\) '{col}'"):
        covid.schema.validate(bad)
    with pytest.raises(SchemaError, match="duplicate column name"):
        Preprocessor(covid.schema).fit(bad)


@pytest.mark.parametrize("cell, described", [
    ("12:00,HR,80", "str '12:00,HR,80'"),
    ([[0.5, 1, 80.0], [1.0, 2]], "list of rows of length 2, 3"),
    (np.zeros((4, 2)), r"array of shape \(4, 2\)"),
    (7.5, "float"),
])
def test_malformed_timeseries_cell_names_column_and_row(physionet, cell, described):
    schema, frame = physionet
    bad = frame.copy()
    bad.at[6, "timeseries"] = cell
    bad.at[9, "timeseries"] = cell
    with pytest.raises(SchemaError, match=rf"time-series column 'timeseries': row\(s\) 6, 9 do not hold.*"
                                          rf"rows of 3 numbers \(row 6 holds an? {described}\)"):
        schema.validate(bad)
    schema.validate(frame)  # the real cells, and an empty or missing one, are fine
    empty = frame.copy()
    empty.at[1, "timeseries"] = None
    empty.at[2, "timeseries"] = np.zeros((0, 3))
    schema.validate(empty)


@pytest.mark.parametrize("value", [np.inf, -np.inf, 1e300])
def test_nonfinite_continuous_value_names_column_and_rows(covid, small, value):
    col = covid.schema.continuous[2].name
    bad = small.copy()
    bad.loc[[4, 11], col] = value
    message = rf"column '{col}' \(continuous\) holds infinite or out-of-range numbers.*row\(s\) 4, 11.*on_nonfinite"
    with pytest.raises(DataError, match=message):
        covid.schema.validate(bad)
    pre = Preprocessor(covid.schema)
    with pytest.raises(DataError, match=message):
        pre.fit(bad)
    pre.fit(small)
    with pytest.raises(DataError, match=message):  # prediction inputs are validated alike
        pre.transform(bad, with_target=False)


def test_nonfinite_value_given_as_text_is_caught(covid, small):
    col = covid.schema.continuous[0].name
    bad = small.astype({col: object})
    bad.loc[2, col] = "1e300"
    with pytest.raises(DataError, match=rf"column '{col}'.*1e\+300.*row\(s\) 2:"):
        covid.schema.validate(bad)


def test_largest_float32_values_are_valid(covid, small):
    col = covid.schema.continuous[0].name
    edge = small.copy()
    edge.loc[0, col] = float(np.finfo(np.float32).max)
    edge.loc[1, col] = -1e30
    covid.schema.validate(edge)


def test_nonfinite_timeseries_value_names_column_and_row(physionet):
    schema, frame = physionet
    bad = frame.copy()
    cell = bad.at[3, "timeseries"].astype(np.float64)
    cell[2, 2] = 1e300
    bad.at[3, "timeseries"] = cell
    with pytest.raises(DataError, match=r"column 'timeseries' \(timeseries\) holds infinite.*1e\+300.*row\(s\) 3:"):
        schema.validate(bad)
    bad.at[3, "timeseries"] = np.where(np.isfinite(cell) & (np.abs(cell) < 1e300), cell, np.inf).astype(np.float32)
    with pytest.raises(DataError, match=r"e\.g\. inf.*row\(s\) 3:"):
        schema.validate(bad)


def test_policy_key_round_trips_and_is_checked(covid):
    lenient = Schema.from_dict({**covid.schema.to_dict(), "on_nonfinite": "missing"})
    assert Schema.from_dict(lenient.to_dict()).on_nonfinite == "missing"
    with pytest.raises(SchemaError, match="on_nonfinite must be 'error' or 'missing', not 'drop'"):
        Schema.from_dict({**covid.schema.to_dict(), "on_nonfinite": "drop"})


def test_timeseries_cells_read_back_from_parquet_are_valid(physionet, tmp_path):
    schema, frame = physionet
    part = frame.iloc[:8].assign(timeseries=[cell.tolist() for cell in frame["timeseries"][:8]])
    part.to_parquet(tmp_path / "series.parquet")
    back = pd.read_parquet(tmp_path / "series.parquet")  # cells come back as arrays of row arrays
    schema.validate(back)
    pre = Preprocessor(schema).fit(frame.iloc[:8])
    original, _ = pre.transform(frame.iloc[:8])
    again, _ = pre.transform(back)
    for key, tensor in original.inputs["timeseries"].items():
        assert np.array_equal(tensor.numpy(), again.inputs["timeseries"][key].numpy()), key
