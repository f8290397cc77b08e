"""Supervised-only: the baselines' concat network trained on the labelled rows alone.

The reference every semi-supervised method must beat: the same encoders and network as
the FixMatch family (:class:`~holomodal.methods.semi_supervised.base.ConcatNetwork`), the
same labelled batches and the same fine-tuning view of them, and no unlabelled row. Its
loss is the multimodal classifier's cross-entropy plus the unimodal heads' (so the
unimodal heads exist and train as in the other methods; ``unimodal_weight: 0`` turns them
off).
"""

from __future__ import annotations

from typing import Any

import torch.nn.functional as F

from holomodal.batch import Batch
from holomodal.methods import register_method
from holomodal.methods.base import ModelContext
from holomodal.methods.semi_supervised.base import (
    ConcatNetwork, SemiSupervisedMethod, StepResult, unimodal_cross_entropy,
)


@register_method("supervised_only")
class SupervisedOnly(SemiSupervisedMethod):
    needs_unlabelled = False  # it never reads them

    def __init__(self, context: ModelContext, encoders: dict[str, Any] | None = None, modalities: list[str] | None = None,
                 dim: int = 512, projection_dim: int = 128, unimodal_weight: float = 1.0, view: str = "weak",
                 optim: dict[str, Any] | None = None, start_epoch: int = 0, unlabelled_ratio: int = 7,
                 views: dict[str, Any] | None = None) -> None:
        super().__init__(context, optim, start_epoch, unlabelled_ratio, views)
        self.network = ConcatNetwork(context, encoders, modalities, dim, projection_dim)
        self.unimodal_weight = float(unimodal_weight)
        self.view = view

    def semi_supervised_step(self, labelled: Batch, unlabelled: Batch) -> StepResult:
        out = self.network(self.views(labelled, self.view))
        ce = F.cross_entropy(out.logits.float(), labelled.target)
        unimodal = unimodal_cross_entropy(out, labelled.target)
        return StepResult(ce + self.unimodal_weight * unimodal, {"ce": ce, "ce_unimodal": unimodal})
