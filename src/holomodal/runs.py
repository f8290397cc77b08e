"""Run folders: one per training run; nothing already written in one is ever overwritten."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

from holomodal.errors import RunFolderError


def default_run_dir(data_name: str | None, method: str) -> Path:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    base = Path("runs") / f"{data_name or 'data'}-{method}-{stamp}"
    path, n = base, 1
    while path.exists():
        n += 1
        path = base.with_name(f"{base.name}-{n}")
    return path


def check_run_dir(path: str | Path, *, resume: bool) -> None:
    """Fail early (before any work) if the folder is taken, or has nothing to resume."""
    path = Path(path)
    if path.exists() and any(path.iterdir()) and not resume:
        raise RunFolderError(
            f"run folder '{path}' already exists and holds files; choose another run.dir "
            "or pass --resume to continue that run"
        )
    if resume and not (path / "checkpoints" / "last.ckpt").exists():
        raise RunFolderError(f"cannot resume: no checkpoint at '{path / 'checkpoints' / 'last.ckpt'}'")


def prepare_run_dir(path: str | Path, *, resume: bool) -> Path:
    """Create the folder; an existing non-empty one is only accepted when resuming."""
    path = Path(path)
    check_run_dir(path, resume=resume)
    path.mkdir(parents=True, exist_ok=True)
    return path


def write_json(path: Path, data: Any) -> None:
    """Write via a temporary file and an atomic rename, so a kill never leaves half a file."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, default=jsonable))
    os.replace(tmp, path)


def write_text(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def jsonable(value: Any) -> Any:
    if hasattr(value, "tolist"):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"cannot write {type(value).__name__} as JSON")
