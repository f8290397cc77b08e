"""A training run from a configuration: data, estimator, test metrics, files. Used by the
CLI and the benchmark scripts."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
from omegaconf import DictConfig, OmegaConf

from holomodal.config import to_container
from holomodal.errors import ConfigError, DataError
from holomodal.estimator import Classifier
from holomodal.plots import plot_training_curves
from holomodal.runs import write_json, write_text
from holomodal.schema import Schema


@dataclass
class Splits:
    name: str
    schema: Schema
    train: pd.DataFrame
    val: pd.DataFrame | None
    test: pd.DataFrame | None


def _read_table(path: str) -> pd.DataFrame:
    p = Path(path)
    if not p.exists():
        raise DataError(f"data file '{p}' not found")
    if p.suffix in (".parquet", ".pq"):
        return pd.read_parquet(p)
    if p.suffix in (".csv", ".gz", ".txt"):
        return pd.read_csv(p)
    raise DataError(f"data file '{p}': unsupported format (use .csv or .parquet)")


def read_schema(path: str) -> Schema:
    p = Path(path)
    if not p.exists():
        raise DataError(f"schema file '{p}' not found")
    data = json.loads(p.read_text()) if p.suffix == ".json" else OmegaConf.to_container(OmegaConf.load(p))
    return Schema.from_dict(data)


def load_splits(data_cfg: dict[str, Any]) -> Splits:
    if data_cfg.get("name"):
        from holomodal.data import load_dataset

        bundle = load_dataset(data_cfg["name"], root=data_cfg.get("root"), **(data_cfg.get("options") or {}))
        return Splits(bundle.name, bundle.schema, bundle.split("train"), bundle.split("val"), bundle.split("test"))
    if not data_cfg.get("train") or not data_cfg.get("schema"):
        raise ConfigError("set data.name to a bundled data set, or data.train (and data.schema) to your own files")
    schema = read_schema(data_cfg["schema"])
    tables = {k: _read_table(data_cfg[k]) if data_cfg.get(k) else None for k in ("train", "val", "test")}
    return Splits(Path(data_cfg["train"]).stem, schema, tables["train"], tables["val"], tables["test"])


def classifier_from_config(cfg: dict[str, Any], schema: Schema, data_name: str) -> Classifier:
    return Classifier(
        schema, method=cfg["method"], model=cfg.get("model") or {}, optim=cfg.get("optim") or {},
        batch_size=cfg["batch_size"], missing=cfg.get("missing") or [], seed=cfg["seed"],
        trainer=cfg.get("trainer") or {}, monitor=cfg.get("monitor", "auto"), run_dir=cfg["run"]["dir"],
        loggers=cfg["run"].get("loggers") or ["csv"], data_name=data_name, compile=cfg["run"].get("compile") or False,
    )


def run_training(cfg: DictConfig | dict, *, resume: bool = False) -> dict[str, Any]:
    """Train, test, save; returns the metrics. Every file goes into the run folder."""
    cfg = to_container(cfg)
    splits = load_splits(cfg["data"])
    clf = classifier_from_config(cfg, splits.schema, splits.name)
    start = time.perf_counter()
    clf.fit(splits.train, splits.val, resume=resume, record={"config.yaml": cfg})
    fit_seconds = time.perf_counter() - start
    run_dir = clf.run_dir_
    results: dict[str, Any] = {"fit_seconds": fit_seconds, "best_checkpoint": clf.best_checkpoint_}
    rows = []
    for split, frame in (("val", splits.val), ("test", splits.test)):
        if frame is not None:
            metrics = clf.evaluate(frame, missing=clf.missing or None, split=split)
            results[split] = metrics
            rows.append({"split": split, **metrics})
    write_json(run_dir / "metrics.json", results)
    write_text(run_dir / "results.csv", pd.DataFrame(rows).to_csv(index=False))
    clf.save(run_dir / "model")
    plot_training_curves(run_dir / "metrics.csv", run_dir / "training_curves.png")
    results["run_dir"] = str(run_dir)
    return results
