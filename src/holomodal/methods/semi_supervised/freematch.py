"""Multimodal FreeMatch (Wang et al., ICLR 2023) on the baselines' concat network.

Per step the EMA teacher (momentum 0.996, EMAN: batch-norm statistics averaged too) reads
the unlabelled rows' weak view and gives hard pseudo-labels. Which of them train the
student is decided by the *self-adaptive threshold* (SAT), three running averages kept as
buffers (momentum ``m`` = 0.999, each started at ``1/C``) and updated with the batch before
the mask is taken:

* the global threshold ``tau`` <- m tau + (1 - m) mean_b max_c q_bc,
* the class-wise confidence ``p~`` <- m p~ + (1 - m) mean_b q_b,
* the histogram ``h~`` of the teacher's hard labels <- m h~ + (1 - m) Hist_b(argmax q_b);

a row is confident where ``max_c q_bc >= tau * p~_c / max(p~)`` for its label ``c``. The
student's strong view is trained towards the confident labels,
``L_u = mean_b(mask_b * CE(strong_b, argmax q_b))`` over all unlabelled rows, and the
self-adaptive fairness term (the paper's Eq. 11) pushes the mean strong-view prediction of
the confident rows towards diversity: with ``p_bar`` that mean and ``h_bar`` the histogram
of their argmax, ``L_f = -H(SumNorm(p~ / h~), SumNorm(p_bar / h_bar))`` (a negative
cross-entropy, at most 0, minimised; the classes no confident row predicts are left out of
the sum, which changes its value by a constant and its gradient not at all). Loss
``L = CE_l + lambda_u L_u + lambda_e L_f`` (1 and 0.001), the last two from epoch
``start_epoch + 1`` on; the SAT averages follow the teacher from the first step.

The released STiL code computes the SAT mask but applies it to the fairness term only:
every hard pseudo-label trains the strong view, however unsure. FreeMatch masks the
unlabelled cross-entropy, and so does this module; ``apply_mask: false`` reproduces the
released code (the mask then still selects the rows of the fairness term and the
confident rows logged).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from holomodal.batch import Batch
from holomodal.methods import register_method
from holomodal.methods.base import ModelContext
from holomodal.methods.semi_supervised.base import (
    ConcatNetwork, PseudoLabels, SemiSupervisedMethod, StepResult, ema_update, make_teacher, masked_mean,
)


class SelfAdaptiveThreshold(nn.Module):
    """FreeMatch's running averages (buffers, shapes fixed by ``num_classes``) and its mask."""

    def __init__(self, num_classes: int, momentum: float = 0.999) -> None:
        super().__init__()
        self.momentum = float(momentum)
        uniform = 1.0 / num_classes
        self.register_buffer("global_threshold", torch.tensor(uniform))
        self.register_buffer("class_confidence", torch.full((num_classes,), uniform))
        self.register_buffer("label_histogram", torch.full((num_classes,), uniform))

    @torch.no_grad()
    def update(self, probs: Tensor) -> None:
        """One step of the three averages with the teacher's probabilities (B, C)."""
        if probs.shape[0] == 0:  # a mean over no row is NaN and would poison the averages
            return
        probs = probs.float()
        m = self.momentum
        confidence, labels = probs.max(dim=1)
        counts = torch.bincount(labels, minlength=probs.shape[1]).float()
        self.global_threshold.mul_(m).add_(confidence.mean(), alpha=1.0 - m)
        self.class_confidence.mul_(m).add_(probs.mean(dim=0), alpha=1.0 - m)
        self.label_histogram.mul_(m).add_(counts / probs.shape[0], alpha=1.0 - m)

    def class_thresholds(self) -> Tensor:
        """(C,) ``tau * p~_c / max(p~)``."""
        return self.global_threshold * self.class_confidence / self.class_confidence.max()

    def mask(self, probs: Tensor) -> tuple[Tensor, Tensor]:
        """Hard labels and the rows whose top probability reaches their class's threshold."""
        confidence, labels = probs.max(dim=1)
        return labels, confidence >= self.class_thresholds()[labels]


