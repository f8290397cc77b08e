"""DyMo's inference-time modality selection against its reference points, several seeds.

Per task and seed: one ``dynamic`` model trained on the complete training rows, evaluated at
each test missing rate with (a) discard: the observed modalities only, (b) recover-all: every
recovered modality fused, (c) DyMo: recovered modalities added per row while the reward is
positive; recoveries from the task's recoverer fitted on the training split. Beside them the
library's baselines trained on the same complete rows: late fusion (absent modalities
zero-filled and masked) and I2M2. Missing rate r (mask seed 100 + seed): on av_digits and emoji
r of the test rows lose one modality, the incomplete rows shared evenly among the modalities;
on covid_cxr each table cell of a test row is missing with probability r (TIP's RVM).

Cost: DyMo's time per test row (recovery included, and without it) against one plain forward
pass of the same model, from paired timings in one process (min/median/max over repeats).

    python benchmarks/dymo.py [--seeds 0,1,2] [--tasks av_digits,emoji,covid_cxr]
Writes benchmarks/results/dymo.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

from _results import write_results

from holomodal.config import load_config, to_container
from holomodal.experiment import classifier_from_config, load_splits
from holomodal.selection.inference import ModalitySelection

TASKS = {
    "av_digits": {"dynamic": "av_digits_dynamic", "late_fusion": "av_digits_late_fusion", "i2m2": "av_digits_i2m2",
                  "recoverer": "nearest", "missing": "modality", "rates": (0.2, 0.5, 0.8), "metric": "accuracy"},
    "emoji": {"dynamic": "emoji_dynamic", "late_fusion": "emoji_late_fusion", "i2m2": "emoji_i2m2",
              "recoverer": "nearest", "missing": "modality", "rates": (0.2, 0.5, 0.8), "metric": "accuracy"},
    # the table partly missing (TIP's random cell masks), recovered by an imputer fitted on train
    "covid_cxr": {"dynamic": "covid_cxr_dynamic", "late_fusion": "covid_cxr_late_fusion", "i2m2": "covid_cxr_i2m2",
                  "recoverer": "iterative", "missing": "rvm", "rates": (0.3, 0.5, 0.7), "metric": "auroc"},
}
SELECTIONS = ("discard", "recover_all", "dymo")
COST_REPEATS = 5


def missing_at(kind: str, rate: float, seed: int) -> list[dict]:
    spec = {"kind": kind, "rate": rate, "seed": 100 + seed}
    return [{**spec, "drop": "all"} if kind == "modality" else spec]


def fitted(config: str, seed: int, run_root: Path, name: str, overrides: list[str]):
    cfg = to_container(load_config([config], overrides))
    cfg["seed"] = seed
    cfg["run"].update(dir=str(run_root / f"{name}-{seed}"), loggers=["csv"])
    cfg["trainer"]["enable_progress_bar"] = False
    splits = load_splits(cfg["data"])
    clf = classifier_from_config(cfg, splits.schema, splits.name)
    start = time.perf_counter()
    clf.fit(splits.train, splits.val)
    return clf, splits, time.perf_counter() - start


def cost(clf, splits, selection, missing) -> dict:
    """Seconds per row of the selection (recovery included) and of one plain forward pass,
    paired in each repeat; their ratios."""
    batch, _ = clf._encode(splits.test, "test", clf._plan_for(missing))
    ratios, ratios_no_recovery, plain_times = [], [], []
    for _ in range(COST_REPEATS):
        start = time.perf_counter()
        clf._probabilities(batch)
        plain = time.perf_counter() - start
        start = time.perf_counter()
        selection.recoverer.recover(batch)
        recovery = time.perf_counter() - start
        start = time.perf_counter()
        clf._probabilities(batch, selection=selection)
        total = time.perf_counter() - start
        plain_times.append(plain / len(batch))
        ratios.append(total / plain)
        ratios_no_recovery.append(max(total - recovery, 0.0) / plain)
    summary = lambda v: {"min": min(v), "median": statistics.median(v), "max": max(v)}  # noqa: E731
    return {"plain_seconds_per_row": statistics.median(plain_times), "ratio": summary(ratios),
            "ratio_without_recovery": summary(ratios_no_recovery),
            "forward_passes": int(selection.records["forward_passes"].max())}


def run_task(task: str, seed: int, run_root: Path, overrides: list[str]) -> dict:
    spec = TASKS[task]
    out: dict = {}
    clf, splits, seconds = fitted(spec["dynamic"], seed, run_root, f"{task}-dynamic", overrides)
    complete = clf.evaluate(splits.test)[spec["metric"]]
    recoverer = clf.selection("dymo", spec["recoverer"], splits.train).recoverer  # fitted once, shared
    strategies = {s: ModalitySelection(recoverer, s) for s in SELECTIONS}
    for s in SELECTIONS:
        out[s] = {"fit_seconds": seconds, "complete": complete}
        for rate in spec["rates"]:
            out[s][f"rate={rate}"] = clf.evaluate(splits.test, missing=missing_at(spec["missing"], rate, seed), select=strategies[s])[spec["metric"]]
            if s == "dymo":
                records = strategies[s].records
                lacking = records["recovered"] != ""
                out[s][f"used_share={rate}"] = float((records.loc[lacking, "used_recovered"] > 0).mean())
    out["dymo"]["cost"] = cost(clf, splits, strategies["dymo"], missing_at(spec["missing"], max(spec["rates"]), seed))
    for baseline in ("late_fusion", "i2m2"):
        model, splits, seconds = fitted(spec[baseline], seed, run_root, f"{task}-{baseline}", overrides)
        out[baseline] = {"fit_seconds": seconds, "complete": model.evaluate(splits.test)[spec["metric"]]}
        for rate in spec["rates"]:
            out[baseline][f"rate={rate}"] = model.evaluate(splits.test, missing=missing_at(spec["missing"], rate, seed))[spec["metric"]]
    return out


def _cell(values: list[float]) -> str:
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.3f} ± {sd:.3f}"


def summarise(results: dict, seeds: list[int]) -> str:
    lines = []
    for task, per_seed in results.items():
        spec = TASKS[task]
        lines.append(f"\n### {task} (test {spec['metric']}; mean ± sd over seeds {seeds}; recoverer "
                     f"'{spec['recoverer']}')\n")
        header = ["method", "complete"] + [f"rate {r}" for r in spec["rates"]]
        lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        for method in (*SELECTIONS, "late_fusion", "i2m2"):
            runs = [per_seed[s][method] for s in seeds if s in per_seed]
            cells = [method, _cell([r["complete"] for r in runs])] + [_cell([r[f"rate={x}"] for r in runs]) for x in spec["rates"]]
            lines.append("| " + " | ".join(cells) + " |")
        dymo = [per_seed[s]["dymo"] for s in seeds if s in per_seed]
        shares = ", ".join(f"rate {r}: {_cell([d[f'used_share={r}'] for d in dymo])}" for r in spec["rates"])
        lines.append(f"\nShare of incomplete rows whose recovered modality DyMo used: {shares}.")
        costs = [d["cost"] for d in dymo]
        lines.append(
            f"Cost at rate {max(spec['rates'])}: DyMo (recovery included) / one plain forward pass, median over seeds of "
            f"each seed's median: {statistics.median(c['ratio']['median'] for c in costs):.2f} "
            f"(min {min(c['ratio']['min'] for c in costs):.2f}, max {max(c['ratio']['max'] for c in costs):.2f}); "
            f"without the recovery {statistics.median(c['ratio_without_recovery']['median'] for c in costs):.2f}; "
            f"plain pass {1e3 * statistics.median(c['plain_seconds_per_row'] for c in costs):.3f} ms per row; "
            f"at most {max(c['forward_passes'] for c in costs)} forward passes per chunk of rows.")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--tasks", default=",".join(TASKS))
    parser.add_argument("--out", default="benchmarks/results/dymo")
    parser.add_argument("overrides", nargs="*", help="config overrides for every model, e.g. trainer.max_epochs=10")
    args = parser.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    run_root = Path("runs/bench-dymo") / time.strftime("%Y%m%d-%H%M%S")
    results: dict = {}
    total = time.perf_counter()
    for task in args.tasks.split(","):
        for seed in seeds:
            results.setdefault(task, {})[seed] = run_task(task, seed, run_root, args.overrides)
            print(f"{task} seed {seed}: {json.dumps(results[task][seed])}", flush=True)
    write_results(args.out, results, time.perf_counter() - total, summarise(results, seeds), args.overrides)


if __name__ == "__main__":
    main()
