"""The encoder contract."""

from __future__ import annotations

import torch
from torch import Tensor, nn


class Encoder(nn.Module):
    """``forward(inputs, present, cell_missing=None) -> (B, output_dim)``."""

    output_dim: int

    def forward(self, inputs: dict[str, Tensor], present: Tensor, cell_missing: Tensor | None = None) -> Tensor:
        raise NotImplementedError


class PixelNormalizer(nn.Module):
    """uint8 pixels -> float, normalised with the statistics the preprocessor fitted.

    Kept inside the model so preprocessing statistics and weights never drift apart, and so
    the conversion runs on the accelerator rather than in the data loader.
    """

    def __init__(self, mean: list[float], std: list[float]) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1), persistent=False)

    def forward(self, pixels: Tensor) -> Tensor:
        x = pixels.float() / 255.0 if pixels.dtype == torch.uint8 else pixels.float()
        return (x - self.mean) / self.std
