"""Robustness of a fitted model to missing data: metrics against a synthetic missing rate.

:func:`robustness_sweep` encodes the evaluation table once, then for every missingness kind
and rate ORs the seeded masks of :mod:`holomodal.missingness` into that one encoded batch and
scores the model with the torchmetrics metrics of its task (``make_metrics``). The 95 %
intervals come from a percentile bootstrap over rows; the same resampled rows serve every
(kind, rate), so the curves of one sweep can be compared point by point.

:func:`evaluate_run` is what ``holomodal evaluate`` calls: it finds the data of a run folder,
runs the sweep and writes a CSV, a JSON and a PNG under new names in the folder.
"""

from __future__ import annotations

import logging
import os
import time
import warnings
from dataclasses import replace
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd
import torch

from holomodal.errors import ConfigError, DataError
from holomodal.estimator import LOWER_IS_BETTER, Classifier
from holomodal.methods.base import compute_metrics, make_metrics, metric_args
from holomodal.missingness import KINDS, TABULAR_KINDS, MissingnessPlan, MissingnessSpec
from holomodal.runs import jsonable
from holomodal.schema import TABULAR, Task

log = logging.getLogger("holomodal")

DEFAULT_RATES = (0.0, 0.1, 0.3, 0.5, 0.7, 0.9)
COLUMNS = ["kind", "rate", "metric", "value", "ci_low", "ci_high"]
# "none" evaluates the data as it is, with its natural missingness only
NO_MISSINGNESS = "none"


def lower_is_better(metric: str) -> bool:
    return metric.rsplit("/", 1)[-1].endswith(LOWER_IS_BETTER)


def metric_title(metric: str) -> str:
    """A metric's name with the direction that is better, for plot titles."""
    return f"{metric} ({'lower' if lower_is_better(metric) else 'higher'} is better)"


def parse_kinds(text: str | None) -> list[str]:
    kinds = [k.strip() for k in (text or "").split(",") if k.strip()]
    unknown = [k for k in kinds if k not in KINDS + (NO_MISSINGNESS,)]
    if unknown:
        raise ConfigError(f"unknown missingness kind(s) {unknown} (known: {', '.join(KINDS)})")
    return kinds


def parse_rates(text: str | None) -> list[float]:
    if not text:
        return list(DEFAULT_RATES)
    rates = []
    for item in text.split(","):
        try:
            rate = float(item)
        except ValueError:
            raise ConfigError(f"missing rate '{item}' is not a number (expected e.g. 0,0.3,0.5)") from None
        if not 0.0 <= rate <= 1.0:
            raise ConfigError(f"missing rate {rate} is outside [0, 1]")
        rates.append(rate)
    return rates


def fit_importance_ranking(clf: Classifier, train: pd.DataFrame) -> list[int]:
    """The mifm/lifm column ranking of a model trained without one, fitted as training would
    have fitted it: a random forest on the training split's tabular cells and labels."""
    clf._check_fitted()
    pre = clf.preprocessor_
    if TABULAR not in pre.processors:
        raise DataError("most/least-important feature masking needs tabular columns; the data has none")
    labels = pre.encode_labels(train[clf.schema.label.name]).numpy()
    plan = MissingnessPlan([MissingnessSpec("mifm", 0.0)]).fit(pre.tabular_matrix(train), labels)
    return list(plan.ranking_ or [])


def bootstrap_rows(target: torch.Tensor, task: str, n_boot: int, seed: int, max_redraws: int = 100) -> np.ndarray:
    """``(n_boot, n)`` row indices drawn with replacement. For classification a resample
    that lost a class of the data is drawn again (up to ``max_redraws`` times): AUROC is
    undefined on it, and keeping it would bias the interval. Regression targets have no
    classes to lose."""
    rng = np.random.default_rng(seed)
    n = len(target)
    if task in (Task.MULTILABEL.value, Task.REGRESSION.value) or n_boot <= 0:
        return rng.integers(0, n, size=(max(n_boot, 0), n))
    labels = target.numpy()
    n_classes = np.unique(labels).size
    out = np.empty((n_boot, n), dtype=np.int64)
    for b in range(n_boot):
        for _ in range(max_redraws):
            idx = rng.integers(0, n, size=n)
            if np.unique(labels[idx]).size == n_classes:
                break
        out[b] = idx
    return out


