"""``holomodal`` command line: train, evaluate, predict, data.

Errors caused by user input print one clear line and exit with status 2; a traceback
only ever means a bug in holomodal.
"""

from __future__ import annotations

import argparse
import logging
import sys
import warnings
from pathlib import Path
from typing import Any, Sequence

import pandas as pd

from holomodal.errors import HolomodalError


def _console():
    from rich.console import Console

    return Console(stderr=False)


def _print_metrics(title: str, rows: dict[str, dict[str, float]]) -> None:
    from rich.table import Table

    table = Table(title=title)
    names = sorted({k for metrics in rows.values() for k in metrics})
    table.add_column("split")
    for name in names:
        table.add_column(name, justify="right")
    for split, metrics in rows.items():
        table.add_row(split, *(f"{metrics[n]:.4f}" if n in metrics else "" for n in names))
    _console().print(table)


def cmd_train(args: argparse.Namespace) -> int:
    from holomodal.config import load_config
    from holomodal.experiment import run_training

    files = list(args.config or [])
    overrides = list(args.overrides)
    if args.resume:
        run = Path(args.resume)
        if not (run / "config.yaml").exists():
            raise HolomodalError(f"cannot resume '{run}': it holds no config.yaml")
        files = [str(run / "config.yaml"), *files]
        overrides.append(f"run.dir={run}")
    cfg = load_config(files, overrides)
    results = run_training(cfg, resume=bool(args.resume))
    _print_metrics("results", {k: results[k] for k in ("val", "test") if k in results})
    print(f"run folder: {results['run_dir']}  (fit {results['fit_seconds']:.1f} s)")
    return 0


def cmd_pretrain(args: argparse.Namespace) -> int:
    from holomodal.config import load_config
    from holomodal.pretraining import run_pretraining

    result = run_pretraining(load_config(list(args.config or []), list(args.overrides)))
    losses = ", ".join(f"{k} {v:.4f}" for k, v in sorted(result["metrics"].items()))
    print(f"last epoch: {losses}")
    print(f"run folder: {result['run_dir']}  (fit {result['fit_seconds']:.1f} s)")
    print(f"fine-tune with: holomodal train -c CONFIG model.checkpoint={result['run_dir']}")
    return 0


def _load_run(run: str):
    from holomodal.estimator import Classifier

    path = Path(run)
    return Classifier.load(path / "model" if (path / "model").exists() else path)


def cmd_evaluate(args: argparse.Namespace) -> int:
    from holomodal.evaluation import evaluate_run, parse_kinds, parse_rates, sweep_table

    result, paths = evaluate_run(
        args.run, parse_kinds(args.missing), parse_rates(args.rates), split=args.split, data=args.data,
        drop=args.drop, n_boot=args.n_boot, seed=args.seed,
    )
    for kind, why in result.attrs.get("skipped", {}).items():
        print(f"skipped '{kind}': {why}", file=sys.stderr)
    with _wide_pandas():
        print(sweep_table(result).to_string())
    print("written: " + ", ".join(str(p) for p in paths.values()))
    return 0


def _wide_pandas():
    import pandas as pd

    return pd.option_context("display.width", 250, "display.max_columns", None)


def cmd_predict(args: argparse.Namespace) -> int:
    from holomodal.evaluation import load_run
    from holomodal.prediction import predict_file

    preds = predict_file(load_run(args.run), args.data, args.out)
    print(f"{len(preds)} predictions written to {args.out}")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from holomodal.report import build_report

    page = build_report(args.runs, args.out)
    print(f"report: {page}")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from holomodal.export import export_run

    if not args.onnx:
        raise HolomodalError("choose an export format: --onnx")
    path, diff, rows = export_run(args.run, args.out, data=args.data, split=args.split, rows=args.rows)
    print(f"ONNX model written to {path}; onnxruntime vs PyTorch on {rows} rows: max abs diff {diff:.2e}")
    return 0


def cmd_data(args: argparse.Namespace) -> int:
    from holomodal.data import list_datasets, load_dataset

    if args.action == "prepare":
        return _prepare(args)
    if args.action == "cache":
        return _cache(args)
    if args.action == "list":
        for name in list_datasets():
            print(name)
        return 0
    if not args.name:
        raise HolomodalError(f"'holomodal data {args.action}' needs a data set name ({', '.join(list_datasets())})")
    bundle = load_dataset(args.name, root=args.root)
    print(describe_bundle(bundle, check=args.action == "check"))
    return 0


