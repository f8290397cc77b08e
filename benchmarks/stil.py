"""STiL against supervised-only and the semi-supervised baselines, a few labels and many
unlabelled rows (issue 11; spec tip_stil.md 2).

Settings ``data@fraction``: av_digits (image + audio) and physionet2012 (table + series) at
1 % and 10 % of the training labels, covid_cxr (X-ray + table) at 10 % plus its naturally
unlabelled rows. Each (setting, method, seed) is one training run from the data set's
``*_stil`` experiment config; the seed also draws which labels are kept. Test accuracy and
AUROC of the best validation epoch, and the accuracy of the confident pseudo-labels per
epoch (the hidden labels are known in a label_fraction run).

    python benchmarks/stil.py --settings av_digits@0.01 --seeds 0,1,2 [--methods stil,supervised_only]
    python benchmarks/stil.py --report        # tables and curves from every results JSON

Results go to ``benchmarks/results/stil_<data>_<pct>.json`` (one per setting, written
after every run, so an interrupted benchmark keeps what it finished and a rerun skips it),
and ``--report`` writes ``stil_<data>.md`` and ``stil_pseudo_accuracy.png``.
"""

from __future__ import annotations

import argparse
import inspect
import json
import math
import statistics
import time
from pathlib import Path

import pandas as pd

RESULTS = Path("benchmarks/results")
CONFIGS = {"av_digits": "av_digits_stil", "physionet2012": "physionet2012_stil", "covid_cxr": "covid_cxr_stil"}
METRIC = {"av_digits": "accuracy", "physionet2012": "auroc", "covid_cxr": "auroc"}
METHODS = ("stil", "supervised_only", "fixmatch", "simmatch", "comatch", "freematch", "mmatch", "cotraining")
DEFAULT_SETTINGS = ("av_digits@0.01", "physionet2012@0.01", "av_digits@0.1", "physionet2012@0.1", "covid_cxr@0.1")
# covid_cxr: 64-pixel X-rays, small encoders and STiL at a width a CPU trains in minutes
COVID = ["data.options.image_size=64", "model.modalities=[image, tabular]", "model.dim=64", "model.projection_dim=32", "batch_size=64",
         "model.encoders={image: {name: timm, model_name: resnet10t, pretrained: false}, "
         "tabular: {name: tabular_transformer, dim: 32, depth: 2, heads: 4}}"]


def results_file(setting: str) -> Path:
    data, fraction = setting.split("@")
    return RESULTS / f"stil_{data}_{round(float(fraction) * 100):g}pct.json"


def method_config(data: str, method: str, seed: int, fraction: float, epochs: int | None, run_dir: Path,
                  extra: list[str] = ()) -> dict:
    """The data set's STiL config for ``method``: model keys the method does not take (STiL's
    loss weights for a baseline) are dropped."""
    from holomodal.config import load_config, to_container
    from holomodal.methods import METHODS as REGISTRY

    overrides = [f"method={method}", f"seed={seed}", f"data.label_fraction={fraction}", f"run.dir={run_dir}",
                 "run.loggers=[csv]", "trainer.enable_progress_bar=false"]
    overrides += COVID if data == "covid_cxr" else []
    overrides += [f"trainer.max_epochs={epochs}"] if epochs else []
    overrides += list(extra)
    cfg = to_container(load_config([CONFIGS[data]], overrides))
    accepted = set(inspect.signature(REGISTRY.get(method).__init__).parameters)
    cfg["model"] = {k: v for k, v in (cfg.get("model") or {}).items() if k in accepted}
    return cfg


def one_run(data: str, method: str, seed: int, fraction: float, epochs: int | None, run_root: Path,
            variant: tuple[str, list[str]] | None = None) -> dict:
    from holomodal.experiment import run_training

    name = method + (f"+{variant[0]}" if variant else "")
    run_dir = run_root / f"{data}-{round(fraction * 100):g}pct-{name}-{seed}"
    cfg = method_config(data, method, seed, fraction, epochs, run_dir, variant[1] if variant else [])
    start = time.perf_counter()
    out = run_training(cfg)
    log = pd.read_csv(run_dir / "metrics.csv")
    per_epoch = log.groupby("epoch").last()
    curve = {col: [None if pd.isna(v) else round(float(v), 4) for v in per_epoch[col]]
             for col in ("pseudo/accuracy", "pseudo/confident_share") if col in per_epoch}
    monitor = "val/" + METRIC[data]
    best_epoch = int(per_epoch[monitor].idxmax()) + 1 if monitor in per_epoch else None
    return {"test": out["test"], "val": out.get("val"), "fit_seconds": round(time.perf_counter() - start, 1),
            "epochs": int(per_epoch.index.max()) + 1, "best_epoch": best_epoch, "curve": curve, "run_dir": str(run_dir)}


