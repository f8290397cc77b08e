"""DVM-Car (Huang et al., 2022) turned into holomodal's format, with TIP's features, filters,
label and splits (spec ``tip_stil.md`` section 1.9.1).

Input: the public release as downloaded, ``ROOT/tables_V2.0/`` (or the tables in ``ROOT``)
with ``Ad_table.csv``, ``Price_table.csv``, ``Image_table.csv`` and, when available,
``Ad_table (extra).csv`` (physical dimensions), and the image folder
``ROOT/resized_DVM/<maker>/<model>/<year>/<colour>/<image name>``.

Rows, as in TIP: adverts joined with the model's entry price of the registration year,
then with the first image row of the advert (any viewpoint: "all views"); adverts with any
blank core field are dropped; the label is the car model (``Genmodel_ID``), kept when it has
at least 100 adverts (286 classes in the release), classes in order of first appearance.
Features (17): categorical Color, Bodytype, Gearbox, Fuel_type; continuous Wheelbase,
Height, Width, Length, Adv_year, Adv_month, Reg_year, Runned_Miles, Price, Seat_num,
Door_num, Entry_price, Engine_size (litres, parsed from e.g. ``"1.6L"``). Physical
dimensions missing or zero in an advert are taken from the model's most common value, then
moved by a uniform integer jitter in [-50, 50] mm (seed 2022) so that they are no exact
look-up of the label. Splits: stratified 50 % test, then 20 % of the rest for validation
(``random_state=2022``), which reproduces TIP's 70,565 / 17,642 / 88,207 adverts; the
10 % and 1 % label budgets keep one advert per class and fill up stratified
(``random_state=2023``).

Deliberate differences from TIP's files: values are written raw (holomodal z-scores
continuous columns and codes categories from the training split, with code 0 for an
unseen category, so cardinalities are TIP's plus one), and a physical dimension no advert
of the model provides stays blank (a missing cell, handled by the mask) instead of
dropping the advert.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from holomodal.data.paths import empty_output_folder
from holomodal.errors import DataError

log = logging.getLogger("holomodal")

CATEGORICAL = ("Color", "Bodytype", "Gearbox", "Fuel_type")
PHYSICAL = ("Wheelbase", "Height", "Width", "Length")
CONTINUOUS = PHYSICAL + (
    "Adv_year", "Adv_month", "Reg_year", "Runned_Miles", "Price", "Seat_num", "Door_num", "Entry_price", "Engine_size",
)
AD_COLUMNS = (
    "Maker", "Genmodel", "Genmodel_ID", "Adv_ID", "Adv_year", "Adv_month", "Color", "Reg_year", "Bodytype",
    "Runned_Miles", "Engin_size", "Gearbox", "Fuel_type", "Price", "Seat_num", "Door_num",
)
LABEL = "model"
SPLIT_SEED = 2022
LOW_DATA_SEED = 2023
JITTER_MM = 50


def _table(folder: Path, name: str, required: bool = True) -> pd.DataFrame | None:
    path = folder / name
    if not path.is_file():
        if required:
            raise DataError(f"DVM table '{name}' not found in {folder}")
        return None
    # the release's headers carry stray spaces (' Genmodel_ID', 'Genmodel ')
    frame = pd.read_csv(path, dtype=str, keep_default_na=True, skipinitialspace=True)
    frame.columns = [c.strip() for c in frame.columns]
    return frame.apply(lambda col: col.str.strip())


def _tables_folder(root: Path) -> Path:
    for candidate in (root / "tables_V2.0", root / "tables", root):
        if (candidate / "Ad_table.csv").is_file():
            return candidate
    raise DataError(f"no DVM tables under {root}: expected {root / 'tables_V2.0' / 'Ad_table.csv'}")


def _number(values: pd.Series) -> pd.Series:
    """The first number in each cell (``"2,570 mm"`` -> 2570.0); blank when there is none."""
    text = values.astype("string").str.replace(",", "", regex=False)
    return pd.to_numeric(text.str.extract(r"(-?\d+(?:\.\d+)?)", expand=False), errors="coerce")


def image_path(image_name: str) -> str:
    """Where the release stores an image, relative to ``resized_DVM``."""
    maker, model, year, colour = image_name.split("$$")[:4]
    return str(Path(maker) / model / year / colour / image_name)


def _fill_physical(frame: pd.DataFrame, seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    for name in PHYSICAL:
        values = frame[name].where(frame[name] > 0)
        common = values.groupby(frame["Genmodel_ID"]).agg(lambda v: v.mode().iloc[0] if v.notna().any() else np.nan)
        filled = values.fillna(frame["Genmodel_ID"].map(common))
        jitter = rng.integers(-JITTER_MM, JITTER_MM + 1, size=len(frame))
        frame[name] = filled + np.where(filled.notna(), jitter, 0)
    return frame


def build_table(root: str | Path, *, min_adverts: int = 100, seed: int = SPLIT_SEED) -> tuple[pd.DataFrame, dict[str, Any]]:
    """One row per kept advert: id, image path, the 17 features, the label."""
    root = Path(root)
    folder = _tables_folder(root)
    ads = _table(folder, "Ad_table.csv")
    missing = [c for c in AD_COLUMNS if c not in ads.columns]
    if missing:
        raise DataError(f"Ad_table.csv lacks column(s) {missing}")
    prices = _table(folder, "Price_table.csv")
    images = _table(folder, "Image_table.csv")
    extra = _table(folder, "Ad_table (extra).csv", required=False)
    counts: dict[str, Any] = {"adverts": len(ads)}

    ads["Reg_year"] = pd.to_numeric(ads["Reg_year"], errors="coerce")
    prices["Year"] = pd.to_numeric(prices["Year"], errors="coerce")
    # one entry price per (model, year): a duplicated price row must not duplicate adverts
    prices = prices.drop_duplicates(subset=["Genmodel_ID", "Year"])
    frame = ads.merge(prices[["Genmodel_ID", "Year", "Entry_price"]], left_on=["Genmodel_ID", "Reg_year"],
                      right_on=["Genmodel_ID", "Year"], how="inner")
    counts["with_entry_price"] = len(frame)

    images = images.assign(Adv_ID=images["Image_ID"].str.split("$$", regex=False).str[:2].str.join("$$"))
    images = images.drop_duplicates(subset=["Adv_ID"], keep="first")
    frame = frame.merge(images[["Adv_ID", "Image_name", "Predicted_viewpoint"]], on="Adv_ID", how="inner")
    counts["with_image"] = len(frame)

    core = [c for c in frame.columns if c not in PHYSICAL]
    frame = frame.dropna(subset=core)
    frame["Engine_size"] = pd.to_numeric(frame["Engin_size"].str.rstrip("Ll"), errors="coerce")
    for name in ("Adv_year", "Adv_month", "Runned_Miles", "Price", "Seat_num", "Door_num", "Entry_price"):
        frame[name] = pd.to_numeric(frame[name], errors="coerce")
    frame = frame.dropna(subset=[c for c in CONTINUOUS if c not in PHYSICAL])
    counts["complete"] = len(frame)

    if extra is not None and "Adv_ID" in extra.columns:
        dims = extra.drop_duplicates(subset=["Adv_ID"])[["Adv_ID", *[c for c in PHYSICAL if c in extra.columns]]]
        frame = frame.merge(dims, on="Adv_ID", how="left")
        for name in PHYSICAL:
            frame[name] = _number(frame[name]) if name in frame.columns else np.nan
        frame = _fill_physical(frame, seed)
        counts["physical_dimensions"] = True
    else:
        log.warning("DVM: 'Ad_table (extra).csv' not found: the physical dimensions are left out")
        counts["physical_dimensions"] = False

    per_model = frame["Genmodel_ID"].value_counts()
    kept = per_model[per_model >= min_adverts].index
    frame = frame[frame["Genmodel_ID"].isin(kept)].reset_index(drop=True)
    if frame.empty:
        raise DataError(f"DVM: no car model has {min_adverts} adverts or more")
    counts["kept"] = len(frame)

    classes = list(dict.fromkeys(frame["Genmodel_ID"]))
    columns = {
        "Adv_ID": frame["Adv_ID"], "image": frame["Image_name"].map(image_path),
        **{c: frame[c] for c in CATEGORICAL},
        **{c: frame[c].astype(float) for c in CONTINUOUS if c in frame.columns and (counts["physical_dimensions"] or c not in PHYSICAL)},
        "viewpoint": pd.to_numeric(frame["Predicted_viewpoint"], errors="coerce"),
        LABEL: frame["Genmodel_ID"],
    }
    table = pd.DataFrame(columns)
    counts["classes"] = len(classes)
    return table, {"counts": counts, "classes": classes}


def split_rows(labels: np.ndarray, seed: int = SPLIT_SEED) -> dict[str, np.ndarray]:
    """TIP's splits as row positions: stratified half for test, then a fifth of the rest for val."""
    from sklearn.model_selection import train_test_split

    rows = np.arange(len(labels))
    train_val, test = train_test_split(rows, test_size=0.5, random_state=seed, stratify=labels)
    train, val = train_test_split(train_val, test_size=0.2, random_state=seed, stratify=labels[train_val])
    return {"train": np.asarray(train), "val": np.asarray(val), "test": np.asarray(test)}


