"""`prepare_mimic_cxr` on a small fixture in MIMIC-CXR-JPG 2.0.0's own file layout.

The schema is checked as YAML, not through holomodal.schema, so these tests do not depend on
the time and view modalities being there."""

import gzip
import json
from datetime import datetime

import pandas as pd
import pytest
import yaml
from PIL import Image

from holomodal.data.mimic_cxr import clean_report, prepare_mimic_cxr
from holomodal.errors import DataError

# A report with bullets, a decimal, a one-token sentence, a de-identified name and a non-ASCII word
IMPRESSION = "1. No acute cardiopulmonary process.\n2. Stable mild cardiomegaly."
FINDINGS = "PA and lateral views of the chest. Heart size is 1.5 cm. Dr. ___ was notified. Café noted. Ok."
# worked out by hand from the spec's rule: "1." and "2." are bullets, "1.5" is cut into "1." and
# "5", "dr", "ok" and "café noted" ("café" is not ASCII) are sentences of one token or less
CLEANED = ("no acute cardiopulmonary process stable mild cardiomegaly pa and lateral views of the chest "
           "heart size is 5 cm ___ was notified")

# (dicom_id, subject_id, study_id, ViewPosition, StudyDate, StudyTime, split)
IMAGES = [
    ("d01", "10000032", "50000001", "PA", "21800506", "213014.531", "train"),
    ("d02", "10000032", "50000001", "LATERAL", "21800506", "213014.531", "train"),
    ("d03", "10000032", "50000002", "AP", "21800506", "84236.0", "train"),  # same day, 08:42:36
    ("d04", "10000032", "50000003", "PA", "21791231", "235959.0", "train"),  # the day before
    ("d05", "10000032", "50000003", "LL", "21791231", "235959.0", "train"),
    ("d06", "10000764", "50000004", "AP", "21320101", "120000.0", "validate"),
    ("d07", "10000764", "50000004", "SWIMMERS", "21320101", "120000.0", "validate"),  # dropped view
    ("d08", "10000764", "50000005", "PA", "21320102", "93000.0", "validate"),
    ("d09", "11000011", "50000006", "PA", "21500615", "101010.0", "train"),
    ("d10", "11000011", "50000006", "LATERAL", "21500615", "101010.0", "train"),  # no image file
    ("d11", "12000022", "50000007", "PA", "21600301", "60000.0", "test"),
    ("d12", "12000022", "50000007", "", "21600301", "60000.0", "test"),  # blank view: dropped
    ("d13", "12000022", "50000008", "AP", "21600302", "70000.0", "test"),
    ("d14", "12000022", "50000008", "AP", "21600302", "70000.0", None),  # not in the split file
]
REPORTS = {  # study -> (impression, findings); 50000005 has no row
    "50000001": (IMPRESSION, FINDINGS),
    "50000002": ("No change.", "Lines and tubes in place. Lungs are clear."),
    "50000003": ("", "Small left pleural effusion."),
    "50000004": ("Normal.", ""),  # one token: too short
    "50000006": ("Right lower lobe pneumonia.", ""),
    "50000007": ("Clear lungs bilaterally.", "No effusion seen."),
    "50000008": ("Interval improvement of edema.", ""),
}
NO_FINDING = {"50000001": "1.0", "50000002": "", "50000003": "-1.0", "50000004": "0.0", "50000005": "1.0",
              "50000006": "1.0", "50000007": ""}  # 50000008 has no row


def _write_csv(path, frame, gzipped=False):
    if gzipped:
        path = path.with_name(path.name + ".gz")
        with gzip.open(path, "wt", newline="") as handle:
            frame.to_csv(handle, index=False)
    else:
        frame.to_csv(path, index=False)


