"""Classification on MedST's image encoder: a linear layer on the frontal view's CLS feature
(768-d at ViT-B, before MedST's projection), the encoder pre-trained by
``holomodal pretrain method=medst`` (``model.checkpoint``) and frozen (``finetune: linear``,
MedST's linear probe) or trained (``full``), or from random weights without a checkpoint.
Downstream reads one view, as MedST does; a row without its image has no features
to read, so the head sees the encoder's output for the zeroed image and learns its prior.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import Tensor, nn

from holomodal.batch import Batch
from holomodal.errors import ConfigError
from holomodal.methods import register_method
from holomodal.methods.base import ClassificationMethod, ModelContext
from holomodal.methods.pretraining.medst import DEFAULT_IMAGE, read_medst_run
from holomodal.schema import Modality

ENCODER_PREFIX = "image_encoder."


@register_method("medst")
class MedSTClassifier(ClassificationMethod):
    """Args:
        checkpoint: a MedST pre-training run folder or its ``.ckpt``.
        finetune: ``linear`` (encoder frozen, in eval mode) or ``full``; default ``linear``
            from a checkpoint, ``full`` without (``linear`` without one probes random features,
            the no-pre-training baseline).
        image: MultiViewViT options without a checkpoint (``model_name``, ``pretrained``).
        image_column: the image column, when the data has several.
    """

    def __init__(self, context: ModelContext, checkpoint: str | None = None, finetune: str | None = None,
                 image: dict[str, Any] | None = None, image_column: str | None = None,
                 optim: dict[str, Any] | None = None) -> None:
        super().__init__(context, optim)
        from holomodal.encoders.multiview_vit import MultiViewViT

        self.finetune = finetune or ("linear" if checkpoint else "full")
        if self.finetune not in ("linear", "full"):
            raise ConfigError(f"medst finetune must be 'linear' or 'full', not '{self.finetune}'")
        images = [m for m, t in context.modality_types.items() if t == "image"]
        self.column = image_column or (images[0] if len(images) == 1 else None)
        if self.column not in images:
            raise ConfigError(f"medst reads one image column: name it with model.image_column (images: {images})")
        spec = context.input_specs[self.column]
        self.checkpoint = checkpoint
        if checkpoint:
            image_cfg = {**read_medst_run(checkpoint)["model"]["image"], "pretrained": False}
        else:
            image_cfg = {**DEFAULT_IMAGE, "img_size": int(spec["size"]), **(image or {})}
        self.image_cfg = image_cfg
        self.encoder = MultiViewViT(**copy.deepcopy(image_cfg))
        self.head = nn.Linear(self.encoder.output_dim, context.num_classes)
        nn.init.normal_(self.head.weight, std=0.01)  # a probe's few steps must not fight a large random head
        nn.init.zeros_(self.head.bias)
        channels = int(spec.get("channels", 3))
        self.register_buffer("pixel_mean", torch.tensor(spec.get("mean") or [0.5] * channels).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(spec.get("std") or [0.5] * channels).view(1, -1, 1, 1), persistent=False)
        self._pretrained_loaded = False
        if self.finetune == "linear":
            self.encoder.requires_grad_(False)
            self.encoder.eval()
        # downstream reads the frontal view alone: the lateral experts get no gradient, which
        # DDP would refuse as unused parameters
        self.encoder.lateral_experts.requires_grad_(False)

    @staticmethod
    def adopt_pretraining(preprocessor: Any, model: dict[str, Any]) -> dict[str, Any]:
        """Estimator hook: the data's image column is read as pre-training read the frontal
        view (size, statistics)."""
        if not model.get("checkpoint"):
            return model
        record = read_medst_run(model["checkpoint"])
        saved = ((record.get("preprocessor") or {}).get("processors") or {}).get(record["frontal"])
        images = [c.name for c in preprocessor.schema.of(Modality.IMAGE)]
        column = model.get("image_column") or (images[0] if len(images) == 1 else None)
        if saved is None or column not in preprocessor.processors:
            raise ConfigError(f"the MedST checkpoint '{model['checkpoint']}' and the data disagree on the image column "
                              f"(data images: {images})")
        preprocessor.processors[column].load_state(copy.deepcopy(saved))
        return model

    def setup(self, stage: str) -> None:
        # before Lightning restores a resumed run, which then overwrites these weights
        if stage == "fit" and self.checkpoint and not self._pretrained_loaded:
            state = read_medst_run(self.checkpoint, weights=True)["state_dict"]
            self.encoder.load_state_dict({k[len(ENCODER_PREFIX):]: v for k, v in state.items()
                                          if k.startswith(ENCODER_PREFIX)}, strict=True)
            self._pretrained_loaded = True

    def train(self, mode: bool = True) -> "MedSTClassifier":
        super().train(mode)
        if self.finetune == "linear":
            self.encoder.eval()
        return self

    @property
    def phase_name(self) -> str:
        source = "MedST pre-training" if self.checkpoint else "random weights"
        what = "linear probe on the frozen" if self.finetune == "linear" else "full fine-tuning of the"
        return f"{what} image encoder, from {source}"

    def forward(self, batch: Batch) -> Tensor:
        x = (batch.inputs[self.column]["pixels"].float() / 255.0 - self.pixel_mean) / self.pixel_std
        x = x.expand(-1, 3, -1, -1) if x.shape[1] == 1 else x
        with torch.set_grad_enabled(self.finetune == "full" and torch.is_grad_enabled()):
            cls, _, _ = self.encoder(x)
        return self.head(cls)
