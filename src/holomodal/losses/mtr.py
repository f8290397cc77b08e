"""Masked tabular reconstruction (MTR; spec ``tip_stil.md`` section 1.5).

Per row, ``round(r * N)`` of the N columns (r = 0.5; Python's round, so 6.5 -> 6) are
replaced by the tabular encoder's ``[MASK]`` token; the fused tokens H then predict the
original cells. With column offsets o_j (categorical ids of all columns share one range
of K ids), u_{b,j} = W_cat H_{b,j} in R^K and y_{b,j} = w_con . H_{b,j} + c,

    L_cat = sum_{(b,j) in M_cat} -log softmax(u_{b,j})[x_{b,j} + o_j] / |M_cat|
    L_con = sum_{(b,j) in M_con} (y_{b,j} - x_{b,j})^2 / |M_con|
    L_mtr = (L_cat + L_con) / 2

where M_cat / M_con are the masked categorical / continuous cells. The softmax runs over
all K ids, not only column j's (as in TIP). Both heads are shared by all columns.

Two choices TIP's complete tables never had to make: a masked cell that is missing in the
data has no target and is left out of M; and when a batch has masked cells of one kind
only (or a table has columns of one kind only), L_mtr is that kind's term alone rather
than half of it.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def sample_column_mask(
    batch_size: int, n_columns: int, rate: float, device: torch.device | str | None = None,
    generator: torch.Generator | None = None,
) -> Tensor:
    """(B, N) bool with exactly ``round(rate * N)`` True per row, the columns drawn uniformly."""
    count = round(rate * n_columns)
    scores = torch.rand(batch_size, n_columns, generator=generator, device=device if generator is None else generator.device)
    order = scores.argsort(dim=1)
    mask = torch.zeros(batch_size, n_columns, dtype=torch.bool, device=order.device)
    mask.scatter_(1, order[:, :count], True)
    return mask.to(device) if device is not None else mask


class MaskedTabularReconstructionLoss(nn.Module):
    """Args:
        dim: width of the fused tokens.
        cardinalities: ids per categorical column (holomodal's codes: 0 = unknown category).
        n_continuous: number of continuous columns.
        mask_rate: r, the share of columns masked per row (TIP: 0.5).

    ``forward(tokens, categorical, continuous, masked, observed=None)``: ``tokens``
    (B, N+1, dim) with CLS first, the original codes (B, Nc) and z-scored values (B, Nn),
    ``masked`` (B, N) the cells replaced by ``[MASK]``, ``observed`` (B, N) the cells that
    hold a value in the data.
    """

    def __init__(self, dim: int, cardinalities: Sequence[int], n_continuous: int, mask_rate: float = 0.5) -> None:
        super().__init__()
        cards = [int(k) for k in cardinalities]
        self.n_cat, self.n_con = len(cards), int(n_continuous)
        self.mask_rate = float(mask_rate)
        self.register_buffer("offsets", torch.tensor([0, *cards[:-1]], dtype=torch.long).cumsum(0)[: self.n_cat], persistent=False)
        self.cat_classifier = nn.Linear(dim, sum(cards)) if self.n_cat else None
        self.con_regressor = nn.Linear(dim, 1) if self.n_con else None
        for head in (self.cat_classifier, self.con_regressor):
            if head is not None:
                nn.init.normal_(head.weight, std=0.02)
                nn.init.zeros_(head.bias)

    @property
    def n_columns(self) -> int:
        return self.n_cat + self.n_con

    def sample_mask(self, batch_size: int, device: torch.device | str | None = None, generator: torch.Generator | None = None) -> Tensor:
        return sample_column_mask(batch_size, self.n_columns, self.mask_rate, device, generator)

    def predict(self, tokens: Tensor) -> tuple[Tensor | None, Tensor | None]:
        """Categorical logits (B, Nc, K) and continuous predictions (B, Nn) from fused tokens."""
        cells = tokens[:, 1:]
        logits = self.cat_classifier(cells[:, : self.n_cat]) if self.cat_classifier is not None else None
        values = self.con_regressor(cells[:, self.n_cat :]).squeeze(-1) if self.con_regressor is not None else None
        return logits, values

    def forward(
        self, tokens: Tensor, categorical: Tensor, continuous: Tensor, masked: Tensor, observed: Tensor | None = None
    ) -> Tensor:
        scored = masked.bool() if observed is None else masked.bool() & observed.bool()
        logits, values = self.predict(tokens)
        terms = []
        if logits is not None:
            chosen = scored[:, : self.n_cat]
            if chosen.any():
                target = categorical.long() + self.offsets
                nll = F.cross_entropy(logits.float().flatten(0, 1), target.flatten(), reduction="none").view_as(target)
                terms.append(nll[chosen].mean())
        if values is not None:
            chosen = scored[:, self.n_cat :]
            if chosen.any():
                terms.append((values.float() - continuous.float()).square()[chosen].mean())
        if not terms:
            # keeps the graph (and DDP) intact on a batch with nothing to reconstruct
            return tokens.sum() * 0.0
        return torch.stack(terms).mean()
