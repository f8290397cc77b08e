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
    # rows without labels: a bundled set's unlabelled split, data.unlabelled, or the training
    # rows data.label_fraction hides (their labels kept beside them, never trained on)
    unlabelled: pd.DataFrame | None = None


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


def keep_label_fraction(train: pd.DataFrame, schema: Schema, fraction: float, seed: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(the labelled rows kept, the rest): a seeded share ``fraction`` of each class's rows,
    at least one row per class, so that a 1 % split still holds every class (STiL's
    protocol). For other tasks a plain seeded share."""
    rng = np.random.default_rng(seed)
    if schema.task in (Task.BINARY, Task.MULTICLASS):
        labels = train[schema.label.name].map(str).to_numpy()
        kept = [rng.permutation(np.flatnonzero(labels == c))[: max(1, int(round(fraction * int((labels == c).sum()))))]
                for c in np.unique(labels)]
        keep = np.sort(np.concatenate(kept))
    else:
        keep = np.sort(rng.permutation(len(train))[: max(1, int(round(fraction * len(train))))])
    mask = np.zeros(len(train), dtype=bool)
    mask[keep] = True
    return train[mask].reset_index(drop=True), train[~mask].reset_index(drop=True)


def with_label_fraction(splits: Splits, data_cfg: dict[str, Any]) -> Splits:
    """``data.label_fraction`` applied: the hidden rows join the unlabelled ones."""
    fraction = data_cfg.get("label_fraction")
    if fraction is None or fraction >= 1.0:
        return splits
    seed = int(data_cfg.get("split_seed") or 0)
    labelled, hidden = keep_label_fraction(splits.train, splits.schema, float(fraction), seed)
    parts = [hidden] + ([splits.unlabelled] if splits.unlabelled is not None else [])
    return Splits(splits.name, splits.schema, labelled, splits.val, splits.test, pd.concat(parts, ignore_index=True))


def load_splits(data_cfg: dict[str, Any]) -> Splits:
    return with_label_fraction(_load_splits(data_cfg), data_cfg)


def _load_splits(data_cfg: dict[str, Any]) -> Splits:
    if data_cfg.get("name"):
        from holomodal.data import load_dataset

        bundle = load_dataset(data_cfg["name"], root=data_cfg.get("root"), **(data_cfg.get("options") or {}))
        unlabelled = bundle.split("unlabelled") if "unlabelled" in bundle.splits else None
        return Splits(bundle.name, bundle.schema, bundle.split("train"), bundle.split("val"), bundle.split("test"), unlabelled)
    if not data_cfg.get("train"):
        raise ConfigError("set data.name to a bundled data set, or data.train to your own table "
                          "(with data.label, or data.schema)")
    encoding = data_cfg.get("encoding")
    train = read_table(data_cfg["train"], encoding=encoding)
    schema = own_schema(data_cfg, train)
    tables = {k: read_table(data_cfg[k], encoding=encoding) if data_cfg.get(k) else None for k in ("val", "test", "unlabelled")}
    val = tables["val"]
    # rows with an empty label are unlabelled rows, never validation rows
    unlabelled = [t for t in (tables["unlabelled"],) if t is not None]
    label = schema.label.name
    if label in train.columns and train[label].isna().any():
        empty = train[label].isna().to_numpy()
        unlabelled.insert(0, train[empty].reset_index(drop=True))
        train = train[~empty].reset_index(drop=True)
    fraction = data_cfg.get("val_fraction", DEFAULT_VAL_FRACTION)
    if val is None and fraction is not None:
        train, val = split_off_validation(train, schema, fraction, int(data_cfg.get("split_seed") or 0),
                                          source=f"training table '{data_cfg['train']}'")
    return Splits(Path(data_cfg["train"]).stem, schema, train, val, tables["test"],
                  pd.concat(unlabelled, ignore_index=True) if unlabelled else None)


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


def classifier_from_config(cfg: dict[str, Any], schema: Schema, data_name: str) -> Classifier:
    return Classifier(
        schema, method=cfg["method"], model=cfg.get("model") or {}, optim=cfg.get("optim") or {},
        batch_size=cfg["batch_size"], missing=cfg.get("missing") or [], seed=cfg["seed"],
        trainer=cfg.get("trainer") or {}, monitor=cfg.get("monitor", "auto"), run_dir=cfg["run"]["dir"],
        loggers=cfg["run"].get("loggers") or ["csv"], data_name=data_name, compile=cfg["run"].get("compile") or False,
    )


def run_training(cfg: DictConfig | dict, *, resume: bool = False) -> dict[str, Any]:
    """Train, test, save; returns the metrics. Every file goes into the run folder, and the
    configuration is checked before any data is read or anything is written. With
    ``baselines: true`` the baselines and their ensemble with the model follow
    (:func:`fit_baselines`)."""
    cfg = checked_config(cfg, "train")
    splits = load_splits(cfg["data"])
    clf = classifier_from_config(cfg, splits.schema, splits.name)
    if splits.test is not None:  # a bad test label fails before training, not after it
        for frame in (splits.train, splits.test):
            splits.schema.validate(frame, allow_extra=True)
        Preprocessor(splits.schema).check_labels(splits.train, test=splits.test)
    start = time.perf_counter()
    unlabelled = splits.unlabelled if clf.semi_supervised else None
    if splits.unlabelled is not None and unlabelled is None and len(splits.unlabelled):
        from holomodal.console import say

        say(f"{len(splits.unlabelled)} unlabelled training row(s) are left out: method '{clf.method}' learns from "
            "labelled rows only (the semi-supervised methods stil, fixmatch, ... learn from them too)")
    clf.fit(splits.train, splits.val, resume=resume, record={"config.yaml": cfg}, unlabeled=unlabelled)
    results = {"fit_seconds": time.perf_counter() - start, **record_test(clf, splits)}
    if cfg.get("baselines"):
        results["baselines"] = fit_baselines(cfg, splits, clf, results)
    results["run_dir"] = str(clf.run_dir_)
    return results


def record_test(clf: Classifier, splits: Splits) -> dict[str, Any]:
    """The fitted run's validation and test metrics, written to its metrics.json and results.csv."""
    # fit() wrote the model, the curves and the validation results (and an ensemble's scores
    # per pattern); the test split joins them
    if not hasattr(clf, "run_results_"):  # a DDP process other than rank 0: the run folder is not its
        return {"best_checkpoint": clf.best_checkpoint_}
    results: dict[str, Any] = {**clf.run_results_}
    rows = [{"split": "val", **results["val"]}] if "val" in results else []
    if splits.test is not None:
        metrics = clf.evaluate(splits.test, missing=clf.missing or None, split="test")
        results["test"] = metrics
        if metrics.undefined:  # NaN in the table; the reason is kept beside it
            results["undefined"] = {**results.get("undefined", {}), "test": metrics.undefined}
        rows.append({"split": "test", **metrics})
    write_json(clf.run_dir_ / "metrics.json", results)
    write_text(clf.run_dir_ / "results.csv", pd.DataFrame(rows).to_csv(index=False))
    return results


BASELINES_DIR = "baselines"
MODEL_MEMBER = "model"  # the trained model's name among the ensemble's members


def applicable_baselines(clf: Classifier) -> list[str]:
    """The classical baselines that read some of the data: trees need a table, the linear
    model a table or text; the model's own method is not fitted twice."""
    processors = clf.preprocessor_.processors
    has_text = any(clf.schema.modality_type(m).value == "text" for m in processors if m != "tabular")
    names = (["gbdt"] if "tabular" in processors else []) + (["linear"] if "tabular" in processors or has_text else [])
    return [n for n in names if n != clf.method]


def fit_baselines(cfg: dict[str, Any], splits: Splits, clf: Classifier, model_results: dict[str, Any]) -> dict[str, Any]:
    """gbdt and linear on the model's split, each a run folder of its own in
    ``RUN/baselines/<name>/``, then the ensemble of the model and them in
    ``RUN/baselines/ensemble/``; their metrics beside the model's are printed and written to
    ``RUN/baselines.csv``, with a warning when the model is worse than the best baseline on
    validation. ``model_results``: the model's metrics (:func:`record_test`)."""
    root = clf.run_dir_ / BASELINES_DIR
    fitted: dict[str, Classifier] = {}
    results: dict[str, Any] = {}
    for name in applicable_baselines(clf):
        child_cfg = _child_config(cfg, name, {}, root / name)
        child = classifier_from_config(child_cfg, splits.schema, splits.name)
        child.fit(splits.train, splits.val, record={"config.yaml": child_cfg})
        fitted[name] = child
        results[name] = record_test(child, splits)
    if fitted and splits.val is not None and clf.method != "ensemble":
        members = {MODEL_MEMBER: clf, **fitted}
        specs = [{"name": n, "method": m.method, "model": m.model} for n, m in members.items()]
        ens_cfg = _child_config(cfg, "ensemble", {"members": specs}, root / "ensemble")
        ens = classifier_from_config(ens_cfg, splits.schema, splits.name)
        ens.fit(splits.train, splits.val, members=members, record={"config.yaml": ens_cfg})
        results["ensemble"] = record_test(ens, splits)
    table = _comparison(clf, model_results, results)
    write_text(clf.run_dir_ / "baselines.csv", table.to_csv(index=False))
    _print_comparison(table, clf)
    warning = worse_than_baseline(clf, table)
    if warning:
        results["warning"] = warning
        _warn(warning)
    return results


def _child_config(cfg: dict[str, Any], method: str, model: dict[str, Any], run_dir: Path) -> dict[str, Any]:
    """The baseline's own config.yaml: the model's, with its method; a run the CLI opens."""
    return {**cfg, "method": method, "model": model, "baselines": False, "run": {**cfg["run"], "dir": str(run_dir)}}


def _comparison(clf: Classifier, model_results: dict[str, Any], results: dict[str, Any]) -> pd.DataFrame:
    rows = []
    for name, run in [(MODEL_MEMBER, model_results), *results.items()]:
        method = clf.method if name == MODEL_MEMBER else name
        folder = clf.run_dir_ if name == MODEL_MEMBER else clf.run_dir_ / BASELINES_DIR / name
        for split in ("val", "test"):
            if run.get(split):
                rows.append({"run": name, "method": method, "split": split, **run[split], "dir": str(folder)})
    return pd.DataFrame(rows)


def worse_than_baseline(clf: Classifier, table: pd.DataFrame) -> str | None:
    """The warning when the model's monitored validation metric is worse than the best
    classical baseline's (the ensemble, which holds the model, is not a baseline here)."""
    metric = clf.monitor_metric.rsplit("/", 1)[-1]
    val = table[(table["split"] == "val") & table["run"].isin([MODEL_MEMBER, "gbdt", "linear"])]
    if metric not in val.columns:
        return None
    mine = val.loc[val["run"] == MODEL_MEMBER, metric]
    others = val[(val["run"] != MODEL_MEMBER) & val[metric].notna()]
    if mine.empty or others.empty or not np.isfinite(mine.iloc[0]):
        return None
    lower = clf.monitor_mode == "min"
    best = others.loc[others[metric].idxmin() if lower else others[metric].idxmax()]
    model_value = float(mine.iloc[0])
    if (model_value > best[metric]) if lower else (model_value < best[metric]):
        return (f"the model is worse than {best['run']} on validation: {metric} {model_value:.4f} vs "
                f"{float(best[metric]):.4f}")
    return None


def _print_comparison(table: pd.DataFrame, clf: Classifier) -> None:
    from holomodal.console import render, say
    from rich.table import Table

    metrics = [c for c in table.columns if c not in ("run", "method", "split", "dir")]
    out = Table(title=f"model vs baselines (val/test; monitored: {clf.monitor_metric})")
    for column in ("run", "method", "split", *metrics):
        out.add_column(column, justify="right" if column in metrics else "left")
    for _, row in table.iterrows():
        out.add_row(row["run"], row["method"], row["split"],
                    *("" if pd.isna(row[m]) else f"{row[m]:.4f}" for m in metrics))
    say(render(out))
    say(f"baselines: {clf.run_dir_ / BASELINES_DIR}; table: {clf.run_dir_ / 'baselines.csv'}")


def _warn(text: str) -> None:
    from holomodal.console import warn

    warn(text)
