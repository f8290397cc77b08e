"""Image-tabular matching (ITM) with in-batch hard negatives (ALBEF / BLIP style; spec
``tip_stil.md`` section 1.5).

From the contrastive similarity logits S (B, B) of the same batch, without gradient,

    W_i2t = softmax(S, dim=1) + 1e-4,   W_t2i = softmax(S^T, dim=1) + 1e-4,
    diag(W_i2t) = diag(W_t2i) = 0,

each image a draws one table b ~ Multinomial(W_i2t[a]) and each table b draws one
image a ~ Multinomial(W_t2i[b]): tables that the contrastive head confuses with the
right one are picked more often, and the right one never. With o the fused CLS of a pair
and h a linear head onto {no match, match},

    L_itm = CE(h([o+ ; o-_image-anchored ; o-_table-anchored]), [1]*B + [0]*2B)

averaged over the 3B pairs. The 1e-4 keeps every other row drawable when the softmax
puts all its mass on the diagonal.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

FLOOR = 1e-4


def negative_weights(similarity: Tensor) -> Tensor:
    """Sampling weights (B, B) from similarity logits, row-wise softmax, diagonal zeroed."""
    # diverged (NaN) logits draw uniformly, so the step ends in a NaN loss that the training
    # loop's finite-loss check reports, rather than in an error inside torch.multinomial
    weights = torch.softmax(similarity.detach().float(), dim=1).nan_to_num(0.0) + FLOOR
    return weights.masked_fill(torch.eye(len(weights), dtype=torch.bool, device=weights.device), 0.0)


def sample_hard_negatives(similarity: Tensor, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
    """``(tables_for_images, images_for_tables)``: for image a the index of a mismatched table,
    for table b the index of a mismatched image, drawn in proportion to the similarity.

    Needs B >= 2 (a batch of one has no negative)."""
    if similarity.shape[0] < 2:
        raise ValueError("image-tabular matching needs at least two pairs per batch to draw negatives")
    tables = torch.multinomial(negative_weights(similarity), 1, generator=generator).squeeze(1)
    images = torch.multinomial(negative_weights(similarity.T), 1, generator=generator).squeeze(1)
    return tables, images


class ImageTabularMatching(nn.Module):
    """The matching head and its loss; the pairs are fused by the caller.

    ``forward(positive, negatives)`` takes the fused CLS of the B matched pairs and of the
    2B negative pairs (image-anchored first, then table-anchored) and returns the loss and
    the matching accuracy.
    """

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.head = nn.Linear(dim, 2)
        nn.init.normal_(self.head.weight, std=0.02)
        nn.init.zeros_(self.head.bias)

    sample_negatives = staticmethod(sample_hard_negatives)

    def forward(self, positive: Tensor, negatives: Tensor) -> tuple[Tensor, Tensor]:
        logits = self.head(torch.cat([positive, negatives], dim=0)).float()
        target = torch.cat([
            torch.ones(len(positive), dtype=torch.long, device=logits.device),
            torch.zeros(len(negatives), dtype=torch.long, device=logits.device),
        ])
        accuracy = (logits.argmax(dim=1) == target).float().mean()
        return F.cross_entropy(logits, target), accuracy
