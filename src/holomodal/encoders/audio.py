"""A small 2-D CNN over log-mel spectrograms."""

from __future__ import annotations

from typing import Any

from torch import Tensor, nn

from holomodal.encoders import register_encoder
from holomodal.encoders.base import Encoder


@register_encoder("audio_cnn")
class AudioCNN(Encoder):
    def __init__(self, input_spec: dict[str, Any], width: int = 32, depth: int = 4, output_dim: int = 128) -> None:
        super().__init__()
        layers, cin = [], 1
        for i in range(depth):
            cout = width * 2 ** min(i, 2)
            layers += [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(), nn.MaxPool2d(2, ceil_mode=True)]
            cin = cout
        self.features = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(1))
        self.proj = nn.Linear(cin, output_dim)
        self.output_dim = output_dim

    def forward(self, inputs: dict[str, Tensor], present: Tensor, cell_missing: Tensor | None = None) -> Tensor:
        return self.proj(self.features(inputs["spectrogram"]))
