"""PhysioNet/CinC Challenge 2012: ICU stays with static descriptors and 36 irregular series.

Records are read straight from the tar.gz archive. All record bodies are joined into one
CSV and parsed by pandas' C reader in a single call (a Python loop over the 3.5 million
lines would take several times longer); the result is cached under
:func:`~holomodal.data.paths.cache_dir`, keyed by the archive's size and modification time.

Weight is recorded both as a descriptor (the 00:00 admission weight) and as repeated
readings. It is kept as one static column, the admission weight, so that exactly 36
parameters are series channels; later Weight readings are not used.
"""

from __future__ import annotations

import io
import os
import tarfile
from pathlib import Path

import numpy as np
import pandas as pd

from holomodal.data._registry import DatasetBundle, make_bundle, object_cells, register_dataset, stratified_split
from holomodal.data.paths import cache_dir
from holomodal.errors import ConfigError, DataError
from holomodal.schema import Column, Modality, Schema

ARCHIVE = Path("physionet2012") / "physionet2012_ab.tar.gz"
DESCRIPTORS = ("RecordID", "Age", "Gender", "Height", "ICUType", "Weight")
SERIES = (
    "ALP", "ALT", "AST", "Albumin", "BUN", "Bilirubin", "Cholesterol", "Creatinine", "DiasABP", "FiO2",
    "GCS", "Glucose", "HCO3", "HCT", "HR", "K", "Lactate", "MAP", "MechVent", "Mg", "NIDiasABP", "NIMAP",
    "NISysABP", "Na", "PaCO2", "PaO2", "Platelets", "RespRate", "SaO2", "SysABP", "Temp", "TroponinI",
    "TroponinT", "Urine", "WBC", "pH",
)
GENDER = {0: "female", 1: "male"}
ICU_TYPE = {1: "coronary_care", 2: "cardiac_surgery_recovery", 3: "medical", 4: "surgical"}
STATIC = ("Age", "Gender", "Height", "ICUType", "Weight")
# bump when the parsed layout changes, so stale caches are not read back
CACHE_VERSION = 2
# the outcomes a bundle can be labelled with; length of stay (days) is a regression target
TARGETS = ("in_hospital_death", "length_of_stay")


def _read_archive(archive: Path) -> tuple[list[str], list[bytes], dict[str, bytes]]:
    names, bodies, outcomes = [], [], {}
    with tarfile.open(archive, "r:*") as tar:
        for member in tar:
            if not member.isfile() or not member.name.endswith(".txt"):
                continue
            handle = tar.extractfile(member)
            raw = handle.read() if handle is not None else b""
            *folders, base = member.name.split("/")
            if base.startswith("Outcomes-"):
                outcomes[base] = raw
            elif folders and folders[-1].startswith("set-"):
                header, _, body = raw.replace(b"\r\n", b"\n").partition(b"\n")
                if header.strip() != b"Time,Parameter,Value":
                    raise DataError(f"{archive}:{member.name}: unexpected header {header[:60]!r}")
                if body and not body.endswith(b"\n"):
                    body += b"\n"
                names.append(member.name)
                bodies.append(body)
    if not bodies:
        raise DataError(f"{archive}: no set-*/<RecordID>.txt records found")
    return names, bodies, outcomes


