"""A simple tabular baseline: embeddings and values plus the missing mask as explicit inputs."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from holomodal.encoders import register_encoder
from holomodal.encoders.base import Encoder


@register_encoder("tabular_mlp")
class TabularMLP(Encoder):
    def __init__(self, input_spec: dict[str, Any], hidden: int = 64, layers: int = 2, embed_dim: int = 4, dropout: float = 0.0) -> None:
        super().__init__()
        cards = list(input_spec["cardinalities"])
        self.n_cat, self.n_con = len(cards), int(input_spec["n_continuous"])
        self.embeddings = nn.ModuleList(nn.Embedding(k, embed_dim) for k in cards)
        width = self.n_cat * embed_dim + self.n_con + self.n_cat + self.n_con  # + missing flags
        blocks: list[nn.Module] = []
        for _ in range(layers):
            blocks += [nn.Linear(width, hidden), nn.ReLU(), nn.Dropout(dropout)]
            width = hidden
        self.mlp = nn.Sequential(*blocks)
        self.output_dim = hidden

    def forward(self, inputs: dict[str, Tensor], present: Tensor, cell_missing: Tensor | None = None) -> Tensor:
        cat, con = inputs["categorical"], inputs["continuous"]
        missing = cell_missing if cell_missing is not None else torch.zeros(cat.shape[0], self.n_cat + self.n_con, dtype=torch.bool, device=cat.device)
        keep = (~missing).to(con.dtype)
        embedded = [emb(cat[:, j]) * keep[:, j : j + 1] for j, emb in enumerate(self.embeddings)]
        x = torch.cat([*embedded, con * keep[:, self.n_cat :], missing.to(con.dtype)], dim=1)
        return self.mlp(x)
