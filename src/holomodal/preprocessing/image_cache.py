"""A pre-decoded image cache: uint8 arrays in a memory-mapped file, built once.

``holomodal data cache`` decodes and resizes every image of a data set once; later runs
read the pixels from the cache instead of decoding the files again (which dominates the
start of a run on a large image set). The cache is keyed by file, not by data set: each
entry is a file's absolute path plus its size and modification time, so an edited or
replaced file simply misses the cache and is decoded as before. A row read from the cache
is byte-for-byte what decoding would give, as the cache stores that very output.

Layout: ``<cache>/c<channels>-s<size>/index.json`` names the data file
(``data-<id>.u8``, shape ``(N, channels, size, size)``) and maps keys to rows. Building
again adds the new files: it writes a new data file and then replaces ``index.json``
atomically, so a reader sees either the old cache or the new one, never a half-written one.

The folder is ``$HOLOMODAL_IMAGE_CACHE`` (``off`` disables the cache) or
``~/.cache/holomodal/images``.
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


class ImageCache:
    """The cached images of one (channels, size) setting."""

    def __init__(self, root: Path, channels: int, size: int) -> None:
        self.folder = Path(root) / f"c{channels}-s{size}"
        self.channels, self.size = int(channels), int(size)
        self._index: dict[str, int] | None = None
        self._data: np.ndarray | None = None
        self._loaded_from: str | None = None

    @property
    def shape(self) -> tuple[int, int, int]:
        return (self.channels, self.size, self.size)

    def _read(self) -> None:
        index_file = self.folder / "index.json"
        if not index_file.exists():
            self._index, self._data, self._loaded_from = {}, None, None
            return
        record = json.loads(index_file.read_text())
        if record.get("format_version") != FORMAT_VERSION or tuple(record["shape"][1:]) != self.shape:
            self._index, self._data, self._loaded_from = {}, None, None
            return
        if record["data"] != self._loaded_from:
            n = int(record["shape"][0])
            self._data = np.memmap(self.folder / record["data"], dtype=np.uint8, mode="r", shape=(n, *self.shape)) if n else None
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
        """Pixels of cache rows (len(rows), C, S, S), read from the memory-mapped file."""
        if self._data is None:
            raise KeyError("the image cache is empty")
        order = np.argsort(rows)  # reading the file in order is kinder to the disk
        out = np.empty((len(rows), *self.shape), dtype=np.uint8)
        out[order] = self._data[rows[order]]
        return out

    def add(self, paths: Iterable[Path], decode: Callable[[Path], np.ndarray], progress: Callable[[int], Any] | None = None) -> dict[str, int]:
        """Decode the files not yet cached and add them; returns counts (added, cached, failed)."""
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
        name = f"data-{uuid.uuid4().hex[:12]}.u8"
        total = len(old_index) + len(todo)
        data = np.memmap(self.folder / name, dtype=np.uint8, mode="w+", shape=(total, *self.shape))
        index = dict(old_index)
        if old_data is not None and len(old_index):
            data[: len(old_data)] = old_data
        row = len(old_index)
        kept: dict[str, int] = {}
        for key, path in todo.items():
            try:
                data[row] = decode(path)
            except Exception:  # an unreadable file is reported by the data check, not here
                counts["failed"] += 1
                continue
            kept[key] = row
            row += 1
            if progress is not None:
                progress(1)
        data.flush()
        del data
        if row < total:  # drop the rows of files that failed to decode
            with open(self.folder / name, "r+b") as fh:
                fh.truncate(row * int(np.prod(self.shape)))
        index.update(kept)
        record = {"format_version": FORMAT_VERSION, "shape": [row, *self.shape], "data": name, "keys": index}
        tmp = self.folder / f"index.json.{uuid.uuid4().hex[:8]}.tmp"
        tmp.write_text(json.dumps(record))
        os.replace(tmp, self.folder / "index.json")
        # the previous data file is no longer named by the index; readers that mapped it keep their mapping
        for stale in self.folder.glob("data-*.u8"):
            if stale.name != name:
                try:
                    stale.unlink()
                except OSError:
                    pass
        counts["added"] = len(kept)
        self._loaded_from = None
        return counts