def _parse(archive: Path) -> dict[str, np.ndarray]:
    """The archive as flat arrays: one entry per stay plus one (n_obs, 3) block of readings."""
    names, bodies, outcome_files = _read_archive(archive)
    lengths = np.array([body.count(b"\n") for body in bodies], dtype=np.int64)
    # "HH:MM" becomes two integer fields so the C parser does the time arithmetic's work
    blob = b"".join(bodies).replace(b":", b",")
    lines = pd.read_csv(
        io.BytesIO(blob), header=None, names=["h", "m", "param", "value"],
        dtype={"h": np.int32, "m": np.int32, "param": "category", "value": np.float64},
        engine="c", na_filter=False,
    )
    if len(lines) != lengths.sum():
        raise DataError(f"{archive}: blank or malformed record lines ({len(lines)} parsed, {lengths.sum()} expected)")
    stay = np.repeat(np.arange(len(bodies)), lengths)
    hours = lines["h"].to_numpy() + lines["m"].to_numpy() / 60.0
    value = lines["value"].to_numpy()
    # per-line lookups go through the ~42 parameter categories, not 3.5 million strings
    names_of_code = list(lines["param"].cat.categories)
    codes = lines["param"].cat.codes.to_numpy()
    descriptor = np.array([n in DESCRIPTORS for n in names_of_code], dtype=bool)[codes] & (hours == 0)
    channel_of = {name: i for i, name in enumerate(SERIES)}
    channel = np.array([channel_of.get(n, -1) for n in names_of_code], dtype=np.int64)[codes]

    first = pd.DataFrame({
        "stay": stay[descriptor],
        "param": np.asarray(names_of_code, dtype=object)[codes[descriptor]],
        "value": value[descriptor],
    })
    first = first.drop_duplicates(["stay", "param"], keep="first").pivot(index="stay", columns="param", values="value")
    first = first.reindex(index=np.arange(len(bodies)), columns=list(DESCRIPTORS))
    static = {name: first[name].to_numpy(dtype=np.float64) for name in DESCRIPTORS}
    if np.isnan(static["RecordID"]).any():
        missing = [names[i] for i in np.flatnonzero(np.isnan(static["RecordID"]))[:5]]
        raise DataError(f"{archive}: record(s) without a RecordID line: {missing}")

    # negative readings are -1 "unknown" markers or impossible values (-17.8 degC, i.e. 0 degF)
    keep = (channel >= 0) & (value >= 0)
    obs = np.stack([hours[keep], channel[keep], value[keep]], axis=1).astype(np.float32)
    counts = np.bincount(stay[keep], minlength=len(bodies))

    deaths: dict[int, int] = {}
    stays: dict[int, float] = {}
    for raw in outcome_files.values():
        table = pd.read_csv(io.BytesIO(raw))
        deaths.update(zip(table["RecordID"].astype(int), table["In-hospital_death"].astype(int)))
        stays.update(zip(table["RecordID"].astype(int), table["Length_of_stay"].astype(float)))
    record = static["RecordID"].astype(np.int64)
    unknown = [int(r) for r in record if int(r) not in deaths]
    if unknown:
        raise DataError(f"{archive}: {len(unknown)} record(s) have no outcome, e.g. RecordID {unknown[:5]}")
    in_set_b = np.array(["set-b" in n for n in names])
    order = np.lexsort((record, in_set_b))
    offsets = np.concatenate([[0], np.cumsum(counts)])
    blocks = [obs[offsets[i]: offsets[i + 1]] for i in order]
    out = {name: static[name][order] for name in STATIC}
    out.update({
        "RecordID": record[order],
        "set_b": in_set_b[order],
        "death": np.array([deaths[int(r)] for r in record[order]], dtype=np.int64),
        "length_of_stay": np.array([stays[int(r)] for r in record[order]], dtype=np.float64),
        "offsets": np.concatenate([[0], np.cumsum([len(b) for b in blocks])]).astype(np.int64),
        "obs": np.concatenate(blocks) if blocks else np.zeros((0, 3), np.float32),
    })
    return out


def _cache_file(archive: Path) -> Path:
    stat = archive.stat()
    return cache_dir() / f"physionet2012-v{CACHE_VERSION}-{stat.st_size}-{stat.st_mtime_ns}.npz"


