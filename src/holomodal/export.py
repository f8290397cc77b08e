"""ONNX export of a fitted model's inference graph, missingness masks included.

The graph takes the :class:`~holomodal.batch.Batch` flattened into named tensors, batch
size free:

* ``<modality>.<tensor>`` for every input tensor (``tabular.categorical``,
  ``tabular.continuous``, ``image.pixels``, ``notes.input_ids``, ...), in the layout of
  :mod:`holomodal.batch`;
* ``present_<modality>`` (bool, ``(B,)``): False where the modality is absent;
* ``cell_missing`` (bool, ``(B, n_tabular)``): True where a table cell is missing (only when
  the data has tabular columns);

and returns ``probabilities`` ``(B, classes)``. Values under a mask are zeroed inside the
graph, as :meth:`Batch.zero_missing` does in Python, so a caller only has to set the masks
right. Preprocessing (tokenising, decoding images, standardising) stays outside: the
``holomodal.inputs`` metadata entry of the model lists every input's dtype and shape.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import Tensor, nn

from holomodal.batch import Batch
from holomodal.errors import ConfigError, DataError
from holomodal.estimator import Classifier
from holomodal.runs import writing

OUTPUT = "probabilities"


def input_layout(batch: Batch) -> list[tuple[str, str | None]]:
    """(modality, tensor) pairs in graph order; tensor None means the presence flag, and
    ("cell_missing", None) the cell mask."""
    layout: list[tuple[str, str | None]] = [(m, k) for m, tensors in batch.inputs.items() for k in tensors]
    layout += [(m, None) for m in batch.present]
    if batch.cell_missing is not None:
        layout.append(("cell_missing", None))
    return layout


def input_name(modality: str, tensor: str | None) -> str:
    if modality == "cell_missing" and tensor is None:
        return "cell_missing"
    return f"present_{modality}" if tensor is None else f"{modality}.{tensor}"


def flatten_batch(batch: Batch) -> dict[str, Tensor]:
    """The named graph inputs of ``batch``."""
    out: dict[str, Tensor] = {}
    for m, k in input_layout(batch):
        if k is not None:
            out[input_name(m, k)] = batch.inputs[m][k]
        elif m == "cell_missing" and m not in batch.present:
            out["cell_missing"] = batch.cell_missing
        else:
            out[input_name(m, None)] = batch.present[m]
    return out


class InferenceGraph(nn.Module):
    """The model with positional tensor inputs, rebuilding the Batch it expects."""

    def __init__(self, model: nn.Module, layout: list[tuple[str, str | None]], modalities: list[str]) -> None:
        super().__init__()
        self.model = model
        self.layout = layout
        self.modalities = modalities

    def forward(self, *tensors: Tensor) -> Tensor:
        inputs: dict[str, dict[str, Tensor]] = {}
        present: dict[str, Tensor] = {}
        cell_missing = None
        for (m, k), t in zip(self.layout, tensors):
            if k is not None:
                inputs.setdefault(m, {})[k] = t
            elif m == "cell_missing" and m not in self.modalities:
                cell_missing = t
            else:
                present[m] = t
        batch = Batch(inputs, present, cell_missing).zero_missing()
        return self.model.probabilities(self.model(batch))


def _require(module: str) -> Any:
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        raise ConfigError(f"ONNX export needs the package '{module}': pip install 'holomodal[onnx]'") from None


def _require_deep(clf: Classifier) -> None:
    if clf.fits_directly:  # scikit-learn models and ensembles have no single traceable graph
        raise ConfigError(f"ONNX export takes a deep model; method '{clf.method}' is not one: "
                          "use holomodal predict with its run folder")


def example_batch(clf: Classifier, frame: pd.DataFrame, rows: int = 8) -> Batch:
    clf._check_fitted()
    batch, _ = clf.preprocessor_.transform(frame.iloc[:rows], with_target=False)
    return batch


def export_onnx(clf: Classifier, path: str | Path, example: Batch, *, opset: int = 17) -> Path:
    """Write the inference graph of ``clf`` to ``path`` (ONNX), traced on ``example``."""
    clf._check_fitted()
    _require("onnx")
    path = Path(path)
    if path.exists():
        raise DataError(f"will not overwrite '{path}': it exists")
    _require_deep(clf)
    model = clf.model_.cpu().eval()
    layout = input_layout(example)
    graph = InferenceGraph(model, layout, list(example.present)).eval()
    named = flatten_batch(example)
    names = list(named)
    axes = {n: {0: "batch"} for n in [*names, OUTPUT]}
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with writing(path, f"nothing was written to '{path}'"):
            with torch.no_grad():
                # the TorchScript exporter: the dynamo one needs onnxscript, which holomodal does not install
                torch.onnx.export(graph, tuple(named.values()), str(tmp), input_names=names, output_names=[OUTPUT],
                                  dynamic_axes=axes, opset_version=opset, dynamo=False)
            _annotate(tmp, clf, named)
            if path.exists():
                raise DataError(f"will not overwrite '{path}': it appeared during the export")
            tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)  # an export cut short leaves no partial graph behind
    return path


def _annotate(path: Path, clf: Classifier, named: dict[str, Tensor]) -> None:
    onnx = _require("onnx")
    proto = onnx.load(str(path))
    described = {n: {"dtype": str(t.dtype).replace("torch.", ""), "shape": ["batch", *t.shape[1:]]} for n, t in named.items()}
    meta = {
        "holomodal.inputs": json.dumps(described),
        "holomodal.classes": json.dumps(list(clf.preprocessor_.classes_)),
        "holomodal.task": clf.schema.task.value,
        "holomodal.method": clf.method,
    }
    for key, value in meta.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.save(proto, str(path))


def onnx_probabilities(path: str | Path, batch: Batch) -> np.ndarray:
    """Run the exported graph with onnxruntime on ``batch``."""
    ort = _require("onnxruntime")
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    wanted = {i.name for i in session.get_inputs()}
    feeds = {n: t.cpu().numpy() for n, t in flatten_batch(batch).items() if n in wanted}
    return session.run([OUTPUT], feeds)[0]


def check_onnx(clf: Classifier, path: str | Path, batch: Batch) -> float:
    """Largest absolute difference between onnxruntime's and PyTorch's probabilities."""
    expected = clf._probabilities(batch)
    return float(np.abs(onnx_probabilities(path, batch) - expected).max())


def export_run(run: str | Path, out: str | Path | None = None, *, data: str | Path | None = None,
               split: str = "val", rows: int = 16) -> tuple[Path, float, int]:
    """``holomodal export RUN --onnx``: trace on the first ``rows`` rows of the run's
    ``split`` (or of ``data``), check against PyTorch with onnxruntime. Returns the file, the
    largest absolute difference of the probabilities and the number of rows checked."""
    from holomodal.evaluation import load_run, new_stem, run_config
    from holomodal.experiment import load_splits
    from holomodal.prediction import read_frame

    run = Path(run)
    clf = load_run(run)
    _require_deep(clf)  # before any data is read
    if data is not None:
        frame = read_frame(data)
    else:
        cfg = run_config(run)
        if not cfg:
            raise DataError(f"'{run}' holds no config.yaml to find example rows: pass --data FILE")
        splits = load_splits(cfg["data"])
        frame = getattr(splits, split)
        if frame is None:
            frame = splits.train
    batch = example_batch(clf, frame, rows)
    if out is None:
        out = run / "model.onnx"
        if out.exists():
            stem = new_stem(run, "model", [".onnx"])
            out = stem.with_name(stem.name + ".onnx")
    path = export_onnx(clf, out, batch)
    return path, check_onnx(clf, path, batch), len(batch)
