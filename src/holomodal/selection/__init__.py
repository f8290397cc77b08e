"""Inference-time modality selection: DyMo's reward-driven greedy choice of which
recovered modalities a frozen any-subset classifier should fuse, per sample (spec
``dymo.md`` sections 3, 4 and 6). Model-agnostic: the model enters as a ``forward``
callable that takes a per-sample usage mask."""

from holomodal.selection.dymo import (
    CALIBRATIONS,
    SUBSET_METRICS,
    DyMoSelector,
    SelectionResult,
    SubsetStatistics,
    all_subsets,
    ics,
    quality,
    reward,
    subset_id,
)
from holomodal.selection import mopoe as _mopoe  # noqa: F401  (registers the 'mopoe' recoverer)

__all__ = [
    "CALIBRATIONS", "SUBSET_METRICS", "DyMoSelector", "SelectionResult", "SubsetStatistics",
    "all_subsets", "ics", "quality", "reward", "subset_id",
]
