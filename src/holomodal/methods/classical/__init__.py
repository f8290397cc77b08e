"""Classical baselines: scikit-learn models behind the method interface (no Lightning loop).

They read the same encoded :class:`~holomodal.batch.Batch` as the deep methods, masks
included, so synthetic missingness, robustness sweeps and predictions treat them alike.
Saved without pickle: arrays in safetensors, the rest JSON, tree ensembles in skops'
format loaded with a fixed list of trusted types.

Each method's module (``gbdt``, ``linear``) is imported when the method is first asked for
(:data:`holomodal.methods.METHOD_MODULES`).
"""

from holomodal.methods.classical.base import ClassicalMethod, is_classical

__all__ = ["ClassicalMethod", "is_classical"]