def run(settings: list[str], methods: list[str], seeds: list[int], epochs: int | None, run_root: Path,
        variant: tuple[str, list[str]] | None = None) -> None:
    for setting in settings:
        data, fraction = setting.split("@")
        path = results_file(setting)
        done = json.loads(path.read_text()) if path.exists() else {}
        for seed in seeds:
            for method in methods:
                key = method + (f"+{variant[0]}" if variant else "") + f"/seed{seed}"
                if key in done:
                    continue
                result = one_run(data, method, seed, float(fraction), epochs, run_root, variant)
                done[key] = result
                print(f"{setting} {key}: test {METRIC[data]} {result['test'][METRIC[data]]:.4f} "
                      f"({result['fit_seconds']} s, {result['epochs']} epochs, best {result['best_epoch']})", flush=True)
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text(json.dumps(done, indent=1))


def _stats(values: list[float]) -> tuple[float, float]:
    return statistics.mean(values), (statistics.stdev(values) if len(values) > 1 else float("nan"))


def report() -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    files = sorted(RESULTS.glob("stil_*pct.json"))
    by_data: dict[str, list[tuple[str, dict]]] = {}
    for f in files:
        data, pct = f.stem[len("stil_"):].rsplit("_", 1)
        by_data.setdefault(data, []).append((pct, json.loads(f.read_text())))
    curves = []
    for data, parts in by_data.items():
        metric = METRIC[data]
        other = "auroc" if metric == "accuracy" else "accuracy"
        lines = [f"# Semi-supervised methods on {data}", "",
                 f"Test {metric} (best validation epoch), mean ± std over seeds, per-seed values in brackets. "
                 "Produced by `python benchmarks/stil.py`; settings in the JSON files beside this one.", ""]
        for pct, results in sorted(parts, key=lambda p: float(p[0].rstrip("pct"))):
            lines += [f"## {pct.replace('pct', ' %')} of the training labels", "",
                      f"| method | test {metric} | test {other} | seeds | mean epochs | mean fit s |", "|---|---|---|---|---|---|"]
            scores: dict[str, list[float]] = {}
            variants = sorted({k.split("/")[0] for k in results} - set(METHODS))
            for method in [*METHODS, *variants]:
                runs = [v for k, v in results.items() if k.split("/")[0] == method]
                if not runs:
                    continue
                values = [r["test"][metric] for r in runs]
                acc = [r["test"][other] for r in runs]
                scores[method] = values
                m, s = _stats(values)
                ma, sa = _stats(acc)
                lines.append(f"| {method} | {m:.4f} ± {s:.4f} [{', '.join(f'{v:.4f}' for v in values)}] | {ma:.4f} ± {sa:.4f} | "
                             f"{len(runs)} | {statistics.mean(r['epochs'] for r in runs):.1f} | "
                             f"{statistics.mean(r['fit_seconds'] for r in runs):.0f} |")
                for r in runs[:1]:
                    if r["curve"].get("pseudo/accuracy"):
                        curves.append((f"{data} {pct} {method}", r["curve"]["pseudo/accuracy"]))
            if "stil" in scores and "supervised_only" in scores:
                (ms, ss), (mo, so) = _stats(scores["stil"]), _stats(scores["supervised_only"])
                spread = max(ss, so)
                verdict = "yes" if not math.isnan(spread) and ms - mo > 2 * spread else "no"
                lines += ["", f"STiL − supervised-only: {ms - mo:+.4f}; two standard deviations of the seeds "
                              f"(the larger of the two methods'): {2 * spread:.4f}; STiL ahead by more: **{verdict}**."]
            lines.append("")
        (RESULTS / f"stil_{data}.md").write_text("\n".join(lines))
        print(f"written {RESULTS / f'stil_{data}.md'}")
    if curves:
        fig, ax = plt.subplots(figsize=(8, 5))
        for name, values in curves:
            ax.plot(range(1, len(values) + 1), [math.nan if v is None else v for v in values], marker="o", label=name)
        ax.set_xlabel("epoch")
        ax.set_ylabel("accuracy of confident pseudo-labels (seed 0)")
        ax.set_ylim(0, 1.02)
        ax.legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(RESULTS / "stil_pseudo_accuracy.png", dpi=100)
        print(f"written {RESULTS / 'stil_pseudo_accuracy.png'}")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--settings", default=",".join(DEFAULT_SETTINGS))
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--epochs", type=int, default=None, help="trainer.max_epochs (default: the config's)")
    parser.add_argument("--runs", default="runs/bench-stil")
    parser.add_argument("--variant", default=None, help="NAME:override;override, e.g. 'no_pseudo:model.start_epoch=999': "
                        "the methods again with these config overrides, as rows '<method>+NAME'")
    parser.add_argument("--report", action="store_true", help="only write the tables and curves")
    args = parser.parse_args()
    variant = None
    if args.variant:
        name, _, overrides = args.variant.partition(":")
        variant = (name, [o for o in overrides.split(";") if o])
    if not args.report:
        run(args.settings.split(","), args.methods.split(","), [int(s) for s in args.seeds.split(",")], args.epochs,
            Path(args.runs) / time.strftime("%Y%m%d-%H%M%S"), variant)
    report()


if __name__ == "__main__":
    main()
