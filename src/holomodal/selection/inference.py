"""Predicting with a chosen set of modalities per sample: DyMo's selection, or its two
reference points, around a fitted ``dynamic`` model and a fitted recoverer.

Strategies (``STRATEGIES``):
  ``dymo``         start from the observed modalities, add recovered ones while DyMo's reward
                   is positive (:class:`holomodal.selection.dymo.DyMoSelector`);
  ``discard``      use the observed modalities only (no recovery is read);
  ``recover_all``  use every observed and recovered modality.

A table with some cells missing is "not observed" for the selector, as in DyMo's partial-table
protocol: using it means reading the observed and the recovered cells, not using it means
reading the observed cells with the missing ones masked (the released code does the same; its
statistics then come from the table-absent subset, spec pitfall 5). A whole absent table is an
absent modality like any other.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import Tensor

from holomodal.batch import Batch
from holomodal.errors import ConfigError, DataError
from holomodal.selection.dymo import CALIBRATIONS, DyMoSelector

STRATEGIES = ("dymo", "discard", "recover_all")
TABULAR = "tabular"


def check_selectable(model: Any) -> None:
    """The model must take a per-sample usage mask and carry DyMo's subset statistics."""
    if not hasattr(model, "forward_subset") or not hasattr(model, "subset_statistics"):
        name = getattr(model, "method_name", None) or type(model).__name__
        raise ConfigError(f"modality selection needs a model trained with method 'dynamic' (it takes a per-sample "
                          f"modality subset and measures DyMo's subset statistics); this one is '{name}'")
    model.subset_statistics()  # raises when the statistics were never measured


def observed_modalities(batch: Batch, order: list[str]) -> Tensor:
    """(B, M) bool: modality observed in full. A table with a missing cell is not."""
    columns = []
    for m in order:
        seen = batch.present[m].bool()
        if m == TABULAR and batch.cell_missing is not None and batch.cell_missing.shape[1]:
            seen = seen & ~batch.cell_missing.any(dim=1)
        columns.append(seen)
    return torch.stack(columns, dim=1)


def partial_tables(batch: Batch) -> Tensor | None:
    """(B,) bool: rows whose table is present with some cells missing."""
    if TABULAR not in batch.present or batch.cell_missing is None or not batch.cell_missing.shape[1]:
        return None
    return batch.present[TABULAR].bool() & batch.cell_missing.any(dim=1)


def check_options(strategy: str, calibration: str = "logratio", temperature: float = 0.1) -> None:
    if strategy not in STRATEGIES:
        raise ConfigError(f"unknown selection '{strategy}' (one of {', '.join(STRATEGIES)})")
    if calibration not in CALIBRATIONS:
        raise ConfigError(f"unknown calibration '{calibration}' (one of {', '.join(CALIBRATIONS)})")
    if not temperature > 0:
        raise ConfigError(f"the selection temperature must be positive, got {temperature}")


RECOVERER_NAMES = ("nearest", "iterative", "tip:<pre-training run>", "mopoe")


def build_recoverer(spec: str, model: Any, input_specs: dict[str, dict[str, Any]], train: Batch) -> Any:
    """A recoverer by name, fitted on the encoded training split ``train``: ``nearest``
    (the training row nearest in the model's embedding of the observed modalities),
    ``iterative`` (scikit-learn's IterativeImputer, table cells), ``tip:<run>`` (a TIP
    pre-training run's reconstruction head, table cells), ``mopoe`` (a MoPoE VAE trained on
    the image and audio modalities of ``train``)."""
    from holomodal.selection import recoverers

    name, _, argument = spec.partition(":")
    if name == "nearest":
        options: dict[str, Any] = {"embed": model.subset_features, "modality_order": list(model.modality_order)}
    elif name == "iterative":
        if TABULAR not in input_specs:
            raise ConfigError("recoverer 'iterative' imputes table cells, and this model's data has no table")
        options = {"cardinalities": list(input_specs[TABULAR]["cardinalities"])}
    elif name == "tip":
        if not argument:
            raise ConfigError("recoverer 'tip' needs its pre-training run: tip:runs/<run>")
        options = {"run": argument}
    elif name == "mopoe":
        options = {}
    else:
        raise ConfigError(f"unknown recoverer '{spec}' (one of {', '.join(RECOVERER_NAMES)})")
    recoverer = recoverers.create_recoverer(name, **options)
    recoverer.name = spec
    return recoverer.fit(train)


