"""A small 2-D CNN over log-mel spectrograms."""

from __future__ import annotations

from typing import Any

from torch import Tensor, nn

from holomodal.encoders import register_encoder
from holomodal.encoders.base import Encoder, mask_absent, require
from holomodal.errors import ConfigError


@register_encoder("audio_cnn")
class AudioCNN(Encoder):
    """``depth`` blocks of conv3x3 + BN + ReLU + 2x2 max-pooling, global average pooling, a
    linear projection.

    Args:
        input_spec: ``{"n_mels": M, "frames": T}``; input ``spectrogram`` (B, 1, M, T).
        width: channels of the first block; each later block doubles them, up to 4x.
        depth: number of conv blocks.
        output_dim: size of the projected output; ``None`` returns the pooled channels.
    """

    def __init__(self, input_spec: dict[str, Any], width: int = 32, depth: int = 4, output_dim: int | None = 128) -> None:
        super().__init__()
        require(input_spec, "n_mels", encoder="audio_cnn")
        if width < 1 or depth < 1:
            raise ConfigError(f"audio_cnn: width and depth must be >= 1, got {width} and {depth}")
        layers: list[nn.Module] = []
        cin = 1
        for i in range(depth):
            # capped widening keeps the parameter count small on long spectrograms
            cout = width * 2 ** min(i, 2)
            layers += [
                nn.Conv2d(cin, cout, 3, padding=1, bias=False),
                nn.BatchNorm2d(cout),
                nn.ReLU(),
                nn.MaxPool2d(2, ceil_mode=True),
            ]
            cin = cout
        self.features = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(1))
        self.proj = nn.Linear(cin, output_dim) if output_dim else nn.Identity()
        self.output_dim = int(output_dim) if output_dim else cin

    def forward_tokens(self, inputs: dict[str, Tensor], present: Tensor, cell_missing: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """The last feature map's positions, projected, as tokens (B, T, output_dim) and their
        mean (B, output_dim): the projection is linear, so the mean is :meth:`forward`'s output."""
        fmap = self.features[:-2](mask_absent(inputs["spectrogram"].float(), present))
        tokens = self.proj(fmap.flatten(2).transpose(1, 2))
        return tokens, tokens.mean(dim=1)

    def forward(self, inputs: dict[str, Tensor], present: Tensor, cell_missing: Tensor | None = None) -> Tensor:
        return self.proj(self.features(mask_absent(inputs["spectrogram"].float(), present)))
