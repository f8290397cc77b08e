"""I2M2 against its baselines on av_digits and physionet2012, several seeds, with test-time
modality dropout.

Models: I2M2 (intra + inter experts, each fitted alone as a run of its own, then the product
fine-tuned jointly from their best checkpoints), inter-only (late fusion), each unimodal
model, and intra-only: the product of the unimodal models' predicted distributions (= softmax of their summed logits; an absent modality's model contributes a
uniform factor), i.e. the sum of unimodal experts, each trained alone.
Test-time dropout eta: each test sample loses one modality with probability eta (the
incomplete samples are shared evenly among the modalities; mask seed 100 + run seed, so each
seed draws its own masks, nested across etas). Each cell: mean over seeds with a 95 % interval
from a two-level bootstrap over seeds (with their masks) and test rows; below each table the
paired difference of I2M2 to every other model says which differences are more than noise.

    python benchmarks/i2m2.py [--seeds 0,1,2] [--tasks av_digits,physionet2012]
Writes benchmarks/results/i2m2.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import numpy as np
import torch

from _results import split_by_significance, write_results

from holomodal.config import load_config, to_container
from holomodal.experiment import classifier_from_config, load_splits
from holomodal.evaluation import seed_bootstrap
from holomodal.methods.base import compute_metrics

TASKS = {
    "av_digits": {"config": "av_digits_i2m2", "modalities": ["image", "audio"], "metrics": ["accuracy"]},
    "physionet2012": {"config": "physionet2012_i2m2", "modalities": ["tabular", "timeseries"], "metrics": ["auroc", "auprc"]},
}
ETAS = (0.0, 0.3, 0.6)
REFERENCE = "i2m2"
N_BOOT = 1000


def variant_config(task: str, variant: str, seed: int, run_root: Path, overrides: list[str]) -> dict:
    """The task's I2M2 config turned into one compared model."""
    spec = TASKS[task]
    cfg = to_container(load_config([spec["config"]], overrides))
    model = cfg["model"]
    if variant != "i2m2":
        # late-fusion models (inter-only, unimodal) use the inter expert's encoders
        inter = model.get("inter") or {"encoders": model["encoders"], "head": model["head"]}
        cfg["method"] = "late_fusion"
        cfg["model"] = {"encoders": inter["encoders"], "head": inter["head"]}
        # trainer.max_epochs counts I2M2's joint epochs alone: a baseline gets both stages' epochs
        cfg["trainer"]["max_epochs"] = int(cfg["trainer"]["max_epochs"]) + int(model.get("expert_epochs") or 0)
        if variant != "inter_only":
            cfg["model"]["modalities"] = [variant.removesuffix("_only")]
    cfg["seed"] = seed
    cfg["run"].update(dir=str(run_root / f"{task}-{variant}-{seed}"), loggers=["csv"])
    cfg["trainer"]["enable_progress_bar"] = False
    return cfg


def variants(task: str) -> list[str]:
    return ["i2m2", "inter_only"] + [f"{m}_only" for m in TASKS[task]["modalities"]]


def eta_missing(eta: float, seed: int) -> list[dict] | None:
    return [{"kind": "modality", "rate": eta, "drop": "all", "seed": 100 + seed}] if eta else None


def run_one(task: str, variant: str, seed: int, run_root: Path, overrides: list[str]) -> tuple[dict, dict]:
    """Metrics per eta, and the test probabilities per eta (for the intra-only product)."""
    cfg = variant_config(task, variant, seed, run_root, overrides)
    splits = load_splits(cfg["data"])
    clf = classifier_from_config(cfg, splits.schema, splits.name)
    start = time.perf_counter()
    clf.fit(splits.train, splits.val)
    out = {"fit_seconds": time.perf_counter() - start}
    probs = {}
    for eta in ETAS:
        out[f"eta={eta}"] = clf.evaluate(splits.test, missing=eta_missing(eta, seed))
        probs[eta] = clf.predict_proba(splits.test, missing=eta_missing(eta, seed))
    out["_target"] = clf.preprocessor_.encode_labels(splits.test[splits.schema.label.name])
    out["_task"] = (clf.schema.task.value, clf.preprocessor_.num_classes)
    out["_probabilities"] = probs
    return out, probs


def intra_only(unimodal: list[tuple[dict, dict]]) -> dict:
    """Product of the unimodal models' distributions, renormalised."""
    first = unimodal[0][0]
    out = {"fit_seconds": sum(r["fit_seconds"] for r, _ in unimodal)}
    for eta in ETAS:
        product = np.ones_like(unimodal[0][1][eta])
        for _, probs in unimodal:
            product = product * probs[eta]
        product = product / product.sum(axis=1, keepdims=True)
        out[f"eta={eta}"] = compute_metrics(*first["_task"], torch.from_numpy(product), first["_target"])
        out.setdefault("_probabilities", {})[eta] = product
    return out


