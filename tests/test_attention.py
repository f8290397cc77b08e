"""holomodal.attention: bf16 on the CPU takes the math kernel, with the values and gradients
of torch's default kernel; fp32 is torch's default call exactly."""

from unittest import mock

import torch
import torch.nn.functional as F

import holomodal.attention as module
from holomodal.attention import attention


def _inputs(dtype):
    g = torch.Generator().manual_seed(0)
    return [torch.randn(4, 2, 18, 16, generator=g).to(dtype).requires_grad_() for _ in range(3)]


def test_bf16_attention_matches_the_default_kernel_in_values_and_gradients():
    mask = torch.rand(4, 1, 1, 18, generator=torch.Generator().manual_seed(1)) > 0.3
    mask[..., 0] = True  # every query keeps one key to attend to
    mine, theirs = _inputs(torch.bfloat16), _inputs(torch.bfloat16)
    out = attention(*mine, mask)
    expected = F.scaled_dot_product_attention(*theirs, attn_mask=mask)
    torch.testing.assert_close(out.float(), expected.float(), rtol=2e-2, atol=2e-2)
    out.float().square().sum().backward()
    expected.float().square().sum().backward()
    for a, b in zip(mine, theirs):
        torch.testing.assert_close(a.grad.float(), b.grad.float(), rtol=5e-2, atol=5e-2)


def test_fp32_attention_is_torchs_default_call_and_bf16_asks_for_the_math_kernel():
    q, k, v = _inputs(torch.float32)
    with mock.patch("holomodal.attention.sdpa_kernel") as kernel:
        out = attention(q, k, v)
    kernel.assert_not_called()
    torch.testing.assert_close(out, F.scaled_dot_product_attention(q, k, v), rtol=0, atol=0)
    with mock.patch("holomodal.attention.sdpa_kernel", wraps=module.sdpa_kernel) as kernel:
        attention(*_inputs(torch.bfloat16))
    kernel.assert_called_once()
