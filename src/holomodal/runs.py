"""Run folders: one per training run; nothing already written in one is ever overwritten.

A run folder belongs to one process at a time. A fresh run claims it by creating the claim
file ``.holomodal-run`` with ``O_CREAT | O_EXCL`` (one atomic create-or-fail step: of two
processes given the same ``run.dir`` exactly one succeeds) and holds an exclusive ``flock``
on it while it runs; the kernel drops the lock when the process ends, even on ``kill -9``.
``--resume`` takes over an existing folder by taking that lock, so it fails while the
original run, or another resume, is still alive.

Every file is written to a temporary name, flushed to the disk and renamed into place;
a full disk raises :class:`DiskFullError`, which says what is intact.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import socket
import time
import weakref
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from holomodal.errors import HolomodalError, RunFolderError

CLAIM_FILE = ".holomodal-run"
CHECKPOINTS = "checkpoints"


class DiskFullError(HolomodalError, OSError):
    """The disk filled up while holomodal wrote a file; the message says what is intact."""

    def __init__(self, message: str) -> None:
        super().__init__(errno.ENOSPC, message)

    def __str__(self) -> str:  # the message alone, without OSError's "[Errno 28]"
        return str(self.strerror)


def default_run_dir(data_name: str | None, method: str) -> Path:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    base = Path("runs") / f"{data_name or 'data'}-{method}-{stamp}"
    path, n = base, 1
    while path.exists():
        n += 1
        path = base.with_name(f"{base.name}-{n}")
    return path


# the run folder rank 0 claimed, inherited by the DDP processes it launches
RUN_DIR_ENV = "HOLOMODAL_RUN_DIR"


def process_run_dir(given: str | Path | None, data_name: str | None, method: str) -> tuple[int, Path]:
    """(global rank, run folder) of this process. Under DDP every process runs ``fit()``; only
    rank 0 owns the folder (it checks and claims it, then :func:`share_run_dir`), and the
    others take the name it shares through the environment."""
    from lightning.pytorch.utilities.rank_zero import rank_zero_only

    rank = int(getattr(rank_zero_only, "rank", 0))
    if given:
        return rank, Path(given)
    if rank != 0 and RUN_DIR_ENV in os.environ:
        return rank, Path(os.environ[RUN_DIR_ENV])
    return rank, default_run_dir(data_name, method)


def share_run_dir(path: Path) -> None:
    os.environ[RUN_DIR_ENV] = str(path)


def resume_checkpoint(path: str | Path) -> Path | None:
    """The checkpoint a resume starts from: ``last.ckpt``, else ``best.ckpt`` (the disk may
    have filled before the first ``last.ckpt`` was written); None when there is neither."""
    folder = Path(path) / CHECKPOINTS
    for name in ("last.ckpt", "best.ckpt"):
        if (folder / name).exists():
            return folder / name
    return None


def check_run_dir(path: str | Path, *, resume: bool) -> None:
    """Fail early (before any work) if the folder is taken, or has nothing to resume."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise RunFolderError(f"run folder '{path}' is a file, not a folder; choose another run.dir")
    if path.exists() and any(path.iterdir()) and not resume:
        raise RunFolderError(
            f"run folder '{path}' already exists and holds files; choose another run.dir "
            "or pass --resume to continue that run"
        )
    if resume and resume_checkpoint(path) is None:
        raise RunFolderError(f"cannot resume: no checkpoint at '{path / CHECKPOINTS / 'last.ckpt'}' (nor best.ckpt)")


class RunClaim:
    """This process's hold on a run folder; the lock goes when the claim is released or
    garbage-collected, or the process ends."""

    def __init__(self, path: Path, fd: int) -> None:
        self.path = path
        self._fd: int | None = fd

    @property
    def held(self) -> bool:
        return self._fd is not None

    def release(self) -> None:
        if self._fd is not None:
            fd, self._fd = self._fd, None
            os.close(fd)  # closing the only descriptor drops the flock

    def __del__(self) -> None:
        self.release()

    # a copied Classifier shares the claim: two objects closing one descriptor would be a bug
    def __copy__(self) -> "RunClaim":
        return self

    def __deepcopy__(self, memo: dict) -> "RunClaim":
        return self


# claims this process holds, so that a resume in the process that made the run (a notebook,
# a test) takes over its own claim instead of locking itself out
_HELD: "weakref.WeakValueDictionary[str, RunClaim]" = weakref.WeakValueDictionary()


def _lock(fd: int) -> bool:
    try:
        import fcntl
    except ImportError:  # no flock (Windows): the O_EXCL claim alone guards fresh runs
        return True
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


def _owner(claim: Path) -> str:
    try:
        text = claim.read_text(encoding="utf-8").strip()
    except OSError:
        return ""
    return f" ({text})" if text else ""


