"""The pre-decoded audio cache: same spectrograms as decoding, no WAV read, stale files miss."""

import json
import os
import shutil

import numpy as np
import pandas as pd
import pytest
import soundfile
import torch

from tiny import write_own_files
from holomodal.cli import main
from holomodal.preprocessing.audio import AudioProcessor
from holomodal.preprocessing.image_cache import CACHE_ENV, ArrayCache, ImageCache
from holomodal.schema import Column, Modality, Schema

AUDIO_FOLDER = "audio-sr8000-m40-d1.0-f25.0-h10.0"


@pytest.fixture()
def clips(data_root, tmp_path, monkeypatch):
    """Twenty real FSDD recordings copied out, a table naming them (and one empty cell) and a private cache."""
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "cache"))
    folder = tmp_path / "clips"
    folder.mkdir()
    sources = sorted((data_root / "fsdd" / "recordings").glob("*.wav"))[::150][:20]
    assert len(sources) == 20
    for source in sources:
        shutil.copy(source, folder / source.name)
    names = [s.name for s in sources]
    frame = pd.DataFrame({"audio": names + [None], "label": [n.split("_")[0] for n in names] + ["0"]})
    column = Column("audio", Modality.AUDIO, {"root": str(folder), "sample_rate": 8000, "n_mels": 40, "duration": 1.0})
    return folder, frame, column


@pytest.fixture()
def wav_reads(monkeypatch):
    """Every file soundfile is asked to read, in a list; the read itself still happens."""
    calls = []
    real_read = soundfile.read

    def counted(file, *args, **kwargs):
        calls.append(getattr(file, "name", file))
        return real_read(file, *args, **kwargs)

    monkeypatch.setattr(soundfile, "read", counted)
    return calls


def _decode(column, frame):
    summary = {}
    specs, present = AudioProcessor(column).decode(frame, summary)
    return specs, present, summary


def _fresh(column, frame, monkeypatch, cache_folder):
    monkeypatch.setenv(CACHE_ENV, "off")
    specs, present, summary = _decode(column, frame)
    monkeypatch.setenv(CACHE_ENV, str(cache_folder))
    assert "cached_audio" not in summary
    return specs, present


def test_cached_spectrograms_equal_decoded_ones_exactly(clips, tmp_path, monkeypatch):
    folder, frame, column = clips
    fresh, fresh_present = _fresh(column, frame, monkeypatch, tmp_path / "cache")
    assert fresh.shape == (21, 1, 40, 101) and fresh_present.sum() == 20
    # half the clips cached: the cached rows and the decoded ones land where they belong
    assert AudioProcessor(column).build_cache(frame.iloc[:10]) == {"added": 10, "cached": 0, "failed": 0}
    mixed, present, summary = _decode(column, frame)
    assert summary["cached_audio"] == {"audio": 10}
    assert torch.equal(mixed, fresh) and torch.equal(present, fresh_present)
    assert AudioProcessor(column).build_cache(frame) == {"added": 10, "cached": 10, "failed": 0}
    cached, present, summary = _decode(column, frame)
    assert summary["cached_audio"] == {"audio": 20}
    assert torch.equal(cached, fresh) and torch.equal(present, fresh_present)
    assert not present[-1]  # the empty cell stays an absent clip
    # float32 arrays in their own folder beside the image caches, one data file at a time
    cache_dir = tmp_path / "cache" / AUDIO_FOLDER
    assert [p.suffix for p in cache_dir.glob("data-*")] == [".f32"]
    record = json.loads((cache_dir / "index.json").read_text())
    assert record["dtype"] == "float32" and record["shape"] == [20, 40, 101]


def test_a_second_transform_with_the_cache_reads_no_wav(clips, tmp_path, monkeypatch, wav_reads):
    folder, frame, column = clips
    monkeypatch.setenv(CACHE_ENV, "off")
    expected = AudioProcessor(column).fit(frame)
    expected_specs, expected_present = expected.transform(frame, {})
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "cache"))
    AudioProcessor(column).build_cache(frame)
    wav_reads.clear()
    proc = AudioProcessor(column).fit(frame)
    summary = {}
    specs, present = proc.transform(frame, summary)
    assert wav_reads == []
    assert summary == {"cached_audio": {"audio": 20}}
    assert (proc.mean_, proc.std_) == (expected.mean_, expected.std_)
    assert torch.equal(specs["spectrogram"], expected_specs["spectrogram"]) and torch.equal(present, expected_present)


