"""Where data sets and caches live."""

from __future__ import annotations

import os
from pathlib import Path

from holomodal.errors import DataError


def _repository_root() -> Path | None:
    for parent in Path(__file__).resolve().parents:
        if (parent / "pyproject.toml").exists():
            return parent
    return None


def data_root_candidates(root: str | Path | None = None) -> list[tuple[str, Path]]:
    if root is not None:
        return [("argument", Path(root))]
    if os.environ.get("HOLOMODAL_DATA"):
        return [("HOLOMODAL_DATA", Path(os.environ["HOLOMODAL_DATA"]))]
    repo = _repository_root()
    found = [("beside the repository", repo.parent / "shared" / "data")] if repo else []
    return found + [("beside the working directory", Path.cwd().parent / "shared" / "data")]


def resolve_data_root(root: str | Path | None = None, dataset: str | None = None) -> Path:
    """The data folder (holding ``dataset`` when given), or an error listing where it looked."""
    candidates = data_root_candidates(root)
    for _, path in candidates:
        if path.is_dir() and (dataset is None or (path / dataset).is_dir()):
            return path
    looked = "; ".join(f"{path / dataset if dataset else path} ({how})" for how, path in candidates)
    raise DataError(
        f"data not found: looked for {'data set ' + repr(dataset) if dataset else 'the data folder'} at {looked}. "
        "Pass root=/path/to/data (CLI: data.root=...) or set HOLOMODAL_DATA"
    )


def cache_dir() -> Path:
    path = Path(os.environ.get("HOLOMODAL_CACHE", Path.home() / ".cache" / "holomodal"))
    path.mkdir(parents=True, exist_ok=True)
    return path
