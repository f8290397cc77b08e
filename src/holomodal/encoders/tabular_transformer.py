"""TIP's tabular transformer (spec ``tip_stil.md`` section 1.3.2).

Each column is a token: categorical codes index one shared embedding table (column offsets
keep the columns apart), continuous values go through one shared ``Linear(1, d)``. A
missing or masked cell's token is replaced by a learned ``[MASK]`` vector and excluded as
an attention key in every layer (it still attends, to itself and to observed tokens); a
learned ``[CLS]`` token, never masked, leads the sequence; column embeddings say which
column a token is. LayerNorm and dropout follow the embedding; the blocks are pre-LN and
there is no final LayerNorm.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from holomodal.attention import attention
from holomodal.encoders import register_encoder
from holomodal.encoders.base import Encoder, require
from holomodal.errors import ConfigError

MASKED_KEY_BIAS = -1e9


class PreNormBlock(nn.Module):
    """Pre-LN transformer block whose attention takes an additive float bias."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float = 4.0, dropout: float = 0.0) -> None:
        super().__init__()
        self.heads = heads
        self.dropout = dropout
        hidden = int(dim * mlp_ratio)
        self.norm1 = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim, bias=False)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(dropout)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(
            nn.Linear(dim, hidden), nn.GELU(), nn.Dropout(dropout), nn.Linear(hidden, dim), nn.Dropout(dropout)
        )

    def forward(self, x: Tensor, bias: Tensor | None = None) -> Tensor:
        b, n, d = x.shape
        q, k, v = self.qkv(self.norm1(x)).view(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        if bias is not None:
            # under autocast q is half precision and SDPA wants the mask in the same dtype;
            # -1e9 becomes -inf in float16, harmless since the diagonal is never masked
            bias = bias.to(q.dtype)
        attn = attention(q, k, v, bias, self.dropout if self.training else 0.0)
        x = x + self.proj_drop(self.proj(attn.transpose(1, 2).reshape(b, n, d)))
        return x + self.mlp(self.norm2(x))


def key_mask_bias(masked: Tensor, dtype: torch.dtype) -> Tensor:
    """Additive attention bias (B, 1, N+1, N+1) from a (B, N) column mask.

    The CLS slot is prepended unmasked; a masked key gets ``-1e9`` from every query except
    itself, so a masked token is never read by others yet still has something to attend to.
    """
    keys = torch.cat([torch.zeros_like(masked[:, :1]), masked], dim=1)
    n = keys.shape[1]
    eye = torch.eye(n, dtype=torch.bool, device=masked.device)
    blocked = keys[:, None, :] & ~eye
    return torch.zeros(blocked.shape, dtype=dtype, device=masked.device).masked_fill(blocked, MASKED_KEY_BIAS)[:, None]


@register_encoder("tabular_transformer")
class TabularTransformer(Encoder):
    """TIP's tabular encoder. :meth:`forward_tokens` puts the CLS token first
    (``cls_first``), before one token per column.

    Args:
        input_spec: ``{"cardinalities": [k_1..k_Nc], "n_continuous": Nn}``.
        dim, depth, heads, mlp_ratio: transformer width, blocks, heads, MLP expansion.
        dropout: attention, projection and MLP dropout inside the blocks (TIP: 0).
        embedding_dropout: dropout after the embedding LayerNorm (TIP: 0).
    """

    cls_first = True

    def __init__(
        self,
        input_spec: dict[str, Any],
        dim: int = 512,
        depth: int = 4,
        heads: int = 8,
        mlp_ratio: float = 4.0,
        dropout: float = 0.0,
        embedding_dropout: float = 0.0,
    ) -> None:
        super().__init__()
        require(input_spec, "cardinalities", "n_continuous", encoder="tabular_transformer")
        if dim % heads:
            raise ConfigError(f"tabular_transformer: dim {dim} is not divisible by heads {heads}")
        cards = [int(k) for k in input_spec["cardinalities"]]
        if any(k < 1 for k in cards):
            raise ConfigError(f"tabular_transformer: cardinalities must be >= 1, got {cards}")
        self.n_cat, self.n_con = len(cards), int(input_spec["n_continuous"])
        self.n_columns = self.n_cat + self.n_con
        if self.n_columns == 0:
            raise ConfigError("tabular_transformer: the table has no columns")
        self.register_buffer("offsets", torch.tensor([0, *cards[:-1]], dtype=torch.long).cumsum(0)[: self.n_cat], persistent=False)
        self.num_categories = sum(cards)
        # modules exist only for column kinds the table has: an unused one would stall DDP
        self.cat_embedding = nn.Embedding(self.num_categories, dim) if self.n_cat else None
        self.con_embedding = nn.Linear(1, dim) if self.n_con else None
        self.mask_token = nn.Parameter(torch.zeros(dim))
        self.cls_token = nn.Parameter(torch.zeros(dim))
        self.column_embedding = nn.Embedding(self.n_columns + 1, dim)
        self.embed_norm = nn.LayerNorm(dim)
        self.embed_dropout = nn.Dropout(embedding_dropout)
        self.blocks = nn.ModuleList(PreNormBlock(dim, heads, mlp_ratio, dropout) for _ in range(depth))
        self.output_dim = dim
        self.reset_parameters()

    def reset_parameters(self) -> None:
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

    def column_mask(
        self, inputs: dict[str, Tensor], present: Tensor, cell_missing: Tensor | None = None, token_mask: Tensor | None = None
    ) -> Tensor:
        """(B, N) bool: True where a cell is missing, masked, or its row's table is absent."""
        masked = ~present.to(dtype=torch.bool, device=inputs["continuous"].device).view(-1, 1)
        masked = masked.expand(-1, self.n_columns)
        if cell_missing is not None:
            masked = masked | cell_missing.bool()
        if token_mask is not None:
            masked = masked | token_mask.bool()
        return masked

    def embed(self, inputs: dict[str, Tensor], masked: Tensor) -> Tensor:
        """Token embeddings (B, N+1, dim) after column embedding, LayerNorm and dropout."""
        parts = []
        if self.cat_embedding is not None:
            # a masked cell's code is never read, so a stale or out-of-range code cannot leak in or crash
            codes = inputs["categorical"].long().masked_fill(masked[:, : self.n_cat], 0)
            parts.append(self.cat_embedding(codes + self.offsets))
        if self.con_embedding is not None:
            values = inputs["continuous"].masked_fill(masked[:, self.n_cat :], 0.0)
            parts.append(self.con_embedding(values.unsqueeze(-1).to(self.con_embedding.weight.dtype)))
        tokens = torch.cat(parts, dim=1) if len(parts) > 1 else parts[0]
        tokens = torch.where(masked.unsqueeze(-1), self.mask_token.to(tokens.dtype), tokens)
        cls = self.cls_token.to(tokens.dtype).expand(tokens.shape[0], 1, -1)
        tokens = torch.cat([cls, tokens], dim=1) + self.column_embedding.weight.to(tokens.dtype)
        return self.embed_dropout(self.embed_norm(tokens))

    def forward_tokens(
        self,
        inputs: dict[str, Tensor],
        present: Tensor,
        cell_missing: Tensor | None = None,
        token_mask: Tensor | None = None,
    ) -> tuple[Tensor, Tensor]:
        """Tokens (B, N+1, dim), CLS first, and the CLS vector (B, dim).

        ``token_mask`` (B, N) bool, e.g. MTR's random masking, is OR-ed with ``cell_missing``:
        both use the same [MASK] token and key masking, as in TIP.
        """
        masked = self.column_mask(inputs, present, cell_missing, token_mask)
        x = self.embed(inputs, masked)
        bias = key_mask_bias(masked, x.dtype)
        for block in self.blocks:
            x = block(x, bias)
        return x, x[:, 0]

    def forward(self, inputs: dict[str, Tensor], present: Tensor, cell_missing: Tensor | None = None) -> Tensor:
        return self.forward_tokens(inputs, present, cell_missing)[1]
