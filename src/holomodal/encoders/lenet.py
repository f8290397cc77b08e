"""LeNet as used by I2M2 for AV-MNIST images and spectrograms (spec 2.2.1)."""

from __future__ import annotations

from typing import Any

from torch import Tensor, nn

from holomodal.encoders import register_encoder
from holomodal.encoders.base import Encoder, PixelNormalizer


def _block(cin: int, cout: int, kernel: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, kernel, padding=kernel // 2, bias=False), nn.BatchNorm2d(cout), nn.ReLU(), nn.MaxPool2d(2, ceil_mode=True))


@register_encoder("lenet")
class LeNet(Encoder):
    """conv5x5(c) then ``blocks`` conv3x3 blocks doubling the width, each with BN, ReLU and
    2x2 max-pooling; global average pooling. Output ``c * 2**blocks``."""

    def __init__(self, input_spec: dict[str, Any], channels: int = 6, blocks: int = 3) -> None:
        super().__init__()
        in_ch = int(input_spec.get("channels", 1)) if "n_mels" not in input_spec else 1
        self.normalize = PixelNormalizer(input_spec["mean"], input_spec["std"]) if "mean" in input_spec else None
        layers = [_block(in_ch, channels, 5)]
        for i in range(blocks):
            layers.append(_block(channels * 2**i, channels * 2 ** (i + 1), 3))
        self.features = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(1))
        self.output_dim = channels * 2**blocks
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_uniform_(m.weight, nonlinearity="relu")

    def forward(self, inputs: dict[str, Tensor], present: Tensor, cell_missing: Tensor | None = None) -> Tensor:
        x = inputs["spectrogram"] if "spectrogram" in inputs else self.normalize(inputs["pixels"])
        return self.features(x)
