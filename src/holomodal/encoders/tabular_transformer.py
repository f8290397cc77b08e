"""TIP's tabular transformer (spec section 1.3.2).

Each column is a token: categorical codes index one shared embedding table (column offsets
keep the columns apart), continuous values go through one shared ``Linear(1, d)``. A
missing or masked cell's token is replaced by a learned ``[MASK]`` vector and excluded as
an attention key in every layer (it still attends, to itself and to observed tokens); a
learned ``[CLS]`` token, never masked, leads the sequence; column embeddings say which
column a token is.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from holomodal.encoders import register_encoder
from holomodal.encoders.base import Encoder

MASKED_KEY_BIAS = -1e9


class PreNormBlock(nn.Module):
    """Pre-LN transformer block; attention takes an additive float bias."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float = 4.0, dropout: float = 0.0) -> None:
        super().__init__()
        self.heads = heads
        self.norm1 = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim, bias=False)
        self.proj = nn.Linear(dim, dim)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, int(dim * mlp_ratio)), nn.GELU(), nn.Linear(int(dim * mlp_ratio), dim))
        self.dropout = dropout

    def forward(self, x: Tensor, bias: Tensor | None) -> Tensor:
        b, n, d = x.shape
        q, k, v = self.qkv(self.norm1(x)).view(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        attn = F.scaled_dot_product_attention(q, k, v, attn_mask=bias, dropout_p=self.dropout if self.training else 0.0)
        x = x + self.proj(attn.transpose(1, 2).reshape(b, n, d))
        return x + self.mlp(self.norm2(x))


@register_encoder("tabular_transformer")
class TabularTransformer(Encoder):
    def __init__(
        self, input_spec: dict[str, Any], dim: int = 512, depth: int = 4, heads: int = 8,
        mlp_ratio: float = 4.0, dropout: float = 0.0, embedding_dropout: float = 0.0,
    ) -> None:
        super().__init__()
        cards = [int(k) for k in input_spec["cardinalities"]]
        self.n_cat, self.n_con = len(cards), int(input_spec["n_continuous"])
        self.n_columns = self.n_cat + self.n_con
        offsets = torch.tensor([0] + cards[:-1], dtype=torch.long).cumsum(0) if cards else torch.zeros(0, dtype=torch.long)
        self.register_buffer("offsets", offsets, persistent=False)
        self.num_categories = sum(cards)
        self.cat_embedding = nn.Embedding(max(self.num_categories, 1), dim)
        self.con_projection = nn.Linear(1, dim)
        self.mask_token = nn.Parameter(torch.zeros(dim))
        self.cls_token = nn.Parameter(torch.zeros(dim))
        self.column_embedding = nn.Embedding(self.n_columns + 1, dim)
        self.embed_norm = nn.LayerNorm(dim)
        self.embed_dropout = nn.Dropout(embedding_dropout)
        self.blocks = nn.ModuleList(PreNormBlock(dim, heads, mlp_ratio, dropout) for _ in range(depth))
        self.output_dim = dim
        self._init_weights()

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, (nn.Linear, nn.Embedding)):
                nn.init.normal_(m.weight, std=0.02)
                if isinstance(m, nn.Linear) and m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        nn.init.trunc_normal_(self.mask_token, std=0.02)
        nn.init.trunc_normal_(self.cls_token, std=0.02)

    def embed(self, inputs: dict[str, Tensor], masked: Tensor) -> Tensor:
        cat, con = inputs["categorical"], inputs["continuous"]
        parts = []
        if self.n_cat:
            parts.append(self.cat_embedding(cat + self.offsets))
        if self.n_con:
            parts.append(self.con_projection(con.unsqueeze(-1)))
        tokens = torch.cat(parts, dim=1)
        tokens = torch.where(masked.unsqueeze(-1), self.mask_token.to(tokens.dtype), tokens)
        cls = self.cls_token.to(tokens.dtype).expand(tokens.shape[0], 1, -1)
        tokens = torch.cat([cls, tokens], dim=1) + self.column_embedding.weight.to(tokens.dtype)
        return self.embed_dropout(self.embed_norm(tokens))

    def forward_tokens(
        self, inputs: dict[str, Tensor], present: Tensor, cell_missing: Tensor | None = None, token_mask: Tensor | None = None,
    ) -> tuple[Tensor, Tensor]:
        """Tokens (B, N+1, dim) and CLS (B, dim). ``token_mask`` (e.g. MTR's masking) is OR-ed
        with ``cell_missing``; both use the same [MASK] token and key masking."""
        b = inputs["continuous"].shape[0]
        masked = torch.zeros(b, self.n_columns, dtype=torch.bool, device=inputs["continuous"].device)
        if cell_missing is not None:
            masked = masked | cell_missing
        if token_mask is not None:
            masked = masked | token_mask
        masked = masked | ~present.view(-1, 1)
        x = self.embed(inputs, masked)
        keys = torch.cat([torch.zeros_like(masked[:, :1]), masked], dim=1)  # CLS is never masked
        eye = torch.eye(self.n_columns + 1, dtype=torch.bool, device=x.device)
        blocked = keys[:, None, :] & ~eye  # a masked token is hidden from every query but itself
        bias = torch.zeros(blocked.shape, dtype=x.dtype, device=x.device).masked_fill(blocked, MASKED_KEY_BIAS)[:, None]
        for block in self.blocks:
            x = block(x, bias)
        return x, x[:, 0]

    def forward(self, inputs: dict[str, Tensor], present: Tensor, cell_missing: Tensor | None = None) -> Tensor:
        return self.forward_tokens(inputs, present, cell_missing)[1]
