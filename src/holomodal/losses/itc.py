"""Image-tabular contrastive loss (ITC, CLIP-style; spec ``tip_stil.md`` section 1.5).

For a batch of B image-table pairs, with pooled image features v_a and tabular CLS
features t_a,

    z_i = normalize(g_i(v)),  z_t = normalize(g_t(t)),  S = z_i z_t^T / tau
    L_itc = lam * CE(S, [0..B-1]) + (1 - lam) * CE(S^T, [0..B-1])

where g_i, g_t are SimCLR projection heads (Linear-ReLU-Linear, no BatchNorm) onto a
128-d space, tau = 0.1 is fixed (not learned), lam = 0.5, and CE is averaged over the
batch. Row a of S scores image a against every table; the matching table is the target.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class ProjectionHead(nn.Module):
    """Linear(in, hidden) - ReLU - Linear(hidden, out), as lightly 1.2's SimCLR head."""

    def __init__(self, in_dim: int, hidden_dim: int, out_dim: int) -> None:
        super().__init__()
        self.layers = nn.Sequential(nn.Linear(in_dim, hidden_dim), nn.ReLU(), nn.Linear(hidden_dim, out_dim))

    def forward(self, x: Tensor) -> Tensor:
        return self.layers(x)


class ImageTabularContrastiveLoss(nn.Module):
    """Args:
        image_dim, tabular_dim: widths of the pooled image and tabular CLS features; each
            head's hidden layer has the width of its input (TIP: 2048 and 512).
        projection_dim: the shared embedding width (TIP: 128).
        temperature: tau (TIP: 0.1).
        lam: weight of the image-to-table direction (TIP: 0.5).

    ``forward`` returns the loss and the similarity logits S (B, B), which the matching
    loss reuses to draw hard negatives.
    """

    def __init__(
        self, image_dim: int, tabular_dim: int, projection_dim: int = 128, temperature: float = 0.1, lam: float = 0.5
    ) -> None:
        super().__init__()
        self.image_head = ProjectionHead(image_dim, image_dim, projection_dim)
        self.tabular_head = ProjectionHead(tabular_dim, tabular_dim, projection_dim)
        self.temperature = float(temperature)
        self.lam = float(lam)

    def similarity(self, image_features: Tensor, tabular_features: Tensor) -> Tensor:
        z_image = F.normalize(self.image_head(image_features).float(), dim=-1)
        z_table = F.normalize(self.tabular_head(tabular_features).float(), dim=-1)
        return z_image @ z_table.T / self.temperature

    def forward(self, image_features: Tensor, tabular_features: Tensor) -> tuple[Tensor, Tensor]:
        logits = self.similarity(image_features, tabular_features)
        target = torch.arange(logits.shape[0], device=logits.device)
        loss = self.lam * F.cross_entropy(logits, target) + (1 - self.lam) * F.cross_entropy(logits.T, target)
        return loss, logits
