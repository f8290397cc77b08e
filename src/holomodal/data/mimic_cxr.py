"""MIMIC-CXR-JPG 2.0.0 (PhysioNet, credentialed) turned into holomodal's format for MedST
pre-training (spec ``dcp_i2m2_medst.md`` 3.2, ``addenda.md`` 2.4).

Input, in the release's own layout under ROOT: ``mimic-cxr-2.0.0-metadata.csv`` and
``mimic-cxr-2.0.0-split.csv`` (each may be gzipped, ``.csv.gz``), optionally
``mimic-cxr-2.0.0-chexpert.csv(.gz)``, the images ``files/p10/p10000032/s50414267/<dicom_id>.jpg``,
and the sectioned reports ``mimic_cxr_sectioned.csv`` written by MIMIC-CXR's section extractor
(in ROOT, or wherever ``reports=`` points).

Output: one row per frontal (PA, AP) or lateral (LL, LATERAL) image in ``train/val/test.parquet``
by the official split (``validate`` -> val); images with any other view are dropped and counted.
Columns: ``dicom_id`` (id), ``subject_id`` (group), ``study_time`` (time: days since 1970-01-01
from StudyDate and StudyTime, one value per study), ``view`` (the raw ViewPosition), ``image``
(path relative to ROOT; a missing file is kept and counted), ``report`` (the cleaned impression
and findings, missing when the study has none or it is too short) and ``no_finding`` (the
label; MedST needs none, but a holomodal schema needs one: CheXpert's "No Finding" when that
file is there, all missing otherwise).
"""

from __future__ import annotations

import gzip
import json
import re
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from holomodal.data.paths import empty_output_folder
from holomodal.errors import DataError

SPLITS = ("train", "val", "test")
OFFICIAL_SPLITS = {"train": "train", "validate": "val", "test": "test"}
FRONTAL_VIEWS = ("PA", "AP")
LATERAL_VIEWS = ("LL", "LATERAL")
LABEL = "no_finding"
REPORT_MAX_LENGTH = 112  # MedST's Bio_ClinicalBERT length

METADATA_FILE = "mimic-cxr-2.0.0-metadata.csv"
SPLIT_FILE = "mimic-cxr-2.0.0-split.csv"
CHEXPERT_FILE = "mimic-cxr-2.0.0-chexpert.csv"
REPORTS_FILE = "mimic_cxr_sectioned.csv"
METADATA_COLUMNS = ("dicom_id", "subject_id", "study_id", "ViewPosition", "StudyDate", "StudyTime")
SPLIT_COLUMNS = ("dicom_id", "split")
REPORT_COLUMNS = ("study", "impression", "findings")
CHEXPERT_COLUMNS = ("study_id", "No Finding")

# A numbered bullet is digits then a period. As in the spec's rule this also takes the number
# that ends a sentence ("size 12." keeps "size") and splits decimals ("1.5" -> "", "5").
_SENTENCE_BREAK = re.compile(r"\d+\.|\.")
_WORD = re.compile(r"\w+")
_DIGITS = re.compile(r"\d+")
_STUDY = re.compile(r"s?(\d+)")


def _find(root: Path, name: str) -> Path | None:
    for path in (root / name, root / f"{name}.gz"):
        if path.is_file():
            return path
    return None


def _read_csv(path: Path, required: tuple[str, ...]) -> pd.DataFrame:
    """The file as strings (blank cells are ''), after checking it has the ``required`` columns."""
    try:
        # compression follows the name, so .csv and .csv.gz read alike
        table = pd.read_csv(path, dtype=str, keep_default_na=False)
    except pd.errors.EmptyDataError:
        raise DataError(f"{path}: the file is empty (it needs the columns {', '.join(required)})") from None
    except (pd.errors.ParserError, UnicodeDecodeError, EOFError, gzip.BadGzipFile, zlib.error) as err:
        raise DataError(f"{path}: not a readable CSV ({err})") from None
    table.columns = [str(c).strip() for c in table.columns]
    absent = [c for c in required if c not in table.columns]
    if absent:
        raise DataError(f"{path}: no column(s) {absent} (it needs {', '.join(required)})")
    return table


def _line(table: pd.DataFrame, mask: np.ndarray) -> int:
    """The file line of the first flagged row (line 1 is the header)."""
    return int(table.index[np.flatnonzero(mask)[0]]) + 2


