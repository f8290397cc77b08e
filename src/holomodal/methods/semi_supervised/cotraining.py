"""Multimodal co-training (Blum & Mitchell, COLT 1998) on the baselines' concat network.

Two modalities, two views of a row: each modality's classifier labels the unlabelled rows
for the other. The network is the concat network with a head per modality
(:class:`~holomodal.methods.semi_supervised.base.ConcatNetwork`) and an EMAN teacher
(momentum 0.996, batch-norm statistics averaged too). Per step the teacher reads the
unlabelled rows' weak view; for each modality ``a`` and its partner ``b`` the teacher's
softmax of head ``b`` is the soft target of the student's head ``a`` on the strong view,
kept where that teacher's top probability reaches ``co_threshold`` (0.9). A row where
either modality is absent takes no part in that direction: the absent modality's head
neither teaches nor learns on it. Loss
``L = 0.2 (CE_multimodal + CE_a + CE_b) + lambda_u (L_{b->a} + L_{a->b})`` with
``L_{b->a} = mean_rows(mask_b * softCE(student_a, teacher_b))`` over all unlabelled rows,
``lambda_u`` 0.2 (STiL's DVM setting; 5.0 on its cardiac data), the cross-modal terms from
epoch ``start_epoch + 1`` on.

The spec does not say which views the two sides read; here, as in the FixMatch family,
the teacher reads the weak view and the student the strong one. The pseudo-labels logged
are the union of the two directions: a row is confident where either teacher is, its
label that of the more confident of the confident teachers; ``pseudo/<m>_teaches_share``
is the share of rows where modality ``m``'s teacher is confident.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from holomodal.batch import Batch
from holomodal.methods import register_method
from holomodal.methods.base import ModelContext
from holomodal.methods.semi_supervised.base import (
    ConcatNetwork, PseudoLabels, SemiSupervisedMethod, StepResult, check_two_modalities, ema_update, make_teacher,
    masked_mean, soft_cross_entropy, unimodal_cross_entropy,
)


def cross_modal_targets(teacher_logits: dict[str, Tensor], present: dict[str, Tensor],
                        threshold: float) -> dict[str, tuple[Tensor, Tensor]]:
    """By learning modality: the partner teacher's softmax (B, C) and the rows it teaches
    (B,): those where the partner's top probability reaches ``threshold`` and both
    modalities are present."""
    first, second = teacher_logits
    targets = {}
    for learner, teacher in ((first, second), (second, first)):
        probs = torch.softmax(teacher_logits[teacher].float(), dim=1)
        mask = (probs.max(dim=1).values >= threshold) & present[teacher] & present[learner]
        targets[learner] = (probs, mask)
    return targets


def union_pseudo_labels(targets: dict[str, tuple[Tensor, Tensor]], partner: dict[str, str]) -> PseudoLabels:
    """One record for both directions: confident where either teacher is, labelled by the
    more confident of the confident teachers; a case per teaching modality."""
    best_confidence, best_label, confident, cases = None, None, None, {}
    for learner, (probs, mask) in targets.items():
        confidence, label = probs.max(dim=1)
        confidence = torch.where(mask, confidence, torch.full_like(confidence, -1.0))
        cases[f"{partner[learner]}_teaches"] = mask
        if best_confidence is None:
            best_confidence, best_label, confident = confidence, label, mask
            continue
        better = confidence > best_confidence
        best_label = torch.where(better, label, best_label)
        best_confidence = torch.maximum(confidence, best_confidence)
        confident = confident | mask
    return PseudoLabels(best_label, confident, cases)


@register_method("cotraining")
class CoTraining(SemiSupervisedMethod):
    def __init__(self, context: ModelContext, encoders: dict[str, Any] | None = None, modalities: list[str] | None = None,
                 dim: int = 512, projection_dim: int = 128, co_threshold: float = 0.9, lambda_u: float = 0.2,
                 supervised_weight: float = 0.2, ema_momentum: float = 0.996, optim: dict[str, Any] | None = None,
                 start_epoch: int = 10, unlabelled_ratio: int = 7, views: dict[str, Any] | None = None) -> None:
        super().__init__(context, optim, start_epoch, unlabelled_ratio, views)
        self.pair = check_two_modalities(context, modalities, "cotraining")
        self.network = ConcatNetwork(context, encoders, self.pair, dim, projection_dim)
        self.teacher = make_teacher(self.network)
        self.partner = {self.pair[0]: self.pair[1], self.pair[1]: self.pair[0]}
        self.co_threshold = float(co_threshold)
        self.lambda_u = float(lambda_u)
        self.supervised_weight = float(supervised_weight)
        self.ema_momentum = float(ema_momentum)

    def semi_supervised_step(self, labelled: Batch, unlabelled: Batch) -> StepResult:
        out = self.network(self.views(labelled, "weak"))
        ce = F.cross_entropy(out.logits.float(), labelled.target)
        ce_unimodal = unimodal_cross_entropy(out, labelled.target)
        ema_update(self.teacher, self.network, self.ema_momentum)
        with torch.no_grad():
            teacher = self.teacher(self.views(unlabelled, "weak"))
        targets = cross_modal_targets(teacher.unimodal, teacher.present, self.co_threshold)
        strong = self.network(self.views(unlabelled, "strong"))
        terms = {"ce": ce, "ce_unimodal": ce_unimodal}
        cross = ce.new_zeros(())
        for learner, (target, mask) in targets.items():
            term = masked_mean(soft_cross_entropy(strong.unimodal[learner], target), mask)
            terms[f"cross_{self.partner[learner]}_to_{learner}"] = term
            cross = cross + term
        weight = self.lambda_u if self.pseudo_labels_on else 0.0
        loss = self.supervised_weight * (ce + ce_unimodal) + weight * cross
        return StepResult(loss, terms, union_pseudo_labels(targets, self.partner))
