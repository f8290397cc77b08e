"""I2M2 against its baselines on av_digits and physionet2012, several seeds, with test-time
modality dropout.

Models: I2M2 (intra + inter experts, experts trained alone then jointly), inter-only (late
fusion), intra-only (sum of unimodal experts, each trained alone) and each unimodal model.
Test-time dropout eta: each test sample loses one modality with probability eta (the
incomplete samples are shared evenly among the modalities).

    python benchmarks/i2m2.py [--seeds 0,1,2] [--tasks av_digits,physionet2012]
Writes benchmarks/results/i2m2.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

from holomodal.config import load_config, to_container
from holomodal.experiment import classifier_from_config, load_splits

TASKS = {
    "av_digits": {"config": "av_digits_i2m2", "modalities": ["image", "audio"], "metrics": ["accuracy"]},
    "physionet2012": {"config": "physionet2012_i2m2", "modalities": ["tabular", "timeseries"], "metrics": ["auroc", "auprc"]},
}
ETAS = (0.0, 0.3, 0.6)


def variant_config(task: str, variant: str, seed: int, run_root: Path) -> dict:
    """The task's I2M2 config turned into one compared model."""
    spec = TASKS[task]
    cfg = to_container(load_config([spec["config"]]))
    model = cfg["model"]
    if variant == "intra_only":
        model.update(init="pretrained_experts", joint=False, experts=["intra"])
        model.pop("inter", None)
    elif variant != "i2m2":
        # late-fusion models (inter-only, unimodal) use the inter expert's encoders
        inter = model.get("inter") or {"encoders": model["encoders"], "head": model["head"]}
        cfg["method"] = "late_fusion"
        cfg["model"] = {"encoders": inter["encoders"], "head": inter["head"]}
        if variant != "inter_only":
            cfg["model"]["modalities"] = [variant.removesuffix("_only")]
    cfg["seed"] = seed
    cfg["run"].update(dir=str(run_root / f"{task}-{variant}-{seed}"), loggers=["csv"])
    cfg["trainer"]["enable_progress_bar"] = False
    return cfg


def variants(task: str) -> list[str]:
    return ["i2m2", "inter_only", "intra_only"] + [f"{m}_only" for m in TASKS[task]["modalities"]]


def run_one(task: str, variant: str, seed: int, run_root: Path) -> dict:
    cfg = variant_config(task, variant, seed, run_root)
    splits = load_splits(cfg["data"])
    clf = classifier_from_config(cfg, splits.schema, splits.name)
    start = time.perf_counter()
    clf.fit(splits.train, splits.val)
    out = {"fit_seconds": time.perf_counter() - start}
    for eta in ETAS:
        missing = [{"kind": "modality", "rate": eta, "drop": "all", "seed": 100 + seed}] if eta else None
        out[f"eta={eta}"] = clf.evaluate(splits.test, missing=missing)
    return out


def summarise(results: dict, seeds: list[int]) -> str:
    lines = []
    for task, spec in TASKS.items():
        if task not in results:
            continue
        lines.append(f"\n### {task} (test split; mean ± std over seeds {seeds})\n")
        header = ["model"] + [f"{m} eta={eta}" for eta in ETAS for m in spec["metrics"]] + ["fit s"]
        lines.append("| " + " | ".join(header) + " |")
        lines.append("|" + "---|" * len(header))
        for variant, per_seed in results[task].items():
            cells = [variant]
            for eta in ETAS:
                for metric in spec["metrics"]:
                    values = [r[f"eta={eta}"][metric] for r in per_seed.values()]
                    sd = statistics.stdev(values) if len(values) > 1 else 0.0
                    cells.append(f"{statistics.mean(values):.4f} ± {sd:.4f}")
            cells.append(f"{statistics.mean(r['fit_seconds'] for r in per_seed.values()):.0f}")
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--tasks", default="av_digits,physionet2012")
    parser.add_argument("--variants", default="", help="comma-separated subset (default: all)")
    parser.add_argument("--out", default="benchmarks/results/i2m2")
    args = parser.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    run_root = Path("runs/bench-i2m2") / time.strftime("%Y%m%d-%H%M%S")
    results: dict = {}
    total = time.perf_counter()
    for task in args.tasks.split(","):
        chosen = args.variants.split(",") if args.variants else variants(task)
        for variant in chosen:
            for seed in seeds:
                res = run_one(task, variant, seed, run_root)
                results.setdefault(task, {}).setdefault(variant, {})[seed] = res
                print(f"{task} {variant} seed {seed}: {json.dumps(res)}", flush=True)
    seconds = time.perf_counter() - total
    table = summarise(results, seeds) + f"\n\nTotal run time: {seconds:.0f} s on CPU.\n"
    print(table)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps({"results": results, "seconds": seconds}, indent=2))
    out.with_suffix(".md").write_text(table)


if __name__ == "__main__":
    main()
