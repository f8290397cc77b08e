"""Deep late fusion, the classical baselines and their per-pattern ensemble, complete and with
each modality missing in half the test rows (CPU is enough).

covid_cxr (X-ray + table + notes) and physionet2012 (table + hourly series), test AUROC,
mean ± std over seeds. Every model of a seed is fitted on the same split; the ensemble
weighs the three on validation, per missingness pattern.

    OMP_NUM_THREADS=1 python benchmarks/ensemble.py [--seeds 0,1,2] [--out benchmarks/results/ensemble]

OMP_NUM_THREADS=1 keeps scikit-learn's OpenMP pool at one thread (with two pools on two busy
cores, gradient boosting spends its time spin-waiting); torch gets --torch-threads.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import pandas as pd
import torch

from holomodal.config import load_config, to_container
from holomodal.estimator import Classifier
from holomodal.experiment import classifier_from_config, load_splits
from holomodal.schema import Schema

# the deep model: late fusion with the small-data default encoders (ResNet-10-T for the
# X-ray, from scratch: no pretrained weights are cached offline), few epochs
DEEP = {
    "covid_cxr": {"config": [], "overrides": ["data.name=covid_cxr", "method=late_fusion", "trainer.max_epochs=5",
                                              "batch_size=32", "optim.lr=0.001"],
                  "shrink": {"image": {"size": 64}, "text": {"max_length": 64}}},
    "physionet2012": {"config": ["physionet2012_late_fusion"], "overrides": ["trainer.max_epochs=4"], "shrink": {}},
}
ROWS = ("late_fusion", "gbdt", "linear", "ensemble")


def shrunk(schema: Schema, shrink: dict) -> Schema:
    columns = [{**c, "options": {**c["options"], **shrink.get(c["modality"], {})}} for c in schema.to_dict()["columns"]]
    return Schema.from_dict({**schema.to_dict(), "columns": columns})


def one_seed(data: str, seed: int, run_root: Path) -> list[dict]:
    spec = DEEP[data]
    cfg = to_container(load_config(spec["config"], [*spec["overrides"], f"seed={seed}", "run.loggers=[csv]",
                                                    "trainer.enable_progress_bar=false"]))
    splits = load_splits(cfg["data"])
    schema = shrunk(splits.schema, spec["shrink"])
    models: dict[str, Classifier] = {}
    seconds: dict[str, float] = {}
    for method in ("late_fusion", "gbdt", "linear"):
        clf_cfg = {**cfg, "method": method, "model": cfg["model"] if method == "late_fusion" else {},
                   "run": {**cfg["run"], "dir": str(run_root / f"{data}-{seed}-{method}")}}
        start = time.perf_counter()
        models[method] = classifier_from_config(clf_cfg, schema, splits.name).fit(splits.train, splits.val)
        seconds[method] = time.perf_counter() - start
    start = time.perf_counter()
    ens_cfg = {**cfg, "method": "ensemble", "model": {}, "run": {**cfg["run"], "dir": str(run_root / f"{data}-{seed}-ensemble")}}
    models["ensemble"] = classifier_from_config(ens_cfg, schema, splits.name).fit(splits.train, splits.val, members=dict(models))
    seconds["ensemble"] = time.perf_counter() - start
    modalities = list(models["gbdt"].preprocessor_.processors)
    columns = {"complete": None, **{f"no {m} (50%)": [{"kind": "modality", "rate": 0.5, "drop": m, "splits": ["test"]}]
                                    for m in modalities}}
    rows = []
    for name, clf in models.items():
        row = {"data": data, "seed": seed, "model": name, "fit_seconds": round(seconds[name], 1)}
        for column, missing in columns.items():
            row[column] = clf.evaluate(splits.test, missing=missing)["auroc"]
        rows.append(row)
        print(json.dumps(row), flush=True)
    weights = models["ensemble"].model_.ensemble_.to_dict()["weights"]
    print(f"{data} seed {seed} ensemble weights ({', '.join(models['ensemble'].model_.names)}): {json.dumps(weights)}", flush=True)
    return rows


def markdown(table: pd.DataFrame, settings: str) -> str:
    lines = ["# Deep model, classical baselines and their per-pattern ensemble", "", settings, ""]
    for data, part in table.groupby("data", sort=False):
        columns = [c for c in part.columns if c == "complete" or c.startswith("no ")]
        columns = [c for c in columns if part[c].notna().any()]
        seeds = sorted(part["seed"].unique())
        lines += [f"## {data} (test AUROC, mean ± std over seeds {', '.join(map(str, seeds))})", "",
                  "| model | " + " | ".join(columns) + " | fit s |", "|---" * (len(columns) + 2) + "|"]
        for model in ROWS:
            rows = part[part["model"] == model]
            if rows.empty:
                continue
            cells = [f"{rows[c].mean():.3f} ± {rows[c].std(ddof=1) if len(rows) > 1 else 0:.3f}" for c in columns]
            lines.append(f"| {model} | " + " | ".join(cells) + f" | {rows['fit_seconds'].mean():.0f} |")
        lines += ["", "Ensemble minus its best member (per column: best member by mean), mean ± std of the "
                  "per-seed difference:", ""]
        for c in columns:
            means = {m: part.loc[part["model"] == m, c].mean() for m in ROWS[:3]}
            best = max(means, key=means.get)
            diff = (part[part["model"] == "ensemble"].set_index("seed")[c] - part[part["model"] == best].set_index("seed")[c])
            spread = diff.std(ddof=1) if len(diff) > 1 else 0.0
            verdict = "ok" if diff.mean() >= -max(spread, 1e-9) else "WORSE than the best member beyond the seed spread"
            lines.append(f"- {c}: best member {best}; ensemble − best = {diff.mean():+.3f} ± {spread:.3f} ({verdict})")
        lines.append("")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--data", default="covid_cxr,physionet2012")
    parser.add_argument("--out", default="benchmarks/results/ensemble")
    parser.add_argument("--runs", default="runs/bench-ensemble")
    parser.add_argument("--torch-threads", type=int, default=2)
    parser.add_argument("--resume", action="store_true", help="keep the rows already in OUT.csv")
    args = parser.parse_args()
    torch.set_num_threads(args.torch_threads)
    run_root = Path(args.runs) / time.strftime("%Y%m%d-%H%M%S")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    # --resume keeps the rows of an earlier, interrupted run and fits only the missing ones
    rows: list[dict] = pd.read_csv(out.with_suffix(".csv")).to_dict("records") if args.resume else []
    done = {(r["data"], int(r["seed"])) for r in rows}
    total = time.perf_counter()
    settings = ("Settings: late fusion with the small-data default encoders; covid_cxr: X-rays at 64 px (ResNet-10-T "
                "from scratch), notes at 64 tokens, 5 epochs, batch 32, AdamW lr 1e-3; physionet2012: "
                "configs/experiments/physionet2012_late_fusion.yaml with 4 epochs; early stopping on val AUROC "
                "(patience 10); gbdt and linear with their defaults; ensemble: 25 rounds of greedy selection per "
                "pattern on validation. Missing columns: the modality dropped in 50% of the test rows "
                "(`{kind: modality, rate: 0.5, drop: <modality>, splits: [test]}`), on top of what the data lacks. "
                f"torch threads {args.torch_threads}, OMP_NUM_THREADS=1.")
    # seeds outermost: a run stopped early still has every data set
    for seed in [int(s) for s in args.seeds.split(",")]:
        for data in args.data.split(","):
            if (data, seed) in done:
                continue
            rows += one_seed(data, seed, run_root)
            table = pd.DataFrame(rows)
            table.to_csv(out.with_suffix(".csv"), index=False)
            out.with_suffix(".md").write_text(markdown(table, settings + f" Total so far {time.perf_counter() - total:.0f} s."))
    print(out.with_suffix(".md").read_text())


if __name__ == "__main__":
    main()