def _release(root, *, gzipped=False, chexpert=True, reports_in_root=True, drop_column=None):
    root.mkdir(parents=True)
    metadata = pd.DataFrame([r[:6] for r in IMAGES], columns=["dicom_id", "subject_id", "study_id", "ViewPosition",
                                                              "StudyDate", "StudyTime"])
    metadata.insert(4, "Rows", 3056)  # the release has more columns than the preparer reads
    if drop_column:
        metadata = metadata.drop(columns=[drop_column])
    _write_csv(root / "mimic-cxr-2.0.0-metadata.csv", metadata, gzipped)
    split = pd.DataFrame([(r[0], r[2], r[1], r[6]) for r in IMAGES if r[6]],
                         columns=["dicom_id", "study_id", "subject_id", "split"])
    _write_csv(root / "mimic-cxr-2.0.0-split.csv", split, gzipped)
    if chexpert:
        rows = [(next(r[1] for r in IMAGES if r[2] == s), s, v, "1.0") for s, v in NO_FINDING.items()]
        _write_csv(root / "mimic-cxr-2.0.0-chexpert.csv",
                   pd.DataFrame(rows, columns=["subject_id", "study_id", "No Finding", "Pneumonia"]), gzipped)
    sectioned = pd.DataFrame([(f"s{s}", imp, fin, "", "") for s, (imp, fin) in REPORTS.items()],
                             columns=["study", "impression", "findings", "last_paragraph", "comparison"])
    reports = (root if reports_in_root else root.parent) / "mimic_cxr_sectioned.csv"
    sectioned.to_csv(reports, index=False)
    for dicom, subject, study, *_ in IMAGES:
        if dicom != "d10":
            path = root / "files" / f"p{subject[:2]}" / f"p{subject}" / f"s{study}" / f"{dicom}.jpg"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.new("L", (12, 10), int(dicom[1:]) * 10).save(path, format="JPEG")
    return reports


def _read(out):
    return {name: pd.read_parquet(out / f"{name}.parquet") for name in ("train", "val", "test")}


def _days(*moment):
    return (datetime(*moment) - datetime(1970, 1, 1)).total_seconds() / 86400


def test_clean_report_follows_the_spec_rule():
    assert clean_report(IMPRESSION, FINDINGS) == CLEANED
    assert clean_report("Normal.", "") is None  # one token
    assert clean_report("No effusion.", float("nan")) is None  # two tokens: under three
    assert clean_report("1. Lungs clear 2. No effusion", None) == "lungs clear no effusion"


