"""COVID-19 image data collection (Cohen et al.): chest X-ray + clinical table + notes.

Natural missingness everywhere: 98 rows have no X-ray (CT rows, and 14 X-rays absent from
the source), most clinical values are blank. Splits are grouped by ``patientid`` so that
no patient is in two splits. Rows whose finding is still ``todo`` have no label; they form
the ``unlabelled`` split (usable for self-supervised pre-training).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from holomodal.data import DatasetBundle, register_dataset
from holomodal.errors import ConfigError
from holomodal.schema import Column, Modality, Schema

CATEGORICAL = ("sex", "modality", "view", "intubated", "went_icu", "in_icu", "needed_supplemental_O2")
CONTINUOUS = ("age", "offset", "temperature", "pO2_saturation", "leukocyte_count", "neutrophil_count", "lymphocyte_count")
# answers in the source that mean "unknown", not a category
UNKNOWN_MARKERS = ("?", "Not visible", "Would have been stated")


def _group_splits(groups: np.ndarray, seed: int, fractions: tuple[float, float] = (0.7, 0.15)) -> dict[str, np.ndarray]:
    patients = np.random.default_rng(seed).permutation(np.unique(groups))
    n_train = int(round(len(patients) * fractions[0]))
    n_val = int(round(len(patients) * fractions[1]))
    part = {p: "train" for p in patients[:n_train]}
    part.update({p: "val" for p in patients[n_train : n_train + n_val]})
    part.update({p: "test" for p in patients[n_train + n_val :]})
    labels = np.array([part[g] for g in groups])
    return {name: np.flatnonzero(labels == name) for name in ("train", "val", "test")}


@register_dataset("covid_cxr")
def load_covid_cxr(root: Path, seed: int = 0, target: str = "covid") -> DatasetBundle:
    folder = root / "covid_cxr"
    meta = pd.read_csv(folder / "metadata.csv")
    images = meta["filename"].map(lambda f: folder / "images" / (Path(f).stem + ".jpg"))
    frame = pd.DataFrame({"patientid": meta["patientid"].astype(str)})
    frame["image"] = [str(p) if p.exists() else None for p in images]
    for col in CATEGORICAL:
        frame[col] = meta[col].where(~meta[col].isin(UNKNOWN_MARKERS))
    for col in CONTINUOUS:
        frame[col] = pd.to_numeric(meta[col], errors="coerce")
    frame["clinical_notes"] = meta["clinical_notes"]
    finding = meta["finding"].astype(str)
    unlabelled = finding.eq("todo").to_numpy()
    if target == "covid":
        label = finding.str.contains("COVID-19").astype(float)
        classes = ["other", "COVID-19"]
        task = "binary"
    elif target == "finding":
        classes = sorted(finding[~unlabelled].unique().tolist())
        label = finding.map({c: float(i) for i, c in enumerate(classes)})
        task = "multiclass"
    elif target == "survival":
        survival = meta["survival"].where(meta["survival"].isin(["Y", "N"]))
        label = survival.map({"N": 0.0, "Y": 1.0})
        unlabelled = unlabelled | label.isna().to_numpy()
        classes, task = ["died", "survived"], "binary"
    else:
        raise ConfigError(f"covid_cxr target must be 'covid', 'finding' or 'survival', not '{target}'")
    frame["label"] = label.where(~unlabelled)
    splits = {k: np.setdiff1d(v, np.flatnonzero(unlabelled)) for k, v in _group_splits(frame["patientid"].to_numpy(), seed).items()}
    splits["unlabelled"] = np.flatnonzero(unlabelled)
    schema = Schema(
        [Column("patientid", Modality.GROUP), Column("image", Modality.IMAGE, {"channels": 1, "size": 128})]
        + [Column(c, Modality.CATEGORICAL) for c in CATEGORICAL]
        + [Column(c, Modality.CONTINUOUS) for c in CONTINUOUS]
        + [Column("clinical_notes", Modality.TEXT, {"max_length": 96, "vocab_size": 2000}),
           Column("label", Modality.LABEL, {"task": task, "classes": classes})]
    )
    return DatasetBundle("covid_cxr", frame, schema, splits)
