"""PhysioNet/CinC Challenge 2012: ICU stays with static descriptors and 36 irregular series.

Read straight from the tar file; the parsed table is cached (keyed by the archive's size and
modification time) because parsing 8,000 records takes a while.
"""

from __future__ import annotations

import tarfile
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.model_selection import train_test_split

from holomodal.data import DatasetBundle, register_dataset
from holomodal.data.paths import cache_dir
from holomodal.schema import Column, Modality, Schema

DESCRIPTORS = ("RecordID", "Age", "Gender", "Height", "ICUType", "Weight")
# Weight is both a descriptor (00:00) and a series; it is kept as a descriptor only
SERIES = (
    "ALP", "ALT", "AST", "Albumin", "BUN", "Bilirubin", "Cholesterol", "Creatinine", "DiasABP", "FiO2", "GCS",
    "Glucose", "HCO3", "HCT", "HR", "K", "Lactate", "MAP", "MechVent", "Mg", "NIDiasABP", "NIMAP", "NISysABP",
    "Na", "PaCO2", "PaO2", "Platelets", "RespRate", "SaO2", "SysABP", "Temp", "TroponinI", "TroponinT", "Urine",
    "WBC", "pH",
)
CHANNEL = {name: i for i, name in enumerate(SERIES)}


def _parse_record(text: str) -> tuple[dict[str, float], np.ndarray]:
    static: dict[str, float] = {}
    obs = []
    for line in text.splitlines()[1:]:
        time, param, value = line.split(",")
        if not param:
            continue
        hours, minutes = time.split(":")
        t = int(hours) + int(minutes) / 60.0
        v = float(value)
        if param in DESCRIPTORS:
            if t == 0.0 and param not in static:
                static[param] = v
        elif param in CHANNEL and v >= 0:  # negative readings are the archive's "unknown"
            obs.append((t, CHANNEL[param], v))
    return static, np.asarray(obs, dtype=np.float32).reshape(-1, 3)


def _parse_archive(archive: Path) -> pd.DataFrame:
    rows = []
    outcomes = {}
    with tarfile.open(archive) as tar:
        for member in tar:
            if not member.isfile():
                continue
            text = tar.extractfile(member).read().decode()
            if member.name.startswith("Outcomes-"):
                table = pd.read_csv(pd.io.common.StringIO(text))
                outcomes.update(dict(zip(table["RecordID"], table["In-hospital_death"])))
            elif member.name.endswith(".txt"):
                static, obs = _parse_record(text)
                rows.append({"set": member.name.split("/")[0][-1], **static, "series": obs})
    frame = pd.DataFrame(rows)
    frame["in_hospital_death"] = frame["RecordID"].map(outcomes)
    return frame.sort_values(["set", "RecordID"]).reset_index(drop=True)


def _cached_table(archive: Path) -> pd.DataFrame:
    stat = archive.stat()
    cache = cache_dir() / f"physionet2012-{stat.st_size}-{int(stat.st_mtime)}.npz"
    if cache.exists():
        data = np.load(cache, allow_pickle=False)
        frame = pd.DataFrame({k: data[k] for k in data.files if not k.startswith("series")})
        offsets = data["series_offsets"]
        flat = data["series_values"]
        frame["series"] = [flat[a:b] for a, b in zip(offsets[:-1], offsets[1:])]
        frame["set"] = frame["set"].astype(str)
        return frame
    frame = _parse_archive(archive)
    lengths = frame["series"].map(len).to_numpy()
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    columns = {k: frame[k].to_numpy() for k in frame.columns if k != "series"}
    columns["set"] = columns["set"].astype(str)
    tmp = cache.with_name(cache.name + ".tmp.npz")
    np.savez(tmp, series_offsets=offsets, series_values=np.concatenate(frame["series"].tolist()), **columns)
    tmp.replace(cache)
    return frame


@register_dataset("physionet2012")
def load_physionet2012(root: Path, seed: int = 0, val_fraction: float = 0.2) -> DatasetBundle:
    table = _cached_table(root / "physionet2012" / "physionet2012_ab.tar.gz")
    for col in ("Age", "Gender", "Height", "ICUType", "Weight"):
        table[col] = table[col].where(table[col] >= 0)  # -1 marks a missing descriptor
    frame = pd.DataFrame({
        "RecordID": table["RecordID"].astype(np.int64),
        "Age": table["Age"], "Height": table["Height"], "Weight": table["Weight"],
        "Gender": table["Gender"], "ICUType": table["ICUType"],
        "timeseries": table["series"],
        "in_hospital_death": table["in_hospital_death"].astype(np.int64),
    })
    set_a = np.flatnonzero(table["set"].to_numpy() == "a")
    set_b = np.flatnonzero(table["set"].to_numpy() == "b")
    train, val = train_test_split(set_a, test_size=val_fraction, stratify=frame["in_hospital_death"].to_numpy()[set_a], random_state=seed)
    schema = Schema([
        Column("RecordID", Modality.ID),
        Column("Age", Modality.CONTINUOUS), Column("Height", Modality.CONTINUOUS), Column("Weight", Modality.CONTINUOUS),
        Column("Gender", Modality.CATEGORICAL), Column("ICUType", Modality.CATEGORICAL),
        Column("timeseries", Modality.TIMESERIES, {"channels": list(SERIES), "hours": 48}),
        Column("in_hospital_death", Modality.LABEL, {"task": "binary", "classes": ["survived", "died"]}),
    ])
    return DatasetBundle("physionet2012", frame, schema, {"train": np.sort(train), "val": np.sort(val), "test": set_b})
