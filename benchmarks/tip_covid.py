"""TIP against its baselines on covid_cxr (COVID-19 vs other findings), under incomplete tables.

Pre-training (labels unused, train + unlabelled rows with an X-ray): TIP (ITC + ITM + MTR),
TIP without MTR (ITC + ITM) and MMCL-style contrastive-only (ITC). Fine-tuning: TIP by linear
probing and by full fine-tuning, the two ablations by full fine-tuning (their probes with
``--methods``). Supervised baselines from scratch on the same data and
splits: image only, table only, late fusion (image + table), all with the same encoders.
Every fine-tuning run sees the same synthetic missingness in train, val and test (TIP's
protocol): none, RVM 0.3 / 0.5 / 0.7, RFM 0.5, TIP's mask draws offset by the run seed and
nested across rates. The image-only model never reads the table, so it is trained once per
seed and scored under every condition. Each cell gives a 95 % interval from a two-level
bootstrap over seeds (with their masks) and test rows, and each method's paired difference
to late fusion says whether it is a win, a loss or noise.

The machine is a shared 2-core CPU, so everything is scaled down (see SCALE; the table
header repeats it): timm ``test_resnet`` at 64 px, 2-layer 32-wide transformers.

    python benchmarks/tip_covid.py [--seeds 0,1,2] [--workers 2] [--out benchmarks/results/tip_covid]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
import traceback
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from multiprocessing import get_context
from pathlib import Path
from typing import Any

SCALE = {
    "image_size": 64, "image_model": "test_resnet", "dim": 32, "depth": 2, "heads": 4, "batch_size": 64,
    "pretrain_epochs": 150, "warmup_epochs": 10, "pretrain_lr": 1e-3, "finetune_epochs": 10, "finetune_lr": 1e-3,
    "probe_epochs": 30, "probe_lr": 1e-2,
}
if os.environ.get("TIP_BENCH_QUICK"):  # smoke test of the script itself; spawned workers inherit it
    SCALE.update(pretrain_epochs=1, warmup_epochs=1, finetune_epochs=1, probe_epochs=1)
# --scale key=value overrides travel to the spawned workers through the environment
SCALE.update(json.loads(os.environ.get("TIP_BENCH_SCALE", "{}")))
# masks drawn as TIP draws them, offset by the run's seed ("@run"): each seed sees its own
# masks, nested across rates (a cell masked at 0.3 is masked at 0.5 and 0.7)
CONDITIONS = {"none": [], "rvm 0.3": ["rvm:0.3@run"], "rvm 0.5": ["rvm:0.5@run"], "rvm 0.7": ["rvm:0.7@run"],
              "rfm 0.5": ["rfm:0.5@run"]}
# the supervised multimodal baseline every method is compared with, pair by pair
REFERENCE = "late_fusion"
N_BOOT = 1000
PRETRAININGS = {"tip": ["itc", "itm", "mtr"], "tip_no_mtr": ["itc", "itm"], "mmcl": ["itc"]}
# method -> (pre-training it starts from or None, model options)
METHODS: dict[str, tuple[str | None, dict[str, Any]]] = {
    "tip_linear": ("tip", {"finetune": "linear"}),
    "tip_full": ("tip", {"finetune": "full"}),
    # ablation of TIP's fine-tuning views (augmented image + 30 %-corrupted table, p = 0.8)
    "tip_full_plain": ("tip", {"finetune": "full", "finetune_augment": "none", "corruption_rate": 0.0}),
    "tip_no_mtr_linear": ("tip_no_mtr", {"finetune": "linear"}),
    "tip_no_mtr_full": ("tip_no_mtr", {"finetune": "full"}),
    # ITC alone leaves the interaction module untrained, so a probe reads the features ITC trains
    "mmcl_linear": ("mmcl", {"finetune": "linear", "head_input": "concat"}),
    "mmcl_full": ("mmcl", {"finetune": "full"}),
    "late_fusion": (None, {"modalities": ["image", "tabular"]}),
    "tabular_only": (None, {"modalities": ["tabular"]}),
    "image_only": (None, {"modalities": ["image"]}),
}


# the linear probes of the two ablations are optional: the CPU budget covers one probe
DEFAULT_METHODS = [m for m in METHODS if m not in ("tip_no_mtr_linear", "mmcl_linear")]


def _encoders() -> dict[str, Any]:
    return {
        "image": {"name": "timm", "model_name": SCALE["image_model"], "normalize": False},
        "tabular": {"name": "tabular_transformer", "dim": SCALE["dim"], "depth": SCALE["depth"], "heads": SCALE["heads"]},
    }


def _data():
    """covid_cxr at the benchmark's resolution, without the notes column (TIP reads image and table)."""
    from holomodal.data import load_dataset
    from holomodal.schema import Modality, Schema

    bundle = load_dataset("covid_cxr", image_size=SCALE["image_size"])
    schema = Schema([c for c in bundle.schema.columns if c.modality != Modality.TEXT], on_unreadable=bundle.schema.on_unreadable)
    splits = {name: bundle.split(name).drop(columns=["clinical_notes"]) for name in bundle.splits}
    return schema, splits


