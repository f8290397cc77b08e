"""The pre-decoded image cache: same pixels as decoding, stale files miss, builds add."""

import shutil
from pathlib import Path

import pandas as pd
import pytest
import torch

from tiny import write_own_files
from holomodal.cli import main
from holomodal.preprocessing.image import ImageProcessor
from holomodal.preprocessing.image_cache import CACHE_ENV, ImageCache
from holomodal.schema import Column, Modality


@pytest.fixture()
def xrays(covid, tmp_path, monkeypatch):
    """Twelve real X-ray files copied out of covid_cxr, a table naming them and a private cache."""
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "cache"))
    folder = tmp_path / "images"
    folder.mkdir()
    source = covid.schema["image"].options.get("root")
    names = []
    for value in covid.frame["image"].dropna().unique()[:12]:
        path = Path(source) / value if source and not Path(value).is_absolute() else Path(value)
        shutil.copy(path, folder / path.name)
        names.append(path.name)
    frame = pd.DataFrame({"xray": names + [None], "label": ["a", "b"] * 6 + ["a"]})
    column = Column("xray", Modality.IMAGE, {"root": str(folder), "channels": 1, "size": 64})
    return folder, frame, column


def _decode(column, frame):
    summary = {}
    pixels, present = ImageProcessor(column).decode(frame, summary)
    return pixels, present, summary


def test_cached_pixels_are_byte_identical_to_decoding(xrays, monkeypatch):
    folder, frame, column = xrays
    monkeypatch.setenv(CACHE_ENV, "off")
    fresh, fresh_present, _ = _decode(column, frame)
    monkeypatch.setenv(CACHE_ENV, str(folder.parent / "cache"))
    counts = ImageProcessor(column).build_cache(frame)
    assert counts == {"added": 12, "cached": 0, "failed": 0}
    cached, present, summary = _decode(column, frame)
    assert summary["cached_images"] == {"xray": 12}
    assert torch.equal(cached, fresh) and torch.equal(present, fresh_present)
    assert not present[-1]  # the empty cell stays an absent image
    assert ImageProcessor(column).build_cache(frame) == {"added": 0, "cached": 12, "failed": 0}


def test_a_replaced_file_misses_the_cache_and_new_files_are_added(xrays):
    folder, frame, column = xrays
    ImageProcessor(column).build_cache(frame.iloc[:6])
    cache = ImageCache(folder.parent / "cache", 1, 64)
    first_data = sorted(p.name for p in cache.folder.glob("data-*.u8"))
    # the file behind row 0 now holds row 1's image: its size/mtime key changes
    shutil.copy(folder / frame.loc[1, "xray"], folder / frame.loc[0, "xray"])
    pixels, _, summary = _decode(column, frame.iloc[:6])
    assert summary["cached_images"] == {"xray": 5}
    assert torch.equal(pixels[0], pixels[1])
    counts = ImageProcessor(column).build_cache(frame)
    assert counts["added"] == 7 and counts["cached"] == 6  # the replaced file and the six new ones
    assert len(cache) == 13
    # one data file at a time: the index names the new one and the old one is gone
    assert sorted(p.name for p in cache.folder.glob("data-*.u8")) != first_data
    assert len(list(cache.folder.glob("data-*.u8"))) == 1


def test_cli_builds_the_cache_for_own_files_and_refuses_when_switched_off(xrays, tmp_path, monkeypatch, capsys):
    folder, frame, column = xrays
    table, schema = write_own_files(frame, column, tmp_path)
    assert main(["data", "cache", "--schema", str(schema), "--table", str(table)]) == 0
    out = capsys.readouterr().out
    assert "column 'xray' (1x64x64): 12 image(s) added, 0 already cached, 0 unreadable or missing" in out
    monkeypatch.setenv(CACHE_ENV, "off")
    assert main(["data", "cache", "--schema", str(schema), "--table", str(table)]) == 2
    assert "image cache is switched off" in capsys.readouterr().err
