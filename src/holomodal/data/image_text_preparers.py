"""Preparers for the image-text data sets of the MMP and DCP papers, from each public release's
own file layout (spec ``dcp_i2m2_medst.md`` 1.2), for users who have downloaded them.

Each writes ``train/val/test.parquet`` (an id, an image path relative to the release, the text,
the label), ``schema.yaml`` (CLIP-sized images, CLIP's tokenizer) and ``summary.json`` into a
new folder. Rows whose image file is absent are left out and counted, as the papers' converters
read every image's bytes and so never held such rows.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pandas as pd

from holomodal.data.paths import empty_output_folder
from holomodal.errors import DataError

SPLITS = ("train", "val", "test")

# spec 1.2: the 23 genres of MM-IMDb, in the papers' label order
MMIMDB_GENRES = (
    "Drama", "Comedy", "Romance", "Thriller", "Crime", "Action", "Adventure", "Horror", "Documentary", "Mystery",
    "Sci-Fi", "Fantasy", "Family", "Biography", "War", "History", "Music", "Animation", "Musical", "Western",
    "Sport", "Short", "Film-Noir",
)
MMIMDB_PLOTS = ("each", "first")
HATEFUL_MEMES_CLASSES = ("benign", "hateful")
FOOD101_VAL_FRACTION = 0.1  # 6,846 of 67,988 training items in the papers' split


def _require(path: Path, what: str) -> Path:
    if not path.exists():
        raise DataError(f"{what} not found: {path} (is --root the unpacked release?)")
    return path


def _read_json(path: Path) -> Any:
    try:
        return json.loads(_require(path, "file").read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise DataError(f"{path}: not valid JSON ({err})") from None


def _schema(root: Path, id_column: str, text_column: str, label: dict[str, Any], image_size: int) -> dict[str, Any]:
    return {
        "on_unreadable": "missing",
        "columns": [
            {"name": id_column, "modality": "id"},
            {"name": "image", "modality": "image",
             "options": {"channels": 3, "size": int(image_size), "root": str(root), "normalize": "clip"}},
            {"name": text_column, "modality": "text", "options": {"tokenizer": "clip", "max_length": 77}},
            {"name": label.pop("name"), "modality": "label", "options": label},
        ],
    }


def _write(out: Path, tables: dict[str, pd.DataFrame], schema: dict[str, Any], summary: dict[str, Any]) -> dict[str, Any]:
    from omegaconf import OmegaConf

    out.mkdir(parents=True, exist_ok=True)
    for name in SPLITS:
        tables[name].reset_index(drop=True).to_parquet(out / f"{name}.parquet", index=False)
    (out / "schema.yaml").write_text(OmegaConf.to_yaml(OmegaConf.create(schema)))
    summary = {**summary, "splits": {k: int(len(tables[k])) for k in SPLITS}}
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary


def _keep_with_images(root: Path, table: pd.DataFrame) -> tuple[pd.DataFrame, int]:
    present = table["image"].map(lambda p: (root / p).is_file()).to_numpy(dtype=bool)
    return table[present], int((~present).sum())


def prepare_mmimdb(root: str | Path, out: str | Path, *, plots: str = "each", image_size: int = 224) -> dict[str, Any]:
    """MM-IMDb (``mmimdb.tar.gz``): ``dataset/<id>.jpeg`` and ``dataset/<id>.json`` (``plot``: a
    list of summaries, ``genres``) with ``split.json`` (``train``/``dev``/``test`` id lists).

    ``plots=each`` writes one row per (movie, plot summary), the papers' sample list, so metrics
    are over those rows; ``first`` writes one row per movie. Missing-modality masks are then
    drawn per row, where the papers shared one per movie.
    """
    if plots not in MMIMDB_PLOTS:
        raise DataError(f"prepare mmimdb: plots must be one of {', '.join(MMIMDB_PLOTS)}, not '{plots}'")
    root, out = Path(root).resolve(), empty_output_folder(out)
    folder = _require(root / "dataset", "MM-IMDb folder 'dataset'")
    split_file = root / "split.json"
    split_lists = _read_json(split_file)
    wanted = {"train": "train", "dev": "val", "test": "test"}
    absent = [k for k in wanted if k not in split_lists]
    if absent:
        raise DataError(f"{split_file}: no '{absent[0]}' list (it needs train, dev and test)")
    genre_index = {g: i for i, g in enumerate(MMIMDB_GENRES)}
    tables, dropped, no_plot, other_genres = {}, 0, 0, set()
    for key, split in wanted.items():
        rows = []
        for movie in split_lists[key]:
            movie = str(movie)
            meta_file = folder / f"{movie}.json"
            meta = _read_json(meta_file)
            if not isinstance(meta, dict) or not isinstance(meta.get("genres"), list):
                raise DataError(f"{meta_file}: no 'genres' list")
            genres = sorted({genre_index[g] for g in meta["genres"] if g in genre_index})
            other_genres.update(g for g in meta["genres"] if g not in genre_index)
            summaries = [" ".join(str(p).split()) for p in (meta.get("plot") or [])]
            summaries = [p for p in summaries if p] or [None]
            no_plot += summaries == [None]
            for number, text in enumerate(summaries if plots == "each" else summaries[:1]):
                rows.append({"movie_id": movie, "plot_number": number, "image": f"dataset/{movie}.jpeg",
                             "plot": text, "genres": genres})
        columns = ["movie_id", "plot_number", "image", "plot", "genres"]
        table, gone = _keep_with_images(root, pd.DataFrame(rows, columns=columns))
        tables[split], dropped = table, dropped + gone
    schema = _schema(root, "movie_id", "plot", {"name": "genres", "task": "multilabel", "classes": list(MMIMDB_GENRES)},
                     image_size)
    summary = {"source": str(root), "plots": plots, "rows_without_image_file": dropped, "movies_without_plot": no_plot,
               "genres_left_out": sorted(other_genres), "classes": len(MMIMDB_GENRES)}
    return _write(out, tables, schema, summary)


def _read_food101_titles(path: Path, classes: set[str]) -> pd.DataFrame:
    try:
        table = pd.read_csv(_require(path, "Food-101 title table"), header=None, dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, UnicodeDecodeError) as err:
        raise DataError(f"{path}: not a readable CSV ({err})") from None
    if table.shape[1] != 3:
        raise DataError(f"{path}: expected 3 columns (image file, title, class), found {table.shape[1]}")
    table.columns = ["file", "text", "label"]
    if len(table) and table["label"].iloc[0] not in classes:
        table = table.iloc[1:]  # a header line
    unknown = table[~table["label"].isin(classes)]
    if len(unknown):
        raise DataError(f"{path}, row {int(unknown.index[0]) + 1}: class '{unknown['label'].iloc[0]}' has no folder "
                        "under images/")
    return table


def prepare_food101(root: str | Path, out: str | Path, *, image_size: int = 224, seed: int = 0) -> dict[str, Any]:
    """UPMC Food-101: ``images/{train,test}/<class>/<file>.jpg`` and
    ``texts/{train,test}_titles.csv`` (image file, page title, class; no header).

    Items without a title are left out (as in the papers); the validation split is 10 % of the
    training items per class, drawn with ``seed``.
    """
    root, out = Path(root).resolve(), empty_output_folder(out)
    class_folder = _require(root / "images" / "train", "Food-101 folder 'images/train'")
    classes = sorted(p.name for p in class_folder.iterdir() if p.is_dir())
    if len(classes) < 2:
        raise DataError(f"{class_folder}: expected one folder per class, found {len(classes)}")
    parts, without_text, dropped = {}, 0, 0
    for part in ("train", "test"):
        table = _read_food101_titles(root / "texts" / f"{part}_titles.csv", set(classes))
        table["text"] = table["text"].map(lambda t: " ".join(t.split()))
        has_text = table["text"] != ""
        without_text += int((~has_text).sum())
        table = table[has_text]
        table = pd.DataFrame({"item_id": table["file"].map(lambda f: Path(f).stem).to_numpy(),
                              "image": [f"images/{part}/{c}/{f}" for f, c in zip(table["file"], table["label"])],
                              "text": table["text"].to_numpy(), "label": table["label"].to_numpy()})
        parts[part], gone = _keep_with_images(root, table)
        dropped += gone
    train = parts["train"].reset_index(drop=True)
    rng = np.random.default_rng(seed)
    val_rows = []
    for _, rows in train.groupby("label").indices.items():
        n_val = int(round(len(rows) * FOOD101_VAL_FRACTION))
        val_rows.extend(rng.permutation(rows)[:n_val].tolist())
    is_val = np.zeros(len(train), dtype=bool)
    is_val[val_rows] = True
    tables = {"train": train[~is_val], "val": train[is_val], "test": parts["test"]}
    schema = _schema(root, "item_id", "text", {"name": "label", "task": "multiclass", "classes": classes}, image_size)
    summary = {"source": str(root), "items_without_text": without_text, "rows_without_image_file": dropped,
               "val_fraction": FOOD101_VAL_FRACTION, "val_seed": seed, "classes": len(classes)}
    return _write(out, tables, schema, summary)


def _read_jsonl(path: Path, check: Callable[[dict[str, Any]], str | None]) -> list[dict[str, Any]]:
    rows = []
    for number, line in enumerate(_require(path, "Hateful Memes file").read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            raise DataError(f"{path}, line {number}: not valid JSON ({err})") from None
        problem = check(row) if isinstance(row, dict) else "not a JSON object"
        if problem:
            raise DataError(f"{path}, line {number}: {problem}")
        rows.append(row)
    return rows


def _hateful_meme_problem(row: dict[str, Any]) -> str | None:
    for key in ("id", "img", "text"):
        if key not in row:
            return f"no '{key}' field"
    if row.get("label") not in (0, 1):
        return f"label must be 0 or 1, found {row.get('label')!r} (an unlabelled test file cannot be a test split)"
    return None


def prepare_hatefulmemes(root: str | Path, out: str | Path, *, test: str = "test_seen", image_size: int = 224) -> dict[str, Any]:
    """Hateful Memes: ``img/<id>.png`` with ``train.jsonl``, ``dev.jsonl`` (or ``dev_seen.jsonl``)
    and a labelled test file, ``test_seen.jsonl`` by default (the file DCP's instructions name;
    ``test=test_unseen`` picks the other labelled one)."""
    root, out = Path(root).resolve(), empty_output_folder(out)
    dev = next((root / f for f in ("dev.jsonl", "dev_seen.jsonl") if (root / f).is_file()), root / "dev.jsonl")
    files = {"train": root / "train.jsonl", "val": dev, "test": root / f"{test}.jsonl"}
    tables, dropped = {}, 0
    for split, path in files.items():
        rows = _read_jsonl(path, _hateful_meme_problem)
        table = pd.DataFrame({"meme_id": [str(r["id"]) for r in rows], "image": [str(r["img"]) for r in rows],
                              "text": [" ".join(str(r["text"]).split()) or None for r in rows],
                              "label": [int(r["label"]) for r in rows]})
        tables[split], gone = _keep_with_images(root, table)
        dropped += gone
    schema = _schema(root, "meme_id", "text", {"name": "label", "task": "binary", "classes": list(HATEFUL_MEMES_CLASSES)},
                     image_size)
    summary = {"source": str(root), "files": {k: v.name for k, v in files.items()}, "rows_without_image_file": dropped,
               "classes": len(HATEFUL_MEMES_CLASSES)}
    return _write(out, tables, schema, summary)