def test_prepare_follows_the_official_split_and_counts_what_it_drops(tmp_path):
    _release(tmp_path / "mimic")
    summary = prepare_mimic_cxr(tmp_path / "mimic", tmp_path / "out", image_size=96)
    tables = _read(tmp_path / "out")
    assert {k: sorted(v["dicom_id"]) for k, v in tables.items()} == {
        "train": ["d01", "d02", "d03", "d04", "d05", "d09", "d10"], "val": ["d06", "d08"], "test": ["d11", "d13"]}
    assert summary["splits"] == {"train": 7, "val": 2, "test": 2}
    assert summary["studies"] == {"train": 4, "val": 2, "test": 2}
    assert summary["subjects"] == {"train": 2, "val": 1, "test": 1}
    assert summary["dropped_views"] == 2 and summary["dropped_view_values"] == {"SWIMMERS": 1, "(blank)": 1}
    assert summary["not_in_split_file"] == 1 and summary["studies_with_lateral"] == 3
    assert summary["missing_image_files"] == 1 and summary["chexpert_labels"] is True
    assert summary["missing_reports"] == 2
    assert summary["studies_without_report"] == 1 and summary["studies_with_short_report"] == 1
    assert json.loads((tmp_path / "out" / "summary.json").read_text()) == summary

    train = tables["train"].set_index("dicom_id")
    assert list(tables["train"].columns) == ["dicom_id", "subject_id", "study_time", "view", "image", "report",
                                             "no_finding"]
    assert train.loc["d02", "view"] == "LATERAL" and train.loc["d05", "view"] == "LL"
    assert train.loc["d01", "subject_id"] == "10000032"
    assert train.loc["d01", "image"] == "files/p10/p10000032/s50000001/d01.jpg"
    assert train.loc["d10", "image"] == "files/p11/p11000011/s50000006/d10.jpg"  # kept, though its file is absent
    assert not (tmp_path / "mimic" / train.loc["d10", "image"]).exists()
    assert (tmp_path / "mimic" / train.loc["d09", "image"]).is_file()

    assert train.loc["d01", "report"] == CLEANED and train.loc["d02", "report"] == CLEANED
    assert train.loc["d03", "report"] == "no change lines and tubes in place lungs are clear"
    val = tables["val"].set_index("dicom_id")
    assert pd.isna(val.loc["d06", "report"]) and pd.isna(val.loc["d08", "report"])  # too short; no report row

    # "No Finding": 1.0 -> 1; blank, 0.0 and -1.0 -> 0; a study without a CheXpert row has none
    labels = pd.concat(tables.values()).set_index("dicom_id")["no_finding"]
    assert labels.drop("d13").to_dict() == {"d01": 1, "d02": 1, "d03": 0, "d04": 0, "d05": 0, "d09": 1, "d10": 1,
                                            "d06": 0, "d08": 1, "d11": 0}
    assert pd.isna(labels["d13"]) and summary["studies_without_label"] == 1

    schema = yaml.safe_load((tmp_path / "out" / "schema.yaml").read_text())
    assert schema["on_unreadable"] == "missing"
    columns = {c["name"]: c for c in schema["columns"]}
    assert [c["modality"] for c in schema["columns"]] == ["id", "group", "time", "view", "image", "text", "label"]
    assert list(columns) == list(tables["train"].columns)
    assert columns["view"]["options"] == {"frontal": ["PA", "AP"], "lateral": ["LL", "LATERAL"]}
    assert columns["image"]["options"] == {"channels": 3, "size": 96, "root": str((tmp_path / "mimic").resolve()),
                                           "normalize": "dataset"}
    assert columns["report"]["options"] == {"max_length": 112}
    assert columns["no_finding"]["options"] == {"task": "binary", "classes": [0, 1]}


def test_study_time_orders_a_patients_studies(tmp_path):
    _release(tmp_path / "mimic")
    prepare_mimic_cxr(tmp_path / "mimic", tmp_path / "out")
    train = _read(tmp_path / "out")["train"]
    times = train.set_index("dicom_id")["study_time"]
    assert times["d01"] == pytest.approx(_days(2180, 5, 6, 21, 30, 14, 531000), abs=1e-8)
    assert times["d03"] == pytest.approx(_days(2180, 5, 6, 8, 42, 36), abs=1e-8)  # "84236.0" is 08:42:36
    assert times["d04"] == pytest.approx(_days(2179, 12, 31, 23, 59, 59), abs=1e-8)
    assert times["d01"] == times["d02"] and times["d04"] == times["d05"]  # a study's images share its time
    patient = train[train["subject_id"] == "10000032"]
    # by time the studies run 50000003, 50000002, 50000001: the reverse of their ids
    studies = patient.sort_values("study_time", kind="stable")["image"].str.split("/").str[3].unique().tolist()
    assert studies == ["s50000003", "s50000002", "s50000001"]
    assert patient["dicom_id"].tolist() == ["d04", "d05", "d03", "d01", "d02"]  # rows are written in time order
    assert patient["study_time"].is_monotonic_increasing