PREPARERS = ("dvm",)


def _cache(args: argparse.Namespace) -> int:
    """Decode every image file of a data set once into the memory-mapped cache."""
    from rich.progress import Progress

    from holomodal.preprocessing.image import ImageProcessor
    from holomodal.preprocessing.image_cache import cache_root
    from holomodal.schema import Modality

    if args.schema:
        from holomodal.experiment import _read_table, read_schema

        if not args.table:
            raise HolomodalError("'holomodal data cache --schema FILE' needs --table FILE (one or more)")
        schema = read_schema(args.schema)
        frame = pd.concat([_read_table(t) for t in args.table], ignore_index=True)
        name = Path(args.table[0]).stem
    elif args.name:
        from holomodal.data import load_dataset

        options = {"image_size": args.image_size} if args.image_size is not None else {}
        bundle = load_dataset(args.name, root=args.root, **options)
        schema, frame, name = bundle.schema, bundle.frame, bundle.name
    else:
        raise HolomodalError("'holomodal data cache' needs a data set name, or --schema and --table for your own files")
    columns = schema.of(Modality.IMAGE)
    if not columns:
        raise HolomodalError(f"'{name}' has no image column: nothing to cache")
    for column in columns:
        proc = ImageProcessor(column, on_unreadable="missing")
        with Progress(transient=True) as bar:
            task = bar.add_task(f"decoding {column.name}", total=int(frame[column.name].notna().sum()))
            counts = proc.build_cache(frame, progress=lambda n: bar.advance(task, n))
        print(f"{name} column '{column.name}' ({proc.channels}x{proc.size}x{proc.size}): {counts['added']} image(s) added, "
              f"{counts['cached']} already cached, {counts['failed']} unreadable or missing")
    print(f"cache folder: {cache_root()}")
    return 0


def _prepare(args: argparse.Namespace) -> int:
    if args.name not in PREPARERS:
        raise HolomodalError(f"'holomodal data prepare' knows {', '.join(PREPARERS)}, not '{args.name}'")
    if not args.root or not args.out:
        raise HolomodalError("'holomodal data prepare dvm' needs --root (the DVM-Car release) and --out (a new folder)")
    from holomodal.data.dvm import prepare_dvm

    summary = prepare_dvm(args.root, args.out, min_adverts=args.min_adverts, image_size=args.image_size or 128)
    print(", ".join(f"{k} {v}" for k, v in summary["splits"].items()) + f"; {summary['classes']} classes")
    if not summary["physical_dimensions"]:
        print("note: 'Ad_table (extra).csv' was not found, so Wheelbase/Height/Width/Length are left out")
    if summary["missing_image_files"]:
        print(f"note: {summary['missing_image_files']} image file(s) are missing; those rows have no image")
    out = Path(args.out)
    print(f"written to {out}: use data.train={out / 'train.parquet'} data.val={out / 'val.parquet'} "
          f"data.test={out / 'test.parquet'} data.schema={out / 'schema.yaml'}")
    return 0


def _is_blank(value: Any) -> bool:
    if isinstance(value, str):
        return not value.strip()
    if isinstance(value, (list, tuple)) or hasattr(value, "shape"):
        return False  # arrays and label lists are values, even when empty
    return bool(pd.isna(value))


