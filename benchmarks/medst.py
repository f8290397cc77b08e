"""MedST on covid_cxr (issue 15; spec dcp_i2m2_medst.md 3): X-rays and clinical notes as
studies over time (``patientid`` groups, ``offset`` orders, ``view`` pairs frontal with
lateral images).

Three image encoders of one architecture (the tiny ViT with view experts of
``covid_cxr_medst_pretrain``), per seed:

* ``medst``: MedST pre-training (global + local + temporal losses);
* ``global only``: the same with the local and temporal weights at 0 (CLIP-style alignment);
* ``none``: random weights, no pre-training.

Pre-training reads the training and unlabelled splits (labels unused). Each encoder is then
frozen and scored by a linear probe (logistic regression on the frontal CLS feature) of
COVID-19 vs other at 10 % and 100 % of the training labels, on the test split, and by the
temporal order of two studies of one patient (a logistic regression on their concatenated
global embeddings fitted on training patients' pairs, scored on the val and test patients').

    python benchmarks/medst.py --seeds 0,1,2
    python benchmarks/medst.py --report

Results: ``benchmarks/results/medst.json`` (after every run; a rerun skips what is there) and
``medst.md``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import numpy as np

RESULTS = Path("benchmarks/results")
ENCODERS = {"medst": [], "global only": ["model.loss_weights={local: 0, temporal: 0}"], "none": None}
FRACTIONS = (0.1, 1.0)


def pretrained(name: str, seed: int, root: Path, epochs: int | None):
    from holomodal.config import load_config
    from holomodal.methods.pretraining.medst import MedSTPretraining, load_medst
    from holomodal.pretraining import run_pretraining

    run = root / f"{name.replace(' ', '_')}-{seed}"
    overrides = ENCODERS[name]
    if overrides is None:  # the architecture of a pre-training run, its weights left random
        return None
    if not (run / "checkpoints" / "last.ckpt").is_file():
        extra = [f"trainer.max_epochs={epochs}"] if epochs else []
        out = run_pretraining(load_config(["covid_cxr_medst_pretrain"], [*overrides, f"seed={seed}", f"run.dir={run}",
                                                                          "run.loggers=[csv]", "trainer.enable_progress_bar=false", *extra]))
        print(f"{name} seed {seed}: pre-trained in {out['fit_seconds']:.0f} s, last {out['metrics']}", flush=True)
    module: MedSTPretraining = load_medst(run)
    return module, run


def random_encoder(reference: Path):
    """A MedST model with the reference run's architecture and fresh random weights."""
    import torch

    from holomodal.methods.pretraining.medst import MedSTPretraining, read_medst_run

    record = read_medst_run(reference)
    torch.manual_seed(0)
    model = {**record["model"], "image": {**record["model"]["image"], "pretrained": False}}
    return MedSTPretraining(record["input_specs"], record["frontal"], record["lateral"], record["text"], model=model).eval()


def score(module, preprocessor, bundle) -> dict:
    from holomodal.methods.pretraining.medst_eval import encode_rows, linear_probe, study_pairs, temporal_order
    from holomodal.studies import build_studies

    out = {}
    train, test = bundle.split("train"), bundle.split("test")
    ftrain, ftest = encode_rows(module, preprocessor, train), encode_rows(module, preprocessor, test)
    ytrain, ytest = train["label"].to_numpy(dtype=np.int64), test["label"].to_numpy(dtype=np.int64)
    has_tr, has_te = ftrain["image_present"], ftest["image_present"]
    for fraction in FRACTIONS:
        out[f"probe {int(fraction * 100)} %"] = linear_probe(ftrain["cls"][has_tr], ytrain[has_tr], ftest["cls"][has_te],
                                                             ytest[has_te], fraction=fraction, seed=0)
    # temporal order on the studies (their first frontal image) of each side's patients
    import pandas as pd

    sides = {}
    for name, frame in (("train", train), ("held-out", pd.concat([bundle.split("val"), test]))):
        studies = build_studies(frame, bundle.schema)
        firsts = studies.frame[~studies.frame["_study_code"].duplicated()].reset_index(drop=True)
        sides[name] = (encode_rows(module, preprocessor, firsts)["image"],
                       study_pairs(firsts, "patientid", "offset"))
    out["temporal order"] = temporal_order(*sides["train"], *sides["held-out"])
    return out


def run(seeds: list[int], root: Path, epochs: int | None) -> None:
    from holomodal.data import load_dataset
    from holomodal.preprocessing import Preprocessor

    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / "medst.json"
    done = json.loads(path.read_text()) if path.exists() else []
    for seed in seeds:
        bundle = load_dataset("covid_cxr", seed=seed, studies=True, image_size=64)
        reference = None
        for name in ENCODERS:
            if any(r["encoder"] == name and r["seed"] == seed for r in done):
                continue
            start = time.perf_counter()
            got = pretrained(name, seed, root, epochs)
            if got is None:
                module, run_dir = random_encoder(reference or root / f"medst-{seed}"), None
            else:
                module, run_dir = got
                reference = reference or run_dir
            source = run_dir or reference or root / f"medst-{seed}"
            from holomodal.methods.pretraining.medst import read_medst_run

            preprocessor = Preprocessor.from_state(read_medst_run(source)["preprocessor"])
            row = {"encoder": name, "seed": seed, "seconds": round(time.perf_counter() - start, 1),
                   "scores": score(module, preprocessor, bundle)}
            done.append(row)
            path.write_text(json.dumps(done, indent=1))
            print(f"seed {seed} {name}: " + ", ".join(f"{k} {v['accuracy']:.3f}" for k, v in row["scores"].items()), flush=True)


def report() -> str:
    rows = json.loads((RESULTS / "medst.json").read_text())
    tests = list(rows[0]["scores"])
    lines = ["# MedST on covid_cxr (studies over time)", "",
             "Generated by `python benchmarks/medst.py`: test accuracy of a linear probe (COVID-19 vs other) on each "
             "frozen image encoder at 10 % and 100 % of the training labels, and accuracy at telling which of two "
             "studies of a held-out patient is later; mean ± sd over seeds (each seed its own patient split and "
             "pre-training), n in brackets. The tiny ViT (64 px, patch 8) with view experts, a 2-layer BERT.", "",
             "| encoder | " + " | ".join(tests) + " |", "|---|" + "---|" * len(tests)]
    for name in ENCODERS:
        mine = [r for r in rows if r["encoder"] == name]
        if not mine:
            continue
        cells = []
        for t in tests:
            values = [r["scores"][t]["accuracy"] for r in mine]
            sd = statistics.stdev(values) if len(values) > 1 else 0.0
            cells.append(f"{statistics.mean(values):.3f} ± {sd:.3f}")
        lines.append(f"| {name} (n={len(mine)}) | " + " | ".join(cells) + " |")
    pairs = [r["scores"]["temporal order"]["test_pairs"] for r in rows]
    lines += ["", f"Held-out study pairs per seed (both orders): {min(pairs)} to {max(pairs)}."]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--epochs", type=int, default=None, help="pre-training epochs (default: the config's)")
    parser.add_argument("--runs", default="runs/bench_medst")
    parser.add_argument("--report", action="store_true")
    args = parser.parse_args()
    if not args.report:
        run([int(s) for s in args.seeds.split(",")], Path(args.runs), args.epochs)
    text = report()
    (RESULTS / "medst.md").write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
