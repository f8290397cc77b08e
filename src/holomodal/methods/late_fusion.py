"""Supervised late fusion: one encoder per modality, concatenation with presence flags, a head.

With a single modality configured it is the unimodal baseline of that modality.
"""

from __future__ import annotations

from typing import Any

from torch import Tensor

from holomodal.batch import Batch
from holomodal.fusion import create_fusion
from holomodal.methods import register_method
from holomodal.methods.base import ClassificationMethod, ModelContext, build_encoders, mlp_head


@register_method("late_fusion")
class LateFusion(ClassificationMethod):
    def __init__(
        self,
        context: ModelContext,
        encoders: dict[str, Any] | None = None,
        fusion: dict[str, Any] | None = None,
        head: dict[str, Any] | None = None,
        optim: dict[str, Any] | None = None,
        modalities: list[str] | None = None,
    ) -> None:
        super().__init__(context, optim)
        self.used_modalities = list(modalities or context.modalities)
        self.encoders = build_encoders(context, encoders, self.used_modalities)
        fusion_cfg = dict(fusion or {"name": "concat"})
        self.fusion = create_fusion(fusion_cfg.pop("name"), {m: e.output_dim for m, e in self.encoders.items()}, **fusion_cfg)
        self.head = mlp_head(self.fusion.output_dim, context.num_classes, **(head or {}))

    def embed(self, batch: Batch) -> Tensor:
        embeddings = {
            m: enc(batch.inputs[m], batch.present[m], batch.cell_missing if m == "tabular" else None)
            for m, enc in self.encoders.items()
        }
        return self.fusion(embeddings, batch.present)

    def forward(self, batch: Batch) -> Tensor:
        return self.head(self.embed(batch))
