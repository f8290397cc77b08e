"""Any timm backbone as an image encoder; pretrained weights from timm's cache, never a download
unless asked for."""

from __future__ import annotations

import warnings
from typing import Any

import torch
from torch import Tensor

from holomodal.encoders import register_encoder
from holomodal.encoders.base import Encoder, PixelNormalizer, mask_absent, require
from holomodal.errors import ConfigError


class PretrainedWeightsWarning(UserWarning):
    """Pretrained weights were asked for with ``pretrained: auto`` but are not in the cache."""


_warned: set[str] = set()


def warn_random_init(model_name: str) -> None:
    if model_name not in _warned:
        _warned.add(model_name)
        warnings.warn(
            f"no pretrained weights for timm model '{model_name}' in the local cache: it starts from random "
            f"initialisation. To use them, download once (python -c \"import timm; timm.create_model('{model_name}', "
            "pretrained=True)\") or set the encoder's pretrained: false to silence this",
            PretrainedWeightsWarning, stacklevel=3,
        )


def cached_weights(model_name: str) -> str | None:
    """The local file of a timm model's default pretrained weights, or None; looks in the
    Hugging Face hub cache and torch hub's checkpoint folder, without any network access."""
    import os

    import torch.hub
    from timm.models import get_pretrained_cfg

    try:
        cfg = get_pretrained_cfg(model_name)
    except Exception:  # an unknown name: timm.create_model reports it
        return None
    if cfg is None:
        return None
    hub_id = getattr(cfg, "hf_hub_id", None)
    if hub_id:
        from huggingface_hub import try_to_load_from_cache

        repo, _, revision = hub_id.partition("@")
        for filename in ("model.safetensors", "pytorch_model.bin"):
            found = try_to_load_from_cache(repo, filename, revision=revision or None)
            if isinstance(found, str) and os.path.isfile(found):
                return found
    url = getattr(cfg, "url", None)
    if url:
        local = os.path.join(torch.hub.get_dir(), "checkpoints", os.path.basename(url.split("?")[0]))
        if os.path.isfile(local):
            return local
    return None


def resolve_pretrained(model_name: str, pretrained: bool | str, timm_kwargs: dict[str, Any], who: str) -> bool:
    """``pretrained`` for ``timm.create_model``: ``auto`` loads weights from the local cache
    when they are there (pointing ``timm_kwargs`` at the file) and otherwise warns and starts
    from random ones; never a download."""
    if pretrained == "auto":
        cached = cached_weights(model_name)
        if cached is None:
            warn_random_init(model_name)
        else:
            timm_kwargs.setdefault("pretrained_cfg_overlay", {"file": cached})
        return cached is not None
    if not isinstance(pretrained, bool):
        raise ConfigError(f"{who}: pretrained must be true, false or 'auto', not {pretrained!r}")
    return pretrained


@register_encoder("timm")
class TimmImageEncoder(Encoder):
    """A timm model with its classifier removed (``num_classes=0``): ``forward`` returns
    the globally pooled features (B, num_features).

    Args:
        input_spec: ``{"channels": C, "size": S, "mean": [...], "std": [...]}``.
        model_name: any name from ``timm.list_models()``.
        pretrained: ``"auto"``: timm's pretrained weights when the local cache (Hugging Face
            hub or torch hub) holds them, else random initialisation with one
            :class:`PretrainedWeightsWarning`, and never a download; ``True``: load them
            through timm, downloading if needed; ``False``: random initialisation.
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
        pretrained: bool | str = "auto",
        channels_last: bool = False,
        normalize: bool = True,
        **timm_kwargs: Any,
    ) -> None:
        super().__init__()
        import timm

        require(input_spec, "channels", encoder="timm")
        channels = int(input_spec["channels"])
        pretrained = resolve_pretrained(model_name, pretrained, timm_kwargs, "timm")
        self.backbone = timm.create_model(model_name, pretrained=pretrained, in_chans=channels, num_classes=0, **timm_kwargs)
        if normalize:
            self.normalize = PixelNormalizer(channels, input_spec.get("mean"), input_spec.get("std"))
        else:
            self.normalize = PixelNormalizer(channels)
        self.output_dim = int(self.backbone.num_features)
        self.channels_last = channels_last
        if channels_last:
            self.backbone = self.backbone.to(memory_format=torch.channels_last)

    @property
    def convolutional(self) -> bool:
        return any(isinstance(m, torch.nn.Conv2d) for m in self.backbone.modules())

    def use_channels_last(self) -> None:
        """From now on, run the backbone in NHWC (the ``channels_last`` option, after the fact);
        the weights and their state-dict keys stay as they are."""
        self.backbone = self.backbone.to(memory_format=torch.channels_last)
        self.channels_last = True

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