def intervals(raw: dict, task: str, seeds: list[int]) -> tuple[dict, list[str]]:
    """(variant -> "eta|metric" -> interval of the mean over seeds, masks and rows; one line
    per metric and eta on which paired differences to REFERENCE exclude 0)."""
    spec, out, lines = TASKS[task], {}, []
    kind, n_classes = raw["_task"]
    target = raw["_target"].numpy()
    for eta in ETAS:
        for metric in spec["metrics"]:
            differences = []
            for variant, per_seed in raw["probabilities"].items():
                runs = [per_seed[s][eta] for s in seeds]
                out.setdefault(variant, {})[f"{eta}|{metric}"] = seed_bootstrap([[p] for p in runs], target, kind, n_classes,
                                                                                metric, n_boot=N_BOOT)
                if variant == REFERENCE:
                    continue
                pairs = [(raw["probabilities"][REFERENCE][s][eta], per_seed[s][eta]) for s in seeds]
                d = seed_bootstrap(pairs, target, kind, n_classes, metric, n_boot=N_BOOT)
                out[variant][f"{eta}|{metric}|{REFERENCE}_minus"] = d
                differences.append((variant, d))
            wins, losses, ties = split_by_significance(differences, digits=4)
            lines.append(f"- {metric} at eta={eta}: I2M2 significantly better than {', '.join(wins) or 'none'}; "
                         f"significantly worse than {', '.join(losses) or 'none'}; {ties} difference(s) within the noise.")
    return out, lines


def summarise(results: dict, seeds: list[int], bounds: dict, significance: dict) -> str:
    lines = []
    for task, spec in TASKS.items():
        if task not in results:
            continue
        lines.append(f"\n### {task} (test split; mean over seeds {seeds} [95 % interval over seeds, masks and rows] (± std))\n")
        header = ["model"] + [f"{m} eta={eta}" for eta in ETAS for m in spec["metrics"]] + ["fit s"]
        lines.append("| " + " | ".join(header) + " |")
        lines.append("|" + "---|" * len(header))
        for variant, per_seed in results[task].items():
            cells = [variant]
            for eta in ETAS:
                for metric in spec["metrics"]:
                    values = [r[f"eta={eta}"][metric] for r in per_seed.values()]
                    sd = statistics.stdev(values) if len(values) > 1 else 0.0
                    ci = bounds[task][variant][f"{eta}|{metric}"]
                    cells.append(f"{statistics.mean(values):.4f} [{ci['low']:.4f}, {ci['high']:.4f}] (± {sd:.4f})")
            cells.append(f"{statistics.mean(r['fit_seconds'] for r in per_seed.values()):.0f}")
            lines.append("| " + " | ".join(cells) + " |")
        lines += ["", f"Paired differences, I2M2 minus each model (95 % interval over seeds, masks and rows):", *significance[task]]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--tasks", default="av_digits,physionet2012")
    parser.add_argument("--out", default="benchmarks/results/i2m2")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("overrides", nargs="*", help="config overrides for every model, e.g. trainer.max_epochs=10")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    seeds = [int(s) for s in args.seeds.split(",")]
    run_root = Path("runs/bench-i2m2") / time.strftime("%Y%m%d-%H%M%S")
    results: dict = {}
    bounds: dict = {}
    significance: dict = {}
    total = time.perf_counter()
    for task in args.tasks.split(","):
        raw: dict = {"probabilities": {}}
        for seed in seeds:
            unimodal = []
            for variant in variants(task):
                res, probs = run_one(task, variant, seed, run_root, args.overrides)
                if variant not in ("i2m2", "inter_only"):
                    unimodal.append((res, probs))
                results.setdefault(task, {}).setdefault(variant, {})[seed] = res
            results[task].setdefault("intra_only", {})[seed] = intra_only(unimodal)
            raw["_task"], raw["_target"] = unimodal[0][0]["_task"], unimodal[0][0]["_target"]
            for variant, per_seed in results[task].items():
                raw["probabilities"].setdefault(variant, {})[seed] = per_seed[seed]["_probabilities"]
                per_seed[seed] = {k: v for k, v in per_seed[seed].items() if not k.startswith("_")}
                print(f"{task} {variant} seed {seed}: {json.dumps(per_seed[seed])}", flush=True)
        bounds[task], significance[task] = intervals(raw, task, seeds)
        # written after every task, so a long run keeps what it finished
        write_results(args.out, {"results": results, "intervals": bounds}, time.perf_counter() - total,
                      summarise(results, seeds, bounds, significance), args.overrides)


if __name__ == "__main__":
    main()
