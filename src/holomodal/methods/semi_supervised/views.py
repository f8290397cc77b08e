"""Augmented views of a batch, per modality type, for the semi-supervised methods.

Three kinds (spec ``tip_stil.md`` 2.2 and 2.7):

* ``weak`` and ``strong``: the views of the FixMatch family. Images: weak is a
  random-resized crop (scale 0.2-1) and a horizontal flip; strong adds colour jitter
  (0.4, 0.4, 0.4, hue 0.1, p 0.8), grey-scale (p 0.2, natural images only) and a Gaussian
  blur (19 px at 128 px, p 0.5). Tables: 10 % (weak) or 30 % (strong) marginal
  corruption.
* ``stil``: STiL's one view, shared by teacher and student: TIP's pre-training image
  augmentation (with probability 0.95) and a 30 %-corrupted table.

The papers only augment images and tables. For the other types holomodal adds what the
same idea means there, documented rather than left out: audio spectrograms get
SpecAugment-style masks (one band of up to 10 % of the mel bins and one span of up to 10 %
of the frames in the strong and STiL views), time series lose 10 % (weak) or 30 % (strong,
STiL) of their observed cells, marked unobserved; text is left unchanged. Absent
modalities and missing cells stay as the masks say.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import torch
from torch import Tensor

from holomodal.augment import ImageAugmentation, build_image_augmentation, marginal_corruption
from holomodal.batch import Batch
from holomodal.errors import ConfigError

VIEW_KINDS = ("weak", "strong", "stil")

WEAK_IMAGE = ImageAugmentation(crop_scale=(0.2, 1.0), hflip=0.5, brightness=0.0, contrast=0.0, saturation=0.0,
                               jitter_p=0.0, gray_p=0.0, blur_p=0.0)
STRONG_IMAGE = replace(WEAK_IMAGE, brightness=0.4, contrast=0.4, saturation=0.4, hue=0.1, jitter_p=0.8, gray_p=0.2,
                       blur_p=0.5, blur_kernel=19 / 128)
# the share of columns or observed cells each view replaces
CORRUPTION = {"weak": 0.1, "strong": 0.3, "stil": 0.3}
SPEC_MASK = 0.1  # largest masked share of mel bins and of frames (strong and stil views)


@dataclass(frozen=True)
class ViewMaker:
    """Makes the views of a batch; ``modality_types`` by modality name.

    Args:
        image_preset: the STiL view's image augmentation (a preset of
            :mod:`holomodal.augment` or its options); ``natural`` for photographs, ``medical``
            for scans (no grey-scale, rotations). TIP's pre-training rate 0.95 unless given.
        natural_images: the strong view's grey-scale is for natural images only (STiL's
            baselines turn it off on cardiac MRI).
        corruption: overrides of :data:`CORRUPTION` by view kind.
    """

    modality_types: dict[str, str]
    image_preset: Any = "natural"
    natural_images: bool = True
    corruption: dict[str, float] | None = None

    def __post_init__(self) -> None:
        unknown = sorted(set(self.corruption or {}) - set(VIEW_KINDS))
        if unknown:
            raise ConfigError(f"view corruption keys {unknown} are not view kinds {list(VIEW_KINDS)}")

    def _image_augmentation(self, kind: str) -> ImageAugmentation | None:
        if kind == "weak":
            return WEAK_IMAGE
        if kind == "strong":
            return STRONG_IMAGE if self.natural_images else replace(STRONG_IMAGE, gray_p=0.0)
        cfg = {"preset": self.image_preset} if isinstance(self.image_preset, str) else dict(self.image_preset)
        cfg.setdefault("rate", 0.95)
        return build_image_augmentation(cfg)

    def __call__(self, batch: Batch, kind: str) -> Batch:
        if kind not in VIEW_KINDS:
            raise ConfigError(f"unknown view '{kind}' (known: {', '.join(VIEW_KINDS)})")
        rate = {**CORRUPTION, **(self.corruption or {})}[kind]
        inputs = dict(batch.inputs)
        image_aug = self._image_augmentation(kind)
        for m, tensors in batch.inputs.items():
            kind_of = self.modality_types.get(m, "tabular" if m == "tabular" else "")
            present = batch.present[m]
            if kind_of == "image" and image_aug is not None:
                pixels = image_aug(tensors["pixels"]) * present.view(-1, 1, 1, 1).float()
                inputs[m] = {**tensors, "pixels": pixels}
            elif kind_of == "tabular" and rate > 0:
                inputs[m], _ = marginal_corruption(tensors, batch.cell_missing, rate)
            elif kind_of == "audio" and kind != "weak":
                inputs[m] = {**tensors, "spectrogram": spec_masked(tensors["spectrogram"], SPEC_MASK)}
            elif kind_of == "timeseries" and rate > 0:
                inputs[m] = series_dropout(tensors, rate)
        return replace(batch, inputs=inputs)


def spec_masked(spec: Tensor, share: float) -> Tensor:
    """(B, 1, M, T) with one random band of mel bins and one random span of frames zeroed
    per row (zero is the split mean of the standardised spectrogram)."""
    b, _, n_mels, frames = spec.shape
    device = spec.device

    def band(n: int) -> Tensor:
        width = (torch.rand(b, device=device) * share * n).long()
        start = (torch.rand(b, device=device) * (n - width + 1).float()).long()
        pos = torch.arange(n, device=device)[None]
        return (pos >= start[:, None]) & (pos < (start + width)[:, None])

    hidden = band(n_mels)[:, None, :, None] | band(frames)[:, None, None, :]
    return spec.masked_fill(hidden, 0.0)


def series_dropout(tensors: dict[str, Tensor], rate: float) -> dict[str, Tensor]:
    """A share ``rate`` of the observed cells marked unobserved, their values zeroed (the
    time-since-last-observation channel is left as measured)."""
    observed = tensors["observed"] > 0
    drop = observed & (torch.rand(observed.shape, device=observed.device) < rate)
    return {**tensors, "values": tensors["values"].masked_fill(drop, 0.0),
            "observed": tensors["observed"].masked_fill(drop, 0.0)}
