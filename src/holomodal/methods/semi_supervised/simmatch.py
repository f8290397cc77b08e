"""Multimodal SimMatch (Zheng et al., CVPR 2022) on the baselines' concat network.

Per step an EMA teacher (momentum 0.996, EMAN: :func:`ema_update` before it runs) sees the
weak views and the student the labelled rows' weak view and the unlabelled rows' strong
view:

* a labelled memory bank holds one slot per labelled training row: the teacher's
  L2-normalised embedding ``b_k`` of the row's weak view and its label ``y_k``. The
  labelled rows of the step are written first, so the bank is never empty; slots of rows
  not seen yet are left out of every distribution over the bank;
* on an unlabelled row's weak view the teacher gives class probabilities ``p``
  (distribution alignment over the last 256 steps) and an embedding ``z^w``; its instance
  distribution over the bank is ``q^w_k = softmax_k(z^w . b_k / tau_t)``, tau_t = 0.1;
* label unfolding, the instance target: ``qhat_k = q^w_k p_{y_k} / sum_j q^w_j p_{y_j}``;
* label aggregation, the class target: ``phat = c_smooth p + (1 - c_smooth) a`` with
  ``a_c = sum_{k: y_k = c} q^w_k`` (c_smooth 0.9; SimMatch's implementation mixes the two
  rather than multiplying them as the paper's equation does);
* the student's strong view gives logits ``s`` and an embedding ``z^s``, its instance
  distribution ``q^s_k = softmax_k(z^s . b_k / tau_s)``, tau_s = 0.1.

Loss ``L = CE_l + lambda_u * mean_b(1[max phat_b >= threshold] * CE(s_b, phat_b))
+ lambda_in * mean_b CE(q^s_b, qhat_b)`` (lambda_u 10, lambda_in 5, threshold 0.90: STiL's
multimodal DVM values), both unlabelled terms averaged over all unlabelled rows and
weighted 0 until the pseudo-labels are on. Views as FixMatch's
(:mod:`holomodal.methods.semi_supervised.views`).
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


def bank_log_distribution(embeddings: Tensor, bank: Tensor, filled: Tensor, temperature: float) -> Tensor:
    """Log-softmax over the filled bank slots of ``z . b_k / temperature`` (B, L); 0 at the
    empty slots (they carry no probability, and 0 keeps ``target * log q`` finite there)."""
    logits = embeddings.float() @ bank.float().T / temperature
    log_q = torch.log_softmax(logits.masked_fill(~filled, float("-inf")), dim=1)
    return log_q.masked_fill(~filled, 0.0)


def unfold_and_aggregate(instance: Tensor, probs: Tensor, bank_labels: Tensor, c_smooth: float) -> tuple[Tensor, Tensor]:
    """SimMatch's label propagation between the class and the instance view.

    ``instance`` (B, L) the teacher's distribution over the bank, ``probs`` (B, C) its class
    probabilities, ``bank_labels`` (L,) the slots' labels, -1 for an empty slot. Returns the
    instance target (B, L), ``instance`` rescaled by the class probability of each slot's
    label and renormalised, and the class target (B, C), ``probs`` mixed with the
    instance mass each class collects in the bank."""
    # in fp32: under bf16 autocast the bank similarities arrive in bf16, the softmax in fp32
    instance, probs = instance.float(), probs.float()
    filled = bank_labels >= 0
    labels = bank_labels.clamp(min=0)
    mass = instance * filled.to(instance.dtype)
    unfolded = mass * probs[:, labels]
    unfolded = unfolded / unfolded.sum(dim=1, keepdim=True).clamp(min=1e-12)
    aggregated = probs.new_zeros(probs.shape).index_add_(1, labels, mass)
    smoothed = c_smooth * probs + (1.0 - c_smooth) * aggregated
    # an empty bank aggregates nothing: the renormalisation then leaves ``probs``
    return unfolded, smoothed / smoothed.sum(dim=1, keepdim=True)


@register_method("simmatch")
class SimMatch(SemiSupervisedMethod):
    def __init__(self, context: ModelContext, encoders: dict[str, Any] | None = None, modalities: list[str] | None = None,
                 dim: int = 512, projection_dim: int = 128, threshold: float = 0.90, lambda_u: float = 10.0,
                 lambda_in: float = 5.0, tau_t: float = 0.1, tau_s: float = 0.1, c_smooth: float = 0.9,
                 ema_momentum: float = 0.996, alignment_history: int = 256, optim: dict[str, Any] | None = None,
                 start_epoch: int = 10, unlabelled_ratio: int = 7, views: dict[str, Any] | None = None) -> None:
        super().__init__(context, optim, start_epoch, unlabelled_ratio, views)
        if not context.train_rows:
            raise ConfigError("simmatch keeps one memory-bank slot per labelled training row: the number of "
                              "training rows (context.train_rows) must be known")
        if not (0.0 <= threshold <= 1.0 and 0.0 <= c_smooth <= 1.0 and 0.0 <= ema_momentum < 1.0):
            raise ConfigError(f"simmatch: threshold and c_smooth must lie in [0, 1] and ema_momentum in [0, 1), got "
                              f"{threshold}, {c_smooth} and {ema_momentum}")
        if tau_t <= 0 or tau_s <= 0 or int(alignment_history) < 1:
            raise ConfigError(f"simmatch: tau_t and tau_s must be > 0 and alignment_history >= 1, got {tau_t}, {tau_s} "
                              f"and {alignment_history}")
        self.network = ConcatNetwork(context, encoders, modalities, dim, projection_dim)
        self.teacher = make_teacher(self.network)
        self.alignment = DistributionAlignment(context.num_classes, int(alignment_history))
        self.threshold, self.lambda_u, self.lambda_in = float(threshold), float(lambda_u), float(lambda_in)
        self.tau_t, self.tau_s, self.c_smooth = float(tau_t), float(tau_s), float(c_smooth)
        self.ema_momentum = float(ema_momentum)
        # fixed by the training split, so that a saved model rebuilds with the same shapes
        self.register_buffer("bank_embeddings", torch.zeros(context.train_rows, projection_dim))
        self.register_buffer("bank_labels", torch.full((context.train_rows,), -1, dtype=torch.long))

    @torch.no_grad()
    def update_bank(self, embeddings: Tensor, labels: Tensor, rows: Tensor) -> None:
        """Write the labelled rows' teacher embeddings and labels to their slots."""
        embeddings, labels, rows = gathered(self, embeddings), gathered(self, labels), gathered(self, rows)
        self.bank_embeddings[rows] = embeddings.to(self.bank_embeddings.dtype)
        self.bank_labels[rows] = labels.to(self.bank_labels.dtype)

    def semi_supervised_step(self, labelled: Batch, unlabelled: Batch) -> StepResult:
        ema_update(self.teacher, self.network, self.ema_momentum)
        labelled_view = self.views(labelled, "weak")
        with torch.no_grad():
            self.update_bank(self.teacher(labelled_view).embedding, labelled.target, labelled.row)
            weak = self.teacher(self.views(unlabelled, "weak"))
            probs = self.alignment(torch.softmax(weak.logits.float(), dim=1))
            filled = self.bank_labels >= 0
            instance = bank_log_distribution(weak.embedding, self.bank_embeddings, filled, self.tau_t).exp() * filled
            instance_target, class_target = unfold_and_aggregate(instance, probs, self.bank_labels, self.c_smooth)
        confidence, labels = class_target.max(dim=1)
        mask = confidence >= self.threshold

        ce = F.cross_entropy(self.network(labelled_view).logits.float(), labelled.target)
        strong = self.network(self.views(unlabelled, "strong"))
        unsup = masked_mean(soft_cross_entropy(strong.logits, class_target), mask)
        student_log_q = bank_log_distribution(strong.embedding, self.bank_embeddings, filled, self.tau_s)
        in_loss = -(instance_target * student_log_q).sum(dim=1).mean() if len(unlabelled) else ce.new_zeros(())
        on = self.pseudo_labels_on
        loss = ce + (self.lambda_u if on else 0.0) * unsup + (self.lambda_in if on else 0.0) * in_loss
        return StepResult(loss, {"ce": ce, "ce_unlabelled": unsup, "instance": in_loss}, PseudoLabels(labels, mask))