def _load_arrays(archive: Path, use_cache: bool) -> dict[str, np.ndarray]:
    cache = _cache_file(archive) if use_cache else None
    if cache is not None and cache.is_file():
        try:
            with np.load(cache, allow_pickle=False) as data:
                return {k: data[k] for k in data.files}
        except (OSError, ValueError, EOFError):
            pass  # a truncated or foreign file: parse again and overwrite it
    arrays = _parse(archive)
    if cache is not None:
        try:
            cache.parent.mkdir(parents=True, exist_ok=True)
            tmp = cache.with_name(f".{cache.stem}.{os.getpid()}.npz")
            np.savez(tmp, **arrays)
            os.replace(tmp, cache)  # atomic, so a concurrent reader never sees half a file
        except OSError:
            pass  # a read-only cache folder only costs the parse next time
    return arrays


def _categorical(codes: np.ndarray, names: dict[int, str]) -> pd.Series:
    return pd.Series([names.get(int(c), str(int(c))) if np.isfinite(c) else np.nan for c in codes], dtype=object)


@register_dataset("physionet2012")
def load_physionet2012(root: Path, seed: int = 0, val_fraction: float = 0.2, use_cache: bool = True,
                       target: str = "in_hospital_death") -> DatasetBundle:
    """``target``: ``in_hospital_death`` (binary) or ``length_of_stay`` (days in hospital,
    regression; -1 "unknown" entries and stays under one day, which the challenge notes as
    recording errors, are left out). The splits are the same rows for both targets, up to
    those left out: stratified on death, set B the test split."""
    if target not in TARGETS:
        raise ConfigError(f"data set 'physionet2012': target must be one of {list(TARGETS)}, not '{target}'")
    if not 0.0 < val_fraction < 1.0:
        raise ConfigError(f"data set 'physionet2012': val_fraction must be between 0 and 1, not {val_fraction}")
    archive = Path(root) / ARCHIVE
    if not archive.is_file():
        raise DataError(f"PhysioNet 2012 archive not found: {archive}")
    arrays = _load_arrays(archive, use_cache)
    static = {name: np.where(arrays[name] < 0, np.nan, arrays[name]) for name in STATIC}  # -1 = missing
    offsets = arrays["offsets"]
    frame = pd.DataFrame({
        "RecordID": arrays["RecordID"].astype(np.int64),
        "Age": static["Age"],
        "Height": static["Height"],
        "Weight": static["Weight"],
        "Gender": _categorical(static["Gender"], GENDER),
        "ICUType": _categorical(static["ICUType"], ICU_TYPE),
        "timeseries": object_cells(np.split(arrays["obs"], offsets[1:-1])),
        "in_hospital_death": arrays["death"].astype(np.int64),
        "length_of_stay": arrays["length_of_stay"].astype(np.float64),
    })
    set_b = arrays["set_b"].astype(bool)
    set_a_rows = np.flatnonzero(~set_b)
    parts = stratified_split(frame["in_hospital_death"].to_numpy()[set_a_rows],
                             {"train": 1.0 - val_fraction, "val": val_fraction}, seed)
    splits = {"train": set_a_rows[parts["train"]], "val": set_a_rows[parts["val"]], "test": np.flatnonzero(set_b)}
    if target == "length_of_stay":
        known = frame["length_of_stay"].to_numpy() >= 1
        splits = {name: rows[known[rows]] for name, rows in splits.items()}
        label = [Column("length_of_stay", Modality.LABEL, {"task": "regression"})]
        frame = frame.drop(columns=["in_hospital_death"])
    else:
        label = [Column("in_hospital_death", Modality.LABEL, {"task": "binary", "classes": ["survived", "died"]})]
        frame = frame.drop(columns=["length_of_stay"])
    schema = Schema([
        Column("RecordID", Modality.ID),
        Column("Age", Modality.CONTINUOUS),
        Column("Height", Modality.CONTINUOUS),
        Column("Weight", Modality.CONTINUOUS),
        Column("Gender", Modality.CATEGORICAL),
        Column("ICUType", Modality.CATEGORICAL),
        Column("timeseries", Modality.TIMESERIES, {"channels": list(SERIES), "hours": 48}),
        *label,
    ])
    return make_bundle("physionet2012", frame, schema, splits)
