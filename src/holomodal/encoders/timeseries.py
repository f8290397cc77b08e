"""A GRU over hourly-binned series with observation mask and time since last observation."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from holomodal.encoders import register_encoder
from holomodal.encoders.base import Encoder, mask_absent, require
from holomodal.errors import ConfigError


@register_encoder("gru")
class GRUEncoder(Encoder):
    """Input per step: ``[values, observed, delta]`` (3C), so the GRU sees which values were
    measured and how stale the carried ones are.

    Args:
        input_spec: ``{"channels": C, "steps": T}``.
        hidden: GRU hidden size.
        layers: stacked GRU layers.
        dropout: dropout between stacked layers (ignored for one layer).
        flatten_steps: output every step's state flattened (B, T * width) instead of the
            last hidden state, as I2M2's MIMIC time-series encoders do.
        step_dim: with ``flatten_steps``, a per-step ``Linear(hidden, step_dim)`` before
            flattening (I2M2's unimodal expert: 30 -> 15, 360-d); ``None`` flattens the raw
            GRU outputs (I2M2's inter expert: 24 x 30 = 720-d).
    """

    def __init__(
        self,
        input_spec: dict[str, Any],
        hidden: int = 64,
        layers: int = 1,
        dropout: float = 0.0,
        flatten_steps: bool = False,
        step_dim: int | None = None,
    ) -> None:
        super().__init__()
        require(input_spec, "channels", "steps", encoder="gru")
        if hidden < 1 or layers < 1:
            raise ConfigError(f"gru: hidden and layers must be >= 1, got {hidden} and {layers}")
        channels, steps = int(input_spec["channels"]), int(input_spec["steps"])
        self.gru = nn.GRU(3 * channels, hidden, num_layers=layers, batch_first=True, dropout=dropout if layers > 1 else 0.0)
        self.flatten_steps = flatten_steps
        self.step_proj = nn.Linear(hidden, step_dim) if flatten_steps and step_dim else None
        per_step = step_dim if self.step_proj is not None else hidden
        self.output_dim = steps * per_step if flatten_steps else hidden
        self.token_dim = hidden  # the width of forward_tokens' per-step tokens

    def _run(self, inputs: dict[str, Tensor], present: Tensor) -> tuple[Tensor, Tensor]:
        x = torch.cat([inputs["values"], inputs["observed"], inputs["delta"]], dim=-1).float()
        return self.gru(mask_absent(x, present))

    def _pooled(self, out: Tensor, last: Tensor) -> Tensor:
        if not self.flatten_steps:
            return last[-1]
        if self.step_proj is not None:
            out = self.step_proj(out)
        return out.flatten(1)

    def forward_tokens(self, inputs: dict[str, Tensor], present: Tensor, cell_missing: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Every step's state as tokens (B, T, hidden) and :meth:`forward`'s output."""
        out, last = self._run(inputs, present)
        return out, self._pooled(out, last)

    def forward(self, inputs: dict[str, Tensor], present: Tensor, cell_missing: Tensor | None = None) -> Tensor:
        return self._pooled(*self._run(inputs, present))