def claim_run_dir(path: str | Path, *, resume: bool) -> RunClaim:
    """Create and claim a fresh run folder, or take over an existing one to resume it."""
    path = Path(path)
    check_run_dir(path, resume=resume)
    key = str(path.resolve())
    if resume and key in _HELD and _HELD[key].held:
        return _HELD[key]
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        path.mkdir(exist_ok=True)
    except FileExistsError:
        raise RunFolderError(f"run folder '{path}' is a file, not a folder; choose another run.dir") from None
    claim = path / CLAIM_FILE
    flags = os.O_RDWR | os.O_CREAT | (0 if resume else os.O_EXCL)
    try:
        fd = os.open(claim, flags, 0o644)
    except FileExistsError:
        raise RunFolderError(
            f"run folder '{path}' was just claimed by another run{_owner(claim)}; choose another run.dir"
        ) from None
    except OSError as exc:
        raise RunFolderError(f"cannot claim run folder '{path}': {exc.strerror or exc}") from None
    if not _lock(fd):
        os.close(fd)
        raise RunFolderError(
            f"run folder '{path}' is in use by another holomodal process{_owner(claim)}; "
            "wait for it to finish, or choose another run.dir"
        )
    owner = f"pid {os.getpid()} on {socket.gethostname()} since {time.strftime('%Y-%m-%d %H:%M:%S')}"
    os.ftruncate(fd, 0)
    os.write(fd, owner.encode())
    held = RunClaim(path, fd)
    _HELD[key] = held
    return held


# ---- writing ----------------------------------------------------------------------------------
_FULL_TEXTS = ("No space left on device", "os error 28", "Disk quota exceeded", "os error 122")


def is_disk_full(exc: BaseException | None) -> bool:
    """Whether ``exc`` comes from a full disk: an ENOSPC/EDQUOT OSError, also when a library
    wrapped it (torch.save raises a RuntimeError with the OSError as its context,
    safetensors its own error with "os error 28" in the text)."""
    for _ in range(8):
        if exc is None:
            return False
        if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        if any(text in str(exc) for text in _FULL_TEXTS):
            return True
        exc = exc.__cause__ or exc.__context__
    return False


def disk_full(target: str | Path, intact: str) -> DiskFullError:
    return DiskFullError(f"the disk is full: could not write '{target}'. {intact[:1].upper()}{intact[1:]}. "
                         "Free some space and run the command again")


@contextmanager
def writing(target: str | Path, intact: str) -> Iterator[None]:
    """Turn a full disk while writing ``target`` into a :class:`DiskFullError` saying ``intact``."""
    try:
        yield
    except Exception as exc:
        if is_disk_full(exc) and not isinstance(exc, HolomodalError):
            raise disk_full(target, intact) from None
        raise


def fsync_dir(path: Path) -> None:
    """Make a rename in ``path`` durable (a no-op where folders cannot be opened)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_bytes_durably(path: Path, data: bytes) -> None:
    with open(path, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())


def _replace_file(path: Path, data: bytes) -> None:
    """Write via a temporary file, fsync and an atomic rename: a kill or a full disk leaves
    the previous version of ``path`` (or none), never half a file."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    intact = f"'{path}' keeps its previous version" if path.exists() else f"'{path}' was not written"
    try:
        with writing(path, intact):
            write_bytes_durably(tmp, data)
            os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_json(path: Path, data: Any) -> None:
    _replace_file(Path(path), json.dumps(data, indent=2, default=jsonable).encode())


def write_text(path: Path, text: str) -> None:
    _replace_file(Path(path), text.encode())


def jsonable(value: Any) -> Any:
    if hasattr(value, "tolist"):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"cannot write {type(value).__name__} as JSON")


# ---- folders written as a whole -------------------------------------------------------------------
def staging_folder(target: Path) -> Path:
    """A fresh temporary folder beside ``target`` (same file system, so renames are atomic)."""
    tmp = target.with_name(f".{target.name}.tmp-{os.getpid()}")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    return tmp


def stale_staging(target: Path) -> list[Path]:
    """Temporary folders a killed save of ``target`` left behind."""
    parent = target.parent
    if not parent.is_dir():
        return []
    prefixes = (f".{target.name}.tmp-", f".{target.name}.old-")
    return [p for p in parent.iterdir() if p.name.startswith(prefixes)]


def install_folder(tmp: Path, target: Path) -> None:
    """Move the fully written folder ``tmp`` to ``target``, replacing an older ``target``.

    Every file in ``tmp`` is fsynced, then ``tmp`` is renamed over; an older ``target`` is
    first renamed aside and deleted after. A kill at any point leaves either the old or the
    new folder at ``target``, or (between the two renames) none; never a partial one."""
    for file in tmp.rglob("*"):
        if file.is_file():
            with open(file, "rb") as fh:
                os.fsync(fh.fileno())
    fsync_dir(tmp)
    old = None
    if target.exists():
        old = target.with_name(f".{target.name}.old-{os.getpid()}")
        if old.exists():
            shutil.rmtree(old)
        os.rename(target, old)
    os.rename(tmp, target)
    fsync_dir(target.parent)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def take_run_dir(rank: int, path: Path, *, resume: bool) -> tuple[Path, RunClaim | None]:
    """The run folder of this process: global rank 0 claims it (one atomic create-or-fail
    step, so of two processes given one run.dir one wins) and hands its name to the processes
    it launches; the others only use it."""
    if rank != 0:
        return path, None
    claim = claim_run_dir(path, resume=resume)
    share_run_dir(claim.path)
    return claim.path, claim
