"""Regression on PhysioNet 2012: length of stay in days, predicted from the first 48 hours.

Models, each over several seeds (the splits stay fixed; the seed is the model's):
  mean          the training split's mean stay for everyone (the R2 = 0 reference)
  gbdt          gradient-boosted trees on the five static descriptors only
  gbdt_summary  the same trees given per-channel summaries of the series (mean, last value,
                number of readings), the usual classical baseline on this data
  late_fusion   tabular MLP + GRU over the series (configs/experiments/physionet2012_late_fusion)
  i2m2          I2M2 with the same encoders (physionet2012_i2m2)
Scores on set B (the test split) in days: RMSE, MAE, R2, mean ± std over seeds.

    python benchmarks/regression.py [--seeds 0,1,2] [--epochs 12] [--models ...] [--quick]
Writes benchmarks/results/regression_physionet2012.{md,csv,json}; --quick (one seed, one
epoch, a few hundred rows) is a smoke test and writes under the run folder instead.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from holomodal.config import load_config, to_container
from holomodal.experiment import classifier_from_config, load_splits
from holomodal.methods import create_method
from holomodal.methods.base import ModelContext, compute_metrics
from holomodal.preprocessing import Preprocessor
from holomodal.schema import Column, Modality, Schema

LABEL = "length_of_stay"
DATA = {"name": "physionet2012", "options": {"target": LABEL}}
DEEP = {"late_fusion": "physionet2012_late_fusion", "i2m2": "physionet2012_i2m2"}
MODELS = ("mean", "gbdt", "gbdt_summary", "late_fusion", "i2m2")
METRICS = ("rmse", "mae", "r2")
QUICK_ROWS = {"train": 400, "val": 120, "test": 300}


def scores_in_days(predicted: np.ndarray, truth: np.ndarray) -> dict[str, float]:
    probs = torch.from_numpy(np.asarray(predicted, dtype=np.float32)[:, None])
    return dict(compute_metrics("regression", 1, probs, torch.from_numpy(np.asarray(truth, dtype=np.float32))))


def run_deep(model: str, seed: int, splits, run_root: Path, epochs: int) -> dict:
    overrides = [f"seed={seed}", f"trainer.max_epochs={epochs}", "trainer.enable_progress_bar=false", f"data.options.target={LABEL}",
                 f"run.dir={run_root / f'{model}-{seed}'}", "run.loggers=[csv]"]
    if model == "i2m2":  # the experts' own training takes half the epochs, as in benchmarks/i2m2.py
        overrides.append(f"model.expert_epochs={max(1, epochs // 2)}")
    cfg = to_container(load_config([DEEP[model]], overrides))
    clf = classifier_from_config(cfg, splits.schema, splits.name)
    start = time.perf_counter()
    clf.fit(splits.train, splits.val)
    seconds = time.perf_counter() - start
    return {"fit_seconds": seconds, "test": dict(clf.evaluate(splits.test)),
            "epochs_run": int(pd.read_csv(clf.run_dir_ / "metrics.csv")["epoch"].dropna().max()) + 1}


def series_summary(frame: pd.DataFrame, channels: list[str]) -> pd.DataFrame:
    """Per channel: the mean and last reading and the number of readings (NaN mean and last
    where a channel was never measured)."""
    k = len(channels)
    mean, last, count = (np.full((len(frame), k), np.nan) for _ in range(3))
    count[:] = 0
    for i, cell in enumerate(frame["timeseries"].tolist()):
        obs = np.asarray(cell, dtype=np.float64).reshape(-1, 3)
        obs = obs[np.argsort(obs[:, 0], kind="stable")]
        ch = obs[:, 1].astype(int)
        count[i] = np.bincount(ch, minlength=k)
        sums = np.bincount(ch, weights=obs[:, 2], minlength=k)
        seen = count[i] > 0
        mean[i, seen] = sums[seen] / count[i, seen]
        last[i, ch] = obs[:, 2]  # later readings overwrite earlier ones
    columns = {}
    for j, name in enumerate(channels):
        columns[f"{name}_mean"], columns[f"{name}_last"], columns[f"{name}_count"] = mean[:, j], last[:, j], count[:, j]
    return pd.DataFrame(columns, index=frame.index)


def run_gbdt(seed: int, splits, summary: bool) -> dict:
    schema, frames = splits.schema, {"train": splits.train, "test": splits.test}
    if summary:
        channels = list(schema["timeseries"].options["channels"])
        frames = {k: pd.concat([f, series_summary(f, channels)], axis=1) for k, f in frames.items()}
        extra = [Column(c, Modality.CONTINUOUS) for c in frames["train"].columns if c not in schema.column_names]
        schema = Schema([*schema.columns, *extra])
    pre = Preprocessor(schema).fit(frames["train"])
    types = {m: schema.modality_type(m).value if m != "tabular" else "tabular" for m in pre.processors}
    context = ModelContext(pre.input_specs, types, pre.num_classes, "regression", [])
    start = time.perf_counter()
    model = create_method("gbdt", context, seed=seed).fit(pre.transform(frames["train"])[0])
    seconds = time.perf_counter() - start
    predicted = pre.decode_values(model.probabilities(pre.transform(frames["test"])[0])[:, 0].numpy())
    return {"fit_seconds": seconds, "test": scores_in_days(predicted, frames["test"][LABEL].to_numpy())}


def run_mean(splits) -> dict:
    predicted = np.full(len(splits.test), float(splits.train[LABEL].mean()))
    return {"fit_seconds": 0.0, "test": scores_in_days(predicted, splits.test[LABEL].to_numpy())}


def summarise(results: dict, seeds: list[int]) -> pd.DataFrame:
    rows = []
    for model, per_seed in results.items():
        row: dict = {"model": model}
        for metric in METRICS:
            values = [r["test"][metric] for r in per_seed.values()]
            row[f"{metric}_mean"] = statistics.mean(values)
            row[f"{metric}_std"] = statistics.stdev(values) if len(values) > 1 else 0.0
        row["fit_seconds"] = statistics.mean(r["fit_seconds"] for r in per_seed.values())
        epochs = [r["epochs_run"] for r in per_seed.values() if "epochs_run" in r]
        row["epochs_run"] = "/".join(map(str, epochs)) if epochs else ""
        row["seeds"] = len(per_seed)
        rows.append(row)
    return pd.DataFrame(rows)


def markdown(table: pd.DataFrame, seeds: list[int], epochs: int, rows: dict[str, int], seconds: float) -> str:
    lines = [f"### physionet2012 length of stay (days; test split = set B, {rows['test']} stays; "
             f"mean ± std over seeds {seeds})", "",
             "| model | RMSE (days) | MAE (days) | R2 | fit s | epochs run |", "|---|---|---|---|---|---|"]
    for _, r in table.iterrows():
        cells = [f"{r[f'{m}_mean']:.3f} ± {r[f'{m}_std']:.3f}" for m in METRICS]
        lines.append(f"| {r['model']} | {' | '.join(cells)} | {r['fit_seconds']:.0f} | {r['epochs_run']} |")
    lines += ["", f"Rows: train {rows['train']}, val {rows['val']}, test {rows['test']} (stays under one day and "
              f"unknown ones left out). Deep models: trainer.max_epochs={epochs} (I2M2 experts "
              f"{max(1, epochs // 2)}), early stopping on val/rmse (patience 10), the best epoch's weights. "
              f"gbdt: scikit-learn defaults. Total run time {seconds:.0f} s on CPU ({torch.get_num_threads()} threads)."]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--epochs", type=int, default=12, help="trainer.max_epochs of the deep models")
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--out", default="benchmarks/results/regression_physionet2012")
    parser.add_argument("--runs", default="runs/bench-regression")
    parser.add_argument("--quick", action="store_true", help="one seed, one epoch, a few hundred rows")
    args = parser.parse_args()
    seeds = [0] if args.quick else [int(s) for s in args.seeds.split(",")]
    epochs = 1 if args.quick else args.epochs
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    unknown = sorted(set(models) - set(MODELS))
    if unknown:
        parser.error(f"unknown model(s) {unknown} (known: {', '.join(MODELS)})")
    run_root = Path(args.runs) / time.strftime("%Y%m%d-%H%M%S")
    out = run_root / "regression_quick" if args.quick else Path(args.out)

    total = time.perf_counter()
    splits = load_splits(DATA)
    if args.quick:
        for split, n in QUICK_ROWS.items():
            setattr(splits, split, getattr(splits, split).iloc[:n])
    rows = {s: len(getattr(splits, s)) for s in ("train", "val", "test")}
    results: dict = {}
    for model in models:
        for seed in seeds:
            if model == "mean":
                res = run_mean(splits)
            elif model.startswith("gbdt"):
                res = run_gbdt(seed, splits, summary=model == "gbdt_summary")
            else:
                res = run_deep(model, seed, splits, run_root, epochs)
            results.setdefault(model, {})[seed] = res
            print(f"{model} seed {seed}: {json.dumps(res)}", flush=True)
    seconds = time.perf_counter() - total
    table = summarise(results, seeds)
    text = markdown(table, seeds, epochs, rows, seconds)
    print(text)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".md").write_text(text)
    table.to_csv(out.with_suffix(".csv"), index=False)
    out.with_suffix(".json").write_text(json.dumps(
        {"results": results, "seeds": seeds, "epochs": epochs, "rows": rows, "seconds": seconds}, indent=2))
    print(f"written {out}.md/.csv/.json")


if __name__ == "__main__":
    main()