def _check_digits(table: pd.DataFrame, column: str, path: Path) -> pd.Series:
    values = table[column].str.strip()
    bad = ~values.str.fullmatch(_DIGITS).to_numpy(dtype=bool)
    if bad.any():
        line = _line(table, bad)
        raise DataError(f"{path}, line {line}, column '{column}': {table[column].iloc[line - 2]!r} is not a number "
                        "(the image path is built from it)")
    return values


def _check_unique(table: pd.DataFrame, column: str, path: Path) -> None:
    repeated = table[column].duplicated().to_numpy()
    if repeated.any():
        line = _line(table, repeated)
        raise DataError(f"{path}, line {line}, column '{column}': {table[column].iloc[line - 2]!r} appears twice")


def study_days(dates: pd.Series, times: pd.Series, path: Path | str = "metadata") -> np.ndarray:
    """Days since 1970-01-01 from StudyDate (``YYYYMMDD``) and StudyTime (``HHMMSS.fff``, whose
    leading zeros a float has lost: ``84236.0`` is 08:42:36)."""
    frame = pd.DataFrame({"StudyDate": dates, "StudyTime": times}).reset_index(drop=True)
    date_number = pd.to_numeric(frame["StudyDate"], errors="coerce")
    whole = date_number.notna() & (date_number % 1 == 0) & (date_number >= 0)
    day = pd.to_datetime(date_number.where(whole).astype("Int64").astype("string"), format="%Y%m%d", errors="coerce")
    bad = day.isna().to_numpy()
    if bad.any():
        line = _line(frame, bad)
        raise DataError(f"{path}, line {line}, column 'StudyDate': {frame['StudyDate'].iloc[line - 2]!r} is not a "
                        "date written YYYYMMDD")
    clock = pd.to_numeric(frame["StudyTime"], errors="coerce").to_numpy(dtype=np.float64)
    hours, minutes = np.floor(clock / 10000), np.floor(clock / 100) % 100
    seconds = clock - np.floor(clock / 100) * 100
    bad = ~(np.isfinite(clock) & (clock >= 0) & (hours < 24) & (minutes < 60) & (seconds < 60))
    if bad.any():
        line = _line(frame, bad)
        raise DataError(f"{path}, line {line}, column 'StudyTime': {frame['StudyTime'].iloc[line - 2]!r} is not a "
                        "time written HHMMSS.fff")
    days = ((day - pd.Timestamp("1970-01-01")) / pd.Timedelta(days=1)).to_numpy(dtype=np.float64)
    return days + (hours * 3600 + minutes * 60 + seconds) / 86400


def clean_report(impression: str | None, findings: str | None) -> str | None:
    """Impression then findings as MedST reads them: sentences cut at numbered bullets and
    periods, each lowercased to its ASCII ``\\w+`` tokens, one-token sentences dropped; None when
    fewer than 3 tokens are left.

    The result has no punctuation by design of the spec: sentences are joined with spaces only.
    De-identified spans (``___``) are ``\\w`` tokens and stay, as in the spec's rule.
    """
    text = " ".join(part if isinstance(part, str) else "" for part in (impression, findings))
    sentences = []
    for piece in _SENTENCE_BREAK.split(text):
        tokens = [t for t in _WORD.findall(piece.lower()) if t.isascii()]
        if len(tokens) > 1:
            sentences.append(tokens)
    if sum(len(s) for s in sentences) < 3:
        return None
    return " ".join(" ".join(s) for s in sentences)


def image_path(subject_id: str, study_id: str, dicom_id: str) -> str:
    """Where MIMIC-CXR-JPG stores an image, relative to the release's root."""
    return f"files/p{subject_id[:2]}/p{subject_id}/s{study_id}/{dicom_id}.jpg"


def _read_metadata(path: Path) -> pd.DataFrame:
    table = _read_csv(path, METADATA_COLUMNS)
    table["dicom_id"] = table["dicom_id"].str.strip()
    _check_unique(table, "dicom_id", path)
    for column in ("subject_id", "study_id"):
        table[column] = _check_digits(table, column, path)
    table["days"] = study_days(table["StudyDate"], table["StudyTime"], path)
    return table


def _read_split(path: Path) -> pd.Series:
    table = _read_csv(path, SPLIT_COLUMNS)
    table["dicom_id"] = table["dicom_id"].str.strip()
    _check_unique(table, "dicom_id", path)
    names = table["split"].str.strip()
    bad = ~names.isin(list(OFFICIAL_SPLITS)).to_numpy()
    if bad.any():
        line = _line(table, bad)
        raise DataError(f"{path}, line {line}, column 'split': {table['split'].iloc[line - 2]!r} is not one of "
                        f"{', '.join(OFFICIAL_SPLITS)}")
    return pd.Series(names.map(OFFICIAL_SPLITS).to_numpy(), index=table["dicom_id"].to_numpy())


