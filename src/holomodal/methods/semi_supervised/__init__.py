"""Semi-supervised methods: a few labelled rows and many unlabelled ones.

All share :mod:`holomodal.methods.semi_supervised.base` (two loaders at 1 : 7, EMA teacher,
pseudo-label records); each method is one file: ``stil`` (STiL, CVPR 2025) and the
baselines ``supervised_only``, ``fixmatch``, ``simmatch``, ``comatch``, ``freematch``,
``mmatch`` and ``cotraining``, imported when the method is first asked for
(:data:`holomodal.methods.METHOD_MODULES`).
"""

from holomodal.methods.semi_supervised.base import SemiSupervisedMethod, is_semi_supervised

__all__ = ["SemiSupervisedMethod", "is_semi_supervised"]