def _worker_init() -> None:
    import warnings

    import torch

    torch.set_num_threads(1)
    warnings.filterwarnings("ignore")
    import logging

    logging.getLogger("lightning").setLevel(logging.ERROR)
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)


def _trainer(epochs: int, precision: str | None) -> dict[str, Any]:
    return {"max_epochs": epochs, "enable_progress_bar": False, **({"precision": precision} if precision else {})}


def pretrain_job(variant: str, seed: int, run_root: str, precision: str | None = None) -> dict[str, Any]:
    import pandas as pd

    from holomodal.config import load_config, to_container
    from holomodal.pretraining import Pretrainer

    cfg = to_container(load_config(["covid_cxr_tip_pretrain"]))
    model = {**cfg["model"], "encoders": _encoders(), "losses": PRETRAININGS[variant],
             "interaction": {"dim": SCALE["dim"], "depth": SCALE["depth"], "heads": SCALE["heads"]}}
    schema, splits = _data()
    frame = pd.concat([splits["train"], splits["unlabelled"]], ignore_index=True)
    start = time.perf_counter()
    pre = Pretrainer(
        schema, model=model, optim={**cfg["optim"], "lr": SCALE["pretrain_lr"], "warmup_epochs": SCALE["warmup_epochs"]},
        batch_size=SCALE["batch_size"], seed=seed, trainer=_trainer(SCALE["pretrain_epochs"], precision),
        run_dir=Path(run_root) / f"pretrain-{variant}-{seed}", loggers=["csv"], data_name="covid_cxr",
    ).fit(frame, splits["val"])
    return {"checkpoint": str(pre.checkpoint_), "seconds": round(time.perf_counter() - start, 1),
            "last_epoch": {k: round(v, 4) for k, v in pre.metrics_.items()}}


def finetune_job(method: str, seed: int, condition: str, checkpoint: str | None, run_root: str,
                 precision: str | None = None) -> dict[str, Any]:
    from holomodal.config import load_config, to_container
    from holomodal.estimator import Classifier

    source, options = METHODS[method]
    schema, splits = _data()
    probe = options.get("finetune") == "linear"
    trainer = _trainer(SCALE["probe_epochs" if probe else "finetune_epochs"], precision)
    if source is not None:
        cfg = to_container(load_config(["covid_cxr_tip_finetune"]))
        model = {**cfg["model"], **options, "checkpoint": checkpoint}
        optim = {**cfg["optim"], "lr": SCALE["probe_lr" if probe else "finetune_lr"]}
        name = "tip"
    else:
        model = {**options, "encoders": _encoders()}
        optim = {"name": "adam", "lr": SCALE["finetune_lr"], "weight_decay": 0.0}
        name = "late_fusion"
    missing = CONDITIONS[condition] if method != "image_only" else []
    tag = f"{method}-{condition.replace(' ', '')}-{seed}"
    clf = Classifier(schema, method=name, model=model, optim=optim, batch_size=SCALE["batch_size"], missing=missing,
                     seed=seed, trainer=trainer, monitor="val/auroc", run_dir=Path(run_root) / tag, loggers=["csv"],
                     data_name="covid_cxr")
    start = time.perf_counter()
    # no epoch selection: the val split holds 9 negatives, and picking the best of 10-30
    # epochs on it selected noise (test AUROC far below val), so the last epoch is scored
    clf.fit(splits["train"])
    seconds = time.perf_counter() - start
    scored = CONDITIONS if method == "image_only" else {condition: missing}
    scores, probabilities = {}, {}
    for c, m in scored.items():
        scores[c] = clf.evaluate(splits["test"], missing=m or None, split="test")["auroc"]
        probabilities[c] = clf.predict_proba(splits["test"], missing=m or None).round(6).tolist()
    target = clf.preprocessor_.encode_labels(splits["test"][schema.label.name]).tolist()
    return {"auroc": scores, "probabilities": probabilities, "target": target, "seconds": round(seconds, 1)}


