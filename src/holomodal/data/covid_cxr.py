"""COVID-19 image data collection (Cohen et al., 2020): chest X-ray, clinical table, notes.

Missingness here is natural: CT rows and 14 lost X-rays have no image file, most clinical
cells are blank. Answers such as "?" or "Would have been stated" mean unknown and become NaN.

Splits are grouped so that no patient is in two splits. Two source cases were entered
twice under different patient ids that share image files, so rows sharing an image file
are grouped with each other as well; otherwise one X-ray could sit in train and in test.

Targets (option ``target``):
  covid     binary, finding contains "COVID-19" (default)
  finding   multiclass over the findings
  survival  binary, survived / died; rows without a Y/N answer are dropped by default
Rows whose finding is still "todo" have no known finding; for the covid and finding
targets they stay in the table with no label and form the ``unlabelled`` split (for
self-supervised pre-training), or are dropped with ``unlabelled="drop"``.

With ``studies=True`` the ``offset`` (days since the first symptoms) is the time column and
``view`` the view column (PA and AP frontal, L lateral) of each patient's studies, for MedST
pre-training (:mod:`holomodal.studies`) rather than table features.

Columns left out: location, doi, url, license, date and folder (provenance, which
confounds the labels), extubated (a successful extubation all but states survival), and
modality (CT vs X-ray, already told by the image being absent and by ``view``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from holomodal.data._registry import DatasetBundle, choice, make_bundle, register_dataset
from holomodal.errors import DataError
from holomodal.schema import Column, Modality, Schema

CATEGORICAL = ("sex", "view", "intubated", "went_icu", "in_icu", "needed_supplemental_O2")
CONTINUOUS = ("age", "offset", "temperature", "pO2_saturation", "leukocyte_count", "neutrophil_count", "lymphocyte_count")
UNKNOWN_ANSWERS = ("?", "Not visible", "Would have been stated", "")
TARGETS = ("covid", "finding", "survival")
STUDY_VIEWS = {"frontal": ["PA", "AP", "AP Supine", "AP erect"], "lateral": ["L"]}


def _answers(values: pd.Series) -> pd.Series:
    text = values.str.strip()
    return text.mask(text.isin(UNKNOWN_ANSWERS))


def _connected_groups(patients: np.ndarray, images: np.ndarray) -> np.ndarray:
    """A group number per row: rows linked by a shared patient id or image file share it."""
    parent = list(range(len(patients)))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for keys in (patients, images):
        first: dict[object, int] = {}
        for row, key in enumerate(keys):
            if key is None or (isinstance(key, float) and np.isnan(key)):
                continue
            if key in first:
                parent[root(row)] = root(first[key])
            else:
                first[key] = row
    return np.array([root(i) for i in range(len(patients))], dtype=np.int64)


def grouped_split(groups: np.ndarray, fractions: dict[str, float], seed: int) -> dict[str, np.ndarray]:
    """Seeded split of whole groups whose row shares follow ``fractions``.

    Groups are shuffled, then cut where the running row count crosses each cumulative
    fraction, so a large patient does not tip the proportions as a count of groups would.
    """
    unique, sizes = np.unique(groups, return_counts=True)
    order = np.random.default_rng(seed).permutation(len(unique))
    running = np.cumsum(sizes[order]) / len(groups)
    bounds = np.cumsum(list(fractions.values()))
    part_of_group = np.searchsorted(bounds, running - 1e-9, side="left").clip(max=len(bounds) - 1)
    part = np.empty(len(unique), dtype=np.int64)
    part[order] = part_of_group
    row_part = part[np.searchsorted(unique, groups)]
    return {name: np.flatnonzero(row_part == i) for i, name in enumerate(fractions)}


@register_dataset("covid_cxr")
def load_covid_cxr(
    root: Path, seed: int = 0, target: str = "covid", unlabelled: str | None = None, image_size: int = 128,
    studies: bool = False,
) -> DatasetBundle:
    choice("covid_cxr", "target", target, TARGETS)
    if unlabelled is None:
        unlabelled = "drop" if target == "survival" else "split"
    choice("covid_cxr", "unlabelled", unlabelled, ("split", "drop"))
    folder = Path(root).resolve() / "covid_cxr"
    meta_path = folder / "metadata.csv"
    if not meta_path.is_file():
        raise DataError(f"covid_cxr metadata not found: {meta_path}")
    meta = pd.read_csv(meta_path, dtype=str, keep_default_na=True)

    files = meta["filename"].map(lambda f: folder / "images" / f"{Path(f).stem}.jpg" if isinstance(f, str) else None)
    frame = pd.DataFrame({
        "patientid": meta["patientid"].astype(str).str.strip(),
        "image": [str(p) if p is not None and p.is_file() else None for p in files],
    })
    for name in CATEGORICAL:
        frame[name] = _answers(meta[name])
    for name in CONTINUOUS:
        frame[name] = pd.to_numeric(_answers(meta[name]), errors="coerce").astype(np.float64)
    notes = meta["clinical_notes"].str.strip()
    frame["clinical_notes"] = notes.mask(notes == "")

    finding = meta["finding"].fillna("").str.strip()
    known = (finding != "") & (finding.str.lower() != "todo")
    if target == "covid":
        classes = ["other", "COVID-19"]
        codes = finding.str.contains("COVID-19", regex=False).astype(np.int64)
        task = "binary"
    elif target == "finding":
        classes = sorted(finding[known].unique().tolist())
        codes = finding.map({c: i for i, c in enumerate(classes)})
        task = "multiclass"
    else:
        answer = _answers(meta["survival"])
        known = answer.isin(["Y", "N"])
        classes = ["survived", "died"]
        codes = answer.map({"Y": 0, "N": 1})
        task = "binary"
    # nullable integers: class codes stay ints while unlabelled rows hold NA
    frame["label"] = codes.where(known).astype("Int64")

    if unlabelled == "drop":
        frame = frame[known.to_numpy()].reset_index(drop=True)
        known = pd.Series(True, index=frame.index)
    if not frame["label"].isna().any():
        frame["label"] = frame["label"].astype(np.int64)

    groups = _connected_groups(frame["patientid"].to_numpy(), frame["image"].to_numpy())
    parts = grouped_split(groups, {"train": 0.7, "val": 0.15, "test": 0.15}, seed)
    labelled_rows = np.flatnonzero(known.to_numpy())
    splits = {name: np.intersect1d(rows, labelled_rows) for name, rows in parts.items()}
    if unlabelled == "split":
        splits["unlabelled"] = np.flatnonzero(~known.to_numpy())

    # studies over time (MedST): the day offset orders a patient's X-rays, the view pairs them
    time_view = [Column("offset", Modality.TIME), Column("view", Modality.VIEW, STUDY_VIEWS)] if studies else []
    features = {"offset", "view"} if studies else set()
    schema = Schema(
        [Column("patientid", Modality.GROUP),
         Column("image", Modality.IMAGE, {"channels": 1, "size": int(image_size)}), *time_view]
        + [Column(name, Modality.CATEGORICAL) for name in CATEGORICAL if name not in features]
        + [Column(name, Modality.CONTINUOUS) for name in CONTINUOUS if name not in features]
        + [Column("clinical_notes", Modality.TEXT, {"max_length": 96, "vocab_size": 2000}),
           Column("label", Modality.LABEL, {"task": task, "classes": classes})]
    )
    return make_bundle("covid_cxr", frame, schema, splits)
