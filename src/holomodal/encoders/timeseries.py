"""A GRU over hourly-binned series with observation mask and time-since-last-observation."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from holomodal.encoders import register_encoder
from holomodal.encoders.base import Encoder


@register_encoder("gru")
class GRUEncoder(Encoder):
    """Input per step: ``[values, observed, delta]`` (3C). Output: the last hidden state, or with
    ``flatten_steps`` every step's projected output (I2M2's MIMIC time-series expert)."""

    def __init__(self, input_spec: dict[str, Any], hidden: int = 64, layers: int = 1, flatten_steps: bool = False, step_dim: int = 15) -> None:
        super().__init__()
        channels, steps = int(input_spec["channels"]), int(input_spec["steps"])
        self.gru = nn.GRU(3 * channels, hidden, num_layers=layers, batch_first=True)
        self.flatten_steps = flatten_steps
        self.step_proj = nn.Linear(hidden, step_dim) if flatten_steps else None
        self.output_dim = steps * step_dim if flatten_steps else hidden

    def forward(self, inputs: dict[str, Tensor], present: Tensor, cell_missing: Tensor | None = None) -> Tensor:
        x = torch.cat([inputs["values"], inputs["observed"], inputs["delta"]], dim=-1)
        out, last = self.gru(x)
        if self.flatten_steps:
            return self.step_proj(out).flatten(1)
        return last[-1]