def _guarded(fn, *args):
    try:
        return fn(*args)
    except Exception:  # one failed run is reported in the table, not fatal to the others
        return {"error": traceback.format_exc()}


def _intervals(results: dict[str, Any], seeds: list[int], methods: list[str]) -> tuple[dict, dict]:
    """Per (method, condition): the 95 % interval of the mean AUROC over seeds, masks and test
    rows; and the paired difference to REFERENCE with its interval (holomodal.evaluation.seed_bootstrap)."""
    import numpy as np

    from holomodal.evaluation import seed_bootstrap

    probabilities = results.get("probabilities", {})
    target = np.asarray(results.get("target", []))
    intervals: dict[str, dict[str, Any]] = {}
    differences: dict[str, dict[str, Any]] = {}
    for method in methods:
        for condition in CONDITIONS:
            runs = {s: probabilities.get(f"{method}|{condition}|{s}") for s in seeds}
            mine = [np.asarray(p, dtype=np.float32) for p in runs.values() if p is not None]
            if not mine:
                continue
            intervals.setdefault(method, {})[condition] = seed_bootstrap([[p] for p in mine], target, "binary", 2, "auroc", n_boot=N_BOOT)
            reference = {s: probabilities.get(f"{REFERENCE}|{condition}|{s}") for s in seeds}
            pairs = [(np.asarray(runs[s], dtype=np.float32), np.asarray(reference[s], dtype=np.float32))
                     for s in seeds if runs[s] is not None and reference[s] is not None]
            if method != REFERENCE and pairs:
                differences.setdefault(method, {})[condition] = seed_bootstrap(pairs, target, "binary", 2, "auroc", n_boot=N_BOOT)
    return intervals, differences


def _significance(differences: dict[str, dict[str, Any]]) -> str:
    """One sentence: which paired differences to the reference exclude 0, and how many do not."""
    from _results import split_by_significance

    wins, losses, ties = split_by_significance([(f"{method} at {condition}", d) for method, row in differences.items()
                                                for condition, d in row.items()])
    return (f"Against {REFERENCE} (paired by seed, masks and rows; 95 % interval of the AUROC difference): "
            + (f"significantly better: {'; '.join(wins)}. " if wins else "no method is significantly better anywhere. ")
            + (f"Significantly worse: {'; '.join(losses)}. " if losses else "None is significantly worse. ")
            + f"The other {ties} differences are within the noise (their intervals include 0).")