def _read_reports(path: Path) -> tuple[pd.DataFrame, int]:
    """Impression and findings by study id, and how many repeated study rows were skipped."""
    table = _read_csv(path, REPORT_COLUMNS)
    ids = table["study"].str.strip().str.extract(f"^{_STUDY.pattern}$", expand=False)
    bad = ids.isna().to_numpy()
    if bad.any():
        line = _line(table, bad)
        raise DataError(f"{path}, line {line}, column 'study': {table['study'].iloc[line - 2]!r} is not a study id "
                        "such as 's50414267'")
    table = table.assign(study_id=ids)
    repeated = int(table["study_id"].duplicated().sum())
    return table.drop_duplicates(subset="study_id").set_index("study_id")[["impression", "findings"]], repeated


def _read_chexpert(path: Path) -> tuple[pd.Series, int]:
    """No Finding as 0/1 by study id (1.0 -> 1; blank, 0 and -1 (uncertain) -> 0)."""
    table = _read_csv(path, CHEXPERT_COLUMNS)
    table["study_id"] = _check_digits(table, "study_id", path)
    cells = table["No Finding"].str.strip()
    number = pd.to_numeric(cells, errors="coerce")
    bad = ~((cells == "") | number.isin([1.0, 0.0, -1.0])).to_numpy()
    if bad.any():
        line = _line(table, bad)
        raise DataError(f"{path}, line {line}, column 'No Finding': {table['No Finding'].iloc[line - 2]!r} is not "
                        "1.0, 0.0, -1.0 or blank")
    repeated = int(table["study_id"].duplicated().sum())
    table = table.assign(label=(number == 1.0).astype(np.float64)).drop_duplicates(subset="study_id")
    return table.set_index("study_id")["label"], repeated


def _reports_path(root: Path, reports: str | Path | None) -> Path:
    if reports is not None:
        path = Path(reports).expanduser().resolve()
        if not path.is_file():
            raise DataError(f"sectioned report file not found: {path} (the reports= path)")
        return path
    found = _find(root, REPORTS_FILE)
    if found is None:
        raise DataError(f"sectioned report file not found: {root / REPORTS_FILE}. Write it with MIMIC-CXR's section "
                        "extractor (create_section_files.py) from the reports of MIMIC-CXR, then put it in the root "
                        "or pass reports=PATH")
    return found


def schema_dict(root: Path, image_size: int, tokenizer: str | None = None) -> dict[str, Any]:
    return {
        "on_unreadable": "missing",
        "columns": [
            {"name": "dicom_id", "modality": "id"},
            {"name": "subject_id", "modality": "group"},
            {"name": "study_time", "modality": "time"},
            {"name": "view", "modality": "view",
             "options": {"frontal": list(FRONTAL_VIEWS), "lateral": list(LATERAL_VIEWS)}},
            {"name": "image", "modality": "image",
             "options": {"channels": 3, "size": int(image_size), "root": str(root), "normalize": "dataset"}},
            {"name": "report", "modality": "text",
             "options": {"max_length": REPORT_MAX_LENGTH, **({"tokenizer": tokenizer} if tokenizer else {})}},
            {"name": LABEL, "modality": "label", "options": {"task": "binary", "classes": [0, 1]}},
        ],
    }


