"""`holomodal report`: one self-contained HTML page comparing real runs, checked in a browser."""

import base64
import os
import re
import shutil
import subprocess
from html.parser import HTMLParser

import numpy as np
import pandas as pd
import pytest
from omegaconf import OmegaConf
from PIL import Image

from tiny import TINY_ENCODERS, small_schema
from holomodal.cli import main

ENCODERS = TINY_ENCODERS


@pytest.fixture(scope="module")
def runs(covid, tmp_path_factory):
    """Two methods trained by `holomodal train` on real covid_cxr rows, each evaluated."""
    folder = tmp_path_factory.mktemp("report")
    for split, n in (("train", 64), ("val", 24), ("test", 40)):
        covid.split(split).iloc[:n].to_parquet(folder / f"{split}.parquet")
    (folder / "schema.json").write_text(small_schema(covid.schema).to_json())
    out = []
    for method in ("late_fusion", "i2m2"):
        cfg = {"data": {**{s: str(folder / f"{s}.parquet") for s in ("train", "val", "test")},
                        "schema": str(folder / "schema.json")},
               "method": method, "model": {"encoders": ENCODERS}, "batch_size": 16,
               "trainer": {"max_epochs": 2, "enable_progress_bar": False, "log_every_n_steps": 1},
               "run": {"dir": str(folder / method), "loggers": ["csv"]}}
        OmegaConf.save(OmegaConf.create(cfg), folder / f"{method}.yaml")
        assert main(["train", "-c", str(folder / f"{method}.yaml")]) == 0
        assert main(["evaluate", str(folder / method), "--missing", "rvm,modality", "--rates", "0,0.5,0.9", "--n-boot", "5"]) == 0
        out.append(folder / method)
    return out


@pytest.fixture(scope="module")
def report(runs, tmp_path_factory):
    out = tmp_path_factory.mktemp("page") / "report"
    assert main(["report", *map(str, runs), "--out", str(out)]) == 0
    return out


class _Rows(HTMLParser):
    """The ``data-run`` of every row of the results table, and every image source."""

    def __init__(self) -> None:
        super().__init__()
        self.table, self.runs, self.images = None, [], []

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "table":
            self.table = attrs.get("id")
        if tag == "tr" and self.table == "results" and "data-run" in attrs:
            self.runs.append(attrs["data-run"])
        if tag == "img":
            self.images.append(attrs["src"])


def test_page_is_self_contained_and_lists_every_run(runs, report):
    page = (report / "report.html").read_text()
    parsed = _Rows()
    parsed.feed(page)
    assert parsed.runs == [r.name for r in runs]
    # curves per missingness kind, and training curves, all embedded
    assert len(parsed.images) == 3 and all(src.startswith("data:image/png;base64,") for src in parsed.images)
    for src in parsed.images:
        assert base64.b64decode(src.split(",", 1)[1])[:8] == b"\x89PNG\r\n\x1a\n"
    assert not re.search(r"(src|href)=\"(?!data:)", page)
    for name in ("results.csv", "robustness.csv", "robustness_rvm.png", "robustness_modality.png", "training_curves.png"):
        assert (report / name).stat().st_size > 0
    results = pd.read_csv(report / "results.csv")
    assert results["run"].tolist() == [r.name for r in runs] and set(results["method"]) == {"late_fusion", "i2m2"}
    assert "test/auroc" in results.columns
    assert set(pd.read_csv(report / "robustness.csv")["run"]) == {r.name for r in runs}
    # the configurations side by side, the differing method row highlighted
    assert re.search(r'<tr class="diff"><td class="key">method</td>', page)


def test_report_never_writes_into_a_used_folder(runs, report, capsys):
    assert main(["report", str(runs[0]), "--out", str(report)]) == 2
    assert "already holds files" in capsys.readouterr().err


def _chromium():
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if shutil.which(name):
            return shutil.which(name)
    return None


def test_page_renders_in_headless_chromium(runs, report, tmp_path):
    browser = _chromium()
    if browser is None:
        pytest.skip("chromium is not installed and could not be installed (make install runs apt-get install chromium)")
    shot = tmp_path / "screenshot.png"
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             f"--user-data-dir={tmp_path / 'profile'}"]
    url = (report / "report.html").resolve().as_uri()
    subprocess.run([browser, *flags, f"--screenshot={shot}", "--window-size=1280,2000", url],
                   check=True, capture_output=True, timeout=180, env={**os.environ, "HOME": str(tmp_path)})
    pixels = np.asarray(Image.open(shot).convert("L"), dtype=float)
    assert pixels.shape == (2000, 1280)
    # a blank page is one flat colour; the report has text, tables and plots
    assert pixels.std() > 20 and (pixels < 200).mean() > 0.02
    shutil.copy(shot, runs[0] / "report_screenshot.png")

    dom = subprocess.run([browser, *flags, "--dump-dom", url], check=True, capture_output=True, text=True,
                         timeout=180, env={**os.environ, "HOME": str(tmp_path)}).stdout
    parsed = _Rows()
    parsed.feed(dom)
    assert parsed.runs == [r.name for r in runs]
