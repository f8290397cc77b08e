"""A user's table from a file: CSV (also ``.tsv``, ``.txt``, gzip-compressed ``.gz``) or parquet.

Every file a user names goes through :func:`read_table`, so a file that cannot be read
stops with one :class:`~holomodal.errors.DataError` that names the file and says why: not
found, a folder or another non-regular file, an unknown suffix, empty, no rows, text that is
not in the declared encoding (with the byte offset and line of the first bad byte), a CSV
that does not parse, a header that names a column twice.
"""

from __future__ import annotations

import codecs
import csv
import gzip
import os
import stat
from pathlib import Path
from typing import IO, Any

import pandas as pd

from holomodal.errors import DataError

PARQUET_SUFFIXES = (".parquet", ".pq")
CSV_SUFFIXES = (".csv", ".tsv", ".txt", ".gz")
SUFFIXES = PARQUET_SUFFIXES + CSV_SUFFIXES
DEFAULT_ENCODING = "utf-8"
_CHUNK = 1 << 20


def read_table(path: str | os.PathLike, *, encoding: str | None = None) -> pd.DataFrame:
    """The table in ``path`` as a DataFrame. CSV text is decoded as ``encoding`` (UTF-8 by
    default; a UTF-8 byte-order mark is accepted); parquet carries its own types."""
    p = Path(path)
    encoding = encoding or DEFAULT_ENCODING
    _check_file(p)
    suffix = p.suffix.lower()
    if suffix in PARQUET_SUFFIXES:
        frame = _read_parquet(p)
    else:
        frame = _read_csv(p, encoding)
    if len(frame) == 0:
        raise DataError(f"data file '{p}' holds no rows (only a header)" if len(frame.columns)
                        else f"data file '{p}' holds no rows")
    return frame


def is_blank(value: Any) -> bool:
    """A cell that holds nothing: NaN, None, blank text (an empty array or label list is a value)."""
    if isinstance(value, str):
        return not value.strip()
    if isinstance(value, (list, tuple, dict)) or hasattr(value, "shape"):
        return False  # arrays and label lists are values, even when empty
    return bool(pd.isna(value))


def _check_file(p: Path) -> None:
    try:
        mode = os.stat(p).st_mode
    except FileNotFoundError:
        raise DataError(f"data file '{p}' not found") from None
    except OSError as exc:
        raise DataError(f"cannot open data file '{p}': {exc.strerror or exc}") from None
    if stat.S_ISDIR(mode):
        raise DataError(f"data file '{p}' is a folder, not a CSV or parquet file")
    if not stat.S_ISREG(mode):  # a FIFO would block the reader for ever
        raise DataError(f"data file '{p}' is not a regular file (a pipe, socket or device)")
    if p.suffix.lower() not in SUFFIXES:
        raise DataError(f"data file '{p}': unsupported format '{p.suffix}' (use .csv, .tsv, .csv.gz or .parquet)")
    if os.stat(p).st_size == 0:
        raise DataError(f"data file '{p}' is empty (0 bytes)")


def _read_parquet(p: Path) -> pd.DataFrame:
    try:
        return pd.read_parquet(p)
    except Exception as exc:  # pyarrow raises many types; all mean "not a readable parquet file"
        raise DataError(f"cannot read data file '{p}' as parquet: {_first_line(exc)}") from None


def _separator(p: Path) -> str:
    inner = Path(p.stem).suffix.lower() if p.suffix.lower() == ".gz" else p.suffix.lower()
    return "\t" if inner == ".tsv" else ","


def _open_bytes(p: Path) -> IO[bytes]:
    return gzip.open(p, "rb") if p.suffix.lower() == ".gz" else open(p, "rb")


def _read_csv(p: Path, encoding: str) -> pd.DataFrame:
    try:
        codecs.lookup(encoding)
    except LookupError:
        raise DataError(f"data file '{p}': unknown text encoding '{encoding}' (e.g. utf-8, latin-1, cp1252)") from None
    # utf-8-sig reads plain UTF-8 too, and drops the byte-order mark spreadsheets write
    codec = "utf-8-sig" if codecs.lookup(encoding).name == "utf-8" else encoding
    sep = _separator(p)
    try:
        frame = pd.read_csv(p, sep=sep, encoding=codec, low_memory=False)
    except UnicodeDecodeError:
        raise DataError(_encoding_problem(p, codec, encoding)) from None
    except pd.errors.EmptyDataError:
        raise DataError(f"data file '{p}' holds no table (no header line)") from None
    except pd.errors.ParserError as exc:
        raise DataError(f"cannot read data file '{p}' as CSV: {_first_line(exc)}") from None
    except (OSError, EOFError, gzip.BadGzipFile) as exc:
        raise DataError(f"cannot read data file '{p}': {_first_line(exc)}") from None
    _refuse_repeated_names(p, codec, sep, frame)
    return frame


def _refuse_repeated_names(p: Path, codec: str, sep: str, frame: pd.DataFrame) -> None:
    """pandas renames a repeated header name ``a`` to ``a.1``; two columns of one name are
    more likely a mistake in the file than two features, so the header is read again."""
    with _open_bytes(p) as raw, codecs.getreader(codec)(raw) as text:
        header = next(csv.reader(text, delimiter=sep), [])
    repeated = sorted({name for name in header if header.count(name) > 1})
    if repeated:
        raise DataError(f"data file '{p}': the header names column(s) {', '.join(repr(r) for r in repeated)} more "
                        f"than once (pandas would read them as {', '.join(repr(f'{r}.1') for r in repeated)}): "
                        "give every column a name of its own")


def _encoding_problem(p: Path, codec: str, encoding: str) -> str:
    """Where the first byte that ``codec`` cannot decode lies, found by decoding the file
    again chunk by chunk (pandas' error counts from an internal buffer, not the file)."""
    # the plain codec: utf-8-sig would drop a byte-order mark and shift the offsets
    decoder = codecs.getincrementaldecoder("utf-8" if codec == "utf-8-sig" else codec)()
    offset = lines = 0  # bytes and newlines before the current chunk
    where = "a byte"
    with _open_bytes(p) as raw:
        while True:
            chunk = raw.read(_CHUNK)
            # bytes of an unfinished character kept back from the previous chunk
            pending = len(decoder.getstate()[0])
            try:
                decoder.decode(chunk, final=not chunk)
            except UnicodeDecodeError as exc:
                data = bytes(exc.object)  # the pending bytes, then this chunk
                line = lines + 1 + data[pending:max(exc.start, pending)].count(b"\n")
                where = f"byte(s) {data[exc.start:exc.end].hex(' ')} at offset {offset - pending + exc.start} (line {line})"
                break
            if not chunk:
                break
            offset += len(chunk)
            lines += chunk.count(b"\n")
    compressed = " of the uncompressed text" if p.suffix.lower() == ".gz" else ""
    return (f"data file '{p}' is not valid {encoding} text: {where}{compressed} cannot be decoded. Re-save the file "
            f"as UTF-8 (a spreadsheet's 'CSV UTF-8', or iconv -f latin1 -t utf-8 '{p.name}' > '{p.stem}-utf8{p.suffix}'), or name "
            "its encoding (data.encoding=latin-1 in a config, --encoding latin-1 on the command line)")


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
