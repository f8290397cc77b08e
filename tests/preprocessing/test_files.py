"""Image and audio cells that name something other than a readable regular file inside the
column's root: FIFOs, folders, devices, paths leading out of the root, oversized images.
Each is refused with a message naming row, column and path, or (``on_unreadable: missing``)
becomes a missing cell; none may hang the process."""

import os
import shutil
import threading
from pathlib import Path

import pytest
from PIL import Image, ImageFile

from holomodal.errors import DataError
from holomodal.preprocessing import Preprocessor
from holomodal.schema import Column, Modality, Schema

COVID_IMAGES = sorted(p for p in Path(os.environ["HOLOMODAL_DATA"], "covid_cxr", "images").iterdir() if p.suffix == ".jpg")
FSDD = Path(os.environ["HOLOMODAL_DATA"], "fsdd", "recordings")
LABELS = ["other", "COVID-19", "other"]
ROWS = [10, 11, 12]  # not 0..n-1, so a message naming a position instead of the row shows


def _frame(column, cells):
    import pandas as pd

    return pd.DataFrame({column: cells, "y": LABELS[: len(cells)]}, index=ROWS[: len(cells)])


def _image_schema(root=None, **policy):
    options = {"channels": 1, "size": 16, **({"root": str(root)} if root else {})}
    return Schema([Column("xray", Modality.IMAGE, options), Column("y", Modality.LABEL, {"task": "binary"})], **policy)


def _audio_schema(root, **policy):
    options = {"root": str(root), "sample_rate": 8000, "n_mels": 16, "duration": 0.25}
    return Schema([Column("voice", Modality.AUDIO, options), Column("y", Modality.LABEL, {"task": "binary"})], **policy)


@pytest.fixture()
def images(tmp_path):
    """A root folder with two real chest X-rays from covid_cxr."""
    root = tmp_path / "images"
    root.mkdir()
    for i, source in enumerate(COVID_IMAGES[:2]):
        shutil.copy(source, root / f"xray{i}.jpg")
    return root


def _without_hanging(work, fifos, seconds=20):
    """``work()``'s result or exception. If it is still running after ``seconds`` it is
    stuck opening a FIFO: a writer is opened on each so the reader wakes, and the test fails
    instead of hanging the whole suite."""
    outcome = {}

    def call():
        try:
            outcome["value"] = work()
        except BaseException as exc:  # handed to the test thread
            outcome["error"] = exc

    thread = threading.Thread(target=call, daemon=True)
    thread.start()
    thread.join(seconds)
    if thread.is_alive():
        for fifo in fifos:
            try:
                os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
            except OSError:
                pass
        thread.join(seconds)
        pytest.fail(f"reading {[str(f) for f in fifos]} blocked for more than {seconds} s")
    if "error" in outcome:
        raise outcome["error"]
    return outcome["value"]


def test_fifo_image_is_an_error_naming_row_column_and_path(images):
    os.mkfifo(images / "pipe.jpg")
    df = _frame("xray", ["xray0.jpg", "pipe.jpg", "xray1.jpg"])
    with pytest.raises(DataError) as caught:
        _without_hanging(lambda: Preprocessor(_image_schema(images)).fit(df), [images / "pipe.jpg"])
    message = str(caught.value)
    assert "row 11" in message and "'xray'" in message and "pipe.jpg" in message and "FIFO" in message
    assert "on_unreadable: missing" in message


def test_fifo_image_is_a_missing_cell_under_policy_missing(images):
    os.mkfifo(images / "pipe.jpg")
    df = _frame("xray", ["xray0.jpg", "pipe.jpg", "xray1.jpg"])

    def train_and_transform():
        pre = Preprocessor(_image_schema(images, on_unreadable="missing")).fit(df)
        return pre.transform(df)

    batch, summary = _without_hanging(train_and_transform, [images / "pipe.jpg"])
    assert batch.present["xray"].tolist() == [True, False, True]
    assert int(batch.inputs["xray"]["pixels"][1].abs().sum()) == 0
    assert int(batch.inputs["xray"]["pixels"][0].float().std()) > 0  # the real X-ray was decoded
    assert summary["unreadable_files"] == {"xray": 1}


@pytest.mark.parametrize("kind", ["folder", "character device"])
def test_folder_and_device_paths_are_unreadable(images, kind):
    target = images / "sub" if kind == "folder" else Path("/dev/null")
    if kind == "folder":
        target.mkdir()
    # /dev/null lies outside every root: a column without one declares no boundary
    cells = [str(images / "xray0.jpg"), str(target), str(images / "xray1.jpg")]
    df = _frame("xray", cells)
    with pytest.raises(DataError) as caught:
        Preprocessor(_image_schema()).fit(df)
    message = str(caught.value)
    assert "row 11" in message and "'xray'" in message and str(target) in message and f"is a {kind}" in message
    batch, summary = Preprocessor(_image_schema(on_unreadable="missing")).fit(df).transform(df)
    assert batch.present["xray"].tolist() == [True, False, True]
    assert summary["unreadable_files"] == {"xray": 1}


