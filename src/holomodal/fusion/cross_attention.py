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

Several memory modalities (TIP with more than one image column: one per view) share the
projection and are told apart by a learned embedding per modality added to their tokens;
the query attends over the tokens of all of them at once, with the tokens of a row's absent
modalities masked out as keys. A row with none of them present skips the update as above.
One memory modality builds exactly the two-modality module (same parameters, same keys).

Inputs of shape (B, D) rather than (B, T, D), as late fusion's pooled embeddings are, count
as one token each.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from holomodal.attention import attention
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
        attn = attention(_split_heads(q, h), _split_heads(k, h), _split_heads(v, h))
        return self.out(_merge_heads(attn))


class CrossAttention(nn.Module):
    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.query = nn.Linear(dim, dim)
        self.key_value = nn.Linear(dim, 2 * dim, bias=False)
        self.out = nn.Linear(dim, dim)

    def forward(self, x: Tensor, memory: Tensor, keys: Tensor | None = None) -> Tensor:
        """``keys`` (B, T_memory) bool, True where a memory token may be attended to."""
        k, v = self.key_value(memory).chunk(2, dim=-1)
        h = self.heads
        mask = None if keys is None else keys[:, None, None, :]
        q = _split_heads(self.query(x), h)
        attn = attention(q, _split_heads(k, h), _split_heads(v, h), mask)
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

    def forward(self, h: Tensor, memory: Tensor, memory_present: Tensor, keys: Tensor | None = None) -> Tensor:
        h = h + self.self_attn(self.norm_self(h))
        h = h + self.cross_attn(self.norm_cross(h), memory, keys) * memory_present
        return h + self.mlp(self.norm_mlp(h))


@register_fusion("cross_attention")
class CrossAttentionFusion(nn.Module):
    """Query-modality tokens cross-attending to the tokens of the other modalities.

    Args:
        input_dims: token width of each modality, e.g. ``{"tabular": 512, "image": 2048}``;
            with more than two, every memory modality must have the same width.
        query: the modality whose tokens are refined and returned (TIP: ``tabular``); the
            others, in ``input_dims`` order, are the memory.
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
        if len(input_dims) < 2 or query not in input_dims:
            raise ConfigError(
                f"cross_attention fusion needs exactly two modalities, one of them the query '{query}' "
                f"(or more, all memory modalities of one width); got {sorted(input_dims)}"
            )
        if dim % heads:
            raise ConfigError(f"cross_attention fusion: dim {dim} is not divisible by heads {heads}")
        self.query = query
        self.memories = [m for m in input_dims if m != query]
        widths = {m: input_dims[m] for m in self.memories}
        if len(set(widths.values())) > 1:
            raise ConfigError(
                f"cross_attention fusion: the memory modalities share one projection, so their widths must agree; got {widths}"
            )
        self.query_proj = nn.Identity() if input_dims[query] == dim else nn.Linear(input_dims[query], dim)
        self.memory_proj = nn.Linear(input_dims[self.memories[0]], dim)
        self.memory_norm = nn.LayerNorm(dim)
        # only with several memory modalities, so that the two-modality module keeps its keys
        self.memory_embedding = nn.Parameter(torch.zeros(len(self.memories), dim)) if len(self.memories) > 1 else None
        self.blocks = nn.ModuleList(InteractionBlock(dim, heads, mlp_ratio) for _ in range(depth))
        self.norm = nn.LayerNorm(dim)
        self.output_dim = dim
        self.reset_parameters()

    @property
    def memory(self) -> str:
        """The memory modality of the two-modality module (the first one otherwise)."""
        return self.memories[0]

    def reset_parameters(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        if self.memory_embedding is not None:
            nn.init.normal_(self.memory_embedding, std=0.02)

    def _flag(self, present: dict[str, Tensor] | None, m: str, like: Tensor) -> Tensor:
        if present is not None and m in present:
            return present[m].to(device=like.device, dtype=torch.bool)
        return torch.ones(like.shape[0], dtype=torch.bool, device=like.device)

    def forward_tokens(self, tokens: dict[str, Tensor], present: dict[str, Tensor] | None = None) -> Tensor:
        tokens = {m: t.unsqueeze(1) if t.dim() == 2 else t for m, t in tokens.items()}
        h = self.query_proj(tokens[self.query])
        keys = None
        if self.memory_embedding is None:
            memory = self.memory_norm(self.memory_proj(tokens[self.memory]))
            row_present = self._flag(present, self.memory, h)
        else:
            parts, flags = [], []
            for i, m in enumerate(self.memories):
                part = self.memory_norm(self.memory_proj(tokens[m])) + self.memory_embedding[i]
                parts.append(part)
                flags.append(self._flag(present, m, h)[:, None].expand(-1, part.shape[1]))
            memory, keys = torch.cat(parts, dim=1), torch.cat(flags, dim=1)
            row_present = keys.any(dim=1)
            # a row with nothing to attend to would give NaN; it skips the update anyway
            keys = keys | ~row_present[:, None]
        flag = row_present.to(h.dtype).view(-1, 1, 1)
        for block in self.blocks:
            h = block(h, memory, flag, keys)
        return self.norm(h)

    def forward(self, tokens: dict[str, Tensor], present: dict[str, Tensor] | None = None) -> Tensor:
        return self.forward_tokens(tokens, present)[:, 0]
