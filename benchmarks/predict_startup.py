"""What one `holomodal predict` costs: CPU-seconds, wall time and peak memory for 1 and 10,000 rows.

A prediction of a handful of rows is dominated by start-up (imports, rebuilding the model), a
large one by encoding and the forward pass; this measures both through the command line, as a
user runs it, under ``/usr/bin/time -v``.

The model is a small late-fusion run on covid_cxr's own metadata table (chest X-ray through the
default timm image encoder, sex / age / offset / view through the tabular encoder, label
``survival``), trained once through ``holomodal train --train --test --label`` with one epoch
into ``--work`` and reused when that folder already holds it.

    python benchmarks/predict_startup.py --label-as before          # today's figures
    python benchmarks/predict_startup.py --label-as after --importtime
    python benchmarks/predict_startup.py --label-as after-tabular --tabular-only

``--tabular-only`` trains and times a second run on the table alone (no X-ray column), in its
own folder under ``--work``: the start-up of a model that needs no image library.

Each label's figures go under their own key of benchmarks/results/predict_startup.json, so a
"before" and an "after" run sit side by side; the first 10,000-row output of each label is kept
in ``--work`` and the probabilities of a later label are compared with the "before" ones. The
load average at the start is recorded: a second busy process on the machine inflates the figures.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
RESULTS = REPO / "benchmarks" / "results" / "predict_startup.json"
FEATURES = ["sex", "age", "offset", "view"]
LABEL = "survival"
SIZES = (1, 10_000)


def data_root() -> Path:
    root = os.environ.get("HOLOMODAL_DATA")
    return Path(root) if root else REPO.parent / "shared" / "data"


def write_tables(work: Path, tabular_only: bool = False) -> tuple[Path, Path]:
    """covid_cxr's rows with a Y/N survival answer, split 80/20 by patient, as a user's CSV
    files; the X-rays are copied beside them, so their relative paths stay inside the tables'
    folder (the default path boundary)."""
    source = data_root() / "covid_cxr"
    meta = pd.read_csv(source / "metadata.csv")
    meta = meta[meta[LABEL].isin(["Y", "N"])].reset_index(drop=True)
    folder = work / "data"
    (folder / "images").mkdir(parents=True, exist_ok=True)
    paths = []
    for sub, name in zip(meta["folder"], meta["filename"]):
        file = source / str(sub) / str(name)
        if sub != "images" or not file.is_file():  # CT volumes and lost X-rays: a missing image
            paths.append(None)
            continue
        target = folder / "images" / file.name
        if not target.exists():
            shutil.copyfile(file, target)
        paths.append(f"images/{file.name}")
    table = meta[FEATURES + [LABEL]] if tabular_only else meta[FEATURES + [LABEL]].assign(xray=paths)
    patients = meta["patientid"].astype(str).unique()
    test_patients = set(np.random.default_rng(0).permutation(patients)[: len(patients) // 5])
    in_test = meta["patientid"].astype(str).isin(test_patients)
    train, test = folder / "train.csv", folder / "test.csv"
    table[~in_test].to_csv(train, index=False)
    table[in_test].to_csv(test, index=False)
    return train, test


def ensure_run(work: Path, tabular_only: bool = False) -> Path:
    run = work / "run"
    if (run / "model" / "predictor.json").exists():
        print(f"reusing the trained run {run}")
        return run
    if run.exists():
        raise SystemExit(f"'{run}' exists but holds no model: remove it to train again")
    train, test = write_tables(work, tabular_only)
    cmd = [str(BIN / "holomodal"), "train", "--train", str(train), "--test", str(test), "--label", LABEL,
           "trainer.max_epochs=1", f"run.dir={run}", "run.loggers=[csv]", "trainer.enable_progress_bar=false"]
    print("training:", " ".join(cmd), flush=True)
    start = time.perf_counter()
    subprocess.run(cmd, check=True, cwd=work)
    print(f"trained in {time.perf_counter() - start:.0f} s")
    return run


def write_rows(work: Path) -> dict[int, Path]:
    """The test rows as prediction input: one row (one with an X-ray), and the rows repeated
    to 10,000."""
    test = pd.read_csv(work / "data" / "test.csv").drop(columns=[LABEL])
    with_image = test[test["xray"].notna()] if "xray" in test else test
    files = {}
    for n in SIZES:
        rows = with_image.head(1) if n == 1 else test.iloc[np.arange(n) % len(test)]
        files[n] = work / "data" / f"rows-{n}.csv"  # beside train.csv: the image paths resolve the same
        rows.to_csv(files[n], index=False)
    return files


def _seconds(text: str) -> float:
    # /usr/bin/time writes wall time as h:mm:ss or m:ss.ss
    parts = [float(p) for p in text.split(":")]
    return sum(p * 60 ** i for i, p in enumerate(reversed(parts)))


def timed_predict(run: Path, rows: Path, out: Path) -> dict[str, float]:
    out.unlink(missing_ok=True)
    cmd = ["/usr/bin/time", "-v", str(BIN / "holomodal"), "predict", str(run), str(rows), "--out", str(out)]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"predict failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")
    report = done.stderr

    def field(name: str) -> str:
        found = re.search(rf"^\s*{re.escape(name)}: (.+)$", report, re.MULTILINE)
        if found is None:
            raise SystemExit(f"/usr/bin/time did not report '{name}':\n{report}")
        return found.group(1).strip()

    user, system = float(field("User time (seconds)")), float(field("System time (seconds)"))
    return {"cpu_s": round(user + system, 3), "user_s": user, "sys_s": system,
            "wall_s": round(_seconds(field("Elapsed (wall clock) time (h:mm:ss or m:ss)")), 3),
            "max_rss_mb": round(int(field("Maximum resident set size (kbytes)")) / 1024, 1)}


def summarise(runs: list[dict[str, float]]) -> dict[str, dict[str, float]]:
    keys = ("cpu_s", "wall_s", "max_rss_mb")
    return {"min": {k: min(r[k] for r in runs) for k in keys},
            "median": {k: statistics.median(r[k] for r in runs) for k in keys}}


def proba_difference(work: Path, label: str) -> float | None:
    """Largest absolute difference between this label's 10,000-row probabilities and the
    "before" ones, when both are kept."""
    before, now = work / f"preds-before-{SIZES[-1]}.csv", work / f"preds-{label}-{SIZES[-1]}.csv"
    if label == "before" or not before.exists():
        return None
    a, b = pd.read_csv(before), pd.read_csv(now)
    cols = [c for c in a.columns if c.startswith("proba_")]
    if list(a.columns) != list(b.columns) or len(a) != len(b):
        raise SystemExit(f"the '{label}' predictions have other columns or rows than the 'before' ones")
    if not (a["prediction"] == b["prediction"]).all():
        raise SystemExit(f"the '{label}' predictions name other classes than the 'before' ones")
    return float(np.abs(a[cols].to_numpy() - b[cols].to_numpy()).max())


def import_offenders(top: int) -> list[dict[str, float | str]]:
    """The modules whose import (with what they import) takes longest in ``import holomodal.cli``."""
    done = subprocess.run([sys.executable, "-X", "importtime", "-c", "import holomodal.cli"],
                          capture_output=True, text=True, check=True)
    rows = []
    for line in done.stderr.splitlines():
        found = re.match(r"import time:\s+(\d+) \|\s+(\d+) \|(\s*)(\S+)", line)
        if found:
            rows.append({"module": found.group(4), "cumulative_s": int(found.group(2)) / 1e6,
                         "depth": len(found.group(3)) // 2})
    rows.sort(key=lambda r: -r["cumulative_s"])
    return rows[:top]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, default=REPO / "runs" / "bench-predict-startup",
                        help="folder for the tables, the trained run and the outputs (reused)")
    parser.add_argument("--label-as", default="before", help="key of the figures in the JSON (before, after, ...)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--importtime", action="store_true", help="also list import holomodal.cli's slowest imports")
    parser.add_argument("--tabular-only", action="store_true", help="a model of the table alone (no X-ray column)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()

    work = args.work.resolve() / ("tabular" if args.tabular_only else "")
    work.mkdir(parents=True, exist_ok=True)
    run = ensure_run(work, args.tabular_only)
    files = write_rows(work)
    load = os.getloadavg()[0]
    figures: dict[str, object] = {}
    for n, rows in files.items():
        runs = []
        for i in range(args.repeats):
            out = work / f"preds-{args.label_as}-{n}.csv" if i == 0 else work / "preds-scratch.csv"
            runs.append(timed_predict(run, rows, out))
            print(f"{n:>6} rows, try {i + 1}: {runs[-1]}", flush=True)
        figures[f"rows_{n}"] = {"runs": runs, **summarise(runs)}
    (work / "preds-scratch.csv").unlink(missing_ok=True)
    record: dict[str, object] = {
        "figures": figures, "when": time.strftime("%Y-%m-%d %H:%M:%S"), "python": platform.python_version(),
        "cpus": os.cpu_count(), "machine": platform.machine(), "load_average_at_start": load,
        "command": "holomodal predict RUN rows.csv --out preds.csv under /usr/bin/time -v",
        "model": "late fusion, table only" if args.tabular_only else "late fusion, X-ray + table",
    }
    diff = proba_difference(work, args.label_as)
    if diff is not None:
        record["max_abs_proba_difference_vs_before"] = diff
    if args.importtime:
        record["import_holomodal_cli"] = import_offenders(15)

    saved = json.loads(args.out.read_text()) if args.out.exists() else {}
    saved[args.label_as] = record
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(saved, indent=2) + "\n")

    print(f"\n{'label':<8} {'rows':>6} {'CPU-s min':>10} {'CPU-s med':>10} {'wall min':>9} {'wall med':>9} "
          f"{'RSS MB med':>11}")
    for label, rec in saved.items():
        for key, fig in rec["figures"].items():
            print(f"{label:<8} {key.split('_')[1]:>6} {fig['min']['cpu_s']:>10.2f} {fig['median']['cpu_s']:>10.2f} "
                  f"{fig['min']['wall_s']:>9.2f} {fig['median']['wall_s']:>9.2f} {fig['median']['max_rss_mb']:>11.0f}")
    if diff is not None:
        print(f"largest |probability difference| against 'before' over {SIZES[-1]} rows: {diff:.2e}")
    if args.importtime:
        print("\nslowest imports under `import holomodal.cli` (cumulative seconds):")
        for row in record["import_holomodal_cli"]:
            print(f"  {row['cumulative_s']:7.3f}  {'  ' * int(row['depth'])}{row['module']}")
    print(f"written: {args.out}")


if __name__ == "__main__":
    main()