def low_label_rows(rows: np.ndarray, labels: np.ndarray, fraction: float, seed: int = LOW_DATA_SEED) -> np.ndarray:
    """A ``fraction`` of ``rows`` holding every class: its first row per class, then a
    stratified draw of the remainder."""
    from sklearn.model_selection import train_test_split

    first = pd.Series(rows).groupby(labels[rows]).head(1).to_numpy()
    others = rows[~np.isin(rows, first)]  # in the split's order, as TIP's id lists are
    fill = int(len(rows) * fraction) - len(first)
    if fill <= 0:
        return first
    n_classes = len(np.unique(labels[others]))
    stratify = labels[others] if fill >= n_classes else None
    _, drawn = train_test_split(others, test_size=fill, random_state=seed, stratify=stratify)
    return np.concatenate([first, np.asarray(drawn)])


def schema_dict(image_root: Path, classes: list[str], continuous: list[str], image_size: int = 128) -> dict[str, Any]:
    return {
        "on_unreadable": "missing",
        "columns": [
            {"name": "Adv_ID", "modality": "id"},
            {"name": "image", "modality": "image", "options": {"channels": 3, "size": image_size, "root": str(image_root)}},
            *[{"name": c, "modality": "categorical"} for c in CATEGORICAL],
            *[{"name": c, "modality": "continuous"} for c in continuous],
            {"name": LABEL, "modality": "label", "options": {"task": "multiclass", "classes": classes}},
        ],
    }


