"""The CLUB bound and its two optimisation modes."""

import torch

from holomodal.losses.club import CLUBMean, club_bound, club_estimator_loss


def test_bound_and_estimator_loss_by_hand():
    mu = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    y = torch.tensor([[1.0, 0.0], [1.0, 1.0]])
    # positives ||mu_a - y_a||^2: 0 and 1; all pairs: row 0 (0, 1), row 1 (2, 1)
    # I = mean_a(-pos_a / 2 + mean_b(pair_ab) / 2) = mean(0 + 0.25, -0.5 + 0.75) = 0.25
    torch.testing.assert_close(club_bound(mu, y), torch.tensor(0.25))
    torch.testing.assert_close(club_estimator_loss(mu, y), torch.tensor(0.5))


def test_alternating_mode_splits_the_gradients():
    torch.manual_seed(0)
    club = CLUBMean(4, 4, mode="alternating")
    x = torch.randn(6, 4, requires_grad=True)
    y = torch.randn(6, 4, requires_grad=True)
    bound, estimator = club(x, y)
    grads = torch.autograd.grad(bound, [x, *club.parameters()], allow_unused=True)
    assert grads[0] is not None and all(g is None for g in grads[1:])  # the bound trains the inputs only
    grads = torch.autograd.grad(estimator, [x, y, *club.parameters()], allow_unused=True)
    assert grads[0] is None and grads[1] is None and all(g is not None for g in grads[2:])
    joint = CLUBMean(4, 4, mode="joint")
    bound, _ = joint(x, y)
    assert all(g is not None for g in torch.autograd.grad(bound, [x, *joint.parameters()]))
