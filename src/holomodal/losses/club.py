"""CLUB: a contrastive log-ratio upper bound of mutual information (Cheng et al., ICML 2020),
as STiL uses it to make modality-specific features independent of the shared ones (spec
``tip_stil.md`` 2.4 (3)).

A network mu(x) predicts y from x under a unit-variance Gaussian q(y|x). For a batch of B
pairs (x_a, y_a), with squared distances summed over the feature dimension,

    I_hat(x; y) = (1/B) sum_a [ -||mu(x_a) - y_a||^2 / 2 + (1/B) sum_b ||mu(x_a) - y_b||^2 / 2 ]
    L_est(x, y) = (1/B) sum_a ||mu(x_a) - y_a||^2

I_hat is the bound the encoders minimise; L_est (the negative log-likelihood up to
constants) is what fits mu.

How the two are optimised is a choice (``mode``):
  * ``joint`` (STiL's code): ``I_hat + L_est`` is one loss term; one optimiser step updates
    the encoders and mu with both, gradients flowing everywhere.
  * ``alternating`` (CLUB's own scheme, within one optimiser step): mu learns only from
    L_est on detached inputs, the encoders only from I_hat with mu held fixed.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.func import functional_call

from holomodal.errors import ConfigError

CLUB_MODES = ("joint", "alternating")


def club_bound(mu: Tensor, y: Tensor) -> Tensor:
    """I_hat from the predictions ``mu`` (B, D) and the targets ``y`` (B, D)."""
    positive = (mu - y).square().sum(dim=1)
    # ||mu_a - y_b||^2 for every pair, without a (B, B, D) tensor
    all_pairs = (mu.square().sum(1, keepdim=True) - 2 * mu @ y.T + y.square().sum(1)[None]).clamp(min=0)
    return (-positive / 2 + all_pairs.mean(dim=1) / 2).mean()


def club_estimator_loss(mu: Tensor, y: Tensor) -> Tensor:
    return (mu - y).square().sum(dim=1).mean()


class CLUBMean(nn.Module):
    """mu(x) = Linear(d, h) - ReLU - Linear(h, d_y), unit variance (STiL: 512 -> 512 -> 512).

    ``forward(x, y)`` returns ``(bound, estimator_loss)``; their sum is the loss term."""

    def __init__(self, x_dim: int, y_dim: int, hidden_dim: int | None = None, mode: str = "joint") -> None:
        super().__init__()
        if mode not in CLUB_MODES:
            raise ConfigError(f"club mode must be one of {list(CLUB_MODES)}, not '{mode}'")
        hidden = hidden_dim or x_dim
        self.mu = nn.Sequential(nn.Linear(x_dim, hidden), nn.ReLU(), nn.Linear(hidden, y_dim))
        self.mode = mode

    def forward(self, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        x, y = x.float(), y.float()
        if self.mode == "joint":
            mu = self.mu(x)
            return club_bound(mu, y), club_estimator_loss(mu, y)
        estimator = club_estimator_loss(self.mu(x.detach()), y.detach())
        frozen = {k: v.detach() for k, v in self.mu.named_parameters()}
        bound = club_bound(functional_call(self.mu, frozen, (x,)), y)
        return bound, estimator
