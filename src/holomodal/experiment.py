"""A training run from a configuration: data, estimator, test metrics, files. Used by the
CLI and the benchmark scripts."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from holomodal.config_check import checked_config
from holomodal.errors import ConfigError, DataError, HolomodalError, SchemaError
from holomodal.estimator import Classifier
from holomodal.preprocessing import Preprocessor
from holomodal.runs import write_json, write_text
from holomodal.schema import Inference, Schema, Task, infer_schema
from holomodal.tables import is_blank, read_table


@dataclass
class Splits:
    name: str
    schema: Schema
    train: pd.DataFrame
    val: pd.DataFrame | None
    test: pd.DataFrame | None


def read_schema(path: str | Path) -> Schema:
    """A schema file: YAML (``.yaml``/``.yml``, what ``holomodal data infer --out`` writes) or JSON."""
    p = Path(path)
    if not p.is_file():
        raise DataError(f"schema file '{p}' not found" if not p.exists() else f"schema file '{p}' is not a file")
    try:
        text = p.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise SchemaError(f"cannot read schema file '{p}': {exc}") from None
    try:
        # OmegaConf's YAML, as for configs: it also reads 1e-4 as a number
        data = json.loads(text) if p.suffix.lower() == ".json" else OmegaConf.to_container(OmegaConf.create(text))
    except (json.JSONDecodeError, yaml.YAMLError, OmegaConfBaseException) as exc:
        kind = "JSON" if p.suffix.lower() == ".json" else "YAML"
        raise SchemaError(f"schema file '{p}' is not valid {kind}: {str(exc).strip()}") from None
    try:
        return Schema.from_dict(data)
    except HolomodalError as exc:
        raise SchemaError(f"schema file '{p}': {exc}") from None
    except (TypeError, AttributeError) as exc:  # a column that is not a mapping, a list where a key belongs
        raise SchemaError(f"schema file '{p}' does not describe a schema ({exc}); see holomodal data infer") from None


# the keys of the data section that steer schema inference, and infer_schema's matching argument
INFER_KEYS = {"image": "image", "audio": "audio", "text": "text", "categorical": "categorical",
              "continuous": "continuous", "id": "id", "group": "group", "ignore": "ignore"}


def infer_own_schema(data_cfg: dict[str, Any], train: pd.DataFrame, warn: bool = True,
                     task: str | None = None) -> Inference:
    """The schema inferred from the training table ``data.train`` with the label ``data.label``
    (and the hints data.image, data.text, ...); relative file paths resolve against the
    training table's folder."""
    label = data_cfg.get("label")
    if not label:
        raise ConfigError("own data needs the label column: data.label (--label), or a schema file: data.schema (--schema)")
    named = {arg: _names(data_cfg, key) for key, arg in INFER_KEYS.items()}
    root = Path(data_cfg["train"]).resolve().parent
    return infer_schema(train, str(label), root=root, warn=warn, task=task, **named)


def _names(data_cfg: dict[str, Any], key: str) -> list[str]:
    value = data_cfg.get(key) or []
    value = [value] if isinstance(value, str) else value
    if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
        raise ConfigError(f"data.{key} must be a list of column names, e.g. [a, b], got {value!r}")
    return list(value)


def own_schema(data_cfg: dict[str, Any], train: pd.DataFrame) -> Schema:
    """``data.schema`` (a file, or the schema itself as a mapping, as ``holomodal train`` records
    an inferred one), else the schema inferred from the training table."""
    given = data_cfg.get("schema")
    if given is None:
        return infer_own_schema(data_cfg, train).schema
    if isinstance(given, dict):
        schema = Schema.from_dict(given)
    elif isinstance(given, (str, Path)):
        schema = read_schema(given)
    else:
        raise ConfigError(f"data.schema must be a schema file or a schema mapping, got {given!r}")
    label = data_cfg.get("label")
    if label and label != schema.label.name:
        raise ConfigError(f"data.label is '{label}' but the schema's label column is '{schema.label.name}'")
    return schema


