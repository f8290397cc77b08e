"""Pre-decoded caches of images and audio: fixed-shape arrays in memory-mapped files, built once.

``holomodal data cache`` decodes every image (decoded and resized to uint8 pixels) and every
audio clip (read and turned into a float32 log-mel spectrogram) of a data set once; later
runs read the arrays from the cache instead of decoding the files again (which dominates
the start of a run on a large data set). A cache is keyed by file, not by data set: each
entry is a file's absolute path plus its size and modification time, so an edited or
replaced file simply misses the cache and is decoded as before. A row read from the cache
is byte-for-byte what decoding gave, as the cache stores that very output.

:class:`ArrayCache` is one folder of arrays of one shape and dtype; the decoding setting
that produced them names the folder, so a different setting never reads them:

- images: ``c<channels>-s<size>`` (:class:`ImageCache`), uint8 ``(channels, size, size)``;
- audio: ``audio-sr<sample_rate>-m<n_mels>-d<duration>-f<frame_ms>-h<hop_ms>`` (the
  folder :func:`audio_folder` names), float32 ``(n_mels, frames)``.

Both kinds live side by side under one root. A folder holds ``index.json``, which names
the data file (``data-<id>.u8`` or ``data-<id>.f32``, shape ``(N, *shape)``) and maps keys
to rows. Building again adds the new files: it writes a new data file and then replaces
``index.json`` atomically, so a reader sees either the old cache or the new one, never a
half-written one.

The root is ``$HOLOMODAL_IMAGE_CACHE`` (``off`` disables both caches) or
``~/.cache/holomodal/images``; the name stays as it was when only images were cached, so
existing caches and settings keep working.
"""

from __future__ import annotations

import json
import os
import stat
import uuid
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import numpy as np

CACHE_ENV = "HOLOMODAL_IMAGE_CACHE"
FORMAT_VERSION = 1


def cache_root() -> Path | None:
    setting = os.environ.get(CACHE_ENV)
    if setting and setting.lower() in ("off", "none", "0", "false"):
        return None
    return Path(setting).expanduser() if setting else Path.home() / ".cache" / "holomodal" / "images"


def file_key(path: Path) -> str | None:
    """``abs-path|size|mtime_ns``, or None when the file cannot be stat'ed or is not a
    regular file (a FIFO or device has no stable content to cache)."""
    try:
        st = path.stat()
    except (OSError, ValueError):
        return None
    return f"{path.resolve()}|{st.st_size}|{st.st_mtime_ns}" if stat.S_ISREG(st.st_mode) else None


def audio_folder(sample_rate: int, n_mels: int, duration: float, frame_ms: float, hop_ms: float) -> str:
    """The folder name of one audio setting; every option that changes a spectrogram is in it."""
    return f"audio-sr{int(sample_rate)}-m{int(n_mels)}-d{float(duration)}-f{float(frame_ms)}-h{float(hop_ms)}"