def prepare_dvm(root: str | Path, out: str | Path, *, min_adverts: int = 100, image_size: int = 128) -> dict[str, Any]:
    """Write ``train/val/test.parquet``, the 10 % and 1 % training subsets, ``schema.yaml``
    and ``summary.json`` into ``out``; returns the summary."""
    from omegaconf import OmegaConf

    root, out = Path(root).resolve(), empty_output_folder(out)
    table, info = build_table(root, min_adverts=min_adverts)
    image_root = root / "resized_DVM"
    exists = table["image"].map(lambda p: (image_root / p).is_file())
    code = {c: i for i, c in enumerate(info["classes"])}
    labels = table[LABEL].map(code).to_numpy()
    splits = split_rows(labels)
    splits["train_0.1"] = low_label_rows(splits["train"], labels, 0.1)
    splits["train_0.01"] = low_label_rows(splits["train_0.1"], labels, 0.1)
    table = table.drop(columns=["viewpoint"])
    out.mkdir(parents=True, exist_ok=True)
    for name, rows in splits.items():
        table.iloc[rows].reset_index(drop=True).to_parquet(out / f"{name}.parquet", index=False)
    continuous = [c for c in CONTINUOUS if c in table.columns]
    (out / "schema.yaml").write_text(OmegaConf.to_yaml(OmegaConf.create(schema_dict(image_root, info["classes"], continuous, image_size))))
    summary = {
        **info["counts"], "min_adverts": min_adverts, "missing_image_files": int((~exists).sum()),
        "splits": {k: int(len(v)) for k, v in splits.items()}, "features": list(CATEGORICAL) + continuous,
        "source": str(root),
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary
