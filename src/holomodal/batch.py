"""The batch contract: tensors per modality plus explicit missingness masks.

A whole encoded split is a :class:`Batch` too; a mini-batch is ``split.select(rows)``,
which indexes every tensor at once (no per-sample Python loop, no collate).

Layout of ``inputs`` (``B`` = batch size):
  ``tabular``: ``categorical`` long (B, Nc), ``continuous`` float (B, Nn)
  image column: ``pixels`` uint8 (B, C, H, W)
  text column: ``input_ids`` long (B, L), ``attention_mask`` long (B, L)
  audio column: ``spectrogram`` float (B, 1, n_mels, frames)
  time-series column: ``values``, ``observed``, ``delta`` float (B, T, C)

``cell_missing`` (B, Nc + Nn) bool is True where a tabular cell is missing, in the
schema's categorical-then-continuous order. ``present[m]`` (B,) bool is False where
modality ``m`` is absent. Values under a mask are zeroed so that no encoder can read
them by accident; the masks, not the values, say what is missing.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Callable

import torch
from torch import Tensor


@dataclass
class Batch:
    inputs: dict[str, dict[str, Tensor]]
    present: dict[str, Tensor]
    cell_missing: Tensor | None = None
    target: Tensor | None = None
    row: Tensor | None = None
    extras: dict[str, Tensor] = field(default_factory=dict)

    def __len__(self) -> int:
        return int(next(iter(self.present.values())).shape[0])

    @property
    def modalities(self) -> list[str]:
        return list(self.inputs)

    def map(self, fn: Callable[[Tensor], Tensor]) -> "Batch":
        """A batch with ``fn`` applied to every tensor it holds."""
        return Batch(
            inputs={m: {k: fn(v) for k, v in t.items()} for m, t in self.inputs.items()},
            present={m: fn(p) for m, p in self.present.items()},
            cell_missing=None if self.cell_missing is None else fn(self.cell_missing),
            target=None if self.target is None else fn(self.target),
            row=None if self.row is None else fn(self.row),
            extras={k: fn(v) for k, v in self.extras.items()},
        )

    def select(self, rows: Tensor | list[int]) -> "Batch":
        """Rows ``rows`` of every tensor, gathered in one indexing operation each."""
        idx = torch.as_tensor(rows, dtype=torch.long)
        selected = self.map(lambda t: t[idx])
        if self.row is None:
            selected.row = idx
        return selected

    @staticmethod
    def cat(parts: "list[Batch]") -> "Batch":
        """The rows of ``parts`` one after the other. A target, row index or extra that some
        part lacks is left out of the result."""
        first = parts[0]

        def joined(values: list[Tensor | None]) -> Tensor | None:
            return None if any(v is None for v in values) else torch.cat(values)  # type: ignore[arg-type]

        extras = {k: torch.cat([p.extras[k] for p in parts]) for k in first.extras if all(k in p.extras for p in parts)}
        return Batch(
            inputs={m: {k: torch.cat([p.inputs[m][k] for p in parts]) for k in t} for m, t in first.inputs.items()},
            present={m: torch.cat([p.present[m] for p in parts]) for m in first.present},
            cell_missing=joined([p.cell_missing for p in parts]),
            target=joined([p.target for p in parts]),
            row=joined([p.row for p in parts]),
            extras=extras,
        )

    def to(self, device: torch.device | str, non_blocking: bool = False) -> "Batch":
        return self.map(lambda t: t.to(device, non_blocking=non_blocking))

    def pin_memory(self) -> "Batch":
        return self.map(lambda t: t.pin_memory())

    def with_masks(
        self, cell_missing: Tensor | None = None, present: dict[str, Tensor] | None = None
    ) -> "Batch":
        """A copy with extra missingness OR-ed in, masked values zeroed."""
        new_cells = self.cell_missing
        if cell_missing is not None and self.cell_missing is not None:
            new_cells = self.cell_missing | cell_missing.to(self.cell_missing.device)
        new_present = dict(self.present)
        for m, keep in (present or {}).items():
            new_present[m] = new_present[m] & keep.to(new_present[m].device)
        return replace(self, cell_missing=new_cells, present=new_present).zero_missing()

    def zero_missing(self) -> "Batch":
        """Zero every value hidden by a mask, so masks and values never disagree."""
        inputs = {m: dict(t) for m, t in self.inputs.items()}
        cell_missing = self.cell_missing
        if "tabular" in inputs and cell_missing is not None:
            # an absent table means every one of its cells is missing
            cell_missing = cell_missing | ~self.present["tabular"][:, None]
            tab = inputs["tabular"]
            n_cat = tab["categorical"].shape[1]
            tab["categorical"] = tab["categorical"].masked_fill(cell_missing[:, :n_cat], 0)
            tab["continuous"] = tab["continuous"].masked_fill(cell_missing[:, n_cat:], 0.0)
        for m, tensors in inputs.items():
            absent = ~self.present[m]
            for k, v in tensors.items():
                shape = (-1,) + (1,) * (v.dim() - 1)
                tensors[k] = v.masked_fill(absent.view(shape), 0)
        return replace(self, inputs=inputs, cell_missing=cell_missing)
