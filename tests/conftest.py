import os
from pathlib import Path

import pytest

os.environ.setdefault("HOLOMODAL_DATA", str((Path(__file__).resolve().parents[1] / ".." / "shared" / "data").resolve()))


@pytest.fixture(scope="session")
def data_root() -> Path:
    return Path(os.environ["HOLOMODAL_DATA"])


@pytest.fixture(scope="session")
def covid(data_root):
    from holomodal.data import load_dataset

    return load_dataset("covid_cxr", root=data_root)


@pytest.fixture(scope="session")
def av_digits(data_root):
    from holomodal.data import load_dataset

    return load_dataset("av_digits", root=data_root)
