"""One HTML page comparing training runs, readable offline and alone.

``build_report(runs, out)`` reads what each run folder already holds (``metrics.json``,
``config.yaml``, ``metrics.csv``, and the ``evaluation-*.csv`` sweeps written by
``holomodal evaluate``) and writes into ``out``: ``report.html`` with every plot embedded as
a base64 PNG, the same PNGs as files, ``results.csv`` (one row per run) and, when some run
was evaluated, ``robustness.csv`` (every sweep, with a ``run`` column).
"""

from __future__ import annotations

import base64
import html
import io
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import pandas as pd

from holomodal.errors import DataError
from holomodal.evaluation import SELECTION_SUFFIX, lower_is_better, metric_title, run_config, worsening, write_new_file

STYLE = """
body { font-family: system-ui, sans-serif; margin: 24px; color: #222; background: #fff; }
h1 { margin-bottom: 4px; } h2 { margin-top: 32px; border-bottom: 2px solid #4a6fa5; padding-bottom: 4px; }
table { border-collapse: collapse; font-size: 13px; margin: 8px 0; }
th, td { border: 1px solid #ccc; padding: 4px 8px; text-align: right; }
th { background: #e8eef7; } td.key, th.key { text-align: left; font-family: monospace; }
tr.diff td { background: #fff4d6; } td.best { font-weight: bold; color: #1a5e1a; }
img { max-width: 100%; border: 1px solid #ddd; margin: 8px 0; }
.note { color: #666; font-style: italic; }
"""


@dataclass
class RunRecord:
    """What a run folder holds, read once."""

    path: Path
    config: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    log: pd.DataFrame | None = None
    sweep: pd.DataFrame | None = None
    sweep_file: Path | None = None
    selection: pd.DataFrame | None = None

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def method(self) -> str:
        return str(self.config.get("method") or _saved_method(self.path) or "?")

    @property
    def label(self) -> str:
        return self.name if self.name == self.method else f"{self.method} · {self.name}"

    @property
    def data(self) -> str | None:
        data = self.config.get("data") or {}
        return data.get("name") or (Path(data["train"]).name if data.get("train") else None)

    @classmethod
    def read(cls, path: str | Path) -> "RunRecord":
        path = Path(path)
        if not path.is_dir():
            raise DataError(f"run folder '{path}' not found")
        record = cls(path, config=run_config(path))
        if (path / "metrics.json").exists():
            record.metrics = json.loads((path / "metrics.json").read_text())
        if (path / "metrics.csv").exists():
            record.log = pd.read_csv(path / "metrics.csv")
        sweeps = sorted((p for p in path.glob("evaluation-*.csv") if not p.name.endswith(SELECTION_SUFFIX)),
                        key=lambda p: (p.stat().st_mtime, p.name))
        if sweeps:
            # the newest sweep stands for the run; older ones stay in the folder
            record.sweep_file = sweeps[-1]
            record.sweep = pd.read_csv(sweeps[-1])
            meta = sweeps[-1].with_suffix(".json")
            summary = json.loads(meta.read_text()).get("selection_summary") if meta.exists() else None
            if summary:
                record.selection = pd.DataFrame(summary)
        if not record.config and not record.metrics and record.log is None and record.sweep is None:
            raise DataError(f"'{path}' holds none of config.yaml, metrics.json, metrics.csv, evaluation-*.csv: "
                            "is it a run folder?")
        return record


def _saved_method(path: Path) -> str | None:
    meta = path / "model" / "predictor.json"
    if meta.exists():
        return json.loads(meta.read_text()).get("params", {}).get("method")
    return None


def results_table(records: Sequence[RunRecord]) -> pd.DataFrame:
    """One row per run: method, data, seed, epochs, fit time, then val/ and test/ metrics."""
    rows = []
    for r in records:
        row: dict[str, Any] = {
            "run": r.name, "method": r.method, "data": r.data,
            "seed": r.config.get("seed"), "max_epochs": (r.config.get("trainer") or {}).get("max_epochs"),
            "fit_seconds": r.metrics.get("fit_seconds"),
        }
        for split in ("val", "test"):
            for name, value in (r.metrics.get(split) or {}).items():
                row[f"{split}/{name}"] = value
        rows.append(row)
    return pd.DataFrame(rows)


def flatten(config: Any, prefix: str = "") -> dict[str, Any]:
    """Dotted keys of a nested config; lists stay whole values."""
    if not isinstance(config, dict):
        return {prefix: config}
    out: dict[str, Any] = {}
    for key, value in config.items():
        name = f"{prefix}.{key}" if prefix else str(key)
        if isinstance(value, dict) and value:
            out.update(flatten(value, name))
        else:
            out[name] = value
    return out


def config_table(records: Sequence[RunRecord]) -> pd.DataFrame:
    flat = [flatten(r.config) for r in records]
    keys = list(dict.fromkeys(k for f in flat for k in f))
    return pd.DataFrame({r.name: [f.get(k, "") for k in keys] for r, f in zip(records, flat)}, index=keys)


