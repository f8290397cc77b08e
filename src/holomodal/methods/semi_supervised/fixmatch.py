"""Multimodal FixMatch (Sohn et al., NeurIPS 2020) on the baselines' concat network.

Per step: cross-entropy on the labelled rows' weak view; for each unlabelled row the
model's own prediction on its weak view (no gradient) gives a hard pseudo-label, kept
where its probability reaches ``threshold`` (0.95, FixMatch's), and the strong view is
trained towards it. Loss ``L = CE_l + lambda_u * mean_b(1[max p_b >= threshold] *
CE(strong_b, argmax p_b))``, averaged over all unlabelled rows. Views: the baselines'
weak and strong augmentation of the STiL repository
(:mod:`holomodal.methods.semi_supervised.views`), applied to every modality.
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
    ConcatNetwork, PseudoLabels, SemiSupervisedMethod, StepResult, masked_mean,
)


def fixmatch_mask(probs: Tensor, threshold: float) -> tuple[Tensor, Tensor]:
    """Hard pseudo-labels and the mask of rows whose top probability reaches ``threshold``."""
    confidence, labels = probs.max(dim=1)
    return labels, confidence >= threshold


@register_method("fixmatch")
class FixMatch(SemiSupervisedMethod):
    def __init__(self, context: ModelContext, encoders: dict[str, Any] | None = None, modalities: list[str] | None = None,
                 dim: int = 512, projection_dim: int = 128, threshold: float = 0.95, lambda_u: float = 1.0,
                 optim: dict[str, Any] | None = None, start_epoch: int = 10, unlabelled_ratio: int = 7,
                 views: dict[str, Any] | None = None) -> None:
        super().__init__(context, optim, start_epoch, unlabelled_ratio, views)
        self.network = ConcatNetwork(context, encoders, modalities, dim, projection_dim)
        self.threshold = float(threshold)
        self.lambda_u = float(lambda_u)

    def semi_supervised_step(self, labelled: Batch, unlabelled: Batch) -> StepResult:
        out = self.network(self.views(labelled, "weak"))
        ce = F.cross_entropy(out.logits.float(), labelled.target)
        with torch.no_grad():
            weak = torch.softmax(self.network(self.views(unlabelled, "weak")).logits.float(), dim=1)
        labels, mask = fixmatch_mask(weak, self.threshold)
        strong = self.network(self.views(unlabelled, "strong")).logits
        unsup = masked_mean(F.cross_entropy(strong.float(), labels, reduction="none"), mask)
        weight = self.lambda_u if self.pseudo_labels_on else 0.0
        return StepResult(ce + weight * unsup, {"ce": ce, "ce_unlabelled": unsup}, PseudoLabels(labels, mask))
