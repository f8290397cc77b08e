"""Supervised late-fusion baseline on the real data sets (CPU is enough).

av_digits: accuracy with both modalities, with image only and audio only (unimodal models
trained alone, and the two-modality model with the other modality absent at test time).
physionet2012: AUROC / AUPRC on set B.

    python benchmarks/late_fusion.py [--seeds 0] [--out benchmarks/results/late_fusion.json]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from holomodal.config import load_config, to_container
from holomodal.experiment import classifier_from_config, load_splits


def run(config: str, overrides: list[str], run_root: Path, tag: str, test_missing: dict[str, list] | None = None) -> dict:
    cfg = to_container(load_config([config], [*overrides, f"run.dir={run_root / tag}", "trainer.enable_progress_bar=false"]))
    splits = load_splits(cfg["data"])
    clf = classifier_from_config(cfg, splits.schema, splits.name)
    start = time.perf_counter()
    clf.fit(splits.train, splits.val)
    seconds = time.perf_counter() - start
    out = {"fit_seconds": round(seconds, 1), "test": clf.evaluate(splits.test)}
    for name, missing in (test_missing or {}).items():
        out[f"test_{name}"] = clf.evaluate(splits.test, missing=missing)
    print(f"{tag}: {json.dumps(out)}", flush=True)
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seeds", default="0")
    parser.add_argument("--out", default="benchmarks/results/late_fusion.json")
    parser.add_argument("--runs", default="runs/bench-late-fusion")
    args = parser.parse_args()
    run_root = Path(args.runs) / time.strftime("%Y%m%d-%H%M%S")
    results: dict[str, dict] = {}
    total = time.perf_counter()
    for seed in [int(s) for s in args.seeds.split(",")]:
        s = [f"seed={seed}"]
        results[f"av_digits/both/seed{seed}"] = run(
            "av_digits_late_fusion", s, run_root, f"av-both-{seed}",
            {"image_only": [{"kind": "modality", "rate": 1.0, "drop": "audio"}],
             "audio_only": [{"kind": "modality", "rate": 1.0, "drop": "image"}]},
        )
        results[f"av_digits/image_model/seed{seed}"] = run("av_digits_late_fusion", s + ["model.modalities=[image]"], run_root, f"av-image-{seed}")
        results[f"av_digits/audio_model/seed{seed}"] = run("av_digits_late_fusion", s + ["model.modalities=[audio]"], run_root, f"av-audio-{seed}")
        results[f"physionet2012/late_fusion/seed{seed}"] = run("physionet2012_late_fusion", s, run_root, f"physionet-{seed}")
    results["total_seconds"] = round(time.perf_counter() - total, 1)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2))
    print(f"written {out}; total {results['total_seconds']} s")


if __name__ == "__main__":
    main()
