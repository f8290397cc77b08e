"""bf16 mixed precision against fp32: do the final metrics move by more than the seeds do?

Before ``precision: auto`` picks bf16-mixed on CPUs with native bf16, the same runs are
trained in both precisions over several seeds, paired by seed:

- av_digits, supervised late fusion (the ``av_digits_late_fusion`` recipe), test accuracy;
- covid_cxr, TIP pre-training + full fine-tuning at the scale of ``tip_covid.py``, test AUROC.

For each, the mean and standard deviation over seeds per precision, and the paired
difference bf16 - fp32 with a 95 % interval from the two-level bootstrap over seeds and
test rows (holomodal.evaluation.seed_bootstrap). "Within the seed spread" means the
difference of the means is no larger than the larger of the two standard deviations and
its interval includes 0.

    python benchmarks/precision.py [--seeds 0,1,2] [--tasks av_digits,covid_cxr] [--workers 2]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from multiprocessing import get_context
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))

PRECISIONS = ("32-true", "bf16-mixed")
TASKS = {"av_digits": ("late_fusion", "accuracy", "multiclass"), "covid_cxr": ("tip_full", "auroc", "binary")}
N_BOOT = 1000


def av_digits_job(precision: str, seed: int, run_root: str) -> dict[str, Any]:
    from holomodal.config import load_config, to_container
    from holomodal.experiment import classifier_from_config, load_splits

    tag = f"av_digits-{precision}-{seed}"
    cfg = to_container(load_config(["av_digits_late_fusion"], [
        f"trainer.precision={precision}", f"seed={seed}", f"run.dir={Path(run_root) / tag}",
        "trainer.enable_progress_bar=false"]))
    splits = load_splits(cfg["data"])
    clf = classifier_from_config(cfg, splits.schema, splits.name)
    start = time.perf_counter()
    clf.fit(splits.train, splits.val)
    seconds = time.perf_counter() - start
    label = splits.schema.label.name
    return {"score": clf.evaluate(splits.test, split="test")["accuracy"],
            "probabilities": clf.predict_proba(splits.test).round(6).tolist(),
            "target": clf.preprocessor_.encode_labels(splits.test[label]).tolist(), "seconds": round(seconds, 1)}


def covid_cxr_job(precision: str, seed: int, run_root: str) -> dict[str, Any]:
    from tip_covid import finetune_job, pretrain_job

    root = str(Path(run_root) / precision)
    pre = pretrain_job("tip", seed, root, precision=precision)
    out = finetune_job("tip_full", seed, "none", pre["checkpoint"], root, precision=precision)
    return {"score": out["auroc"]["none"], "probabilities": out["probabilities"]["none"], "target": out["target"],
            "seconds": round(pre["seconds"] + out["seconds"], 1)}


JOBS = {"av_digits": av_digits_job, "covid_cxr": covid_cxr_job}


def _worker_init() -> None:
    from tip_covid import _worker_init as quiet_single_thread

    quiet_single_thread()


def summarise(task: str, runs: dict[str, dict[int, dict[str, Any]]], seeds: list[int]) -> dict[str, Any]:
    import numpy as np

    from holomodal.evaluation import seed_bootstrap

    _, metric, kind = TASKS[task]
    target = np.asarray(runs[PRECISIONS[0]][seeds[0]]["target"])
    row: dict[str, Any] = {"metric": metric}
    for precision in PRECISIONS:
        values = [runs[precision][s]["score"] for s in seeds]
        row[precision] = {"mean": statistics.fmean(values), "std": statistics.stdev(values) if len(values) > 1 else 0.0,
                          "values": values, "seconds": [runs[precision][s]["seconds"] for s in seeds]}
    num_classes = int(target.max()) + 1 if kind == "multiclass" else 2
    pairs = [(np.asarray(runs["bf16-mixed"][s]["probabilities"], dtype=np.float32),
              np.asarray(runs["32-true"][s]["probabilities"], dtype=np.float32)) for s in seeds]
    difference = seed_bootstrap(pairs, target, kind, num_classes, metric, n_boot=N_BOOT)
    spread = max(row[p]["std"] for p in PRECISIONS)
    row["bf16_minus_fp32"] = difference
    row["within_seed_spread"] = bool(abs(row["bf16-mixed"]["mean"] - row["32-true"]["mean"]) <= spread
                                     and difference["low"] <= 0.0 <= difference["high"])
    return row


def markdown(table: dict[str, Any], seeds: list[int], total_seconds: float) -> str:
    lines = [f"# bf16-mixed vs fp32 (CPU), test metrics over seeds {','.join(map(str, seeds))}", "",
             "av_digits: late fusion (`av_digits_late_fusion`), accuracy. covid_cxr: TIP pre-training + full fine-tuning "
             "at the scale of tip_covid.py, AUROC. Cells: mean ± std over seeds; the difference is paired by seed, with a "
             f"95 % interval from a two-level bootstrap over seeds and test rows ({N_BOOT} resamples).",
             f"Total run time: {total_seconds / 60:.1f} min.", "",
             "| task | metric | fp32 | bf16-mixed | bf16 - fp32 [95 %] | within seed spread | fit s fp32 / bf16 (median) |",
             "|---|---|---|---|---|---|---|"]
    for task, row in table.items():
        a, b, d = row["32-true"], row["bf16-mixed"], row["bf16_minus_fp32"]
        lines.append(f"| {task} | {row['metric']} | {a['mean']:.3f} ± {a['std']:.3f} | {b['mean']:.3f} ± {b['std']:.3f} | "
                     f"{d['value']:+.3f} [{d['low']:+.3f}, {d['high']:+.3f}] | {'yes' if row['within_seed_spread'] else 'no'} | "
                     f"{statistics.median(a['seconds']):.0f} / {statistics.median(b['seconds']):.0f} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--tasks", default=",".join(TASKS))
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--out", default="benchmarks/results/precision")
    parser.add_argument("--runs", default="runs/bench-precision")
    args = parser.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    tasks = [t for t in args.tasks.split(",") if t]
    unknown = sorted(set(tasks) - set(TASKS))
    if unknown:
        sys.exit(f"unknown task(s) {unknown}; known: {list(TASKS)}")
    run_root = str(Path(args.runs) / time.strftime("%Y%m%d-%H%M%S"))
    start = time.perf_counter()
    runs: dict[str, dict[str, dict[int, Any]]] = {t: {p: {} for p in PRECISIONS} for t in tasks}
    with ProcessPoolExecutor(args.workers, mp_context=get_context("spawn"), initializer=_worker_init) as pool:
        jobs = {pool.submit(JOBS[t], p, s, run_root): (t, p, s) for t in tasks for s in seeds for p in PRECISIONS}
        for future in as_completed(jobs):
            task, precision, seed = jobs[future]
            runs[task][precision][seed] = future.result()
            print(f"[{(time.perf_counter() - start) / 60:5.1f} min] {task} {precision} seed {seed}: "
                  f"{runs[task][precision][seed]['score']:.4f} in {runs[task][precision][seed]['seconds']} s", flush=True)
    total = time.perf_counter() - start
    table = {t: summarise(t, runs[t], seeds) for t in tasks}
    text = markdown(table, seeds, total)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps({"seeds": seeds, "total_seconds": round(total, 1), "table": table}, indent=1))
    out.with_suffix(".md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
