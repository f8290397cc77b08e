import math

import torch

from holomodal.losses import MaskedTabularReconstructionLoss, sample_column_mask


def _neg_log_softmax(logits, index):
    return math.log(sum(math.exp(v) for v in logits)) - logits[index]


def test_reconstruction_loss_matches_hand_computation():
    # columns: cat (3 ids), cat (2 ids), continuous -> K = 5 ids, offsets [0, 3]
    mtr = MaskedTabularReconstructionLoss(2, [3, 2], 1)
    bias = [0.0, 1.0, 0.0, 0.0, 2.0]
    with torch.no_grad():
        mtr.cat_classifier.weight.zero_()
        mtr.cat_classifier.bias.copy_(torch.tensor(bias))
        mtr.con_regressor.weight.copy_(torch.tensor([[1.0, 0.0]]))
        mtr.con_regressor.bias.fill_(0.5)
    tokens = torch.tensor([
        [[9.0, 9.0], [0.0, 0.0], [0.0, 0.0], [1.0, 3.0]],  # CLS, cat0, cat1, con0
        [[9.0, 9.0], [0.0, 0.0], [0.0, 0.0], [2.0, 3.0]],
    ])
    categorical = torch.tensor([[1, 0], [2, 1]])
    continuous = torch.tensor([[0.25], [7.0]])
    masked = torch.tensor([[True, False, True], [False, True, True]])
    observed = torch.tensor([[True, True, True], [True, True, False]])  # row 1's value is missing
    loss = mtr(tokens, categorical, continuous, masked, observed)
    # scored cells: (0, cat0) id 1, (1, cat1) id 3 + 1 = 4, (0, con0): prediction 1.5 vs 0.25
    l_cat = (_neg_log_softmax(bias, 1) + _neg_log_softmax(bias, 4)) / 2
    l_con = (1.5 - 0.25) ** 2
    assert abs(loss.item() - (l_cat + l_con) / 2) < 1e-6


def test_mask_has_round_half_of_the_columns_per_row():
    mask = sample_column_mask(64, 13, 0.5, generator=torch.Generator().manual_seed(0))
    assert mask.shape == (64, 13)
    assert torch.all(mask.sum(dim=1) == round(6.5))  # Python rounds half to even: 6
    assert torch.all(sample_column_mask(8, 17, 0.5).sum(dim=1) == 8)
    assert mask.float().mean(dim=0).min() > 0  # every column gets masked somewhere


def test_nothing_to_reconstruct_gives_zero_with_a_graph():
    mtr = MaskedTabularReconstructionLoss(4, [3], 2)
    tokens = torch.randn(2, 4, 4, requires_grad=True)
    loss = mtr(tokens, torch.zeros(2, 1, dtype=torch.long), torch.zeros(2, 2), torch.zeros(2, 3, dtype=torch.bool))
    loss.backward()
    assert loss.item() == 0.0 and tokens.grad is not None