def split_off_validation(train: pd.DataFrame, schema: Schema, fraction: float, seed: int,
                         source: str = "the training table") -> tuple[pd.DataFrame, pd.DataFrame]:
    """``fraction`` of ``train``'s rows as a validation split, seeded: whole groups when the
    schema has a group column (no patient on both sides), else stratified by class for
    binary and multi-class labels (a plain shuffle for other tasks)."""
    if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) or not 0.0 < fraction < 1.0:
        raise ConfigError(f"data.val_fraction must be a number between 0 and 1 (or null for no validation split), "
                          f"got {fraction!r}")
    from holomodal.data._registry import stratified_split
    from holomodal.data.covid_cxr import grouped_split

    shares = {"train": 1.0 - fraction, "val": fraction}
    group = schema.group_column()
    if group is not None:
        codes = pd.factorize(train[group.name].map(str).where(train[group.name].notna(), None))[0]
        # rows without a group are groups of their own
        alone = codes < 0
        codes[alone] = codes.max() + 1 + np.arange(int(alone.sum()))
        parts = grouped_split(codes, shares, seed)
    elif schema.task in (Task.BINARY, Task.MULTICLASS):
        parts = stratified_split(train[schema.label.name].map(str).to_numpy(), shares, seed)
    else:
        parts = stratified_split(np.zeros(len(train), dtype=np.int64), shares, seed)
    if len(parts["val"]) == 0 or len(parts["train"]) == 0:
        raise DataError(f"{source} has {len(train)} row(s), too few to split {fraction:.0%} off for validation: "
                        "give a validation table (data.val, --val)")
    return (train.iloc[parts["train"]].reset_index(drop=True), train.iloc[parts["val"]].reset_index(drop=True))


def load_splits(data_cfg: dict[str, Any]) -> Splits:
    if data_cfg.get("name"):
        from holomodal.data import load_dataset

        bundle = load_dataset(data_cfg["name"], root=data_cfg.get("root"), **(data_cfg.get("options") or {}))
        return Splits(bundle.name, bundle.schema, bundle.split("train"), bundle.split("val"), bundle.split("test"))
    if not data_cfg.get("train"):
        raise ConfigError("set data.name to a bundled data set, or data.train to your own table "
                          "(with data.label, or data.schema)")
    encoding = data_cfg.get("encoding")
    train = read_table(data_cfg["train"], encoding=encoding)
    schema = own_schema(data_cfg, train)
    tables = {k: read_table(data_cfg[k], encoding=encoding) if data_cfg.get(k) else None for k in ("val", "test")}
    val = tables["val"]
    fraction = data_cfg.get("val_fraction", DEFAULT_VAL_FRACTION)
    if val is None and fraction is not None:
        train, val = split_off_validation(train, schema, fraction, int(data_cfg.get("split_seed") or 0),
                                          source=f"training table '{data_cfg['train']}'")
    return Splits(Path(data_cfg["train"]).stem, schema, train, val, tables["test"])


