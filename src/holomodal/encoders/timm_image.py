"""Any timm backbone as an image encoder (pretrained weights only when asked for)."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from holomodal.encoders import register_encoder
from holomodal.encoders.base import Encoder, PixelNormalizer, mask_absent, require


@register_encoder("timm")
class TimmImageEncoder(Encoder):
    """A timm model with its classifier removed (``num_classes=0``): ``forward`` returns
    the globally pooled features (B, num_features).

    Args:
        input_spec: ``{"channels": C, "size": S, "mean": [...], "std": [...]}``.
        model_name: any name from ``timm.list_models()``.
        pretrained: load timm's pretrained weights (needs them cached or a network).
        channels_last: run the backbone in NHWC memory format (faster convolutions on
            tensor-core GPUs, especially under mixed precision).
        normalize: normalise with the spec's mean/std; ``False`` feeds pixels in [0, 1], as
            TIP does.
        **timm_kwargs: passed to ``timm.create_model`` (``drop_path_rate``, ``img_size``, ...).
    """

    def __init__(
        self,
        input_spec: dict[str, Any],
        model_name: str = "resnet18",
        pretrained: bool = False,
        channels_last: bool = False,
        normalize: bool = True,
        **timm_kwargs: Any,
    ) -> None:
        super().__init__()
        import timm

        require(input_spec, "channels", encoder="timm")
        channels = int(input_spec["channels"])
        self.backbone = timm.create_model(model_name, pretrained=pretrained, in_chans=channels, num_classes=0, **timm_kwargs)
        if normalize:
            self.normalize = PixelNormalizer(channels, input_spec.get("mean"), input_spec.get("std"))
        else:
            self.normalize = PixelNormalizer(channels)
        self.output_dim = int(self.backbone.num_features)
        self.channels_last = channels_last
        if channels_last:
            self.backbone = self.backbone.to(memory_format=torch.channels_last)

    def _pixels(self, inputs: dict[str, Tensor], present: Tensor) -> Tensor:
        x = self.normalize(mask_absent(inputs["pixels"], present))
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x

    def forward_tokens(
        self, inputs: dict[str, Tensor], present: Tensor, cell_missing: Tensor | None = None
    ) -> tuple[Tensor, Tensor]:
        """The last feature map as tokens (B, H*W, C) and the pooled vector (B, C).

        Transformer backbones already return tokens (B, T, C), prefix tokens included.
        """
        fmap = self.backbone.forward_features(self._pixels(inputs, present))
        pooled = self.backbone.forward_head(fmap, pre_logits=True)
        if fmap.dim() == 4:
            # a few timm models (Swin, MambaOut, ...) return NHWC maps and say so in output_fmt
            nhwc = str(getattr(self.backbone, "output_fmt", "NCHW")).upper().endswith("NHWC")
            tokens = fmap.flatten(1, 2) if nhwc else fmap.flatten(2).transpose(1, 2)
        else:
            tokens = fmap
        return tokens, pooled

    def forward(self, inputs: dict[str, Tensor], present: Tensor, cell_missing: Tensor | None = None) -> Tensor:
        return self.backbone(self._pixels(inputs, present))
