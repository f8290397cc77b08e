"""Where the real data sets and the parsed-data cache live.

Data never ships inside the package: it is found at a path the user gives, or in the
``shared/data`` folder that sits beside a checkout of the repository.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable

from holomodal.errors import DataError

DATA_ENV = "HOLOMODAL_DATA"
CACHE_ENV = "HOLOMODAL_CACHE"


def _repository_root() -> Path | None:
    for folder in Path(__file__).resolve().parents:
        if (folder / "pyproject.toml").is_file():
            return folder
    return None


def data_root_candidates(root: str | Path | None = None) -> list[tuple[Path, str]]:
    """The folders to try, in order, each with the reason it is tried.

    An explicit argument or environment variable is the only candidate: silently falling
    back to another copy of the data would hide a typo in the path the user chose.
    """
    if root is not None and str(root) != "":
        return [(Path(root).expanduser(), "the root argument")]
    env = os.environ.get(DATA_ENV, "")
    if env:
        return [(Path(env).expanduser(), f"${DATA_ENV}")]
    found: list[tuple[Path, str]] = []
    repo = _repository_root()
    if repo is not None:
        found.append(((repo.parent / "shared" / "data").resolve(), f"beside the repository {repo}"))
    beside_cwd = (Path.cwd().parent / "shared" / "data").resolve()
    if all(beside_cwd != path for path, _ in found):
        found.append((beside_cwd, "beside the working directory"))
    return found


def resolve_data_root(root: str | Path | None = None, dataset: str | Iterable[str] | None = None) -> Path:
    """The data root folder: ``root``, else ``$HOLOMODAL_DATA``, else ``<repo>/../shared/data``.

    ``dataset`` names the sub-folder(s) the caller needs; a root lacking any of them does not
    count. The error lists every path looked at and how to point holomodal at the data.
    """
    needed = [dataset] if isinstance(dataset, str) else list(dataset or [])
    candidates = data_root_candidates(root)
    looked: list[str] = []
    for path, why in candidates:
        wanted = [path / sub for sub in needed] or [path]
        absent = [p for p in wanted if not p.is_dir()]
        if not absent:
            return path.resolve()
        looked.extend(f"{p} ({why})" for p in absent)
    what = f"data set folder(s) {', '.join(needed)}" if needed else "the data folder"
    raise DataError(
        f"{what} not found; looked at: {'; '.join(looked)}. "
        f"Set {DATA_ENV}=/path/to/data (the folder that holds {needed[0] if needed else 'the data sets'}/) "
        "or pass root=... (CLI: data.root=...)"
    )


def cache_dir() -> Path:
    """Folder for derived files (e.g. parsed PhysioNet); not created here, writers create it."""
    env = os.environ.get(CACHE_ENV, "")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "holomodal"


def empty_output_folder(out: str | Path) -> Path:
    """The folder a preparer writes into: new or empty, so nothing already there is replaced."""
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise DataError(f"will not overwrite '{out}': it already holds files")
    return out