def check_own_table(schema: Schema, frame: pd.DataFrame, source: str) -> dict[str, Any]:
    """``frame`` checked against ``schema`` as training would check it (types, labels, file
    paths inside their root) without decoding anything; a summary of what it holds: rows,
    blank cells per column, absent files, the label's classes or range, columns the schema
    does not name. The label may be absent (a table to predict on)."""
    from holomodal.preprocessing.files import resolve_files
    from holomodal.schema import FILE_MODALITIES

    label = schema.label.name
    has_label = label in frame.columns
    try:
        schema.validate(frame, require_label=has_label, allow_extra=True)
        columns = []
        for col in schema.columns:
            if col.name not in frame.columns:  # only the label may be absent here
                continue
            blank = frame[col.name].map(is_blank)
            entry = {"name": col.name, "modality": col.modality.value, "missing": int(blank.sum()),
                     "missing_share": float(blank.mean())}
            if col.modality in FILE_MODALITIES and col.options.get("source") != "array":
                paths = resolve_files(col, frame[col.name].tolist(), frame.index.tolist(), schema.allow_outside_root)
                absent = [i for i, path in enumerate(paths) if path is not None and not path.is_file()]
                entry["note"] = f"{len(absent)} file(s) not found" + (
                    f", e.g. row {frame.index[absent[0]]}: '{paths[absent[0]]}'" if absent else "")
                entry["absent_files"] = len(absent)
            columns.append(entry)
    except HolomodalError as exc:
        raise type(exc)(f"'{source}': {exc}") from None
    summary: dict[str, Any] = {"rows": len(frame), "columns": columns, "label": None,
                               "extra": [str(c) for c in frame.columns if c not in schema.column_names]}
    if has_label:
        y = frame[label]
        if schema.task == Task.REGRESSION:
            numbers = pd.to_numeric(y, errors="coerce")
            if numbers.isna().any():
                bad = y[numbers.isna()]
                raise DataError(f"'{source}': label column '{label}' (regression) holds non-numbers, e.g. "
                                f"{bad.iloc[0]!r} in row {bad.index[0]}")
            text = f"regression, from {numbers.min():g} to {numbers.max():g}, mean {numbers.mean():g}"
        elif schema.task == Task.MULTILABEL:
            text = "multi-label"
        else:
            counts = y.map(str).value_counts()
            text = f"{schema.task.value}, {len(counts)} classes: " + ", ".join(f"{k} {v}" for k, v in counts.items())
        summary["label"] = {"name": label, "summary": text}
        if schema.task not in (Task.REGRESSION, Task.MULTILABEL) and schema.label.options.get("classes"):
            from holomodal.preprocessing import Preprocessor

            pre = Preprocessor(schema)
            pre.classes_ = [str(c) for c in schema.label.options["classes"]]
            pre.encode_labels(y, f"table '{source}'")  # a value outside the declared classes is an error
    return summary


DEFAULT_VAL_FRACTION = 0.2
# pretraining.py reads own tables through this name
_read_table = read_table


def classifier_from_config(cfg: dict[str, Any], schema: Schema, data_name: str) -> Classifier:
    return Classifier(
        schema, method=cfg["method"], model=cfg.get("model") or {}, optim=cfg.get("optim") or {},
        batch_size=cfg["batch_size"], missing=cfg.get("missing") or [], seed=cfg["seed"],
        trainer=cfg.get("trainer") or {}, monitor=cfg.get("monitor", "auto"), run_dir=cfg["run"]["dir"],
        loggers=cfg["run"].get("loggers") or ["csv"], data_name=data_name, compile=cfg["run"].get("compile") or False,
    )


def run_training(cfg: DictConfig | dict, *, resume: bool = False) -> dict[str, Any]:
    """Train, test, save; returns the metrics. Every file goes into the run folder, and the
    configuration is checked before any data is read or anything is written."""
    cfg = checked_config(cfg, "train")
    splits = load_splits(cfg["data"])
    clf = classifier_from_config(cfg, splits.schema, splits.name)
    if splits.test is not None:  # a bad test label fails before training, not after it
        for frame in (splits.train, splits.test):
            splits.schema.validate(frame, allow_extra=True)
        Preprocessor(splits.schema).check_labels(splits.train, test=splits.test)
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
            if metrics.undefined:  # NaN in the table; the reason is kept beside it
                results.setdefault("undefined", {})[split] = metrics.undefined
            rows.append({"split": split, **metrics})
    # fit() wrote the model, the curves and the validation results; the test split joins them
    write_json(run_dir / "metrics.json", results)
    write_text(run_dir / "results.csv", pd.DataFrame(rows).to_csv(index=False))
    results["run_dir"] = str(run_dir)
    return results