def summarise(results: dict[str, Any], seeds: list[int], total_seconds: float, methods: list[str]) -> tuple[dict, str]:
    intervals, differences = _intervals(results, seeds, methods)
    table: dict[str, dict[str, dict[str, Any]]] = {}
    for method in methods:
        table[method] = {}
        for condition in CONDITIONS:
            values = [results["auroc"].get(f"{method}|{condition}|{s}") for s in seeds]
            values = [v for v in values if v is not None]
            table[method][condition] = {
                "mean": statistics.fmean(values) if values else None,
                "std": statistics.stdev(values) if len(values) > 1 else 0.0 if values else None,
                "n": len(values), "values": values,
                "ci95": intervals.get(method, {}).get(condition),
                f"minus_{REFERENCE}": differences.get(method, {}).get(condition),
            }
    s = SCALE
    lines = [
        "# TIP vs baselines on covid_cxr (COVID-19 vs other), test AUROC over seeds " + ",".join(map(str, seeds)),
        "",
        f"Scaled-down settings (2 shared CPU cores): image encoder timm `{s['image_model']}` from scratch at "
        f"{s['image_size']} px, no ImageNet normalisation; tabular transformer and interaction module "
        f"{s['depth']} layers x {s['dim']} wide, {s['heads']} heads (TIP: 4 x 512, 8 heads, ResNet-50 at 128 px); "
        f"pre-training {s['pretrain_epochs']} epochs, Adam lr {s['pretrain_lr']}, {s['warmup_epochs']} warm-up epochs + cosine, "
        f"batch {s['batch_size']} (TIP: 500 epochs, 3e-4); full fine-tuning and supervised baselines {s['finetune_epochs']} epochs, "
        f"Adam lr {s['finetune_lr']}; linear probing {s['probe_epochs']} epochs, Adam lr {s['probe_lr']} (TIP: up to 500 epochs "
        "at 1e-3 with early stopping). The last epoch is scored: the val split has 9 negatives, too few to select epochs on. "
        "Same encoders for the supervised baselines (late_fusion method).",
        "Missingness (synthetic, on top of the natural one) is applied to train, val and test of fine-tuning; "
        "pre-training always sees the tables as they are. The image-only model does not read the table: one model "
        "per seed, scored under every condition. Masks are TIP's draws offset by the run seed (each seed its own masks, "
        "nested across rates). Cells: mean over seeds [95 % interval from a two-level bootstrap over seeds, masks and "
        f"test rows, {N_BOOT} resamples] (± std over seeds).",
        f"Total run time: {total_seconds / 60:.1f} min."
        + (f" (This run {results['run_seconds'] / 60:.1f} min for {', '.join(results['run_methods'])}, merged into an "
           f"earlier run of {(total_seconds - results['run_seconds']) / 60:.1f} min for the other rows.)" if results.get("merged_from") else ""),
        "",
        "| method | " + " | ".join(CONDITIONS) + " |",
        "|---|" + "---|" * len(CONDITIONS),
    ]
    for method, row in table.items():
        cells = [(f"{c['mean']:.3f} [{c['ci95']['low']:.3f}, {c['ci95']['high']:.3f}] (± {c['std']:.3f})" if c["ci95"]
                  else f"{c['mean']:.3f} ± {c['std']:.3f}") if c["mean"] is not None else "n/a" for c in row.values()]
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    if differences:
        lines += ["", _significance(differences)]
    if results.get("errors"):
        lines += ["", f"{len(results['errors'])} run(s) failed: " + ", ".join(sorted(results["errors"]))]
    return table, "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--methods", default=",".join(DEFAULT_METHODS))
    parser.add_argument("--out", default="benchmarks/results/tip_covid")
    parser.add_argument("--runs", default="runs/bench-tip-covid")
    parser.add_argument("--scale", nargs="*", default=[], metavar="KEY=VALUE",
                        help=f"change a scaled-down setting, e.g. pretrain_epochs=150 (keys: {', '.join(SCALE)})")
    parser.add_argument("--merge", help="an earlier results JSON: its runs are kept, those of --methods replaced")
    args = parser.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    changes = {}
    for item in args.scale:
        key, sep, value = item.partition("=")
        if not sep or key not in SCALE:
            sys.exit(f"--scale takes KEY=VALUE with KEY one of {list(SCALE)}, not '{item}'")
        changes[key] = type(SCALE[key])(value)
    SCALE.update(changes)
    os.environ["TIP_BENCH_SCALE"] = json.dumps({**json.loads(os.environ.get("TIP_BENCH_SCALE", "{}")), **changes})
    methods = [m for m in args.methods.split(",") if m]
    unknown = sorted(set(methods) - set(METHODS))
    if unknown:
        sys.exit(f"unknown method(s) {unknown}; known: {list(METHODS)}")
    run_root = str(Path(args.runs) / time.strftime("%Y%m%d-%H%M%S"))
    results: dict[str, Any] = {"scale": SCALE, "seeds": seeds, "auroc": {}, "probabilities": {}, "target": [],
                               "pretraining": {}, "seconds": {}, "errors": {}}
    earlier_seconds = 0.0
    if args.merge:
        earlier = json.loads(Path(args.merge).read_text())
        results["target"] = earlier.get("target", [])
        for part in ("auroc", "probabilities", "seconds", "errors", "pretraining"):
            results[part] = {k: v for k, v in earlier.get(part, {}).items()
                             if part == "pretraining" or k.split("|")[0] not in methods}
        methods = list(dict.fromkeys([*(earlier.get("methods") or earlier.get("table", {})), *methods]))
        earlier_seconds = float(earlier.get("total_seconds", 0.0))
        results["merged_from"] = args.merge
    results["methods"] = methods
    results["run_methods"] = [m for m in args.methods.split(",") if m]
    start = time.perf_counter()
    pool = ProcessPoolExecutor(max_workers=args.workers, mp_context=get_context("spawn"), initializer=_worker_init)
    pending: dict[Any, tuple] = {}
    # pre-trainings first: every TIP-style fine-tuning waits for one
    todo = [m for m in args.methods.split(",") if m]  # this run's methods; merged ones are only tabulated
    needed = sorted({METHODS[m][0] for m in todo if METHODS[m][0]})
    for seed in seeds:
        for variant in needed:
            pending[pool.submit(_guarded, pretrain_job, variant, seed, run_root)] = ("pretrain", variant, seed)
    for seed in seeds:
        for method in todo:
            if METHODS[method][0] is None:
                for condition in (["none"] if method == "image_only" else CONDITIONS):
                    pending[pool.submit(_guarded, finetune_job, method, seed, condition, None, run_root)] = ("finetune", method, seed, condition)
    while pending:
        done, _ = wait(pending, return_when=FIRST_COMPLETED)
        for fut in done:
            job = pending.pop(fut)
            out = fut.result()
            elapsed = (time.perf_counter() - start) / 60
            if "error" in out:
                key = "|".join(map(str, job[1:]))
                results["errors"][key] = out["error"]
                print(f"[{elapsed:5.1f} min] FAILED {job}: {out['error'].strip().splitlines()[-1]}", flush=True)
                continue
            if job[0] == "pretrain":
                _, variant, seed = job
                results["pretraining"][f"{variant}|{seed}"] = out
                print(f"[{elapsed:5.1f} min] pretrain {variant} seed {seed}: {out['seconds']} s {out['last_epoch']}", flush=True)
                for method in todo:
                    if METHODS[method][0] == variant:
                        for condition in CONDITIONS:
                            pending[pool.submit(_guarded, finetune_job, method, seed, condition, out["checkpoint"], run_root)] = (
                                "finetune", method, seed, condition)
            else:
                _, method, seed, condition = job
                for cond, value in out["auroc"].items():
                    results["auroc"][f"{method}|{cond}|{seed}"] = value
                    results["probabilities"][f"{method}|{cond}|{seed}"] = out["probabilities"][cond]
                results["target"] = out["target"]
                results["seconds"][f"{method}|{condition}|{seed}"] = out["seconds"]
                print(f"[{elapsed:5.1f} min] {method} {condition} seed {seed}: AUROC "
                      f"{out['auroc'].get(condition, next(iter(out['auroc'].values()))):.4f} ({out['seconds']} s)", flush=True)
    pool.shutdown()
    results["run_seconds"] = round(time.perf_counter() - start, 1)
    total = results["run_seconds"] + earlier_seconds
    results["total_seconds"] = round(total, 1)
    table, markdown = summarise(results, seeds, total, methods)
    results["table"] = table
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(results))  # compact: it holds every test probability
    out.with_suffix(".md").write_text(markdown)
    print(markdown)
    print(f"written {out.with_suffix('.md')} and .json; total {total / 60:.1f} min", flush=True)


if __name__ == "__main__":
    os.environ.setdefault("HOLOMODAL_DATA", str((Path(__file__).resolve().parents[1] / ".." / "shared" / "data").resolve()))
    main()
