"""Prompt methods on a frozen CLIP with missing pictures or texts (issue 12; spec
dcp_i2m2_medst.md 1): the frozen-CLIP baseline (head only), MMP, DCP and full fine-tuning.

Per data set one CLIP is pre-trained (``holomodal pretrain -c emoji_clip_pretrain``: the tiny
CLIP from random weights, on the training split's pairs only) and frozen under every method
and seed. Every model trains with 70 % of the samples missing the picture or the text (35 %
each, "both") in train, val and test, is kept at its best validation epoch, and is tested at
eta 70 % (as trained) and, on the same test rows, at eta 50 % and 90 % and with every text
removed ("picture only"). emoji: 9-way accuracy; coco_mini: 80-way multi-label macro-F1.

    python benchmarks/image_text.py --data emoji,coco_mini --seeds 0,1,2
    python benchmarks/image_text.py --report        # the table from the results JSON

Results: ``benchmarks/results/image_text_<data>.json`` (written after every run; a rerun
skips what is there) and ``image_text.md``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

RESULTS = Path("benchmarks/results")
METHODS = ("clip_baseline", "mmp", "dcp", "clip_finetune", "mmp_image_text", "mmp_length4")
# MMP variants, each a method plus options: prompts on both towers, and the prompt sequence
# scaled to the tiny CLIP (6 x 4 = 24 prompts beside 64 patches, as 96 beside ViT-B/16's 196)
VARIANTS = {"mmp_image_text": ("mmp", ["model.sides=[image,text]"]), "mmp_length4": ("mmp", ["model.length=4"])}
METRIC = {"emoji": "accuracy", "coco_mini": "f1_macro"}
# the test conditions besides the training one, each a missingness plan for the test split
TESTS = {"eta 70 %": ["modality:0.7:both"], "eta 50 %": ["modality:0.5:both"], "eta 90 %": ["modality:0.9:both"],
         "picture only": ["modality:1.0:text"]}
# per data set: what differs from the emoji configs (coco_mini has 159 images: smaller batches)
DATA = {
    "emoji": {"pretrain": [], "train": []},
    "coco_mini": {"pretrain": ["data.name=coco_mini", "batch_size=32", "trainer.max_epochs=60"],
                  "train": ["data.name=coco_mini", "batch_size=16", "monitor=val/f1_macro"]},
}
# full fine-tuning moves every CLIP weight: DCP's 1e-2 would wreck them
METHOD_OVERRIDES = {"clip_finetune": ["optim.lr=0.0001"]}


def pretrain(data: str, root: Path, epochs: int | None) -> Path:
    from holomodal.config import load_config
    from holomodal.pretraining import run_pretraining

    run = root / f"{data}-clip"
    if (run / "checkpoints" / "last.ckpt").is_file():
        return run
    overrides = DATA[data]["pretrain"] + [f"run.dir={run}", "run.loggers=[csv]", "trainer.enable_progress_bar=false"]
    overrides += [f"trainer.max_epochs={epochs}"] if epochs else []
    out = run_pretraining(load_config(["emoji_clip_pretrain"], overrides))
    print(f"{data}: CLIP pre-trained in {out['fit_seconds']:.0f} s, last epoch {out['metrics']}", flush=True)
    return run


def one_run(data: str, method: str, seed: int, clip: Path, root: Path, epochs: int | None) -> dict:
    from holomodal import Classifier
    from holomodal.config import load_config
    from holomodal.experiment import load_splits, run_training

    run = root / f"{data}-{method}-{seed}"
    base, options = VARIANTS.get(method, (method, []))
    overrides = DATA[data]["train"] + METHOD_OVERRIDES.get(method, []) + options + [
        f"method={base}", f"seed={seed}", f"clip={clip}", f"run.dir={run}", "run.loggers=[csv]",
        "trainer.enable_progress_bar=false"]
    overrides += [f"trainer.max_epochs={epochs}"] if epochs else []
    cfg = load_config(["emoji_dcp"], overrides)
    start = time.perf_counter()
    out = run_training(cfg)
    seconds = time.perf_counter() - start
    clf = Classifier.load(run / "model")
    test = load_splits(dict(cfg["data"])).test
    scores = {name: clf.evaluate(test, missing=plan) for name, plan in TESTS.items()}
    trainable = sum(p.numel() for p in clf.model_.parameters() if p.requires_grad)
    return {"data": data, "method": method, "seed": seed, "fit_seconds": round(seconds, 1), "trainable": trainable,
            "val": out.get("val"), "test": {k: {m: float(v) for m, v in s.items()} for k, s in scores.items()}}


def results_file(data: str) -> Path:
    return RESULTS / f"image_text_{data}.json"


def run(datas: list[str], seeds: list[int], methods: list[str], root: Path, epochs: int | None,
        clip_epochs: int | None) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    for data in datas:
        path = results_file(data)
        done = json.loads(path.read_text()) if path.exists() else []
        clip = pretrain(data, root, clip_epochs)
        for seed in seeds:
            for method in methods:
                if any(r["method"] == method and r["seed"] == seed for r in done):
                    continue
                row = one_run(data, method, seed, clip, root, epochs)
                done.append(row)
                path.write_text(json.dumps(done, indent=1))
                metric = METRIC[data]
                print(f"{data} {method} seed {seed}: " + ", ".join(
                    f"{k} {v[metric]:.3f}" for k, v in row["test"].items()) + f"  ({row['fit_seconds']:.0f} s)", flush=True)


def mean_sd(values: list[float]) -> str:
    if not values:
        return "-"
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.3f} ± {sd:.3f}"


def report() -> str:
    lines = ["# Prompt methods on a frozen CLIP with missing modalities", "",
             "Generated by `python benchmarks/image_text.py`. Trained at eta = 70 % `both` (35 % of the samples "
             "without picture, 35 % without text, in train, val and test), tested on the same test rows at each "
             "condition; mean ± sd over seeds (n in brackets). The CLIP is the tiny one (64 px, 6 blocks), "
             "pre-trained on each data set's training pairs by `holomodal pretrain -c emoji_clip_pretrain`, "
             "frozen except where a method trains it.", ""]
    for data in METRIC:
        path = results_file(data)
        if not path.exists():
            continue
        rows = json.loads(path.read_text())
        metric = METRIC[data]
        lines += [f"## {data} (test {metric})", "",
                  "| method | trainable parameters | " + " | ".join(TESTS) + " | fit s |",
                  "|---|---|" + "---|" * len(TESTS) + "---|"]
        for method in METHODS:
            mine = [r for r in rows if r["method"] == method]
            if not mine:
                continue
            cells = [mean_sd([r["test"][t][metric] for r in mine]) for t in TESTS]
            fit = statistics.median(r["fit_seconds"] for r in mine)
            lines.append(f"| {method} (n={len(mine)}) | {mine[0]['trainable']:,} | " + " | ".join(cells) + f" | {fit:.0f} |")
        lines.append("")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default="emoji,coco_mini")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--methods", default=",".join(METHODS), help=f"of {', '.join(METHODS)}")
    parser.add_argument("--epochs", type=int, default=None, help="training epochs (default: the config's 20)")
    parser.add_argument("--clip-epochs", type=int, default=None, help="CLIP pre-training epochs (default: the config's)")
    parser.add_argument("--runs", default="runs/bench_image_text", help="folder of the run folders")
    parser.add_argument("--report", action="store_true", help="only write the table from the results")
    args = parser.parse_args()
    if not args.report:
        run(args.data.split(","), [int(s) for s in args.seeds.split(",")], args.methods.split(","), Path(args.runs),
            args.epochs, args.clip_epochs)
    text = report()
    (RESULTS / "image_text.md").write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
