"""Self-supervised objectives of image-table pre-training (TIP), one module each."""

from holomodal.losses.itc import ImageTabularContrastiveLoss, ProjectionHead
from holomodal.losses.itm import ImageTabularMatching, sample_hard_negatives
from holomodal.losses.mtr import MaskedTabularReconstructionLoss, sample_column_mask

__all__ = [
    "ImageTabularContrastiveLoss", "ImageTabularMatching", "MaskedTabularReconstructionLoss", "ProjectionHead",
    "sample_column_mask", "sample_hard_negatives",
]
