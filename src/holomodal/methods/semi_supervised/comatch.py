"""Multimodal CoMatch (Li et al., ICCV 2021) on the baselines' concat network.

Per step an EMA teacher (momentum 0.996, EMAN: :func:`ema_update` before it runs) sees
the weak views; the student sees the labelled rows' weak view and two strong views
``s0``, ``s1`` of each unlabelled row.

* Pseudo-labels: the teacher's class probabilities ``p`` on the weak view, with
  distribution alignment over the last 128 steps. Once the pseudo-labels are on they are
  smoothed by the memory: ``p <- alpha p + (1 - alpha) sum_k w_k m_k`` with
  ``w = softmax_k(z^w . e_k / tau)`` over a queue of teacher weak embeddings ``e_k`` and
  their probabilities ``m_k`` (alpha 0.9, tau 0.1). Every step the queue receives the
  unlabelled rows' embeddings with their aligned, unsmoothed probabilities and the
  labelled rows' embeddings with their one-hot labels.
* Pseudo-label graph over the unlabelled rows of the step: ``Q_ij = p_i . p_j``,
  ``Q_ii = 1`` (the two strong views of one row are positives), entries below
  ``contrast_th`` set to 0, each row divided by its sum.
* Embedding graph between the strong views: ``P_ij = softmax_j(z^{s0}_i . z^{s1}_j / T)``,
  T = 0.2; graph-contrastive loss ``L_c = mean_i -sum_j Q_ij log P_ij``.

Loss ``L = CE_l + lambda_u * mean_b(1[max p_b >= co_threshold] * CE(s0_b, p_b))
+ min(epoch + 1, lambda_c) * L_c`` (lambda_u 10, lambda_c 10, co_threshold 0.90,
contrast_th 0.8: STiL's multimodal DVM values), the unlabelled terms weighted 0 until the
pseudo-labels are on. The queue holds ``queue_size`` rows (2560, CoMatch's 5 steps of 512;
by default no more than the training rows, labelled and unlabelled, so that a small data
set is not remembered several times over).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from holomodal.batch import Batch
from holomodal.errors import ConfigError
from holomodal.methods import register_method
from holomodal.methods.base import ModelContext
from holomodal.methods.semi_supervised.base import (
    ConcatNetwork, DistributionAlignment, PseudoLabels, SemiSupervisedMethod, StepResult, ema_update, make_teacher,
    gathered, masked_mean, soft_cross_entropy,
)

QUEUE_SIZE = 2560


def memory_smoothed(probs: Tensor, embeddings: Tensor, queue_embeddings: Tensor, queue_probs: Tensor, filled: Tensor,
                    alpha: float, temperature: float) -> Tensor:
    """``alpha probs + (1 - alpha)`` the probabilities of the filled queue entries weighted
    by ``softmax(z . e_k / temperature)``; ``probs`` unchanged while the queue is empty."""
    logits = embeddings.float() @ queue_embeddings.float().T / temperature
    weights = torch.softmax(logits.masked_fill(~filled, float("-inf")), dim=1).nan_to_num(0.0)
    smoothed = alpha * probs + (1.0 - alpha) * weights @ queue_probs.float()
    return torch.where(filled.any(), smoothed, probs)


def pseudo_label_graph(probs: Tensor, threshold: float) -> Tensor:
    """CoMatch's target graph (B, B): ``p_i . p_j`` with self-loops of weight 1, entries
    below ``threshold`` dropped, rows normalised to sum to 1."""
    graph = probs @ probs.T
    graph.fill_diagonal_(1.0)
    graph = graph * (graph >= threshold).to(graph.dtype)
    return graph / graph.sum(dim=1, keepdim=True)


def graph_contrastive_loss(first: Tensor, second: Tensor, target: Tensor, temperature: float) -> Tensor:
    """Cross-entropy between the target graph's rows and the embedding graph's,
    ``softmax_j(first_i . second_j / temperature)``, averaged over the rows."""
    if first.shape[0] == 0:
        return first.new_zeros(()).float()
    log_graph = torch.log_softmax(first.float() @ second.float().T / temperature, dim=1)
    return -(target * log_graph).sum(dim=1).mean()


@register_method("comatch")
class CoMatch(SemiSupervisedMethod):
    def __init__(self, context: ModelContext, encoders: dict[str, Any] | None = None, modalities: list[str] | None = None,
                 dim: int = 512, projection_dim: int = 128, co_threshold: float = 0.90, contrast_th: float = 0.8,
                 lambda_u: float = 10.0, lambda_c: float = 10.0, alpha: float = 0.9, smoothing_temperature: float = 0.1,
                 contrast_temperature: float = 0.2, queue_size: int = QUEUE_SIZE, ema_momentum: float = 0.996,
                 alignment_history: int = 128, optim: dict[str, Any] | None = None, start_epoch: int = 10,
                 unlabelled_ratio: int = 7, views: dict[str, Any] | None = None) -> None:
        super().__init__(context, optim, start_epoch, unlabelled_ratio, views)
        if not all(0.0 <= v <= 1.0 for v in (co_threshold, contrast_th, alpha)) or not 0.0 <= ema_momentum < 1.0:
            raise ConfigError(f"comatch: co_threshold, contrast_th and alpha must lie in [0, 1] and ema_momentum in "
                              f"[0, 1), got {co_threshold}, {contrast_th}, {alpha} and {ema_momentum}")
        if smoothing_temperature <= 0 or contrast_temperature <= 0 or int(queue_size) < 1 or int(alignment_history) < 1:
            raise ConfigError(f"comatch: the temperatures must be > 0 and queue_size and alignment_history >= 1, got "
                              f"{smoothing_temperature}, {contrast_temperature}, {queue_size} and {alignment_history}")
        self.network = ConcatNetwork(context, encoders, modalities, dim, projection_dim)
        self.teacher = make_teacher(self.network)
        self.alignment = DistributionAlignment(context.num_classes, int(alignment_history))
        self.co_threshold, self.contrast_th = float(co_threshold), float(contrast_th)
        self.lambda_u, self.lambda_c, self.alpha = float(lambda_u), float(lambda_c), float(alpha)
        self.smoothing_temperature, self.contrast_temperature = float(smoothing_temperature), float(contrast_temperature)
        self.ema_momentum = float(ema_momentum)
        size = int(queue_size)
        self.register_buffer("queue_embeddings", torch.zeros(size, projection_dim))
        self.register_buffer("queue_probs", torch.zeros(size, context.num_classes))
        self.register_buffer("queue_filled", torch.zeros(size, dtype=torch.bool))
        self.register_buffer("queue_pointer", torch.zeros((), dtype=torch.long))

    @classmethod
    def resolve_options(cls, context: ModelContext, options: dict[str, Any]) -> dict[str, Any]:
        """The queue size written out: the run's record and the saved model then rebuild the
        queue the fit made, whatever the data the model is later loaded beside."""
        resolved = super().resolve_options(context, options)
        if "queue_size" not in resolved:
            rows = (context.train_rows or 0) + (context.unlabelled_rows or 0)
            resolved["queue_size"] = min(QUEUE_SIZE, rows) if rows else QUEUE_SIZE
        return resolved

    @property
    def contrast_weight(self) -> float:
        return min(self.current_epoch + 1.0, self.lambda_c) if self.pseudo_labels_on else 0.0

    @torch.no_grad()
    def enqueue(self, embeddings: Tensor, probs: Tensor) -> None:
        """Write rows at the pointer, wrapping around; of more rows than the queue holds, the last."""
        embeddings, probs = gathered(self, embeddings), gathered(self, probs)
        size = self.queue_filled.shape[0]
        embeddings, probs = embeddings[-size:], probs[-size:]
        slots = (self.queue_pointer + torch.arange(embeddings.shape[0], device=embeddings.device)) % size
        self.queue_embeddings[slots] = embeddings.to(self.queue_embeddings.dtype)
        self.queue_probs[slots] = probs.to(self.queue_probs.dtype)
        self.queue_filled[slots] = True
        self.queue_pointer.copy_((self.queue_pointer + embeddings.shape[0]) % size)

    def semi_supervised_step(self, labelled: Batch, unlabelled: Batch) -> StepResult:
        ema_update(self.teacher, self.network, self.ema_momentum)
        labelled_view = self.views(labelled, "weak")
        with torch.no_grad():
            weak = self.teacher(self.views(unlabelled, "weak"))
            aligned = self.alignment(torch.softmax(weak.logits.float(), dim=1))
            probs = aligned
            if self.pseudo_labels_on:
                probs = memory_smoothed(aligned, weak.embedding, self.queue_embeddings, self.queue_probs,
                                        self.queue_filled, self.alpha, self.smoothing_temperature)
            one_hot = F.one_hot(labelled.target, self.context.num_classes).float()
            self.enqueue(torch.cat([weak.embedding, self.teacher(labelled_view).embedding]), torch.cat([aligned, one_hot]))
            graph = pseudo_label_graph(probs, self.contrast_th)
        confidence, labels = probs.max(dim=1)
        mask = confidence >= self.co_threshold

        ce = F.cross_entropy(self.network(labelled_view).logits.float(), labelled.target)
        first = self.network(self.views(unlabelled, "strong"))
        second = self.network(self.views(unlabelled, "strong"))
        unsup = masked_mean(soft_cross_entropy(first.logits, probs), mask)
        contrast = graph_contrastive_loss(first.embedding, second.embedding, graph, self.contrast_temperature)
        loss = ce + (self.lambda_u if self.pseudo_labels_on else 0.0) * unsup + self.contrast_weight * contrast
        return StepResult(loss, {"ce": ce, "ce_unlabelled": unsup, "contrastive": contrast}, PseudoLabels(labels, mask))
