"""The encoder contract and the small helpers every encoder shares."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from holomodal.errors import ConfigError


class Encoder(nn.Module):
    """Maps one modality's tensors to ``(B, output_dim)``.

    ``forward(inputs, present, cell_missing=None)``: ``inputs`` is one modality's dict from
    :attr:`holomodal.batch.Batch.inputs`, ``present`` (B,) bool, ``cell_missing`` (B, N) bool
    for the tabular modality only. Every row goes through every parameter, absent rows
    included, so DDP never sees an unused parameter.

    Encoders with a natural token sequence also implement
    ``forward_tokens(inputs, present, cell_missing=None) -> (tokens (B, T, D), pooled (B, D))``.
    """

    output_dim: int

    def forward(self, inputs: dict[str, Tensor], present: Tensor, cell_missing: Tensor | None = None) -> Tensor:
        raise NotImplementedError


def mask_absent(x: Tensor, present: Tensor) -> Tensor:
    """``x`` with the rows of absent samples zeroed.

    The batch contract already zeroes them; doing it again here makes an absent row's
    output provably independent of whatever its tensors hold (NaN included), also when a
    caller bypasses :meth:`Batch.zero_missing`.
    """
    absent = ~present.to(device=x.device, dtype=torch.bool)
    return x.masked_fill(absent.view(-1, *([1] * (x.dim() - 1))), 0)


def require(spec: dict[str, Any], *keys: str, encoder: str) -> None:
    missing = [k for k in keys if k not in spec]
    if missing:
        raise ConfigError(
            f"encoder '{encoder}' needs input_spec keys {missing}; got {sorted(spec)} "
            "(is it paired with the right modality?)"
        )


class PixelNormalizer(nn.Module):
    """uint8 pixels -> float in [0, 1], normalised with the preprocessor's statistics.

    Kept inside the model so preprocessing statistics and weights never drift apart, and so
    the conversion runs on the accelerator rather than in the data loader. Without
    statistics (``mean``/``std`` None) pixels stay in [0, 1], as TIP feeds them.
    """

    def __init__(self, channels: int, mean: list[float] | None = None, std: list[float] | None = None) -> None:
        super().__init__()
        mean = [0.0] * channels if mean is None else [float(v) for v in mean]
        std = [1.0] * channels if std is None else [float(v) for v in std]
        if len(mean) != channels or len(std) != channels:
            raise ConfigError(f"image mean/std need {channels} values each, got {len(mean)} and {len(std)}")
        if any(s <= 0 for s in std):
            raise ConfigError(f"image std must be positive, got {std}")
        # not persistent: the preprocessor owns these statistics and rebuilds them from its spec
        self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("inv_std", 1.0 / torch.tensor(std).view(1, -1, 1, 1), persistent=False)

    def forward(self, pixels: Tensor) -> Tensor:
        x = pixels.float() / 255.0 if pixels.dtype == torch.uint8 else pixels.float()
        return (x - self.mean) * self.inv_std
