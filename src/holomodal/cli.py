"""``holomodal`` command line: train, evaluate, predict, data.

Errors caused by user input print one clear line and exit with status 2; a traceback
only ever means a bug in holomodal.
"""

from __future__ import annotations

import argparse
import logging
import sys
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Sequence

import pandas as pd

from holomodal.console import console_session, error, render, say, warn
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
    say(render(table))


# train/data flags that set keys of the config's data section (``--train a.csv`` is data.train=a.csv)
DATA_FLAGS = ("train", "val", "test", "schema", "label", "encoding")
HINT_FLAGS = ("image", "audio", "text", "categorical", "continuous", "id", "group", "ignore")


def _data_flags(args: argparse.Namespace) -> dict[str, Any]:
    given = {k: getattr(args, k) for k in DATA_FLAGS if getattr(args, k, None) is not None}
    given.update({k: list(getattr(args, k)) for k in HINT_FLAGS if getattr(args, k, None)})
    return given


def cmd_train(args: argparse.Namespace) -> int:
    from omegaconf import OmegaConf

    from holomodal.config import load_config
    from holomodal.experiment import run_training

    flags = _data_flags(args)
    if args.resume and flags:
        raise HolomodalError(f"--resume continues a run with the data it was configured with; "
                             f"leave out {', '.join('--' + k for k in flags)}")
    files, overrides = _resumed(args)
    if args.baselines:
        overrides.append("baselines=true")
    cfg = load_config(files, overrides)
    if flags:
        if "train" not in flags and not cfg.data.train:
            raise HolomodalError(f"{', '.join('--' + k for k in flags)} describe your own data: add --train TABLE")
        # the flags stand for the data set: a bundled one named in a config file gives way
        OmegaConf.update(cfg, "data.name", None, merge=False)
        for key, value in flags.items():
            OmegaConf.update(cfg, f"data.{key}", value, merge=False)
    data = cfg.data
    if not args.resume and not data.name and data.train:
        hints = [k for k in HINT_FLAGS if data.get(k)]
        if data.schema is not None and hints:
            raise HolomodalError(f"{', '.join('--' + k for k in hints)} steer schema inference, which a schema file "
                                 "replaces: set the modalities in the schema file instead")
        if data.schema is None:
            schema = _inferred_for_training(cfg)
            # recorded in config.yaml as it is: --resume and evaluate read it back, never re-infer
            OmegaConf.update(cfg, "data.schema", schema.to_dict(), merge=False)
        if not data.val and data.val_fraction is not None:
            say(f"validation: {data.val_fraction:.0%} of the rows of '{data.train}' are split off (stratified by "
                f"class, or whole groups; seed {data.split_seed}); give --val TABLE to use a table of your own")
    results = run_training(cfg, resume=bool(args.resume))
    _print_metrics("results", {k: results[k] for k in ("val", "test") if k in results})
    say(f"run folder: {results['run_dir']}  (fit {results['fit_seconds']:.1f} s)")
    return 0


def _resumed(args: argparse.Namespace) -> tuple[list[str], list[str]]:
    """The config files and overrides of ``train`` or ``pretrain``; with ``--resume RUN``, the
    run's own config.yaml first (the command's files and overrides go on top) and its folder."""
    files, overrides = list(args.config or []), list(args.overrides)
    if args.resume:
        run = Path(args.resume)
        if not (run / "config.yaml").exists():
            raise HolomodalError(f"cannot resume '{run}': it holds no config.yaml")
        files = [str(run / "config.yaml"), *files]
        overrides.append(f"run.dir={run}")
    return files, overrides


def _inferred_for_training(cfg: Any) -> Any:
    """The schema inferred from the training table, printed with the reasons: checked first,
    so a typo in the configuration costs no reading of the data."""
    from holomodal.config_check import checked_config
    from holomodal.experiment import infer_own_schema
    from holomodal.schema import InferenceWarning
    from holomodal.tables import read_table

    data = checked_config(cfg, "train")["data"]
    train = read_table(data["train"], encoding=data.get("encoding"))
    with _printed_warnings(InferenceWarning):  # printed under the table
        inference = infer_own_schema(data, train)
        _print_inference(inference, data["train"], len(train))
    say(f"to edit this schema: holomodal data infer {data['train']} --label {inference.schema.label.name} "
        "--out schema.yaml, then train with --schema schema.yaml")
    return inference.schema