def describe_bundle(bundle: Any, check: bool = False) -> str:
    from holomodal.preprocessing import Preprocessor

    frame, schema = bundle.frame, bundle.schema
    lines = [f"data set {bundle.name}: {len(frame)} rows, task {schema.task.value}, label '{schema.label.name}'"]
    lines.append("splits: " + ", ".join(f"{k} {len(v)}" for k, v in bundle.splits.items()))
    for col in schema.columns:
        blank = frame[col.name].map(_is_blank)
        lines.append(f"  {col.name:<28} {col.modality.value:<12} missing {int(blank.sum()):>6} ({blank.mean():.1%})")
    if check:
        pre = Preprocessor(schema).fit(bundle.split("train"))
        for split in bundle.splits:
            _, summary = pre.transform(bundle.split(split), with_target=split != "unlabelled")
            absent = ", ".join(f"{m} {n}" for m, n in summary["absent_modalities"].items())
            cells = sum(summary.get("missing_cells", {}).values())
            extra = f"; unreadable files {summary['unreadable_files']}" if "unreadable_files" in summary else ""
            lines.append(f"check {split}: {summary['rows']} rows, missing tabular cells {cells}, absent modalities: {absent}{extra}")
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="holomodal", description="Multimodal classification with incomplete data")
    parser.add_argument("-v", "--verbose", action="store_true", help="show library logs")
    sub = parser.add_subparsers(dest="command", required=True)

    train = sub.add_parser("train", help="train a model; key=value overrides follow the config files")
    train.add_argument("-c", "--config", action="append", help="YAML config (path or bundled name); repeatable, merged in order")
    train.add_argument("--resume", metavar="RUN", help="continue the run in folder RUN from its last checkpoint")
    train.add_argument("overrides", nargs="*", help="dotted overrides, e.g. trainer.max_epochs=3")
    train.set_defaults(func=cmd_train)

    pre = sub.add_parser("pretrain", help="self-supervised pre-training (TIP) without labels; key=value overrides follow")
    pre.add_argument("-c", "--config", action="append", help="YAML config (path or bundled name); repeatable, merged in order")
    pre.add_argument("overrides", nargs="*", help="dotted overrides, e.g. trainer.max_epochs=3")
    pre.set_defaults(func=cmd_pretrain)

    ev = sub.add_parser("evaluate", help="metrics of a trained run, optionally under synthetic missingness")
    ev.add_argument("run")
    ev.add_argument("--split", default="test", choices=["train", "val", "test"])
    ev.add_argument("--data", help="a labelled CSV/parquet file instead of the run's data set")
    ev.add_argument("--missing", help="comma-separated kinds: rvm,rfm,mifm,lifm,modality (default: none)")
    ev.add_argument("--rates", help="comma-separated rates (default 0,0.1,0.3,0.5,0.7,0.9)")
    ev.add_argument("--drop", default="all", help="modality to drop for --missing modality (name, both, all)")
    ev.add_argument("--n-boot", type=int, default=200, help="bootstrap resamples for the 95%% intervals")
    ev.add_argument("--seed", type=int, default=0, help="seed of the bootstrap")
    ev.set_defaults(func=cmd_evaluate)

    pr = sub.add_parser("predict", help="class probabilities for a CSV/parquet file")
    pr.add_argument("run")
    pr.add_argument("data")
    pr.add_argument("--out", required=True)
    pr.set_defaults(func=cmd_predict)

    rep = sub.add_parser("report", help="one HTML page comparing runs: results, robustness, curves, configs")
    rep.add_argument("runs", nargs="+", metavar="RUN")
    rep.add_argument("--out", required=True, metavar="DIR", help="new or empty folder for the page and its files")
    rep.set_defaults(func=cmd_report)

    exp = sub.add_parser("export", help="export a run's model for inference outside holomodal")
    exp.add_argument("run")
    exp.add_argument("--onnx", action="store_true", help="ONNX graph with the missingness masks as inputs")
    exp.add_argument("--out", help="output file (default RUN/model.onnx, never overwritten)")
    exp.add_argument("--data", help="CSV/parquet rows to trace and check on (default: the run's validation split)")
    exp.add_argument("--split", default="val", choices=["train", "val", "test"])
    exp.add_argument("--rows", type=int, default=16, help="rows used to trace and check")
    exp.set_defaults(func=cmd_export)

    data = sub.add_parser("data", help="list, describe or check the bundled data sets; prepare a public one; cache images")
    data.add_argument("action", choices=["list", "describe", "check", "prepare", "cache"])
    data.add_argument("name", nargs="?")
    data.add_argument("--root", help="data folder (default $HOLOMODAL_DATA or ../shared/data); for prepare, the downloaded release")
    data.add_argument("--out", help="prepare: a new folder for the tables and schema")
    data.add_argument("--min-adverts", type=int, default=100, help="prepare dvm: adverts a car model needs to be a class")
    data.add_argument("--image-size", type=int, default=None, help="prepare: image side written into the schema (128); cache: the loader's image size")
    data.add_argument("--schema", help="cache: the schema file of your own data")
    data.add_argument("--table", action="append", help="cache: a CSV/parquet table of your own data (repeatable)")
    data.set_defaults(func=cmd_data)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(message)s")
    warnings.filterwarnings("ignore", message=".*does not have many workers.*")
    try:
        return int(args.func(args) or 0)
    except HolomodalError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