def prepare_mimic_cxr(root: str | Path, out: str | Path, *, reports: str | Path | None = None,
                      image_size: int = 224, tokenizer: str | None = None) -> dict[str, Any]:
    """Write ``train/val/test.parquet``, ``schema.yaml`` and ``summary.json`` into the new
    folder ``out``; returns the summary. Every input is read and checked before anything is
    written."""
    from omegaconf import OmegaConf

    root, out = Path(root).expanduser().resolve(), empty_output_folder(out)
    if not root.is_dir():
        raise DataError(f"MIMIC-CXR-JPG root not found: {root}")
    needed = {name: _find(root, name) for name in (METADATA_FILE, SPLIT_FILE)}
    for name, path in needed.items():
        if path is None:
            raise DataError(f"{name} not found in {root} (nor {name}.gz): is the root the MIMIC-CXR-JPG 2.0.0 release?")
    metadata_path, split_path = needed[METADATA_FILE], needed[SPLIT_FILE]
    report_path = _reports_path(root, reports)
    chexpert_path = _find(root, CHEXPERT_FILE)

    table = _read_metadata(metadata_path)
    split_of = _read_split(split_path)
    report_text, repeated_reports = _read_reports(report_path)
    labels, repeated_labels = _read_chexpert(chexpert_path) if chexpert_path else (None, 0)

    table["split"] = table["dicom_id"].map(split_of)
    not_in_split = int(table["split"].isna().sum())
    table = table[table["split"].notna()]
    views = table["ViewPosition"]
    kept_view = views.isin(FRONTAL_VIEWS + LATERAL_VIEWS)
    dropped_views = views[~kept_view].replace("", "(blank)").value_counts()
    table = table[kept_view].reset_index(drop=True)
    if table.empty:
        raise DataError(f"{metadata_path}: no image with a frontal ({', '.join(FRONTAL_VIEWS)}) or lateral "
                        f"({', '.join(LATERAL_VIEWS)}) view is in {split_path.name}")

    # the images of a study are paired by their shared time, so each study gets one: its earliest
    study_first = table.groupby("study_id")["days"].min()
    differing_times = int((table.groupby("study_id")["days"].nunique() > 1).sum())
    table["days"] = table["study_id"].map(study_first)

    studies = pd.Index(table["study_id"].unique())
    has_row = studies.isin(report_text.index)
    sections = report_text.reindex(studies)
    cleaned = pd.Series(
        [clean_report(impression, findings) if present else None
         for impression, findings, present in zip(sections["impression"], sections["findings"], has_row)],
        index=studies, dtype=object)
    too_short = int((cleaned.isna() & has_row).sum())
    if labels is not None:
        label_of = labels.reindex(studies)
        without_label_row = int(label_of.isna().sum())
    else:
        label_of = pd.Series(np.nan, index=studies)
        without_label_row = len(studies)

    frame = pd.DataFrame({
        "dicom_id": table["dicom_id"],
        "subject_id": table["subject_id"],
        "study_time": table["days"].astype(np.float64),
        "view": table["ViewPosition"],
        "image": [image_path(*ids) for ids in zip(table["subject_id"], table["study_id"], table["dicom_id"])],
        "report": table["study_id"].map(cleaned),
        LABEL: table["study_id"].map(label_of).astype(np.float64),
    })
    frame = frame.assign(_study=table["study_id"], _split=table["split"])
    frame = frame.sort_values(["subject_id", "study_time", "_study", "dicom_id"], kind="stable").reset_index(drop=True)
    exists = frame["image"].map(lambda p: (root / p).is_file()).to_numpy(dtype=bool)
    lateral_studies = frame.loc[frame["view"].isin(LATERAL_VIEWS), "_study"].nunique()
    per_study = frame.drop_duplicates("_study")
    shared_times = int(per_study.duplicated(["subject_id", "study_time"], keep=False).sum())

    out.mkdir(parents=True, exist_ok=True)
    parts = {name: frame[frame["_split"] == name] for name in SPLITS}
    for name, part in parts.items():
        part.drop(columns=["_study", "_split"]).reset_index(drop=True).to_parquet(out / f"{name}.parquet", index=False)
    (out / "schema.yaml").write_text(OmegaConf.to_yaml(OmegaConf.create(schema_dict(root, image_size, tokenizer))))
    summary: dict[str, Any] = {
        "source": str(root),
        "files": {"metadata": str(metadata_path), "split": str(split_path), "reports": str(report_path),
                  "chexpert": str(chexpert_path) if chexpert_path else None},
        "splits": {k: int(len(v)) for k, v in parts.items()},
        "studies": {k: int(v["_study"].nunique()) for k, v in parts.items()},
        "subjects": {k: int(v["subject_id"].nunique()) for k, v in parts.items()},
        "classes": 2,
        "label": LABEL,
        "chexpert_labels": chexpert_path is not None,
        "studies_without_label": without_label_row,
        "dropped_views": int(dropped_views.sum()),
        "dropped_view_values": {str(k): int(v) for k, v in dropped_views.items()},
        "not_in_split_file": not_in_split,
        "missing_reports": int(cleaned.isna().sum()),
        "studies_without_report": int((~has_row).sum()),
        "studies_with_short_report": too_short,
        "repeated_report_rows": repeated_reports,
        "repeated_chexpert_rows": repeated_labels,
        "missing_image_files": int((~exists).sum()),
        "studies_with_lateral": int(lateral_studies),
        "studies_with_differing_times": differing_times,
        "studies_sharing_a_time": shared_times,
        "image_size": int(image_size),
    }
    if chexpert_path is None:
        summary["label_note"] = (f"{CHEXPERT_FILE} not found in {root}: the label column '{LABEL}' is all missing "
                                 "(MedST pre-training uses no label)")
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary
