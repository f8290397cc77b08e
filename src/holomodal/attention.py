"""Scaled dot-product attention as the encoders and fusion modules call it."""

from __future__ import annotations

from contextlib import nullcontext

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.nn.attention import SDPBackend, sdpa_kernel


def attention(q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None = None, dropout: float = 0.0) -> Tensor:
    """``F.scaled_dot_product_attention``, except that bf16 on a CPU takes torch's math
    kernel: the flash kernel's bf16 backward there is about 4x slower on TIP's short token
    sequences (13 ms against 3 ms at batch 32, 18 tokens, 8 heads) and took a third of a
    TIP pre-training step. In fp32 the flash kernel is the faster one and is kept."""
    math_kernel = q.device.type == "cpu" and q.dtype == torch.bfloat16
    with sdpa_kernel(SDPBackend.MATH) if math_kernel else nullcontext():
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout)
