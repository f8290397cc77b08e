"""The files that image and audio cells name: where they are, and which of them may be read.

A cell holds a path. When the column declares a ``root`` option, a relative path lies under
that root, and every path, absolute ones included, must resolve (symbolic links followed) to
a place inside the root: a table cannot reach ``../../secrets`` or ``/etc/passwd`` through a
model unless the schema says ``allow_outside_root: true``. A column without ``root`` declares
no boundary: relative paths resolve against the current folder and absolute paths stand.

Only regular files are opened. Opening a FIFO blocks until a writer appears, that is for
ever, in a thread no signal interrupts; a folder or a device fails deep inside a decoder. So
the file type is checked with ``os.stat`` before ``open``, and the file is opened
non-blocking and checked once more, in case it was swapped in between. Such a file is
unreadable, under the schema's ``on_unreadable`` policy; a path outside the root is an error.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Any, BinaryIO, Sequence

from holomodal.errors import DataError
from holomodal.schema import Column, row_list

_KINDS = ((stat.S_ISDIR, "folder"), (stat.S_ISFIFO, "FIFO (named pipe)"), (stat.S_ISCHR, "character device"),
          (stat.S_ISBLK, "block device"), (stat.S_ISSOCK, "socket"))


class UnreadableFile(Exception):
    """Why a file is not read; the processor adds row, column and path to the message."""


def cell_path(value: Any, root: str | None) -> Path | None:
    """The file a cell names, or None for an empty cell (None, NaN, blank, not a path)."""
    if not isinstance(value, (str, os.PathLike)) or not str(value).strip():
        return None
    path = Path(value)
    return Path(root) / path if root else path


def _inside(path: Path, boundary: Path) -> bool:
    try:
        real = Path(os.path.realpath(path))
    except (OSError, ValueError):  # e.g. a NUL character: the open reports it
        real = Path(os.path.abspath(path))
    return real == boundary or boundary in real.parents


def resolve_files(column: Column, values: Sequence[Any], rows: Sequence[Any], allow_outside_root: bool) -> list[Path | None]:
    """The path of every cell (None where empty); a :class:`DataError` naming the rows when
    some resolve outside the column's ``root`` and the schema does not allow it."""
    root = column.options.get("root")
    paths = [cell_path(v, root) for v in values]
    if not root or allow_outside_root:
        return paths
    boundary = Path(os.path.realpath(root))
    outside = [i for i, p in enumerate(paths) if p is not None and not _inside(p, boundary)]
    if outside:
        first = outside[0]
        raise DataError(
            f"column '{column.name}': row(s) {row_list(rows[i] for i in outside)} name files outside the column's "
            f"root '{root}' (row {rows[first]}: '{values[first]}' resolves to '{os.path.realpath(paths[first])}'); "
            'move the files under the root, or set "allow_outside_root": true in the schema to allow such paths'
        )
    return paths


def _not_regular(mode: int) -> str | None:
    kind = next((name for test, name in _KINDS if test(mode)), None if stat.S_ISREG(mode) else "special file")
    return f"is a {kind}, not a regular file" if kind else None


def open_regular(path: Path) -> BinaryIO:
    """``path`` opened for binary reading if it is a regular file; otherwise
    :class:`UnreadableFile` saying what it is (never opening a FIFO or device)."""
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        raise UnreadableFile("is a broken symbolic link" if os.path.lexists(path) else "no such file") from None
    except PermissionError:
        raise UnreadableFile("permission denied") from None
    except (OSError, ValueError) as exc:
        raise UnreadableFile(str(exc)) from None
    reason = _not_regular(mode)
    if reason:
        raise UnreadableFile(reason)
    try:
        # non-blocking, so that a file replaced by a FIFO since the check still cannot hang the open
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0))
    except OSError as exc:
        raise UnreadableFile(exc.strerror or str(exc)) from None
    reason = _not_regular(os.fstat(fd).st_mode)
    if reason:
        os.close(fd)
        raise UnreadableFile(reason)
    return os.fdopen(fd, "rb")