def test_a_changed_file_misses_the_cache(clips, tmp_path, monkeypatch):
    folder, frame, column = clips
    AudioProcessor(column).build_cache(frame)
    before, _, _ = _decode(column, frame)
    changed = folder / frame.loc[0, "audio"]
    shutil.copy(folder / frame.loc[1, "audio"], changed)
    stamp = os.stat(changed).st_mtime_ns + 10**9  # a whole second: no file system rounds that away
    os.utime(changed, ns=(stamp, stamp))
    after, present, summary = _decode(column, frame)
    assert summary["cached_audio"] == {"audio": 19}
    assert torch.equal(after[0], after[1]) and not torch.equal(after[0], before[0])
    assert torch.equal(after[1:], before[1:]) and present[:20].all()
    assert AudioProcessor(column).build_cache(frame)["added"] == 1
    assert _decode(column, frame)[2]["cached_audio"] == {"audio": 20}


def test_cache_false_bypasses_the_cache_and_another_setting_has_its_own(clips, tmp_path, monkeypatch, wav_reads):
    folder, frame, column = clips
    AudioProcessor(column).build_cache(frame)
    wav_reads.clear()
    off = Column(column.name, column.modality, {**column.options, "cache": False})
    specs, present, summary = _decode(off, frame)
    assert "cached_audio" not in summary and len(wav_reads) == 20
    assert torch.equal(specs, _decode(column, frame)[0])
    # a different hop makes different spectrograms: it does not read the cache built above
    other = Column(column.name, column.modality, {**column.options, "hop_ms": 20.0})
    specs, _, summary = _decode(other, frame)
    assert "cached_audio" not in summary and specs.shape == (21, 1, 40, 51)


def test_an_unreadable_file_is_counted_and_decoded_as_before(clips, tmp_path, monkeypatch):
    folder, frame, column = clips
    (folder / "broken.wav").write_bytes(b"RIFF, but not a wave file at all")
    with_broken = pd.concat([frame, pd.DataFrame({"audio": ["broken.wav"], "label": ["0"]})], ignore_index=True)
    assert AudioProcessor(column).build_cache(with_broken) == {"added": 20, "cached": 0, "failed": 1}
    record = json.loads((tmp_path / "cache" / AUDIO_FOLDER / "index.json").read_text())
    assert record["shape"][0] == 20  # the failed file's row is cut off the data file
    assert (tmp_path / "cache" / AUDIO_FOLDER / record["data"]).stat().st_size == 20 * 40 * 101 * 4
    summary = {}
    specs, present = AudioProcessor(column, on_unreadable="missing").decode(with_broken, summary)
    assert summary == {"cached_audio": {"audio": 20}, "unreadable_files": {"audio": 1}}
    assert present.tolist() == [True] * 20 + [False, False]
    fresh, _ = _fresh(column, frame, monkeypatch, tmp_path / "cache")
    assert torch.equal(specs[:21], fresh)


def test_image_caches_written_before_dtypes_were_recorded_still_read(clips, tmp_path):
    folder, frame, _ = clips
    paths = sorted(folder.glob("*.wav"))[:3]
    cache = ImageCache(tmp_path / "cache", 1, 4)
    cache.add(paths, lambda p: np.full((1, 4, 4), len(p.name), dtype=np.uint8))
    index_file = cache.folder / "index.json"
    record = json.loads(index_file.read_text())
    assert cache.folder.name == "c1-s4" and record["data"].endswith(".u8")
    del record["dtype"]
    index_file.write_text(json.dumps(record))
    rows, found = ImageCache(tmp_path / "cache", 1, 4).lookup([None] + [str(k) for k in record["keys"]])
    assert found.tolist() == [False, True, True, True]
    # the same folder read as float32 is another cache, not a misread of these bytes
    assert len(ArrayCache(cache.folder, (1, 4, 4), np.float32)) == 0


def test_cli_caches_audio_columns_of_own_files(clips, tmp_path, monkeypatch, capsys):
    folder, frame, column = clips
    table, schema = write_own_files(frame, column, tmp_path)
    command = ["data", "cache", "--schema", str(schema), "--table", str(table)]
    assert main(command) == 0
    out = capsys.readouterr().out
    assert "column 'audio' (40 mels x 101 frames at 8000 Hz): 20 clip(s) added, 0 already cached, 0 unreadable or missing" in out
    assert main(command) == 0
    assert "0 clip(s) added, 20 already cached" in capsys.readouterr().out
    assert _decode(column, frame)[2]["cached_audio"] == {"audio": 20}
    neither = tmp_path / "neither.json"
    neither.write_text(Schema([Column("speaker", Modality.CATEGORICAL), Column("label", Modality.LABEL)]).to_json())
    frame.assign(speaker="x").to_csv(table, index=False)
    assert main(["data", "cache", "--schema", str(neither), "--table", str(table)]) == 2
    assert "has no image or audio column: nothing to cache" in capsys.readouterr().err
