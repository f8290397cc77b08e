import math

import torch
from torch import nn

from holomodal.losses import ImageTabularContrastiveLoss


def _identity_heads(loss):
    loss.image_head = nn.Identity()
    loss.tabular_head = nn.Identity()
    return loss


def _log1p_exp(x):
    return math.log(1 + math.exp(x))


def test_contrastive_loss_matches_hand_computation():
    # z_i = [[1, 0], [0, 1]], z_t = normalize([[2, 0], [3, 4]]) = [[1, 0], [.6, .8]]
    # S = z_i z_t^T / 0.1 = [[10, 6], [0, 8]]
    loss_fn = _identity_heads(ImageTabularContrastiveLoss(2, 2, temperature=0.1, lam=0.3))
    loss, logits = loss_fn(torch.tensor([[1.0, 0.0], [0.0, 5.0]]), torch.tensor([[2.0, 0.0], [3.0, 4.0]]))
    torch.testing.assert_close(logits, torch.tensor([[10.0, 6.0], [0.0, 8.0]]))
    image_to_table = (_log1p_exp(6 - 10) + _log1p_exp(0 - 8)) / 2  # rows of S
    table_to_image = (_log1p_exp(0 - 10) + _log1p_exp(6 - 8)) / 2  # rows of S^T
    expected = 0.3 * image_to_table + 0.7 * table_to_image
    assert abs(loss.item() - expected) < 1e-6


def test_default_heads_project_to_128_dimensions():
    loss_fn = ImageTabularContrastiveLoss(16, 8)
    assert loss_fn.temperature == 0.1 and loss_fn.lam == 0.5
    loss, logits = loss_fn(torch.randn(3, 16), torch.randn(3, 8))
    assert loss_fn.image_head(torch.randn(3, 16)).shape == (3, 128)
    assert logits.shape == (3, 3) and torch.isfinite(loss)