def test_gzipped_files_reports_elsewhere_and_no_chexpert(tmp_path):
    reports = _release(tmp_path / "mimic", gzipped=True, chexpert=False, reports_in_root=False)
    assert (tmp_path / "mimic" / "mimic-cxr-2.0.0-metadata.csv.gz").is_file()
    assert not (tmp_path / "mimic" / "mimic-cxr-2.0.0-metadata.csv").exists()
    with pytest.raises(DataError, match="mimic_cxr_sectioned.csv"):  # not in the root, and not given
        prepare_mimic_cxr(tmp_path / "mimic", tmp_path / "first")
    assert not (tmp_path / "first").exists()

    summary = prepare_mimic_cxr(tmp_path / "mimic", tmp_path / "out", reports=reports)
    tables = _read(tmp_path / "out")
    assert summary["splits"] == {"train": 7, "val": 2, "test": 2}
    assert summary["chexpert_labels"] is False and "no_finding" in summary["label_note"]
    assert summary["files"]["reports"] == str(reports.resolve())
    for table in tables.values():
        assert table["no_finding"].isna().all() and table["no_finding"].dtype == "float64"
    assert tables["train"].set_index("dicom_id").loc["d01", "report"] == CLEANED
    schema = yaml.safe_load((tmp_path / "out" / "schema.yaml").read_text())
    assert schema["columns"][-1] == {"name": "no_finding", "modality": "label",
                                     "options": {"task": "binary", "classes": [0, 1]}}


def test_refuses_to_overwrite_a_folder_that_holds_files(tmp_path):
    _release(tmp_path / "mimic")
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(DataError, match="will not overwrite"):
        prepare_mimic_cxr(tmp_path / "mimic", out)
    assert [p.name for p in out.iterdir()] == ["keep.txt"]


def test_metadata_without_a_column_is_named_before_anything_is_written(tmp_path):
    _release(tmp_path / "mimic", drop_column="StudyTime")
    with pytest.raises(DataError, match=r"mimic-cxr-2\.0\.0-metadata\.csv: no column\(s\) \['StudyTime'\]"):
        prepare_mimic_cxr(tmp_path / "mimic", tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_bad_cells_name_the_file_line_and_column(tmp_path):
    _release(tmp_path / "mimic")
    split = tmp_path / "mimic" / "mimic-cxr-2.0.0-split.csv"
    split.write_text(split.read_text().replace("validate", "valid", 1))
    with pytest.raises(DataError, match=r"split\.csv, line 7, column 'split': 'valid'"):
        prepare_mimic_cxr(tmp_path / "mimic", tmp_path / "out")
    metadata = tmp_path / "mimic" / "mimic-cxr-2.0.0-metadata.csv"
    split.write_text(split.read_text().replace("valid", "validate", 1))
    metadata.write_text(metadata.read_text().replace("84236.0", "87236.0"))  # minute 72
    with pytest.raises(DataError, match=r"metadata\.csv, line 4, column 'StudyTime': '87236\.0'"):
        prepare_mimic_cxr(tmp_path / "mimic", tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_prepared_folder_loads_as_studies_over_time(tmp_path, capsys):
    """`holomodal data prepare mimic_cxr`, then the schema and tables as holomodal reads them:
    a patient's studies in time order, frontal images joined with their study's lateral."""
    from holomodal.cli import main
    from holomodal.experiment import load_splits
    from holomodal.studies import build_studies

    _release(tmp_path / "mimic")
    out = tmp_path / "prepared"
    assert main(["data", "prepare", "mimic_cxr", "--root", str(tmp_path / "mimic"), "--out", str(out)]) == 0
    assert "written to" in capsys.readouterr().out
    splits = load_splits({k: str(out / f"{k}.parquet") for k in ("train", "val", "test")} | {"schema": str(out / "schema.yaml")})
    assert splits.schema.group_column().name == "subject_id" and splits.schema.view_column().name == "view"
    studies = build_studies(splits.train, splits.schema)
    assert studies.summary["frontal_images"] > 0
    for seq in studies.sequences:
        assert studies.frame["subject_id"].iloc[seq].nunique() == 1
        assert (studies.frame["study_time"].iloc[seq].diff().dropna() > 0).all()
