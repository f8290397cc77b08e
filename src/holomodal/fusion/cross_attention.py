"""TIP's multimodal interaction module (spec ``tip_stil.md`` section 1.3.3).

The tokens of one modality (the *query* modality, TIP: the table, CLS first) are refined
by ``depth`` pre-LN blocks, each

    h <- h + SelfAttn(LN_1(h))
    h <- h + CrossAttn(LN_c(h), m)      m = LN(W_m x_memory), the projected memory tokens
    h <- h + MLP(LN_2(h))

followed by a final LayerNorm. The fused representation is token 0 (the CLS token).
Self-attention uses no mask: TIP lets the ``[MASK]`` tokens of missing cells take part.

TIP assumes the image is always there. Here a row whose memory modality is absent skips
the cross-attention update (its residual is multiplied by the presence flag), so it is
never fused with the features of a blank image.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from holomodal.errors import ConfigError
from holomodal.fusion import register_fusion


def _split_heads(x: Tensor, heads: int) -> Tensor:
    b, n, d = x.shape
    return x.view(b, n, heads, d // heads).transpose(1, 2)


def _merge_heads(x: Tensor) -> Tensor:
    b, h, n, d = x.shape
    return x.transpose(1, 2).reshape(b, n, h * d)


class SelfAttention(nn.Module):
    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=False)
        self.out = nn.Linear(dim, dim)

    def forward(self, x: Tensor) -> Tensor:
        q, k, v = self.qkv(x).chunk(3, dim=-1)
        h = self.heads
        attn = F.scaled_dot_product_attention(_split_heads(q, h), _split_heads(k, h), _split_heads(v, h))
        return self.out(_merge_heads(attn))


class CrossAttention(nn.Module):
    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.query = nn.Linear(dim, dim)
        self.key_value = nn.Linear(dim, 2 * dim, bias=False)
        self.out = nn.Linear(dim, dim)

    def forward(self, x: Tensor, memory: Tensor) -> Tensor:
        k, v = self.key_value(memory).chunk(2, dim=-1)
        h = self.heads
        attn = F.scaled_dot_product_attention(_split_heads(self.query(x), h), _split_heads(k, h), _split_heads(v, h))
        return self.out(_merge_heads(attn))


class InteractionBlock(nn.Module):
    def __init__(self, dim: int, heads: int, mlp_ratio: float) -> None:
        super().__init__()
        self.norm_self = nn.LayerNorm(dim)
        self.self_attn = SelfAttention(dim, heads)
        self.norm_cross = nn.LayerNorm(dim)
        self.cross_attn = CrossAttention(dim, heads)
        self.norm_mlp = nn.LayerNorm(dim)
        hidden = int(dim * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))

    def forward(self, h: Tensor, memory: Tensor, memory_present: Tensor) -> Tensor:
        h = h + self.self_attn(self.norm_self(h))
        h = h + self.cross_attn(self.norm_cross(h), memory) * memory_present
        return h + self.mlp(self.norm_mlp(h))


@register_fusion("cross_attention")
class CrossAttentionFusion(nn.Module):
    """Query-modality tokens cross-attending to memory-modality tokens.

    Args:
        input_dims: token width of each of the two modalities, e.g.
            ``{"tabular": 512, "image": 2048}``.
        query: the modality whose tokens are refined and returned (TIP: ``tabular``); the
            other one is the memory.
        dim, depth, heads, mlp_ratio: width, blocks, attention heads, MLP expansion
            (TIP: 512, 4, 8, 4).

    ``forward`` returns the fused CLS vector (B, dim), the contract of every fusion module;
    ``forward_tokens`` returns all fused tokens (B, T_query, dim), which masked
    reconstruction needs.
    """

    def __init__(
        self, input_dims: dict[str, int], query: str = "tabular", dim: int = 512, depth: int = 4, heads: int = 8,
        mlp_ratio: float = 4.0,
    ) -> None:
        super().__init__()
        if len(input_dims) != 2 or query not in input_dims:
            raise ConfigError(
                f"cross_attention fusion needs exactly two modalities, one of them the query '{query}'; "
                f"got {sorted(input_dims)}"
            )
        if dim % heads:
            raise ConfigError(f"cross_attention fusion: dim {dim} is not divisible by heads {heads}")
        self.query = query
        self.memory = next(m for m in input_dims if m != query)
        self.query_proj = nn.Identity() if input_dims[query] == dim else nn.Linear(input_dims[query], dim)
        self.memory_proj = nn.Linear(input_dims[self.memory], dim)
        self.memory_norm = nn.LayerNorm(dim)
        self.blocks = nn.ModuleList(InteractionBlock(dim, heads, mlp_ratio) for _ in range(depth))
        self.norm = nn.LayerNorm(dim)
        self.output_dim = dim
        self.reset_parameters()

    def reset_parameters(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward_tokens(self, tokens: dict[str, Tensor], present: dict[str, Tensor] | None = None) -> Tensor:
        h = self.query_proj(tokens[self.query])
        memory = self.memory_norm(self.memory_proj(tokens[self.memory]))
        if present is not None and self.memory in present:
            flag = present[self.memory].to(device=h.device, dtype=h.dtype).view(-1, 1, 1)
        else:
            flag = torch.ones(h.shape[0], 1, 1, device=h.device, dtype=h.dtype)
        for block in self.blocks:
            h = block(h, memory, flag)
        return self.norm(h)

    def forward(self, tokens: dict[str, Tensor], present: dict[str, Tensor] | None = None) -> Tensor:
        return self.forward_tokens(tokens, present)[:, 0]