@dataclass
class ModalitySelection:
    """How :meth:`holomodal.Classifier.predict` chooses each sample's modalities.

    Args:
        recoverer: a fitted recoverer (:mod:`holomodal.selection.recoverers`); ``discard``
            never calls it.
        strategy: one of :data:`STRATEGIES`.
        calibration: DyMo's ICS calibration, ``logratio`` or ``ratio`` (spec section 3 c).
        temperature: tau of DyMo's quality score.

    After a call, :attr:`records` holds one row per sample: the modalities observed,
    recovered and finally used, the reward of each modality in each greedy round (NaN where
    none was computed) and the forward passes of the sample's chunk.
    """

    recoverer: Any = None
    strategy: str = "dymo"
    calibration: str = "logratio"
    temperature: float = 0.1
    records: pd.DataFrame | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        check_options(self.strategy, self.calibration, self.temperature)
        if self.strategy != "discard" and self.recoverer is None:
            raise ConfigError(f"selection '{self.strategy}' reads recovered modalities: give it a recoverer")

    def describe(self) -> dict[str, Any]:
        """What a run's evaluation records about the selection."""
        return {"strategy": self.strategy, "calibration": self.calibration, "temperature": self.temperature,
                "recoverer": None if self.recoverer is None else getattr(self.recoverer, "name", type(self.recoverer).__name__)}

    @torch.no_grad()
    def probabilities(self, model: Any, batch: Batch, batch_size: int = 512) -> Tensor:
        """(B, C) class probabilities of the encoded ``batch``; fills :attr:`records`."""
        check_selectable(model)
        model.eval()
        device = next(model.parameters()).device
        order = list(model.modality_order)
        selector = DyMoSelector(model.subset_statistics().to(device), self.temperature, self.calibration)
        outputs, records = [], []
        for start in range(0, len(batch), batch_size):
            rows = torch.arange(start, min(start + batch_size, len(batch)))
            part = batch.select(rows)  # keeps the batch's row numbers, or numbers the rows by position
            probs, part_records = self._select(model, selector, part.map(lambda t: t.to(device)), order)
            outputs.append(probs.cpu())
            records.append(part_records)
        self.records = pd.concat(records, ignore_index=True)
        return torch.cat(outputs)

    def _select(self, model: Any, selector: DyMoSelector, part: Batch, order: list[str]) -> tuple[Tensor, pd.DataFrame]:
        observed = observed_modalities(part, order)
        if self.strategy == "discard":
            filled, cells = part, None
            recovered = torch.zeros_like(observed)
        else:
            result = self.recoverer.recover(part)
            filled, cells = result.batch, result.cells
            flags = {m: v.to(observed.device).bool() for m, v in result.recovered.items()}
            recovered = torch.stack([flags.get(m, torch.zeros_like(observed[:, 0])) for m in order], dim=1) & ~observed
        forward = _UsageForward(model, part, filled, cells, order)

        rewards: list[Tensor] = []
        if self.strategy == "dymo":
            outcome = selector.select(forward, observed, recovered)
            probs, usage, rewards, passes = outcome.probabilities, outcome.usage, outcome.rewards, outcome.forward_passes
        else:
            usage = observed | recovered if self.strategy == "recover_all" else observed.clone()
            # a partial table counts as observed cells here: only a row with nothing at all is unanswerable
            nothing = ~usage.any(dim=1) & ~forward.has_partial_table
            if nothing.any():
                shown = part.row[nothing][:10].tolist()
                raise DataError(f"rows {shown} have no modality to use under selection '{self.strategy}'")
            logits, _ = forward(usage)
            probs, passes = torch.softmax(logits.float(), dim=1), 1
        return probs, _records(part, order, observed, recovered, usage, rewards, passes, probs)


class _UsageForward:
    """``usage (B, M) -> (logits, z)`` on the recovered inputs, with a partial table read as its
    observed cells when it is not used and as observed plus recovered cells when it is."""

    def __init__(self, model: Any, original: Batch, filled: Batch, cells: Tensor | None, order: list[str]) -> None:
        self.model, self.filled, self.order = model, filled, order
        partial = partial_tables(original)
        self.has_partial_table = torch.zeros(len(original), dtype=torch.bool, device=original.present[order[0]].device)
        self.table_index = order.index(TABULAR) if TABULAR in order and partial is not None else None
        if self.table_index is not None:
            self.has_partial_table = partial
            filled_cells = torch.zeros_like(original.cell_missing) if cells is None else cells.to(original.cell_missing.device).bool()
            self.cells_unused = original.cell_missing
            self.cells_used = original.cell_missing & ~filled_cells

    def __call__(self, usage: Tensor) -> tuple[Tensor, Tensor]:
        batch, model_usage = self.filled, usage
        if self.table_index is not None:
            t = self.table_index
            used = usage[:, t]
            batch = replace(self.filled, cell_missing=torch.where(used[:, None], self.cells_used, self.cells_unused))
            model_usage = usage.clone()
            model_usage[:, t] = used | self.has_partial_table
        return self.model.forward_subset(batch, model_usage)


def _names(mask: Tensor, order: list[str]) -> list[str]:
    return [";".join(m for m, on in zip(order, row) if on) for row in mask.tolist()]


def _records(part: Batch, order: list[str], observed: Tensor, recovered: Tensor, usage: Tensor,
             rewards: list[Tensor], passes: int, probs: Tensor) -> pd.DataFrame:
    table = {
        "row": part.row.cpu().numpy(),
        "observed": _names(observed, order),
        "recovered": _names(recovered, order),
        "used": _names(usage, order),
        "used_recovered": (usage & recovered).sum(dim=1).cpu().numpy(),
        "forward_passes": np.full(len(part), passes),
        "predicted": probs.argmax(dim=1).cpu().numpy(),
        "confidence": probs.max(dim=1).values.cpu().numpy(),
    }
    for t, round_rewards in enumerate(rewards):
        for i, m in enumerate(order):
            table[f"reward_{t + 1}_{m}"] = round_rewards[:, i].cpu().numpy()
    return pd.DataFrame(table)


__all__ = ["RECOVERER_NAMES", "STRATEGIES", "ModalitySelection", "build_recoverer", "check_selectable", "observed_modalities", "partial_tables",
           "check_options"]
