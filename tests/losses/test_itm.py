import math

import torch

from holomodal.losses import ImageTabularMatching, sample_hard_negatives
from holomodal.losses.itm import negative_weights


def _ce(logits, target):
    return math.log(sum(math.exp(v) for v in logits)) - logits[target]


def test_matching_loss_matches_hand_computation():
    itm = ImageTabularMatching(2)
    with torch.no_grad():
        itm.head.weight.copy_(torch.eye(2))
        itm.head.bias.zero_()
    positive = torch.tensor([[0.0, 1.0], [0.0, 2.0]])
    negatives = torch.tensor([[1.0, 0.0], [0.0, 0.0], [2.0, 0.0], [0.0, 1.0]])
    loss, accuracy = itm(positive, negatives)
    expected = (
        _ce([0, 1], 1) + _ce([0, 2], 1) + _ce([1, 0], 0) + _ce([0, 0], 0) + _ce([2, 0], 0) + _ce([0, 1], 0)
    ) / 6
    assert abs(loss.item() - expected) < 1e-6
    # argmax: pos right, pos right, neg right, tie -> class 0 right, neg right, neg wrong
    assert abs(accuracy.item() - 5 / 6) < 1e-6


def test_negatives_are_never_the_positive_pair():
    g = torch.Generator().manual_seed(0)
    for trial in range(120):
        b = 2 + trial % 5
        similarity = torch.randn(b, b, generator=g) * 10
        # a huge diagonal puts all softmax mass on the positives: still never drawn
        if trial % 3 == 0:
            similarity += torch.eye(b) * 1e3
        tables, images = sample_hard_negatives(similarity, generator=g)
        assert not torch.any(tables == torch.arange(b))
        assert not torch.any(images == torch.arange(b))


def test_negative_weights_follow_softmax_of_similarity_with_zero_diagonal():
    similarity = torch.tensor([[1.0, 2.0, 0.0], [0.5, 0.0, 3.0], [1.0, 1.0, 1.0]])
    w = negative_weights(similarity)
    expected = torch.softmax(similarity, dim=1) + 1e-4
    expected.fill_diagonal_(0)
    torch.testing.assert_close(w, expected)
    # the table-anchored weights come from the transposed similarity
    g = torch.Generator().manual_seed(1)
    counts = torch.zeros(3)
    for _ in range(400):
        _, images = sample_hard_negatives(similarity, generator=g)
        counts[images[1]] += 1  # table 1 draws an image from softmax(S[:, 1]) without image 1
    p = torch.softmax(similarity.T[1], dim=0)
    assert counts[1] == 0 and abs(counts[0] / counts.sum() - p[0] / (p[0] + p[2])) < 0.08
