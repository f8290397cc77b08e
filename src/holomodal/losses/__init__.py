"""Losses, one module each: TIP's pre-training objectives (ITC, ITM, MTR), STiL's CLUB
bound and prototype alignment, and MedST's global, local and temporal losses."""

from holomodal.losses.club import CLUBMean, club_bound, club_estimator_loss
from holomodal.losses.itc import ImageTabularContrastiveLoss, ProjectionHead
from holomodal.losses.itm import ImageTabularMatching, sample_hard_negatives
from holomodal.losses.medst import GlobalAlignmentLoss, ModalityWeightedLocalAlignment, TemporalCycleConsistencyLoss
from holomodal.losses.mtr import MaskedTabularReconstructionLoss, sample_column_mask
from holomodal.losses.prototype import PrototypeBank, prototype_alignment_loss

__all__ = [
    "CLUBMean", "PrototypeBank", "club_bound", "club_estimator_loss", "prototype_alignment_loss",
    "ImageTabularContrastiveLoss", "ImageTabularMatching", "MaskedTabularReconstructionLoss", "ProjectionHead",
    "sample_column_mask", "sample_hard_negatives",
    "GlobalAlignmentLoss", "ModalityWeightedLocalAlignment", "TemporalCycleConsistencyLoss",
]
