"""holomodal.tables.read_table: every table a user names is read here, and a file that cannot
be read stops with one DataError naming the file and saying why."""

import gzip
import os
import threading

import pandas as pd
import pytest

from holomodal.cli import main
from holomodal.errors import DataError
from holomodal.tables import read_table

# real rows: covid_cxr metadata with its Spanish/Italian accents, written as latin-1
LATIN_ROWS = "patient,sex,age,finding,note\n1,M,65,COVID-19,ok\n2,F,52,Pneumonia,tos y fiebre\n3,F,41,COVID-19,paciente con neumonía\n"


def _latin_csv(path):
    path.write_bytes(LATIN_ROWS.encode("latin-1"))
    return path


def test_latin1_csv_names_file_offset_line_and_the_fix(tmp_path):
    path = _latin_csv(tmp_path / "latin.csv")
    offset = LATIN_ROWS.encode("utf-8").index("í".encode("utf-8"))  # the same bytes up to the accent
    with pytest.raises(DataError) as info:
        read_table(path)
    message = str(info.value)
    assert str(path) in message and "not valid utf-8" in message
    assert f"byte(s) ed at offset {offset} (line 4)" in message
    assert "UTF-8" in message and "encoding" in message
    frame = read_table(path, encoding="latin-1")
    assert frame.loc[2, "note"] == "paciente con neumonía" and len(frame) == 3


def test_bad_byte_in_a_later_chunk_and_in_gzip(tmp_path, monkeypatch):
    import holomodal.tables as tables

    monkeypatch.setattr(tables, "_CHUNK", 7)  # the bad byte lies chunks away from the start
    rows = "a,b\n" + "".join(f"{i},x\n" for i in range(20))
    body = rows.encode() + b"21,caf\xe9\n"
    plain = tmp_path / "late.csv"
    plain.write_bytes(body)
    with pytest.raises(DataError, match=rf"offset {len(rows.encode()) + 6} \(line 22\)"):
        read_table(plain)
    packed = tmp_path / "late.csv.gz"
    packed.write_bytes(gzip.compress(body))
    with pytest.raises(DataError, match=r"late.csv.gz.*offset \d+ \(line 22\) of the uncompressed text"):
        read_table(packed)


def test_a_split_multibyte_character_is_not_an_error(tmp_path, monkeypatch):
    import holomodal.tables as tables

    monkeypatch.setattr(tables, "_CHUNK", 5)
    path = tmp_path / "utf8.csv"
    path.write_text("a,b\n1,é\n2,ü€\n", encoding="utf-8")
    assert read_table(path)["b"].tolist() == ["é", "ü€"]
    path.write_bytes("a,b\n1,é\n".encode() + b"2,\xe2\x82\n")  # a character cut short at the end
    with pytest.raises(DataError, match=r"byte\(s\) e2 82 at offset 11 \(line 3\)"):
        read_table(path)


@pytest.mark.parametrize("name, content, fragment", [
    ("absent.csv", None, "not found"),
    ("rows.xlsx", b"x", "unsupported format '.xlsx'"),
    ("empty.csv", b"", r"is empty \(0 bytes\)"),
    ("header.csv", b"a,b,c\n", r"holds no rows \(only a header\)"),
    ("blank.csv", b"\n\n", r"holds no table \(no header line\)"),
    ("ragged.csv", b"a,b\n1,2\n3,4,5\n", "cannot read data file .* as CSV: .*Expected 2 fields in line 3, saw 3"),
    ("twice.csv", b"age,sex,age\n1,M,2\n", "the header names column\\(s\\) 'age' more than once"),
    ("broken.parquet", b"this is not parquet at all", "cannot read data file .* as parquet"),
    ("broken.csv.gz", b"not gzip", "cannot read data file"),
])
def test_unreadable_tables_name_the_file(tmp_path, name, content, fragment):
    path = tmp_path / name
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(DataError, match=fragment) as info:
        read_table(path)
    assert str(path) in str(info.value)


def test_folder_and_fifo_are_refused_without_blocking(tmp_path):
    with pytest.raises(DataError, match="is a folder"):
        read_table(tmp_path)
    fifo = tmp_path / "pipe.csv"
    os.mkfifo(fifo)
    result = {}

    def read():
        try:
            read_table(fifo)
        except DataError as exc:
            result["error"] = str(exc)

    worker = threading.Thread(target=read, daemon=True)
    worker.start()
    worker.join(5)
    assert not worker.is_alive(), "reading a FIFO blocked"
    assert "not a regular file" in result["error"] and "pipe.csv" in result["error"]


def test_good_tables_bom_tsv_gzip_parquet(tmp_path, covid):
    rows = covid.split("test").iloc[:10][["sex", "age", "temperature", "label"]].reset_index(drop=True)
    bom = tmp_path / "excel.csv"
    bom.write_bytes(b"\xef\xbb\xbf" + rows.to_csv(index=False).encode())
    assert list(read_table(bom).columns) == list(rows.columns)  # no byte-order mark in the first name
    tsv = tmp_path / "rows.tsv"
    rows.to_csv(tsv, sep="\t", index=False)
    packed = tmp_path / "rows.csv.gz"
    rows.to_csv(packed, index=False, compression="gzip")
    parquet = tmp_path / "rows.parquet"
    rows.to_parquet(parquet)
    for path in (tsv, packed, parquet):
        got = read_table(path)
        pd.testing.assert_frame_equal(got.astype(str), rows.astype(str), check_dtype=False)
    with pytest.raises(DataError, match="unknown text encoding 'klingon'"):
        read_table(tsv, encoding="klingon")


def test_cli_refuses_a_latin1_training_table_before_any_run(tmp_path, capsys):
    path = _latin_csv(tmp_path / "latin.csv")
    run = tmp_path / "run"
    code = main(["train", "--train", str(path), "--label", "finding", f"run.dir={run}"])
    err = capsys.readouterr().err
    assert code == 2 and "latin.csv" in err and "line 4" in err and "Traceback" not in err
    assert not run.exists()
    assert main(["data", "infer", str(path), "--label", "finding", "--encoding", "latin-1"]) == 0
    assert "note" in capsys.readouterr().out
