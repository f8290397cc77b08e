"""Small-data defaults: the image encoder the defaults pick below 2,000 training rows
(ResNet-10t) against the one they picked before (ResNet-18), late fusion, several seeds.

Both start from random weights unless timm's cache holds pretrained ones (`pretrained:
auto`); the run records which. The rest of the recipe is the default configuration
(early stopping included), so this measures what a new user's first run gets.

    python benchmarks/small_data.py [--seeds 0,1,2] [--epochs 10] [--out benchmarks/results/small_data.md]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import pandas as pd

from holomodal.config import load_config, to_container
from holomodal.encoders.timm_image import cached_weights
from holomodal.experiment import classifier_from_config, load_splits

DATASETS = {"covid_cxr": "auroc", "coco_mini": "f1_micro"}
ENCODERS = {
    "resnet18 (earlier default)": ["model.encoders.image={name: timm, model_name: resnet18, pretrained: auto}"],
    "small-data default": [],
}


def run(data: str, overrides: list[str], run_dir: Path) -> tuple[dict, float, dict]:
    cfg = to_container(load_config([], [f"data.name={data}", *overrides, f"run.dir={run_dir}",
                                         "trainer.enable_progress_bar=false", "run.loggers=[csv]"]))
    splits = load_splits(cfg["data"])
    clf = classifier_from_config(cfg, splits.schema, splits.name)
    start = time.perf_counter()
    clf.fit(splits.train, splits.val)
    return clf.evaluate(splits.test), time.perf_counter() - start, clf.model["encoders"]["image"]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--datasets", default=",".join(DATASETS))
    parser.add_argument("--out", default="benchmarks/results/small_data.md")
    parser.add_argument("--runs", default="runs/bench-small-data")
    args = parser.parse_args()
    root = Path(args.runs) / time.strftime("%Y%m%d-%H%M%S")
    rows = []
    for data in args.datasets.split(","):
        metric = DATASETS[data]
        for label, extra in ENCODERS.items():
            for seed in [int(s) for s in args.seeds.split(",")]:
                tag = f"{data}-{label.split()[0]}-{seed}"
                metrics, seconds, encoder = run(data, [*extra, f"seed={seed}", f"trainer.max_epochs={args.epochs}"], root / tag)
                rows.append({"data": data, "encoders": label, "image_encoder": encoder["model_name"], "seed": seed,
                             "metric": metric, "value": float(metrics[metric]), "accuracy": float(metrics.get("accuracy", float("nan"))),
                             "fit_seconds": round(seconds, 1),
                             "pretrained_weights": bool(cached_weights(encoder["model_name"]))})
                print(json.dumps(rows[-1]), flush=True)
    table = pd.DataFrame(rows)
    lines = [f"# Small-data defaults (late fusion, {args.epochs} epochs max, early stopping, seeds {args.seeds})", "",
             "| data | image encoder | metric | mean | std | min | max | fit s (median) | pretrained weights |",
             "|---|---|---|---|---|---|---|---|---|"]
    for (data, label), group in table.groupby(["data", "encoders"], sort=False):
        values = group["value"].tolist()
        std = statistics.stdev(values) if len(values) > 1 else 0.0
        lines.append(f"| {data} | {label}: {group['image_encoder'].iloc[0]} | test {group['metric'].iloc[0]} | "
                     f"{statistics.mean(values):.3f} | {std:.3f} | {min(values):.3f} | {max(values):.3f} | "
                     f"{statistics.median(group['fit_seconds']):.0f} | {'yes' if group['pretrained_weights'].any() else 'no (random init)'} |")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(lines) + "\n")
    table.to_csv(out.with_suffix(".csv"), index=False)
    print("\n".join(lines))
    print(f"written {out}")


if __name__ == "__main__":
    main()