class ArrayCache:
    """Arrays of one ``shape`` and ``dtype`` in ``folder``, one per file key."""

    def __init__(self, folder: Path, shape: Sequence[int], dtype: Any) -> None:
        self.folder = Path(folder)
        self._shape = tuple(int(n) for n in shape)
        self.dtype = np.dtype(dtype)
        # u8, f32: the data file's extension says what it holds to whoever lists the folder
        self._suffix = f"{self.dtype.kind}{self.dtype.itemsize * 8}"
        self._index: dict[str, int] | None = None
        self._data: np.ndarray | None = None
        self._loaded_from: str | None = None

    @property
    def shape(self) -> tuple[int, ...]:
        return self._shape

    def exists(self) -> bool:
        return (self.folder / "index.json").exists()

    def _read(self) -> None:
        index_file = self.folder / "index.json"
        if not index_file.exists():
            self._index, self._data, self._loaded_from = {}, None, None
            return
        record = json.loads(index_file.read_text())
        # image caches written before audio was cached record no dtype: they hold uint8
        if (record.get("format_version") != FORMAT_VERSION or tuple(record["shape"][1:]) != self.shape
                or np.dtype(record.get("dtype", "uint8")) != self.dtype):
            self._index, self._data, self._loaded_from = {}, None, None
            return
        if record["data"] != self._loaded_from:
            n = int(record["shape"][0])
            self._data = np.memmap(self.folder / record["data"], dtype=self.dtype, mode="r", shape=(n, *self.shape)) if n else None
            self._index = {k: int(v) for k, v in record["keys"].items()}
            self._loaded_from = record["data"]

    def __len__(self) -> int:
        self._read()
        return len(self._index or {})

    def lookup(self, keys: Sequence[str | None]) -> tuple[np.ndarray, np.ndarray]:
        """``(rows, found)``: for each key its row in the cache (-1 when absent)."""
        self._read()
        index = self._index or {}
        rows = np.array([index.get(k, -1) if k is not None else -1 for k in keys], dtype=np.int64)
        return rows, rows >= 0

    def gather(self, rows: np.ndarray) -> np.ndarray:
        """Arrays of cache rows, ``(len(rows), *shape)``, read from the memory-mapped file."""
        if self._data is None:
            raise KeyError(f"the cache in {self.folder} is empty")
        order = np.argsort(rows)  # reading the file in order is kinder to the disk
        out = np.empty((len(rows), *self.shape), dtype=self.dtype)
        out[order] = self._data[rows[order]]
        return out

    def fill(self, paths: Sequence[Path | None], out: np.ndarray, present: np.ndarray) -> list[int]:
        """Copy the cached arrays of ``paths`` (None: no file) into their rows of ``out`` and
        mark those rows in ``present``; returns the positions still to be decoded."""
        rows, found = self.lookup([file_key(p) if p is not None else None for p in paths])
        if found.any():
            out[found] = self.gather(rows[found])
            present[found] = True
        return np.flatnonzero(~found).tolist()

    def add(self, paths: Iterable[Path], decode: Callable[[Path], np.ndarray], progress: Callable[[int], Any] | None = None) -> dict[str, int]:
        """Decode the files not yet cached and add them; returns counts (added, cached, failed)."""
        def one_by_one(chunk: list[Path]) -> list[np.ndarray | None]:
            out: list[np.ndarray | None] = []
            for path in chunk:
                try:
                    out.append(decode(path))
                except Exception:  # an unreadable file is reported by the data check, not here
                    out.append(None)
            return out

        return self.add_batches(paths, one_by_one, progress, chunk=1)

    def add_batches(self, paths: Iterable[Path], decode_many: Callable[[list[Path]], Sequence[np.ndarray | None]],
                    progress: Callable[[int], Any] | None = None, chunk: int = 256) -> dict[str, int]:
        """:meth:`add` for decoders that work on many files at once: ``decode_many`` gets up to
        ``chunk`` paths and returns one array per path, None for a file it could not decode."""
        self._read()
        old_index, old_data = dict(self._index or {}), self._data
        todo: dict[str, Path] = {}
        failed = 0
        for p in paths:
            key = file_key(Path(p))
            if key is None:
                failed += 1
            elif key not in old_index and key not in todo:
                todo[key] = Path(p)
        counts = {"added": 0, "cached": len(old_index), "failed": failed}
        if not todo:
            return counts
        self.folder.mkdir(parents=True, exist_ok=True)
        name = f"data-{uuid.uuid4().hex[:12]}.{self._suffix}"
        total = len(old_index) + len(todo)
        data = np.memmap(self.folder / name, dtype=self.dtype, mode="w+", shape=(total, *self.shape))
        index = dict(old_index)
        if old_data is not None and len(old_index):
            data[: len(old_data)] = old_data
        row = len(old_index)
        kept: dict[str, int] = {}
        pending = list(todo.items())
        for start in range(0, len(pending), max(1, int(chunk))):
            part = pending[start : start + max(1, int(chunk))]
            arrays = decode_many([path for _, path in part])
            done = 0
            for (key, _), array in zip(part, arrays):
                if array is None:
                    counts["failed"] += 1
                    continue
                data[row] = array
                kept[key] = row
                row += 1
                done += 1
            if progress is not None and done:
                progress(done)
        data.flush()
        del data
        if row < total:  # drop the rows of files that failed to decode
            with open(self.folder / name, "r+b") as fh:
                fh.truncate(row * int(np.prod(self.shape)) * self.dtype.itemsize)
        index.update(kept)
        record = {"format_version": FORMAT_VERSION, "shape": [row, *self.shape], "dtype": self.dtype.name,
                  "data": name, "keys": index}
        tmp = self.folder / f"index.json.{uuid.uuid4().hex[:8]}.tmp"
        tmp.write_text(json.dumps(record))
        os.replace(tmp, self.folder / "index.json")
        # the previous data file is no longer named by the index; readers that mapped it keep their mapping
        for stale in self.folder.glob(f"data-*.{self._suffix}"):
            if stale.name != name:
                try:
                    stale.unlink()
                except OSError:
                    pass
        counts["added"] = len(kept)
        self._loaded_from = None
        return counts


class ImageCache(ArrayCache):
    """The cached images of one (channels, size) setting."""

    def __init__(self, root: Path, channels: int, size: int) -> None:
        self.channels, self.size = int(channels), int(size)
        super().__init__(Path(root) / f"c{self.channels}-s{self.size}", (self.channels, self.size, self.size), np.uint8)