def inverse_or_zero(values: Tensor) -> Tensor:
    """``1 / values`` where positive, 0 where not (a class no row predicts has no weight)."""
    return torch.where(values > 0, 1.0 / values.clamp(min=1e-12), torch.zeros_like(values))


def fairness_loss(strong_logits: Tensor, mask: Tensor, class_confidence: Tensor, label_histogram: Tensor) -> Tensor:
    """FreeMatch's self-adaptive fairness term ``sum_c a_c log b_c`` with
    ``a = SumNorm(p~ / h~)`` (the running averages, no gradient) and
    ``b = SumNorm(p_bar / h_bar)`` over the confident rows' strong-view predictions, the
    sum over the classes these rows predict; 0 when no row is confident."""
    chosen = strong_logits[mask].float()
    if chosen.shape[0] == 0:
        return strong_logits.float().sum() * 0.0
    probs = torch.softmax(chosen, dim=1)
    counts = torch.bincount(probs.argmax(dim=1).detach(), minlength=probs.shape[1]).to(probs.dtype)
    target = class_confidence.float() * inverse_or_zero(label_histogram.float())
    target = target / target.sum()
    mean_prediction = probs.mean(dim=0) * inverse_or_zero(counts / chosen.shape[0])
    mean_prediction = mean_prediction / mean_prediction.sum()
    # A class none of these rows predicts has b_c = 0 whatever the weights: its term is a
    # constant without gradient (a_c log of FreeMatch's epsilon, about -27.6 a_c), left out so
    # that the logged value says something.
    log_b = torch.where(mean_prediction > 0, torch.log(mean_prediction.clamp(min=1e-12)), torch.zeros_like(mean_prediction))
    return (target * log_b).sum()


@register_method("freematch")
class FreeMatch(SemiSupervisedMethod):
    def __init__(self, context: ModelContext, encoders: dict[str, Any] | None = None, modalities: list[str] | None = None,
                 dim: int = 512, projection_dim: int = 128, lambda_u: float = 1.0, lambda_e: float = 0.001,
                 ema_momentum: float = 0.996, sat_momentum: float = 0.999, apply_mask: bool = True,
                 optim: dict[str, Any] | None = None, start_epoch: int = 10, unlabelled_ratio: int = 7,
                 views: dict[str, Any] | None = None) -> None:
        super().__init__(context, optim, start_epoch, unlabelled_ratio, views)
        self.network = ConcatNetwork(context, encoders, modalities, dim, projection_dim)
        self.teacher = make_teacher(self.network)
        self.sat = SelfAdaptiveThreshold(context.num_classes, sat_momentum)
        self.lambda_u = float(lambda_u)
        self.lambda_e = float(lambda_e)
        self.ema_momentum = float(ema_momentum)
        self.apply_mask = bool(apply_mask)

    def semi_supervised_step(self, labelled: Batch, unlabelled: Batch) -> StepResult:
        out = self.network(self.views(labelled, "weak"))
        ce = F.cross_entropy(out.logits.float(), labelled.target)
        ema_update(self.teacher, self.network, self.ema_momentum)
        with torch.no_grad():
            weak = torch.softmax(self.teacher(self.views(unlabelled, "weak")).logits.float(), dim=1)
        self.sat.update(weak)
        labels, mask = self.sat.mask(weak)
        strong = self.network(self.views(unlabelled, "strong")).logits
        per_row = F.cross_entropy(strong.float(), labels, reduction="none")
        unsup = masked_mean(per_row, mask if self.apply_mask else torch.ones_like(mask))
        fairness = fairness_loss(strong, mask, self.sat.class_confidence, self.sat.label_histogram)
        weight = 1.0 if self.pseudo_labels_on else 0.0
        loss = ce + weight * (self.lambda_u * unsup + self.lambda_e * fairness)
        terms = {"ce": ce, "ce_unlabelled": unsup, "fairness": fairness,
                 "sat_threshold": self.sat.global_threshold.detach().clone()}
        return StepResult(loss, terms, PseudoLabels(labels, mask))
