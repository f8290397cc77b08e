"""What a person reads from the command line (issue 17, item 9): no Lightning notices or
adverts, one line an epoch when stdout is not a terminal, the phases of I2M2, each warning
once, and the same lines in the run folder's train.log."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from holomodal.cli import main
from holomodal.console import LOG_FILE
from tiny import TINY_ENCODERS

# what item 9 lists as noise, and the pieces a progress bar breaks into outside a terminal
NOISE = [
    r"GPU available", r"TPU available", r"HPU available", r"Tip:", r"litlogger", r"litmodels", r"LitLogger",
    r"will be deleted", r"LeafSpec", r"Trainer\.fit` stopped", r"smaller than the logging interval",
    r"it/s", r"Sanity Checking", r"Epoch \d+/\d+", r"^INFO:", r"site-packages/", r"warnings\.warn\(",
    r"No positive samples", r"Restoring states",
]


def noise_in(text: str) -> list[str]:
    return [line for line in text.splitlines() if any(re.search(p, line) for p in NOISE)]


@pytest.fixture(scope="module")
def own_tables(covid, tmp_path_factory):
    """Tabular covid_cxr rows as CSV, the test table holding 'view' values training never saw."""
    folder = tmp_path_factory.mktemp("own")
    columns = ["sex", "view", "age", "offset", "label"]
    train = covid.split("train")[columns].iloc[:96].copy()
    test = covid.split("test")[columns].iloc[:40].copy()
    test.loc[test.index[:7], "view"] = ["Lateral", "Lateral", "Lateral", "Oblique", "Oblique", "Side", "Side"]
    train.to_csv(folder / "train.csv", index=False)
    test.to_csv(folder / "test.csv", index=False)
    config = folder / "tiny.yaml"
    config.write_text(yaml.safe_dump({"model": {"encoders": {"tabular": TINY_ENCODERS["tabular"]}}, "batch_size": 16,
                                      "run": {"loggers": ["csv"]}, "trainer": {"max_epochs": 2}}))
    return folder, config


def own_train(own_tables, run, *extra):
    folder, config = own_tables
    return ["train", "-c", str(config), "--train", str(folder / "train.csv"), "--test", str(folder / "test.csv"),
            "--label", "label", f"run.dir={run}", *extra]


def test_a_cli_run_in_a_fresh_process_prints_no_noise(own_tables, tmp_path, data_root):
    """The real command, its output in files (no terminal): Lightning's notices are not
    printed, once or twice, and no progress bar breaks into fragments."""
    run = tmp_path / "run"
    env = {**os.environ, "HOLOMODAL_DATA": str(data_root), "OMP_NUM_THREADS": "1"}
    with open(tmp_path / "out", "w") as out, open(tmp_path / "err", "w") as err:
        done = subprocess.run([sys.executable, "-m", "holomodal.cli", *own_train(own_tables, run)],
                              stdout=out, stderr=err, env=env)
    stdout, stderr = (tmp_path / "out").read_text(), (tmp_path / "err").read_text()
    assert done.returncode == 0, stderr
    assert noise_in(stdout + stderr) == []
    [line] = stderr.splitlines()
    found = re.fullmatch(r"warning: column 'view' \(test split\): 7 cell\(s\) hold 3 value\(s\) never seen in training "
                         r"\('(\w+)' x(\d+), '(\w+)' x(\d+), '(\w+)' x(\d+)\); they map to the 'unknown' category", line)
    assert found, line
    assert sorted(found.group(1, 3, 5)) == ["Lateral", "Oblique", "Side"]
    assert sum(int(n) for n in found.group(2, 4, 6)) == 7  # the count matches the list
    epochs = [line for line in stdout.splitlines() if line.startswith("epoch ")]
    assert [line.split()[1] for line in epochs] == ["1/2", "2/2"]
    assert all("train/loss" in line and "val/auroc" in line and line.endswith(" s") for line in epochs)
    assert "training done: 2 of 2 epoch(s)" in stdout and f"run folder: {run}" in stdout
    log = (run / LOG_FILE).read_text()
    assert "$ holomodal train -c" in log.splitlines()[0]
    for line in (*epochs, "training done: 2 of 2 epoch(s)", "│ test", *stderr.splitlines()):
        assert line in log
    assert noise_in(log) == []


def test_train_evaluate_report_say_what_they_did(own_tables, tmp_path, capsys):
    folder, config = own_tables
    run = tmp_path / "run"
    assert main(["train", "-c", str(config), "--train", str(folder / "train.csv"), "--test", str(folder / "test.csv"),
                 "--label", "label", f"run.dir={run}"]) == 0
    out, err = capsys.readouterr()
    assert noise_in(out + err) == []
    assert len([line for line in out.splitlines() if line.startswith("epoch ")]) == 2
    # the test split's unseen values, once, though the test split is encoded more than once
    unseen = [line for line in err.splitlines() if "never seen in training" in line]
    assert len(unseen) == 1 and unseen[0].startswith("warning: column 'view' (test split): 7 cell(s) hold 3 value(s)")
    log = (run / LOG_FILE).read_text()
    assert "schema inferred from" in log and "validation: 20% of the rows" in log  # said before the run had a folder
    assert unseen[0] in log and "epoch 2/2" in log

    assert main(["evaluate", str(run), "--data", str(folder / "test.csv"), "--missing", "rvm", "--rates", "0,0.5",
                 "--n-boot", "3"]) == 0
    out, err = capsys.readouterr()
    assert noise_in(out + err) == []
    written = out.strip().splitlines()[-1]
    assert written.startswith("written: ")
    files = written.removeprefix("written: ").split(", ")
    assert {Path(f).suffix for f in files} == {".csv", ".json", ".png"} and all(Path(f).is_file() for f in files)

    page = tmp_path / "report"
    assert main(["report", str(run), "--out", str(page)]) == 0
    out, err = capsys.readouterr()
    assert noise_in(out + err) == [] and f"report: {page / 'report.html'}" in out
    listed = out.strip().splitlines()[-1].split(": ", 1)[1].split(", ")
    assert "report.html" in listed and sorted(listed) == sorted(str(p.relative_to(page)) for p in page.rglob("*") if p.is_file())


def test_i2m2_says_when_its_experts_start_training_jointly(own_tables, tmp_path, capsys):
    run = tmp_path / "run"
    assert main(own_train(own_tables, run, "method=i2m2", "model.init=pretrained_experts", "model.expert_epochs=1")) == 0
    out, err = capsys.readouterr()
    assert noise_in(out + err) == []
    lines = [line for line in out.splitlines() if line.startswith(("phase:", "epoch "))]
    # each expert a run of its own first (one epoch each), then the joint run from their best weights
    experts = [line for line in lines if line.startswith("phase: expert ")]
    assert [line.split("'")[1] for line in experts] == ["tabular", "inter"]  # the own tables: one modality
    assert all(f"its own run in {run / 'experts'}" in line for line in experts)
    joint = [line.split("  ")[0] for line in lines[lines.index(next(l for l in lines if "jointly" in l)):]]
    assert joint == ["phase: all experts trained jointly, as a product of experts, from their own runs' best "
                     "weights (experts/) (from epoch 1)", "epoch 1/2", "epoch 2/2"]
    assert "phase: all experts trained jointly" in (run / LOG_FILE).read_text()


def test_a_resume_appends_to_the_log_and_says_where_it_started(own_tables, tmp_path, capsys):
    run = tmp_path / "run"
    assert main(own_train(own_tables, run, "trainer.max_epochs=1")) == 0
    capsys.readouterr()
    assert main(["train", "--resume", str(run), "trainer.max_epochs=2"]) == 0
    out, err = capsys.readouterr()
    assert noise_in(out + err) == []
    assert f"resumed from {run / 'checkpoints' / 'last.ckpt'} after epoch 1" in out
    assert [line.split()[1] for line in out.splitlines() if line.startswith("epoch ")] == ["2/2"]
    log = (run / LOG_FILE).read_text()
    assert log.count("$ holomodal train") == 2 and "epoch 1/1" in log and "epoch 2/2" in log


def test_an_error_is_one_line_on_stderr_and_in_the_log(own_tables, tmp_path, capsys):
    run = tmp_path / "run"
    assert main(own_train(own_tables, run, "trainer.max_epochs=1")) == 0
    capsys.readouterr()
    assert main(["train", "--resume", str(run), "model.encoders.tabular.hidden=24"]) == 2
    out, err = capsys.readouterr()
    assert err.startswith("error: the checkpoint") and len(err.strip().splitlines()) == 1
    assert err.strip() in (run / LOG_FILE).read_text()


def test_a_python_api_fit_prints_none_of_lightnings_notices(covid, tmp_path, capfd, caplog):
    from holomodal.estimator import Classifier
    from tiny import small_schema

    schema = small_schema(covid.schema, drop=("image", "text"))
    clf = Classifier(schema, model={"encoders": {"tabular": TINY_ENCODERS["tabular"]}}, batch_size=32, loggers=["csv"],
                     trainer={"max_epochs": 1, "enable_progress_bar": False}, run_dir=tmp_path / "py")
    clf.fit(covid.split("train").iloc[:64], covid.split("val").iloc[:32])
    out, err = capfd.readouterr()
    said = "\n".join(record.getMessage() for record in caplog.records)
    assert noise_in(out + err) == [] and noise_in(said) == []