@pytest.mark.parametrize("how", ["dot-dot", "absolute", "symbolic link"])
def test_path_outside_the_root_is_refused_unless_allowed(images, how):
    outside = images.parent / "outside.jpg"
    shutil.copy(COVID_IMAGES[2], outside)
    if how == "symbolic link":
        (images / "link.jpg").symlink_to(outside)
    cell = {"dot-dot": "../outside.jpg", "absolute": str(outside), "symbolic link": "link.jpg"}[how]
    df = _frame("xray", ["xray0.jpg", cell, "xray1.jpg"])
    for policy in ("error", "missing"):  # a path out of the root is never just a missing file
        with pytest.raises(DataError) as caught:
            Preprocessor(_image_schema(images, on_unreadable=policy)).fit(df)
        message = str(caught.value)
        assert "row(s) 11 " in message and "'xray'" in message and cell in message and str(images) in message
        assert "allow_outside_root" in message
    batch, _ = Preprocessor(_image_schema(images, allow_outside_root=True)).fit(df).transform(df)
    assert batch.present["xray"].tolist() == [True, True, True]


def test_paths_inside_the_root_pass_whatever_their_spelling(images):
    (images / "sub").mkdir()
    cells = ["sub/../xray0.jpg", str(images / "xray1.jpg"), "./xray0.jpg"]
    batch, _ = Preprocessor(_image_schema(images)).fit(_frame("xray", cells)).transform(_frame("xray", cells))
    assert batch.present["xray"].tolist() == [True, True, True]


def test_image_above_the_pixel_cap_is_refused_before_decoding(images, monkeypatch):
    big = images / "big.png"
    Image.new("L", (40, 30), color=128).save(big)
    for name in ("xray0.jpg", "xray1.jpg"):
        with Image.open(images / name) as xray:
            assert xray.size[0] * xray.size[1] > 1200
    decoded = []
    original_load = ImageFile.ImageFile.load

    def counting_load(self):
        decoded.append(self.size)
        return original_load(self)

    monkeypatch.setattr(ImageFile.ImageFile, "load", counting_load)
    with pytest.raises(DataError) as caught:
        Preprocessor(_image_schema(images, max_image_pixels=1199)).fit(_frame("xray", [None, "big.png", None]))
    message = str(caught.value)
    assert "row 11" in message and "big.png" in message and "40 x 30 = 1200 pixels" in message
    assert "max_image_pixels of 1199" in message
    assert (40, 30) not in decoded  # refused on the header alone
    # at the cap it is read; the X-rays (larger) are then the ones refused, as missing cells
    decoded.clear()
    df = _frame("xray", ["xray0.jpg", "big.png", "xray1.jpg"])
    schema = _image_schema(images, max_image_pixels=1200, on_unreadable="missing")
    batch, summary = Preprocessor(schema).fit(df).transform(df)
    assert batch.present["xray"].tolist() == [False, True, False]
    assert summary["unreadable_files"] == {"xray": 2}
    assert decoded and all(size == (40, 30) for size in decoded)


@pytest.fixture()
def recordings(tmp_path):
    root = tmp_path / "audio"
    root.mkdir()
    for i, name in enumerate(["0_george_0.wav", "1_jackson_0.wav"]):
        shutil.copy(FSDD / name, root / f"clip{i}.wav")
    return root


def test_fifo_audio_is_an_error_or_a_missing_cell(recordings):
    os.mkfifo(recordings / "pipe.wav")
    df = _frame("voice", ["clip0.wav", "pipe.wav", "clip1.wav"])
    with pytest.raises(DataError) as caught:
        _without_hanging(lambda: Preprocessor(_audio_schema(recordings)).fit(df), [recordings / "pipe.wav"])
    message = str(caught.value)
    assert "row 11" in message and "'voice'" in message and "pipe.wav" in message and "FIFO" in message

    def train_and_transform():
        return Preprocessor(_audio_schema(recordings, on_unreadable="missing")).fit(df).transform(df)

    batch, summary = _without_hanging(train_and_transform, [recordings / "pipe.wav"])
    assert batch.present["voice"].tolist() == [True, False, True]
    assert float(batch.inputs["voice"]["spectrogram"][0].std()) > 0
    assert summary["unreadable_files"] == {"voice": 1}


def test_audio_path_outside_the_root_is_refused(recordings):
    outside = recordings.parent / "outside.wav"
    shutil.copy(FSDD / "2_theo_0.wav", outside)
    df = _frame("voice", ["clip0.wav", "../outside.wav", "clip1.wav"])
    with pytest.raises(DataError, match=r"column 'voice': row\(s\) 11 .*\.\./outside\.wav.*allow_outside_root"):
        Preprocessor(_audio_schema(recordings)).fit(df)
    batch, _ = Preprocessor(_audio_schema(recordings, allow_outside_root=True)).fit(df).transform(df)
    assert batch.present["voice"].tolist() == [True, True, True]
