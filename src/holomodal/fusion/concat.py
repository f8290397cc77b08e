"""Late fusion by concatenation, with an explicit presence flag per modality."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from holomodal.fusion import register_fusion


@register_fusion("concat")
class ConcatFusion(nn.Module):
    """``[e_1 * p_1, ..., e_M * p_M, p_1, ..., p_M]``: an absent modality contributes zeros,
    and its flag tells the head that the zeros mean "absent", not "observed zero"."""

    def __init__(self, input_dims: dict[str, int]) -> None:
        super().__init__()
        self.modalities = list(input_dims)
        self.output_dim = sum(input_dims.values()) + len(input_dims)

    def forward(self, embeddings: dict[str, Tensor], present: dict[str, Tensor]) -> Tensor:
        flags = [present[m].to(embeddings[m].dtype) for m in self.modalities]
        parts = [embeddings[m] * f[:, None] for m, f in zip(self.modalities, flags)]
        return torch.cat(parts + [torch.stack(flags, dim=1)], dim=1)