def _png(fig: Any) -> bytes:
    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buffer, format="png", dpi=100)
    plt.close(fig)
    return buffer.getvalue()


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def robustness_figures(records: Sequence[RunRecord]) -> dict[str, bytes]:
    """Per missingness kind: one panel per metric, one line per run with its interval."""
    plt = _pyplot()
    figures = {}
    sweeps = [(r, r.sweep) for r in records if r.sweep is not None and len(r.sweep)]
    kinds = list(dict.fromkeys(k for _, s in sweeps for k in s["kind"]))
    for kind in kinds:
        metrics = list(dict.fromkeys(m for _, s in sweeps for m in s.loc[s["kind"] == kind, "metric"]))
        ncols = min(3, len(metrics))
        nrows = -(-len(metrics) // ncols)
        fig, axes = plt.subplots(nrows, ncols, figsize=(4.4 * ncols, 3.4 * nrows), squeeze=False)
        for ax, metric in zip(axes.flat, metrics):
            for record, sweep in sweeps:
                curve = sweep[(sweep["kind"] == kind) & (sweep["metric"] == metric)].sort_values("rate")
                if curve.empty:
                    continue
                line = ax.plot(curve["rate"], curve["value"], marker="o", label=record.label)[0]
                ax.fill_between(curve["rate"], curve["ci_low"], curve["ci_high"], color=line.get_color(), alpha=0.15)
            ax.set_title(f"{metric_title(metric)} under {kind}", fontsize=9)
            ax.set_xlabel("missing rate")
            ax.grid(alpha=0.3)
        for ax in list(axes.flat)[len(metrics):]:
            ax.set_visible(False)
        axes.flat[0].legend(fontsize=7)
        figures[kind] = _png(fig)
    return figures


def training_figure(records: Sequence[RunRecord]) -> bytes | None:
    """Per-epoch losses and validation metrics from each run's CSV log, runs overlaid."""
    plt = _pyplot()
    from matplotlib.ticker import MaxNLocator

    logs = []
    for r in records:
        if r.log is not None and "epoch" in r.log and len(r.log):
            logs.append((r, r.log.groupby("epoch").last()))
    if not logs:
        return None
    columns = list(dict.fromkeys(c for _, log in logs for c in log.columns
                                 if c != "step" and (c.endswith("loss") or c.startswith("val/"))))
    if not columns:
        return None
    ncols = min(3, len(columns))
    nrows = -(-len(columns) // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(4.4 * ncols, 3.2 * nrows), squeeze=False)
    for ax, column in zip(axes.flat, columns):
        for record, log in logs:
            if column in log and log[column].notna().any():
                values = log[column].dropna()
                ax.plot(values.index, values, marker="o", label=record.label)
        ax.set_title(column)
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(columns):]:
        ax.set_visible(False)
    axes.flat[0].legend(fontsize=7)
    return _png(fig)


def _img(png: bytes, alt: str) -> str:
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{base64.b64encode(png).decode()}">'


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return "" if value != value else f"{value:.4f}"
    if value is None:
        return ""
    return html.escape(str(value))


def _results_html(table: pd.DataFrame, split: str, table_id: str) -> str:
    """Run facts and the ``split`` metrics of every run, one row per run."""
    keep = [c for c in table.columns if "/" not in c or c.startswith(f"{split}/")]
    table = table[keep].rename(columns=lambda c: c.split("/", 1)[-1])
    facts = {"run", "method", "data", "seed", "max_epochs", "fit_seconds"}
    best = {}
    for column in table.columns:
        if column not in facts and not column.endswith("loss") and pd.api.types.is_numeric_dtype(table[column]) \
                and table[column].notna().any() and len(table) > 1:
            best[column] = table[column].min() if lower_is_better(column) else table[column].max()
    head = "".join(f'<th class="key">{html.escape(c)}</th>' if c in ("run", "method", "data") else f"<th>{html.escape(c)}</th>"
                   for c in table.columns)
    body = []
    for _, row in table.iterrows():
        cells = []
        for column in table.columns:
            cls = "key" if column in ("run", "method", "data") else ("best" if column in best and row[column] == best[column] else "")
            cells.append(f'<td class="{cls}">{_cell(row[column])}</td>')
        body.append(f'<tr data-run="{html.escape(str(row["run"]))}">{"".join(cells)}</tr>')
    return f'<table id="{table_id}"><thead><tr>{head}</tr></thead><tbody>{"".join(body)}</tbody></table>'


def worsening_table(records: Sequence[RunRecord]) -> pd.DataFrame:
    """Per run, kind and metric: the score on the data as it is and at the kind's highest
    missing rate, and how much worse that is (positive = worse, for scores and errors alike)."""
    parts = []
    for r in records:
        if r.sweep is None or not len(r.sweep):
            continue
        change = worsening(r.sweep)
        if change.empty:
            continue
        top = change[change["rate"] == change.groupby("kind")["rate"].transform("max")]
        parts.append(top.assign(run=r.name, method=r.method))
    columns = ["run", "method", "kind", "rate", "metric", "clean", "value", "worse"]
    return pd.concat(parts, ignore_index=True)[columns] if parts else pd.DataFrame(columns=columns)


def _worsening_html(table: pd.DataFrame) -> str:
    head = "".join(f'<th class="key">{c}</th>' if c in ("run", "method", "kind", "metric") else f"<th>{c}</th>"
                   for c in table.columns)
    body = []
    for _, row in table.iterrows():
        cells = "".join(f'<td class="{"key" if c in ("run", "method", "kind", "metric") else ""}">{_cell(row[c])}</td>'
                        for c in table.columns)
        body.append(f"<tr>{cells}</tr>")
    return f'<table id="worsening"><thead><tr>{head}</tr></thead><tbody>{"".join(body)}</tbody></table>'


def _config_html(table: pd.DataFrame) -> str:
    head = '<th class="key">key</th>' + "".join(f"<th>{html.escape(c)}</th>" for c in table.columns)
    body = []
    for key, row in table.iterrows():
        values = [json.dumps(v) if isinstance(v, (list, dict)) else ("" if v is None else str(v)) for v in row]
        differs = len(set(values)) > 1
        cells = "".join(f'<td class="key">{html.escape(v)}</td>' for v in values)
        body.append(f'<tr class="{"diff" if differs else ""}"><td class="key">{html.escape(str(key))}</td>{cells}</tr>')
    return f'<table id="configs"><thead><tr>{head}</tr></thead><tbody>{"".join(body)}</tbody></table>'


def build_report(runs: Sequence[str | Path], out: str | Path, title: str = "holomodal runs") -> Path:
    """Write the comparison of ``runs`` into the folder ``out`` (new or empty); returns the
    HTML file."""
    if not runs:
        raise DataError("a report needs at least one run folder")
    records = [RunRecord.read(p) for p in runs]
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise DataError(f"will not write the report into '{out}': it already holds files; choose a new --out")
    out.mkdir(parents=True, exist_ok=True)

    results = results_table(records)
    write_new_file(out / "results.csv", results.to_csv(index=False))
    sections = [
        "<h2>Results</h2>",
        '<p class="note">From each run\'s metrics.json; the best value of each metric is in bold.</p>',
        "<h3>Test</h3>", _results_html(results, "test", "results"),
        "<h3>Validation</h3>", _results_html(results, "val", "results-val"),
    ]

    sections.append("<h2>Robustness to missing data</h2>")
    figures = robustness_figures(records)
    if figures:
        sweeps = [r.sweep.assign(run=r.name, method=r.method) for r in records if r.sweep is not None]
        write_new_file(out / "robustness.csv", pd.concat(sweeps, ignore_index=True).to_csv(index=False))
        used = ", ".join(f"{r.name}: {r.sweep_file.name}" for r in records if r.sweep_file is not None)
        sections.append(f'<p class="note">Metric against missing rate with 95 % bootstrap intervals ({html.escape(used)}).</p>')
        for kind, png in figures.items():
            write_new_file(out / f"robustness_{kind}.png", png)
            sections.append(f"<h3>{html.escape(kind)}</h3>{_img(png, f'robustness under {kind}')}")
        change = worsening_table(records)
        if len(change):
            sections.append("<h3>Loss from the complete data</h3>")
            sections.append('<p class="note">At each kind\'s highest missing rate; <i>worse</i> is positive when the '
                            "model does worse than on the data as it is (a fall for scores, a rise for errors "
                            "such as RMSE and MAE).</p>")
            sections.append(_worsening_html(change))
    else:
        sections.append('<p class="note">No run holds an evaluation yet: run '
                        "<code>holomodal evaluate RUN --missing rvm,rfm,modality</code> first.</p>")

    chosen = [r.selection.assign(run=r.name) for r in records if r.selection is not None]
    if chosen:
        selection = pd.concat(chosen, ignore_index=True)
        selection = selection[["run", *[c for c in selection.columns if c != "run"]]]
        write_new_file(out / "selection.csv", selection.to_csv(index=False))
        sections.append("<h2>Modality selection</h2>")
        sections.append('<p class="note">From each run\'s newest evaluation with <code>--select</code>: per missingness '
                        "kind and rate, the mean number of recovered modalities a row used, the share of rows with a "
                        "recovered modality that used it, and the forward passes per chunk of rows.</p>")
        sections.append(selection.to_html(index=False, float_format=lambda v: f"{v:.3f}", border=0))
    sections.append("<h2>Training curves</h2>")
    curves = training_figure(records)
    if curves is not None:
        write_new_file(out / "training_curves.png", curves)
        sections.append(_img(curves, "training curves"))
    else:
        sections.append('<p class="note">No run holds a metrics.csv log.</p>')

    sections.append("<h2>Configurations</h2>")
    sections.append('<p class="note">Rows that differ between runs are highlighted.</p>')
    sections.append(_config_html(config_table(records)))

    runs_list = "".join(f"<li><code>{html.escape(str(r.path))}</code></li>" for r in records)
    page = (
        f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
        f"<style>{STYLE}</style></head><body><h1>{html.escape(title)}</h1>"
        f'<p class="note">{len(records)} run(s), written {time.strftime("%Y-%m-%d %H:%M")}</p><ul>{runs_list}</ul>'
        f'{"".join(sections)}</body></html>'
    )
    return write_new_file(out / "report.html", page)
