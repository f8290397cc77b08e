"""Any timm backbone as an image encoder (pretrained weights only when asked for)."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from holomodal.encoders import register_encoder
from holomodal.encoders.base import Encoder, PixelNormalizer


@register_encoder("timm")
class TimmImageEncoder(Encoder):
    def __init__(
        self, input_spec: dict[str, Any], model_name: str = "resnet18", pretrained: bool = False,
        channels_last: bool = False, normalize: bool = True, **timm_kwargs: Any,
    ) -> None:
        super().__init__()
        import timm

        self.backbone = timm.create_model(
            model_name, pretrained=pretrained, in_chans=int(input_spec["channels"]), num_classes=0, **timm_kwargs
        )
        # TIP feeds [0, 1] pixels without mean/std normalisation: normalize=False keeps that
        mean, std = (input_spec["mean"], input_spec["std"]) if normalize else ([0.0] * input_spec["channels"], [1.0] * input_spec["channels"])
        self.normalize = PixelNormalizer(mean, std)
        self.output_dim = int(self.backbone.num_features)
        self.channels_last = channels_last
        if channels_last:
            self.backbone = self.backbone.to(memory_format=torch.channels_last)

    def _pixels(self, inputs: dict[str, Tensor]) -> Tensor:
        x = self.normalize(inputs["pixels"])
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x

    def forward_tokens(self, inputs: dict[str, Tensor], present: Tensor) -> tuple[Tensor, Tensor]:
        """Last feature map as tokens (B, H*W, C) and the pooled vector (B, C)."""
        fmap = self.backbone.forward_features(self._pixels(inputs))
        pooled = self.backbone.forward_head(fmap, pre_logits=True)
        tokens = fmap.flatten(2).transpose(1, 2) if fmap.dim() == 4 else fmap
        return tokens, pooled

    def forward(self, inputs: dict[str, Tensor], present: Tensor, cell_missing: Tensor | None = None) -> Tensor:
        return self.backbone(self._pixels(inputs))