def _print_inference(inference: Any, source: str, rows: int) -> None:
    from rich.table import Table

    say(f"schema inferred from {source} ({rows} rows):")
    table = Table()
    for name in ("column", "modality", "why"):
        table.add_column(name, overflow="fold")
    for reason in inference.reasons:
        style = "dim" if reason.modality == "ignored" else None
        table.add_row(str(reason.column), reason.modality, reason.why, style=style)
    say(render(table))


@contextmanager
def _printed_warnings(*categories: type[Warning]) -> Iterator[None]:
    """Warnings of ``categories`` raised in the block, printed after it, once each, as
    ``warning: ...`` lines on stderr (no source line); other warnings go on as usual."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            yield
        finally:
            others = [w for w in caught if not issubclass(w.category, categories)]
            for text in dict.fromkeys(str(w.message) for w in caught if issubclass(w.category, categories)):
                warn(text)
    for item in others:
        warnings.warn_explicit(item.message, item.category, item.filename, item.lineno)


def cmd_pretrain(args: argparse.Namespace) -> int:
    from holomodal.config import load_config
    from holomodal.config_check import checked_config
    from holomodal.pretraining import run_pretraining

    files, overrides = _resumed(args)
    cfg = checked_config(load_config(files, overrides), "pretrain")
    result = run_pretraining(cfg, resume=bool(args.resume))
    losses = ", ".join(f"{k} {v:.4f}" for k, v in sorted(result["metrics"].items()))
    say(f"last epoch: {losses}")
    say(f"run folder: {result['run_dir']}  (fit {result['fit_seconds']:.1f} s)")
    if cfg.get("method") == "clip":
        say(f"prompt-tune on it with: holomodal train -c CONFIG method=dcp model.backbone={result['run_dir']}")
    else:
        say(f"fine-tune with: holomodal train -c CONFIG model.checkpoint={result['run_dir']}")
    return 0


def _load_run(run: str):
    from holomodal.estimator import Classifier

    path = Path(run)
    return Classifier.load(path / "model" if (path / "model").exists() else path)


def cmd_evaluate(args: argparse.Namespace) -> int:
    from holomodal.evaluation import evaluate_run, parse_rates, sweep_table

    if args.encoding and not args.data:
        raise HolomodalError("--encoding is the text encoding of the CSV table given with --data; "
                             "the run's own tables are read with the data.encoding it was trained with")
    result, paths = evaluate_run(
        args.run, args.missing or [], args.rates or parse_rates(None), split=args.split, data=args.data,
        drop=args.drop, n_boot=args.n_boot, seed=args.seed, mask_seeds=args.mask_seeds, encoding=args.encoding,
        select=args.select, recover=args.recover, calibration=args.calibration,
    )
    for kind, why in result.attrs.get("skipped", {}).items():
        warn(f"skipped '{kind}': {why}")
    with _wide_pandas():
        say(sweep_table(result).to_string())
        if "selection_records" in result.attrs:
            import pandas as pd

            from holomodal.evaluation import selection_summary

            say(f"modality selection '{args.select}' (recoverer {args.recover if args.select != 'discard' else 'none'}):")
            say(pd.DataFrame(selection_summary(result.attrs["selection_records"])).to_string(index=False))
    say("written: " + ", ".join(str(p) for p in paths.values()))
    return 0


def _wide_pandas():
    import pandas as pd

    return pd.option_context("display.width", 250, "display.max_columns", None)


def cmd_predict(args: argparse.Namespace) -> int:
    from holomodal.evaluation import load_run
    from holomodal.prediction import PredictionWarning, predict_file

    clf = load_run(args.run)
    with _printed_warnings(PredictionWarning):
        preds = predict_file(clf, args.data, args.out, keep=args.keep or (), on_unreadable=args.on_unreadable,
                             encoding=args.encoding)
    print(f"{len(preds)} predictions written to {args.out}")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from holomodal.report import build_report

    page = build_report(args.runs, args.out)
    # the folder was new or empty: everything in it is the report's
    files = sorted(str(p.relative_to(page.parent)) for p in Path(page.parent).rglob("*") if p.is_file())
    say(f"report: {page}")
    say(f"written to {page.parent}: {', '.join(files)}")
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
    if args.action == "infer":
        return _infer(args)
    if args.action == "list":
        for name in list_datasets():
            print(name)
        return 0
    if args.schema or args.table:
        return _check_own(args)
    if not args.name:
        raise HolomodalError(f"'holomodal data {args.action}' needs a data set name ({', '.join(list_datasets())}), "
                             "or --schema FILE --table TABLE for your own data")
    bundle = load_dataset(args.name, root=args.root)
    print(describe_bundle(bundle, check=args.action == "check"))
    return 0


def _infer(args: argparse.Namespace) -> int:
    """``holomodal data infer TABLE --label y``: the inferred schema as a table, and as YAML to edit."""
    from holomodal.experiment import infer_own_schema
    from holomodal.schema import InferenceWarning
    from holomodal.tables import read_table

    if not args.name:
        raise HolomodalError("'holomodal data infer' needs a table: holomodal data infer TABLE --label COLUMN")
    if not args.label:
        raise HolomodalError("'holomodal data infer' needs the column to predict: --label COLUMN")
    out = Path(args.out) if args.out else None
    if out is not None:
        if out.exists():
            raise HolomodalError(f"will not overwrite '{out}': it exists")
        if out.suffix.lower() not in (".yaml", ".yml", ".json"):
            raise HolomodalError(f"schema file '{out}': use a .yaml (or .json) name")
        if not out.parent.exists():
            raise HolomodalError(f"output folder '{out.parent}' does not exist")
    table = read_table(args.name, encoding=args.encoding)
    data = {"train": args.name, **_data_flags(args)}
    with _printed_warnings(InferenceWarning):  # printed under the table
        inference = infer_own_schema(data, table, task=args.task)
        _print_inference(inference, args.name, len(table))
    if out is not None:
        from holomodal.runs import write_text

        write_text(out, inference.schema.to_json() + "\n" if out.suffix.lower() == ".json"
                   else schema_yaml(inference, args.name))
        print(f"schema written to {out}: edit it, check with holomodal data check --schema {out} --table {args.name}, "
              f"train with holomodal train --train {args.name} --schema {out}")
    return 0


def schema_yaml(inference: Any, source: str) -> str:
    """The inferred schema as YAML, one column a line with the reason beside it; the columns
    left out are listed as comments, ready to be put back."""
    import yaml

    def flow(value: Any) -> str:
        return yaml.safe_dump(value, default_flow_style=True, sort_keys=False, allow_unicode=True, width=10**6).strip()

    schema = inference.schema.to_dict()
    lines = [f"# schema inferred by holomodal data infer from {source}: edit modalities and options as needed",
             "# (modalities: image, categorical, continuous, text, audio, timeseries, label, id, group)"]
    lines += [yaml.safe_dump({k: v}, sort_keys=False).strip() for k, v in schema.items() if k != "columns"]
    lines.append("columns:")
    why = {r.column: r.why for r in inference.reasons}
    for column in schema["columns"]:
        entry = {k: v for k, v in column.items() if k != "options" or v}
        lines.append(f"  - {flow(entry)}  # {why.get(column['name'], '')}")
    for reason in inference.reasons:
        if reason.modality == "ignored":
            lines.append(f"  # - {flow({'name': reason.column, 'modality': 'categorical'})}  # left out: {reason.why}")
    return "\n".join(lines) + "\n"


def _check_own(args: argparse.Namespace) -> int:
    """``holomodal data check --schema FILE --table TABLE``: each table against the schema."""
    from holomodal.experiment import check_own_table, read_schema
    from holomodal.tables import read_table

    if not args.schema or not args.table:
        raise HolomodalError(f"'holomodal data {args.action}' of your own data needs --schema FILE and --table TABLE")
    schema = read_schema(args.schema)
    for path in args.table:
        summary = check_own_table(schema, read_table(path, encoding=args.encoding), source=path)
        _print_check(path, summary)
    return 0


def _print_check(path: str, summary: dict[str, Any]) -> None:
    from rich.table import Table

    label = summary["label"]
    print(f"{path}: {summary['rows']} rows, fits the schema")
    table = Table()
    for name in ("column", "modality", "missing"):
        table.add_column(name, justify="right" if name == "missing" else "left", overflow="fold")
    for col in summary["columns"]:
        table.add_row(col["name"], col["modality"], f"{col['missing']} ({col['missing_share']:.1%})")
    _console().print(table)
    for col in summary["columns"]:
        if "note" in col:  # outside the table, where a long path is not wrapped
            print(f"column '{col['name']}': {col['note']}")
    if label is not None:
        print(f"label '{label['name']}': {label['summary']}")
    if summary["extra"]:
        print(f"not in the schema (ignored): {', '.join(summary['extra'])}")


PREPARERS = {"dvm": "the DVM-Car release", "mmimdb": "the unpacked mmimdb.tar.gz (dataset/, split.json)",
             "food101": "UPMC Food-101 (images/, texts/)", "hatefulmemes": "the Hateful Memes release (img/, *.jsonl)",
             "mimic_cxr": "MIMIC-CXR-JPG 2.0.0 (files/, mimic-cxr-2.0.0-metadata.csv, -split.csv)"}


def _cache(args: argparse.Namespace) -> int:
    """Decode every image and audio file of a data set once into the memory-mapped cache."""
    from rich.progress import Progress

    from holomodal.preprocessing.audio import AudioProcessor
    from holomodal.preprocessing.image import ImageProcessor
    from holomodal.preprocessing.image_cache import cache_root
    from holomodal.schema import Modality

    if args.schema:
        from holomodal.experiment import read_schema
        from holomodal.tables import read_table

        if not args.table:
            raise HolomodalError("'holomodal data cache --schema FILE' needs --table FILE (one or more)")
        schema = read_schema(args.schema)
        frame = pd.concat([read_table(t, encoding=args.encoding) for t in args.table], ignore_index=True)
        name = Path(args.table[0]).stem
    elif args.name:
        from holomodal.data import load_dataset

        options = {"image_size": args.image_size} if args.image_size is not None else {}
        bundle = load_dataset(args.name, root=args.root, **options)
        schema, frame, name = bundle.schema, bundle.frame, bundle.name
    else:
        raise HolomodalError("'holomodal data cache' needs a data set name, or --schema and --table for your own files")
    images, clips = schema.of(Modality.IMAGE), schema.of(Modality.AUDIO)
    if not images and not clips:
        raise HolomodalError(f"'{name}' has no image or audio column: nothing to cache")
    processors = [(ImageProcessor(c, "missing", schema.allow_outside_root, schema.max_image_pixels), "image(s)") for c in images]
    processors += [(AudioProcessor(c, "missing", schema.allow_outside_root), "clip(s)") for c in clips]
    for proc, things in processors:
        column = proc.column
        with Progress(transient=True) as bar:
            task = bar.add_task(f"decoding {column.name}", total=int(frame[column.name].notna().sum()))
            counts = proc.build_cache(frame, progress=lambda n: bar.advance(task, n))
        shape = (f"{proc.channels}x{proc.size}x{proc.size}" if isinstance(proc, ImageProcessor)
                 else f"{proc.n_mels} mels x {proc.frames} frames at {proc.sample_rate} Hz")
        print(f"{name} column '{column.name}' ({shape}): {counts['added']} {things} added, "
              f"{counts['cached']} already cached, {counts['failed']} unreadable or missing")
    print(f"cache folder: {cache_root()}")
    return 0


def _prepare(args: argparse.Namespace) -> int:
    if args.name not in PREPARERS:
        raise HolomodalError(f"'holomodal data prepare' knows {', '.join(PREPARERS)}, not '{args.name}'")
    if not args.root or not args.out:
        raise HolomodalError(f"'holomodal data prepare {args.name}' needs --root ({PREPARERS[args.name]}) and --out "
                             "(a new folder)")
    if args.name == "dvm":
        from holomodal.data.dvm import prepare_dvm

        summary = prepare_dvm(args.root, args.out, min_adverts=args.min_adverts, image_size=args.image_size or 128)
        notes = [] if summary["physical_dimensions"] else [
            "'Ad_table (extra).csv' was not found, so Wheelbase/Height/Width/Length are left out"]
        files = summary["missing_image_files"]
        notes += [f"{files} image file(s) are missing; those rows have no image"] if files else []
    elif args.name == "mimic_cxr":
        from holomodal.data.mimic_cxr import prepare_mimic_cxr

        summary = prepare_mimic_cxr(args.root, args.out, reports=args.reports, image_size=args.image_size or 224,
                                    tokenizer=args.tokenizer)
        notes = [f"{summary['missing_image_files']} image file(s) are missing; those rows have no image"] * bool(
            summary["missing_image_files"])
        notes += [f"{summary['dropped_views']} image(s) of neither view left out"] * bool(summary["dropped_views"])
        notes += [f"{summary['missing_reports']} image(s) without a usable report"] * bool(summary["missing_reports"])
        notes += [summary["label_note"]] if summary.get("label_note") else []
    else:
        from holomodal.data import image_text_preparers as prep

        size = {"image_size": args.image_size or 224}
        summary = {"mmimdb": lambda: prep.prepare_mmimdb(args.root, args.out, plots=args.plots, **size),
                   "food101": lambda: prep.prepare_food101(args.root, args.out, **size),
                   "hatefulmemes": lambda: prep.prepare_hatefulmemes(args.root, args.out, test=args.test_file, **size),
                   }[args.name]()
        files = summary["rows_without_image_file"]
        notes = [f"{files} row(s) left out: their image file is missing"] if files else []
        if summary.get("items_without_text"):
            notes.append(f"{summary['items_without_text']} item(s) without a title left out, as in the papers")
    print(", ".join(f"{k} {v}" for k, v in summary["splits"].items()) + f"; {summary['classes']} classes")
    for note in notes:
        print(f"note: {note}")
    out = Path(args.out)
    print(f"written to {out}: use data.train={out / 'train.parquet'} data.val={out / 'val.parquet'} "
          f"data.test={out / 'test.parquet'} data.schema={out / 'schema.yaml'}")
    return 0


def describe_bundle(bundle: Any, check: bool = False) -> str:
    from holomodal.preprocessing import Preprocessor
    from holomodal.tables import is_blank

    frame, schema = bundle.frame, bundle.schema
    lines = [f"data set {bundle.name}: {len(frame)} rows, task {schema.task.value}, label '{schema.label.name}'"]
    lines.append("splits: " + ", ".join(f"{k} {len(v)}" for k, v in bundle.splits.items()))
    for col in schema.columns:
        blank = frame[col.name].map(is_blank)
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


def _parsed_by(name: str) -> Any:
    """An argparse type from holomodal.evaluation's parser ``name``: a bad value is an
    argparse error (usage line, the message, exit 2) before any work starts."""

    def parse(text: str) -> Any:
        from holomodal import evaluation

        try:
            return getattr(evaluation, name)(text)
        except HolomodalError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    return parse


def _whole_number(low: int) -> Any:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"'{text}' is not a whole number") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"must be >= {low}, got {value}")
        return value

    return parse


def _seed_list(text: str) -> list[int]:
    seeds = []
    for item in text.split(","):
        try:
            seed = int(item)
        except ValueError:
            raise argparse.ArgumentTypeError(f"'{item}' is not a whole number (expected e.g. 0,1,2)") from None
        if seed < 0:
            raise argparse.ArgumentTypeError(f"seeds must be >= 0, got {seed}")
        seeds.append(seed)
    if len(set(seeds)) < len(seeds):
        raise argparse.ArgumentTypeError(f"seed(s) given twice in '{text}': each draw needs a seed of its own")
    return seeds


def _add_hint_flags(parser: Any, prefix: str = "") -> None:
    """--image COL, --text COL, ...: the modality of a column, over what inference would choose."""
    for flag, what in (("image", "holds image file paths"), ("audio", "holds audio file paths"),
                       ("text", "holds free text"), ("categorical", "is categorical"), ("continuous", "is a number"),
                       ("id", "identifies rows (copied to predictions, not a model input)"),
                       ("group", "groups rows that belong together, e.g. a patient's (kept on one side of a split)"),
                       ("ignore", "is left out")):
        parser.add_argument(f"--{flag}", action="append", metavar="COLUMN", help=f"{prefix}COLUMN {what} (repeatable)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="holomodal", description="Multimodal classification with incomplete data")
    parser.add_argument("-v", "--verbose", action="store_true", help="show library logs")
    sub = parser.add_subparsers(dest="command", required=True)

    train = sub.add_parser("train", help="train a model; key=value overrides follow the config files")
    train.add_argument("-c", "--config", action="append", help="YAML config (path or bundled name); repeatable, merged in order")
    train.add_argument("--resume", metavar="RUN", help="continue the run in folder RUN from its last checkpoint")
    train.add_argument("--baselines", action="store_true",
                       help="also fit the baselines (gradient-boosted trees, a linear model, their ensemble with "
                            "the model) on the same split: the override baselines=true")
    own = train.add_argument_group("your own data (instead of a config's data section)")
    own.add_argument("--train", metavar="TABLE", help="training table, CSV or parquet (data.train)")
    own.add_argument("--val", metavar="TABLE", help="validation table (default: 20%% of --train, stratified, seeded)")
    own.add_argument("--test", metavar="TABLE", help="test table, scored after training")
    own.add_argument("--schema", metavar="FILE", help="schema file (default: inferred from --train and printed)")
    own.add_argument("--label", metavar="COLUMN", help="the column to predict (needed to infer the schema)")
    own.add_argument("--encoding", help="text encoding of the CSV tables (default utf-8)")
    _add_hint_flags(own)
    train.add_argument("overrides", nargs="*", help="dotted overrides, e.g. trainer.max_epochs=3")
    train.set_defaults(func=cmd_train)

    pre = sub.add_parser("pretrain", help="self-supervised pre-training (TIP) without labels; key=value overrides follow")
    pre.add_argument("-c", "--config", action="append", help="YAML config (path or bundled name); repeatable, merged in order")
    pre.add_argument("--resume", metavar="RUN",
                     help="continue the pre-training run in folder RUN from its last checkpoint (e.g. with a larger "
                          "trainer.max_epochs)")
    pre.add_argument("overrides", nargs="*", help="dotted overrides, e.g. trainer.max_epochs=3")
    pre.set_defaults(func=cmd_pretrain)

    ev = sub.add_parser("evaluate", help="metrics of a trained run, optionally under synthetic missingness")
    ev.add_argument("run")
    ev.add_argument("--split", default="test", choices=["train", "val", "test"])
    ev.add_argument("--data", help="a labelled CSV/parquet file instead of the run's data set")
    ev.add_argument("--missing", type=_parsed_by("parse_kinds"), help="comma-separated kinds: rvm,rfm,mifm,lifm,modality (default: none)")
    ev.add_argument("--rates", type=_parsed_by("parse_rates"), help="comma-separated rates (default 0,0.1,0.3,0.5,0.7,0.9)")
    ev.add_argument("--drop", default="all", metavar="WHICH",
                    help="for --missing modality, which modality the rate's share of rows loses: a modality's "
                         "name (that one only), or 'all' (default; the rows are shared evenly among the modalities, "
                         "each losing one); 'both' is 'all' for data with exactly two modalities")
    ev.add_argument("--n-boot", type=_whole_number(0), default=200, help="bootstrap resamples for the 95%% intervals")
    ev.add_argument("--seed", type=_whole_number(0), default=0, help="seed of the bootstrap")
    ev.add_argument("--mask-seeds", type=_seed_list, metavar="SEEDS",
                    help="comma-separated seeds, e.g. 0,1,2: every synthetic mask is drawn once per seed, the "
                         "metric is the mean over the draws and the interval covers the draw too (default: one "
                         "draw, with the seed training would use)")
    ev.add_argument("--encoding", help="text encoding of a CSV table given with --data (default utf-8)")
    ev.add_argument("--select", choices=["dymo", "discard", "recover_all"],
                    help="for a 'dynamic' run, which modalities each row uses: DyMo's reward-driven choice among "
                         "the observed and recovered ones, the observed ones only, or all; a record per row is "
                         "written beside the evaluation (evaluation-<time>-selection.csv)")
    ev.add_argument("--recover", default="nearest", metavar="RECOVERER",
                    help="how missing modalities are recovered for --select, fitted on the run's training split: "
                         "nearest (default), iterative (table cells), tip:<pre-training run> (table cells), mopoe")
    ev.add_argument("--calibration", default="logratio", choices=["logratio", "ratio"],
                    help="DyMo's calibration of its reward (spec: logratio for the cosine runs, ratio otherwise)")
    ev.set_defaults(func=cmd_evaluate)

    pr = sub.add_parser("predict", help="class probabilities for a CSV/parquet file")
    pr.add_argument("run")
    pr.add_argument("data")
    pr.add_argument("--out", required=True)
    pr.add_argument("--keep", action="append", metavar="COLUMN",
                    help="copy COLUMN of the input to the output (repeatable); the schema's id columns are copied anyway")
    pr.add_argument("--on-unreadable", choices=["error", "missing"],
                    help="for this run, unreadable image/audio files stop it (error) or count as missing (missing); "
                         "default: the policy the model was saved with")
    pr.add_argument("--encoding", help="text encoding of a CSV input (default utf-8)")
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
    exp.add_argument("--rows", type=_whole_number(1), default=16, help="rows used to trace and check")
    exp.set_defaults(func=cmd_export)

    data = sub.add_parser("data", help="list, describe or check data sets (bundled or your own); infer a schema; "
                                       "prepare a public one; cache decoded images and audio")
    data.add_argument("action", choices=["list", "describe", "check", "infer", "prepare", "cache"])
    data.add_argument("name", nargs="?", help="a bundled data set; for infer, your table (CSV or parquet)")
    data.add_argument("--root", help="data folder (default $HOLOMODAL_DATA or ../shared/data); for prepare, the downloaded release")
    data.add_argument("--out", help="prepare: a new folder for the tables and schema; infer: the schema file to write (.yaml)")
    data.add_argument("--min-adverts", type=_whole_number(1), default=100, help="prepare dvm: adverts a car model needs to be a class")
    data.add_argument("--image-size", type=_whole_number(1), default=None,
                      help="prepare: image side written into the schema (dvm 128, the others 224); cache: the loader's image size")
    data.add_argument("--plots", choices=["each", "first"], default="each",
                      help="prepare mmimdb: one row per plot summary (the papers' samples) or per movie")
    data.add_argument("--test-file", choices=["test_seen", "test_unseen"], default="test_seen",
                      help="prepare hatefulmemes: the labelled test file")
    data.add_argument("--reports", help="prepare mimic_cxr: the sectioned reports CSV (default: mimic_cxr_sectioned.csv in --root)")
    data.add_argument("--tokenizer", help="prepare mimic_cxr: the reports' tokenizer in the schema (e.g. "
                                          "emilyalsentzer/Bio_ClinicalBERT; default holomodal's wordpiece)")
    data.add_argument("--schema", help="check, describe, cache: the schema file of your own data")
    data.add_argument("--table", action="append", help="check, describe, cache: a CSV/parquet table of your own data (repeatable)")
    data.add_argument("--encoding", help="text encoding of CSV tables (default utf-8)")
    data.add_argument("--label", metavar="COLUMN", help="infer: the column to predict")
    data.add_argument("--task", choices=["binary", "multiclass", "multilabel", "regression"],
                      help="infer: the label's task (default: inferred from its values)")
    _add_hint_flags(data, prefix="infer: ")
    data.set_defaults(func=cmd_data)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    import shlex

    words = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(words)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(message)s")
    with console_session(shlex.join(words), verbose=args.verbose):
        try:
            return int(args.func(args) or 0)
        except HolomodalError as exc:
            error(str(exc))
            return 2


if __name__ == "__main__":
    sys.exit(main())
