"""Epoch-level class prototypes and the prototype-alignment loss."""

import math

import torch

from holomodal.losses.prototype import PrototypeBank, prototype_alignment_loss


def test_prototypes_are_weighted_means_and_an_empty_class_keeps_its_own():
    bank = PrototypeBank(num_classes=3, dim=2)
    bank.prototypes[2] = torch.tensor([5.0, 5.0])
    bank.accumulate(torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]), torch.tensor([0, 0, 1]), torch.tensor([0.5, 1.0, 0.0]))
    bank.accumulate(torch.tensor([[3.0, 3.0]]), torch.tensor([1]), torch.tensor([2.0]))
    weights = bank.finish_epoch()
    torch.testing.assert_close(bank.prototypes[0], torch.tensor([1 / 3, 2 / 3]))
    torch.testing.assert_close(bank.prototypes[1], torch.tensor([3.0, 3.0]))
    torch.testing.assert_close(bank.prototypes[2], torch.tensor([5.0, 5.0]))
    assert weights.tolist() == [1.5, 2.0, 0.0] and not bank.has_sums


def test_alignment_loss_uses_hard_labels_and_averages_over_every_row():
    prototypes = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    embeddings = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    loss = prototype_alignment_loss(embeddings, prototypes, torch.tensor([0, 0]), torch.tensor([True, False]), temperature=1.0)
    p = math.exp(1) / (math.exp(1) + 1)
    torch.testing.assert_close(loss, torch.tensor(-math.log(p + 1e-7) / 2))
