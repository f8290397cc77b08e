"""A simple tabular baseline: column embeddings and values, plus the missing mask as inputs.

Missingness is explicit: a missing cell contributes a zero embedding / zero value and a 1
in its own indicator input, so the MLP can tell "missing" from "observed as zero".
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from holomodal.encoders import register_encoder
from holomodal.encoders.base import Encoder, require
from holomodal.errors import ConfigError


@register_encoder("tabular_mlp")
class TabularMLP(Encoder):
    """Args:
        input_spec: ``{"cardinalities": [k_1..k_Nc], "n_continuous": Nn}``.
        hidden: width of every layer and the output dimension.
        layers: number of Linear-ReLU-Dropout layers.
        embed_dim: size of each categorical column's embedding.
        dropout: dropout after each layer.
    """

    def __init__(
        self, input_spec: dict[str, Any], hidden: int = 64, layers: int = 2, embed_dim: int = 4, dropout: float = 0.0
    ) -> None:
        super().__init__()
        require(input_spec, "cardinalities", "n_continuous", encoder="tabular_mlp")
        if layers < 1:
            raise ConfigError(f"tabular_mlp: layers must be >= 1, got {layers}")
        cards = [int(k) for k in input_spec["cardinalities"]]
        self.n_cat, self.n_con = len(cards), int(input_spec["n_continuous"])
        if self.n_cat + self.n_con == 0:
            raise ConfigError("tabular_mlp: the table has no columns")
        self.embed_dim = embed_dim
        # one table with per-column offsets: the same per-column embeddings as a ModuleList,
        # looked up in one call instead of one per column
        self.register_buffer("offsets", torch.tensor([0, *cards[:-1]], dtype=torch.long).cumsum(0)[: self.n_cat], persistent=False)
        self.embedding = nn.Embedding(sum(cards), embed_dim) if self.n_cat else None
        width = self.n_cat * embed_dim + self.n_con + (self.n_cat + self.n_con)
        blocks: list[nn.Module] = []
        for _ in range(layers):
            blocks += [nn.Linear(width, hidden), nn.ReLU(), nn.Dropout(dropout)]
            width = hidden
        self.mlp = nn.Sequential(*blocks)
        self.output_dim = hidden

    def forward(self, inputs: dict[str, Tensor], present: Tensor, cell_missing: Tensor | None = None) -> Tensor:
        cat, con = inputs["categorical"], inputs["continuous"]
        b = con.shape[0]
        missing = ~present.to(dtype=torch.bool, device=con.device).view(-1, 1).expand(b, self.n_cat + self.n_con)
        if cell_missing is not None:
            missing = missing | cell_missing.bool()
        features = []
        if self.embedding is not None:
            codes = cat.long().masked_fill(missing[:, : self.n_cat], 0)
            emb = self.embedding(codes + self.offsets).masked_fill(missing[:, : self.n_cat, None], 0.0)
            features.append(emb.flatten(1))
        features.append(con.float().masked_fill(missing[:, self.n_cat :], 0.0))
        features.append(missing.float())
        return self.mlp(torch.cat(features, dim=1))