def seed_bootstrap(
    runs: Sequence[Sequence[np.ndarray]], target: np.ndarray, task: str, num_classes: int, metric: str, *,
    n_boot: int = 1000, ci: float = 0.95, seed: int = 0,
) -> dict[str, float]:
    """The mean of ``metric`` over repeated runs, with a percentile interval covering both
    the runs (training seeds, and the masks where they follow the run seed) and the test
    rows: each resample draws the runs with replacement and, within each drawn run, the rows
    with replacement (a two-level bootstrap); the statistic is the drawn runs' mean.

    ``runs[s]`` holds run ``s``'s test-row probabilities (all runs score the same rows,
    ``target``): one array gives that model's metric; two arrays, from paired runs of two
    models (same seed and masks), give the difference of their metrics, first minus second,
    each resample drawing the same rows for both, so that a difference whose interval
    excludes 0 is one that the seeds, masks and rows do not explain.
    Returns ``{"value", "low", "high"}``."""
    collection = make_metrics(task, num_classes)
    if metric not in collection:
        raise ConfigError(f"metric '{metric}' is not one of task '{task}': {', '.join(collection)}")
    scorer = collection[metric]
    target_t = torch.as_tensor(np.asarray(target))

    def score(probs: np.ndarray, rows: np.ndarray | slice) -> float:
        scorer.reset()
        scorer.update(*metric_args(task, metric, torch.as_tensor(probs[rows]), target_t[rows]))
        return float(scorer.compute())

    def statistic(run: Sequence[np.ndarray], rows: np.ndarray | slice) -> float:
        values = [score(p, rows) for p in run]
        return values[0] - values[1] if len(values) == 2 else values[0]

    everything = slice(None)
    value = float(np.mean([statistic(run, everything) for run in runs]))
    rng = np.random.default_rng(seed)
    rows = bootstrap_rows(target_t, task, n_boot * len(runs), seed).reshape(n_boot, len(runs), -1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a resample's undefined metric is NaN, dropped below
        samples = np.array([np.mean([statistic(runs[s], rows[b, k]) for k, s in enumerate(rng.integers(0, len(runs), len(runs)))])
                            for b in range(n_boot)])
    samples = samples[np.isfinite(samples)]
    alpha = (1.0 - ci) / 2.0
    low, high = np.quantile(samples, [alpha, 1.0 - alpha]) if samples.size else (np.nan, np.nan)
    return {"value": value, "low": float(low), "high": float(high)}


def robustness_sweep(
    clf: Classifier,
    frame: pd.DataFrame,
    kinds: Sequence[str],
    rates: Sequence[float],
    drop: str = "all",
    n_boot: int = 200,
    seed: int = 0,
    *,
    split: str = "test",
    train: pd.DataFrame | None = None,
    ci: float = 0.95,
    mask_seeds: Sequence[int] | None = None,
    selection: Any = None,
) -> pd.DataFrame:
    """Metrics of ``clf`` on the labelled ``frame`` under each missingness kind and rate.

    Returns a tidy table (``kind, rate, metric, value, ci_low, ci_high``). The synthetic
    masks add to the data's natural missingness (the model's own training-time specs are not
    applied) and use the seeds the training plan would use for ``split``. ``mifm``/``lifm`` use the model's ranking, or one fitted on ``train``
    when the model has none. Tabular kinds on data without tabular columns are skipped;
    ``result.attrs["skipped"]`` says why; a metric the split's labels cannot define (AUROC with
    one class present, say) is NaN, its reason in ``result.attrs["undefined"]``. The other
    attrs describe the sweep.

    ``mask_seeds`` re-draws every synthetic mask with each seed: the value is the mean over
    the draws, and bootstrap resample ``b`` is scored under draw ``b mod len(mask_seeds)``,
    so the interval covers the mask draw as well as the rows. Without it the masks use the
    default seed of the spec (TIP's: 2022 for rfm, else 2021), one draw.

    ``selection`` (a :class:`~holomodal.selection.inference.ModalitySelection`) chooses each
    row's modalities; its per-row records, with ``kind``, ``rate`` and ``mask_seed``
    columns, are in ``result.attrs["selection_records"]``.
    """
    clf._check_fitted()
    kinds = list(dict.fromkeys(kinds)) or [NO_MISSINGNESS]
    parse_kinds(",".join(kinds))
    rates = [float(r) for r in rates] or [0.0]
    parse_rates(",".join(str(r) for r in rates))
    task, num_classes = clf.schema.task.value, clf.preprocessor_.num_classes

    base, _ = clf.preprocessor_.transform(frame, with_target=True, split=split)
    n_tab = 0 if base.cell_missing is None else int(base.cell_missing.shape[1])
    skipped: dict[str, str] = {}
    for kind in kinds:
        if kind in TABULAR_KINDS and n_tab == 0:
            skipped[kind] = "the data has no tabular columns"
            log.warning("skipping '%s': the data has no tabular columns", kind)
    active = [k for k in kinds if k not in skipped]

    ranking, ranking_source = clf.plan_.ranking_, "model"
    if any(k in ("mifm", "lifm") for k in active) and ranking is None:
        if train is None:
            raise DataError("mifm/lifm need a feature-importance ranking, and this model was trained "
                            "without one: pass the training split (train=...) to fit it")
        ranking, ranking_source = fit_importance_ranking(clf, train), "fitted on the training split"

    mask_seeds = [None] if not mask_seeds else [int(x) for x in mask_seeds]
    target = _in_label_units(clf, base.target)
    resamples = bootstrap_rows(target, task, n_boot, seed)
    metrics = make_metrics(task, num_classes)
    classes, undefined = clf.preprocessor_.classes_, {}
    alpha = (1.0 - ci) / 2.0
    rows: list[dict[str, Any]] = []
    cache: dict[tuple, list[dict[str, Any]]] = {}
    selection_records: list[pd.DataFrame] = []
    for kind in active:
        for rate in rates if kind != NO_MISSINGNESS else [0.0]:
            if kind == NO_MISSINGNESS or rate == 0.0:
                key: tuple = ("clean",)  # every kind at rate 0 is the data as it is
                plan = None
            else:
                key = (kind, rate)
                spec = MissingnessSpec(kind, rate, drop=drop if kind == "modality" else None)
                plan = MissingnessPlan([spec], ranking)
            if key not in cache:
                draws = []  # one (probabilities, point metrics) per mask draw
                for mask_seed in (mask_seeds if plan is not None else [None]):
                    batch = base
                    if plan is not None:
                        masks = _reseeded(plan, mask_seed).masks(split, len(base), n_tab, list(base.present))
                        cells = None if masks.cell_missing is None else torch.from_numpy(masks.cell_missing)
                        batch = base.with_masks(cells, {m: torch.from_numpy(k) for m, k in masks.keep.items()})
                    probs = _in_label_units(clf, torch.from_numpy(clf._probabilities(batch, selection=selection)))
                    if selection is not None:
                        selection_records.append(selection.records.assign(
                            kind=kind if plan is not None else NO_MISSINGNESS, rate=rate if plan is not None else 0.0,
                            mask_seed=mask_seed, correct=(selection.records["predicted"].to_numpy()
                                                          == base.target.numpy()) if task != "regression" else np.nan))
                    point = compute_metrics(task, num_classes, probs, target, metrics=metrics, class_names=classes)
                    undefined.update(point.undefined)
                    draws.append((probs, point))
                with warnings.catch_warnings():
                    # a resample that lacks a class gives NaN (with a warning), dropped below
                    warnings.simplefilter("ignore")
                    # resample b is scored under mask draw b mod n: the interval covers the
                    # variation between mask draws as well as between rows
                    boot = [compute_metrics(task, num_classes, draws[b % len(draws)][0][idx], target[idx], metrics=metrics)
                            for b, idx in enumerate(torch.from_numpy(resamples))]
                mean_point = {name: float(np.mean([p[name] for _, p in draws])) for name in draws[0][1]}
                cache[key] = [mean_point, *boot]
            point, *boot = cache[key]
            for name, value in point.items():
                samples = np.array([b[name] for b in boot], dtype=float)
                samples = samples[np.isfinite(samples)]
                low, high = (np.quantile(samples, [alpha, 1.0 - alpha]) if samples.size else (np.nan, np.nan))
                rows.append({"kind": kind, "rate": rate, "metric": name, "value": value,
                             "ci_low": float(low), "ci_high": float(high)})
    result = pd.DataFrame(rows, columns=COLUMNS)
    result.attrs.update({
        "split": split, "rows": len(base), "n_boot": int(n_boot), "seed": int(seed), "ci": ci,
        "drop": drop, "kinds": kinds, "rates": rates, "skipped": skipped, "mask_seeds": mask_seeds,
        "undefined": undefined, "lower_is_better": sorted({m for m in result["metric"] if lower_is_better(m)}),
        "ranking": None if ranking is None else {"source": ranking_source, "columns": list(ranking)},
    })
    if selection is not None:
        result.attrs["selection"] = selection.describe()
        result.attrs["selection_records"] = pd.concat(selection_records, ignore_index=True)
    return result


def _in_label_units(clf: Classifier, values: torch.Tensor) -> torch.Tensor:
    """Regression predictions and targets de-standardised, so that RMSE and MAE are in the
    label's units as :meth:`Classifier.evaluate` reports them; class probabilities unchanged."""
    if clf.schema.task != Task.REGRESSION:
        return values
    decoded = clf.preprocessor_.decode_values(values.numpy())
    return torch.from_numpy(np.asarray(decoded, dtype=np.float32).reshape(values.shape))


def worsening(result: pd.DataFrame) -> pd.DataFrame:
    """How much worse each (kind, rate) scores than the data as it is (rate 0), signed so
    that a positive ``worse`` is always a loss: clean minus value for scores, value minus
    clean for errors (RMSE, MAE). Kinds swept without rate 0 are left out."""
    clean = result[result["rate"] == 0.0].groupby("metric")["value"].first()
    part = result[(result["rate"] > 0) & result["metric"].isin(clean.index)].copy()
    reference = part["metric"].map(clean)
    sign = np.where([lower_is_better(m) for m in part["metric"]], 1.0, -1.0)
    part["clean"] = reference.to_numpy()
    part["worse"] = sign * (part["value"].to_numpy() - reference.to_numpy())
    return part[["kind", "rate", "metric", "clean", "value", "worse"]].reset_index(drop=True)


def _reseeded(plan: MissingnessPlan, seed: int | None) -> MissingnessPlan:
    if seed is None:
        return plan
    return MissingnessPlan([replace(spec, seed=seed) for spec in plan.specs], plan.ranking_)


def sweep_table(result: pd.DataFrame) -> pd.DataFrame:
    """One row per (kind, rate), one column per metric: ``value [ci_low, ci_high]``."""
    text = result.assign(cell=[f"{v:.3f} [{lo:.3f}, {hi:.3f}]" for v, lo, hi in
                               zip(result["value"], result["ci_low"], result["ci_high"])])
    return text.pivot(index=["kind", "rate"], columns="metric", values="cell")


def plot_sweep(result: pd.DataFrame, out_png: Path, title: str = "") -> Path:
    """One panel per metric, one line per kind, the bootstrap interval shaded."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(dict.fromkeys(result["metric"]))
    ncols = min(3, max(1, len(names)))
    nrows = -(-len(names) // ncols) if names else 1
    fig, axes = plt.subplots(nrows, ncols, figsize=(4.2 * ncols, 3.4 * nrows), squeeze=False)
    for ax, name in zip(axes.flat, names):
        part = result[result["metric"] == name]
        for kind, curve in part.groupby("kind", sort=False):
            curve = curve.sort_values("rate")
            line = ax.plot(curve["rate"], curve["value"], marker="o", label=kind)[0]
            ax.fill_between(curve["rate"], curve["ci_low"], curve["ci_high"], color=line.get_color(), alpha=0.15)
        ax.set_title(metric_title(name))
        ax.set_xlabel("missing rate")
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(names):]:
        ax.set_visible(False)
    if names:
        axes.flat[0].legend(fontsize=8)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    save_figure(fig, out_png)
    plt.close(fig)
    return out_png


def save_figure(fig: Any, path: Path) -> None:
    import io

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    write_new_file(path, buffer.getvalue())


def write_new_file(path: Path, data: bytes | str) -> Path:
    """Write ``path`` whole or not at all, and never over an existing file: the bytes go to a
    temporary file that is then hard-linked to its name, which fails if the name is taken."""
    path = Path(path)
    raw = data.encode() if isinstance(data, str) else data
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_bytes(raw)
    try:
        os.link(tmp, path)
    except FileExistsError:
        raise DataError(f"will not overwrite '{path}': it exists") from None
    except OSError:
        # file systems without hard links: exclusive creation still never overwrites
        with open(path, "xb") as fh:
            fh.write(raw)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def new_stem(folder: Path, prefix: str, suffixes: Sequence[str]) -> Path:
    """``folder/prefix-<time>[-n]`` such that no file ``stem + suffix`` exists yet."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    n = 1
    while True:
        stem = folder / (f"{prefix}-{stamp}" + (f"-{n}" if n > 1 else ""))
        if not any(stem.with_name(stem.name + s).exists() for s in suffixes):
            return stem
        n += 1


def write_sweep(result: pd.DataFrame, folder: Path, title: str = "", extra: dict[str, Any] | None = None) -> dict[str, Path]:
    """``evaluation-<time>.csv / .json / .png`` in ``folder``, under names not taken yet."""
    import json

    suffixes = (".csv", ".json", ".png", SELECTION_SUFFIX)
    stem = new_stem(Path(folder), "evaluation", suffixes)
    csv, js, png, chosen = (stem.with_name(stem.name + s) for s in suffixes)
    write_new_file(csv, result.to_csv(index=False))
    attrs = dict(result.attrs)
    records = attrs.pop("selection_records", None)
    paths = {"csv": csv, "json": js, "png": png}
    if records is not None:
        write_new_file(chosen, records.to_csv(index=False))
        attrs["selection_summary"] = selection_summary(records)
        paths["selection"] = chosen
    meta = {**(extra or {}), **attrs, "results": result.to_dict(orient="records")}
    write_new_file(js, json.dumps(meta, indent=2, default=jsonable))
    plot_sweep(result, png, title)
    return paths


SELECTION_SUFFIX = "-selection.csv"


def selection_summary(records: pd.DataFrame) -> list[dict[str, Any]]:
    """Per kind and rate: rows, mean recovered modalities used, each modality's share of
    recovered rows that used it, forward passes per chunk (max), accuracy where defined."""
    out = []
    for (kind, rate), group in records.groupby(["kind", "rate"], sort=False):
        modalities = sorted({m for names in group["recovered"] for m in str(names).split(";") if m and m != "nan"})
        row: dict[str, Any] = {"kind": kind, "rate": float(rate), "rows": int(len(group)),
                               "mean_used_recovered": float(group["used_recovered"].mean()),
                               "forward_passes": int(group["forward_passes"].max())}
        for m in modalities:
            had = group["recovered"].astype(str).str.split(";").apply(lambda names, m=m: m in names)
            used = group["used"].astype(str).str.split(";").apply(lambda names, m=m: m in names)
            row[f"used_share_{m}"] = float((had & used).sum() / had.sum())
        if "correct" in group and group["correct"].notna().all():
            row["accuracy"] = float(group["correct"].astype(float).mean())
        out.append(row)
    return out



def load_run(run: str | Path) -> Classifier:
    """The saved predictor of a run folder (its ``model/``), or a saved-model folder itself."""
    path = Path(run)
    if not path.exists():
        raise DataError(f"run folder '{path}' not found")
    return Classifier.load(path / "model" if (path / "model").exists() else path)


def run_config(run: str | Path) -> dict[str, Any]:
    from omegaconf import OmegaConf

    file = Path(run) / "config.yaml"
    return OmegaConf.to_container(OmegaConf.load(file), resolve=True) if file.exists() else {}  # type: ignore[return-value]


def evaluate_run(
    run: str | Path,
    kinds: Sequence[str],
    rates: Sequence[float],
    *,
    split: str = "test",
    data: str | Path | None = None,
    drop: str = "all",
    n_boot: int = 200,
    seed: int = 0,
    mask_seeds: Sequence[int] | None = None,
    encoding: str | None = None,
    select: str | None = None,
    recover: str = "nearest",
    calibration: str = "logratio",
) -> tuple[pd.DataFrame, dict[str, Path]]:
    """The sweep of a run folder on its own ``split`` (or on the labelled table ``data``),
    written into the folder. The training split is read only when a ranking must be fitted
    or a recoverer (``recover``) must be fitted for the modality selection ``select``
    (``dymo``, ``discard``, ``recover_all``; a ``dynamic`` run)."""
    from holomodal.experiment import load_splits
    from holomodal.tables import read_table

    run = Path(run)
    clf = load_run(run)
    cfg = run_config(run)
    splits = None
    if data is not None:
        frame = read_table(str(data), encoding=encoding)
    else:
        if not cfg:
            raise DataError(f"'{run}' holds no config.yaml to find its data: pass --data FILE")
        splits = load_splits(cfg["data"])
        frame = getattr(splits, split)
        if frame is None:
            raise DataError(f"the data of '{run}' has no {split} split")
    train = None
    wants_ranking = any(k in ("mifm", "lifm") for k in kinds) and clf.plan_.ranking_ is None
    if wants_ranking and TABULAR in clf.preprocessor_.processors:
        if splits is None:
            if not cfg:
                raise DataError(f"mifm/lifm need the training split of '{run}' to rank features, "
                                "and the run holds no config.yaml")
            splits = load_splits(cfg["data"])
        train = splits.train
    selection = None
    if select is not None:
        from holomodal.selection.inference import check_options, check_selectable

        check_options(select, calibration)
        check_selectable(clf.model_)
        if select != "discard":
            if not cfg:
                raise DataError(f"the recoverer '{recover}' is fitted on the training split of '{run}', "
                                "and the run holds no config.yaml")
            splits = splits or load_splits(cfg["data"])
            train = train if train is not None else splits.train
        selection = clf.selection(select, recover, train, calibration=calibration)
    result = robustness_sweep(clf, frame, kinds, rates, drop=drop, n_boot=n_boot, seed=seed, split=split, train=train,
                              mask_seeds=mask_seeds, selection=selection)
    extra = {"run": str(run), "method": clf.method, "data": cfg.get("data", {}).get("name") or (str(data) if data else None)}
    paths = write_sweep(result, run, title=f"{run.name} ({clf.method}, {split})", extra=extra)
    return result, paths
