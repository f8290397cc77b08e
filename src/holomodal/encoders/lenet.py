"""LeNet as used by I2M2 for AV-MNIST images and spectrograms (spec ``dcp_i2m2_medst.md`` 2.2.1)."""

from __future__ import annotations

from typing import Any

from torch import Tensor, nn

from holomodal.encoders import register_encoder
from holomodal.encoders.base import Encoder, PixelNormalizer, mask_absent
from holomodal.errors import ConfigError


def _block(cin: int, cout: int, kernel: int) -> nn.Sequential:
    # ceil-mode pooling keeps a 1x1 map from vanishing when blocks outnumber the halvings
    return nn.Sequential(
        nn.Conv2d(cin, cout, kernel, padding=kernel // 2, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(),
        nn.MaxPool2d(2, ceil_mode=True),
    )


@register_encoder("lenet")
class LeNet(Encoder):
    """conv5x5(c) then ``blocks`` conv3x3 blocks doubling the width, each with BN, ReLU and
    2x2 max-pooling, then global average pooling. Output dimension ``c * 2**blocks``.

    Works on images (``pixels`` uint8, converted and normalised inside) and on audio
    (``spectrogram`` float (B, 1, M, T), used as is).

    Args:
        input_spec: an image spec ``{"channels", "size", "mean", "std"}`` or an audio spec
            ``{"n_mels", "frames"}``.
        channels: ``c``, the width of the first convolution (I2M2: 3 for unimodal experts,
            6 for the inter expert).
        blocks: ``k``, the number of conv3x3 blocks (I2M2: 3 for images, 5 for audio).
    """

    def __init__(self, input_spec: dict[str, Any], channels: int = 6, blocks: int = 3) -> None:
        super().__init__()
        if channels < 1 or blocks < 0:
            raise ConfigError(f"lenet: channels must be >= 1 and blocks >= 0, got {channels} and {blocks}")
        in_ch = 1 if "n_mels" in input_spec else int(input_spec.get("channels", 1))
        self.normalize = PixelNormalizer(in_ch, input_spec.get("mean"), input_spec.get("std"))
        layers = [_block(in_ch, channels, 5)]
        for i in range(blocks):
            layers.append(_block(channels * 2**i, channels * 2 ** (i + 1), 3))
        # flatten(1), not squeeze(): I2M2's squeeze drops the batch axis for a batch of one
        self.features = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(1))
        self.output_dim = channels * 2**blocks
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_uniform_(m.weight, nonlinearity="relu")

    def _input(self, inputs: dict[str, Tensor], present: Tensor) -> Tensor:
        if "spectrogram" in inputs:
            return mask_absent(inputs["spectrogram"], present).float()
        return self.normalize(mask_absent(inputs["pixels"], present))

    def forward_tokens(self, inputs: dict[str, Tensor], present: Tensor, cell_missing: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """The last feature map's positions as tokens (B, H*W, C) and their mean (B, C)."""
        fmap = self.features[:-2](self._input(inputs, present))
        tokens = fmap.flatten(2).transpose(1, 2)
        return tokens, tokens.mean(dim=1)

    def forward(self, inputs: dict[str, Tensor], present: Tensor, cell_missing: Tensor | None = None) -> Tensor:
        return self.features(self._input(inputs, present))
