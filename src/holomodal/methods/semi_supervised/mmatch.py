"""Multimodal MMatch (multi-view semi-supervised learning, IEEE 2022) on the baselines'
concat network.

Three classifiers share the encoders: the multimodal head and one head per modality
(:class:`~holomodal.methods.semi_supervised.base.ConcatNetwork`). The multimodal head
labels the unlabelled rows; only the unimodal heads learn from those labels, so each
modality is taught by the fusion of all of them. Per step:

1. the student itself (no gradient, no teacher) predicts the weak view; the probabilities
   are distribution-aligned (ReMixMatch's running-mean rescaling over the last 128 steps);
2. from epoch 1 on they are smoothed with a memory bank, as CoMatch does:
   ``q = 0.9 q + 0.1 sum_k softmax_k(z . z_k / 0.1) q_k`` over the ``K`` = 640 most recent
   fused embeddings ``z_k`` (:attr:`NetworkOutput.embedding`, L2-normalised) and their
   probabilities ``q_k``; the bank then receives this step's weak embeddings with their
   aligned, unsmoothed probabilities, and the labelled rows' embeddings with their one-hot
   labels (CoMatch's bank; ``bank_labelled: false`` keeps unlabelled rows only);
3. hard pseudo-labels, kept where the top probability reaches ``threshold`` (0.6), train
   every unimodal head on the strong view, over the rows where its modality is present.

Loss ``L = alpha (CE_multimodal + sum_m CE_m)`` on the labelled weak view ``+ lambda
sum_m mean_b(mask_b present_bm CE(strong_m,b, label_b))`` (alpha 1, lambda =
``mmatch_lambda`` 5), the second part from epoch ``start_epoch + 1`` on. The STiL
configuration names an EMA model (momentum 0.999) that its training step never reads: none
is built here. The multimodal head is the concat network's, on the concatenated modality
features, where STiL's MMatch head reads the 128-d fused embedding.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from holomodal.batch import Batch
from holomodal.errors import ConfigError
from holomodal.methods import register_method
from holomodal.methods.base import ModelContext
from holomodal.methods.semi_supervised.base import (
    ConcatNetwork, DistributionAlignment, NetworkOutput, PseudoLabels, SemiSupervisedMethod, StepResult, masked_mean,
    unimodal_cross_entropy,
)


class MemoryBank(nn.Module):
    """A FIFO bank of ``size`` L2-normalised embeddings and their class probabilities
    (buffers; ``filled`` counts the slots written, the first ``filled`` until it is full)."""

    def __init__(self, size: int, dim: int, num_classes: int) -> None:
        super().__init__()
        self.register_buffer("embeddings", torch.zeros(size, dim))
        self.register_buffer("probabilities", torch.zeros(size, num_classes))
        self.register_buffer("pointer", torch.zeros((), dtype=torch.long))
        self.register_buffer("filled", torch.zeros((), dtype=torch.long))

    @property
    def size(self) -> int:
        return self.embeddings.shape[0]

    @torch.no_grad()
    def push(self, embeddings: Tensor, probabilities: Tensor) -> None:
        """Write rows over the oldest ones (of more rows than slots, the last ``size``)."""
        embeddings, probabilities = embeddings[-self.size:], probabilities[-self.size:]
        n = embeddings.shape[0]
        if n == 0:
            return
        slots = (self.pointer + torch.arange(n, device=self.pointer.device)) % self.size
        self.embeddings[slots] = embeddings.detach().to(self.embeddings.dtype)
        self.probabilities[slots] = probabilities.detach().to(self.probabilities.dtype)
        self.pointer.copy_((self.pointer + n) % self.size)
        self.filled.copy_(torch.clamp(self.filled + n, max=self.size))

    @torch.no_grad()
    def smooth(self, embeddings: Tensor, probabilities: Tensor, keep: float, temperature: float) -> Tensor:
        """``keep * p + (1 - keep) * sum_k w_k q_k``, ``w`` the softmax over the written
        slots of the similarities ``z . z_k / temperature``; ``p`` unchanged while the bank
        is empty."""
        slots = torch.arange(self.size, device=embeddings.device)
        similarity = embeddings.float() @ self.embeddings.t() / temperature
        similarity = similarity.masked_fill((slots >= self.filled)[None], float("-inf"))
        neighbours = torch.softmax(similarity, dim=1) @ self.probabilities
        smoothed = keep * probabilities.float() + (1.0 - keep) * neighbours
        # an empty bank makes every weight NaN; reading `filled` on the host would stall the device
        return torch.where(self.filled > 0, smoothed, probabilities.float())


def unimodal_pseudo_label_loss(out: NetworkOutput, labels: Tensor, mask: Tensor) -> Tensor:
    """The sum over modalities of each unimodal head's cross-entropy to the pseudo-labels,
    over the confident rows where the modality is present (averaged over all rows)."""
    total = out.logits.new_zeros((), dtype=torch.float32)
    for m, logits in out.unimodal.items():
        ce = F.cross_entropy(logits.float(), labels, reduction="none")
        total = total + masked_mean(ce, mask & out.present[m])
    return total


@register_method("mmatch")
class MMatch(SemiSupervisedMethod):
    def __init__(self, context: ModelContext, encoders: dict[str, Any] | None = None, modalities: list[str] | None = None,
                 dim: int = 512, projection_dim: int = 128, threshold: float = 0.6, mmatch_lambda: float = 5.0,
                 alpha: float = 1.0, distribution_alignment: bool = True, alignment_history: int = 128,
                 bank_size: int = 640, bank_temperature: float = 0.1, smoothing: float = 0.9, bank_labelled: bool = True,
                 optim: dict[str, Any] | None = None, start_epoch: int = 10, unlabelled_ratio: int = 7,
                 views: dict[str, Any] | None = None) -> None:
        super().__init__(context, optim, start_epoch, unlabelled_ratio, views)
        if int(bank_size) < 1 or not 0.0 <= float(smoothing) <= 1.0:
            raise ConfigError(f"mmatch: bank_size must be >= 1 and smoothing in [0, 1], got {bank_size} and {smoothing}")
        self.network = ConcatNetwork(context, encoders, modalities, dim, projection_dim)
        self.alignment = (DistributionAlignment(context.num_classes, int(alignment_history))
                          if distribution_alignment else None)
        self.bank = MemoryBank(int(bank_size), projection_dim, context.num_classes)
        self.threshold = float(threshold)
        self.mmatch_lambda = float(mmatch_lambda)
        self.alpha = float(alpha)
        self.bank_temperature = float(bank_temperature)
        self.smoothing = float(smoothing)
        self.bank_labelled = bool(bank_labelled)

    @torch.no_grad()
    def pseudo_probabilities(self, weak: NetworkOutput) -> tuple[Tensor, Tensor]:
        """The weak view's aligned probabilities, bank-smoothed from epoch 1 on, and the
        aligned ones alone (what the bank keeps)."""
        aligned = torch.softmax(weak.logits.float(), dim=1)
        if self.alignment is not None:
            aligned = self.alignment(aligned, update=aligned.shape[0] > 0)
        if self.current_epoch == 0:
            return aligned, aligned
        return self.bank.smooth(weak.embedding, aligned, self.smoothing, self.bank_temperature), aligned

    def semi_supervised_step(self, labelled: Batch, unlabelled: Batch) -> StepResult:
        out = self.network(self.views(labelled, "weak"))
        ce = F.cross_entropy(out.logits.float(), labelled.target)
        ce_unimodal = unimodal_cross_entropy(out, labelled.target)
        with torch.no_grad():
            weak = self.network(self.views(unlabelled, "weak"))
        probs, aligned = self.pseudo_probabilities(weak)
        embeddings = weak.embedding
        if self.bank_labelled:
            one_hot = F.one_hot(labelled.target, self.context.num_classes).float()
            embeddings, aligned = torch.cat([embeddings, out.embedding.detach()]), torch.cat([aligned, one_hot])
        self.bank.push(embeddings, aligned)
        confidence, labels = probs.max(dim=1)
        mask = confidence >= self.threshold
        strong = self.network(self.views(unlabelled, "strong"))
        unsup = unimodal_pseudo_label_loss(strong, labels, mask)
        weight = self.mmatch_lambda if self.pseudo_labels_on else 0.0
        loss = self.alpha * (ce + ce_unimodal) + weight * unsup
        return StepResult(loss, {"ce": ce, "ce_unimodal": ce_unimodal, "ce_unlabelled": unsup}, PseudoLabels(labels, mask))
