"""Training methods: torch modules that compose encoders, fusion and heads, and train in
their LightningModule form (:func:`~holomodal.methods.base.lightning_class`).

Every method's module is imported the first time the method is asked for (``METHOD_MODULES``):
predicting with a late-fusion model imports neither TIP's nor the CLIP methods' code.
"""

from __future__ import annotations

from typing import Any

from holomodal._registry import Registry
from holomodal.methods.base import ClassificationMethod, ModelContext, lightning_class

_SEMI = "holomodal.methods.semi_supervised."
_PROMPTING = "holomodal.methods.prompting."
# method name -> the module that registers it
METHOD_MODULES = {
    "late_fusion": "holomodal.methods.late_fusion",
    "i2m2": "holomodal.methods.i2m2",
    "tip": "holomodal.methods.tip",
    "gbdt": "holomodal.methods.classical.gbdt",
    "linear": "holomodal.methods.classical.linear",
    "ensemble": "holomodal.methods.ensemble",
    **{name: _SEMI + name for name in ("stil", "supervised_only", "fixmatch", "simmatch", "comatch", "freematch",
                                        "mmatch", "cotraining")},
    "mmp": _PROMPTING + "mmp",
    "dcp": _PROMPTING + "dcp",
    "clip_baseline": _PROMPTING + "baselines",
    "clip_finetune": _PROMPTING + "baselines",
    "medst": "holomodal.methods.medst",
    "dynamic": "holomodal.methods.dynamic",
}

METHODS = Registry("method", METHOD_MODULES)
register_method = METHODS.register
list_methods = METHODS.list


def create_method(name: str, context: ModelContext, *, trainable: bool = True, **kwargs: Any) -> ClassificationMethod:
    """The method ``name`` built for ``context`` with its options ``kwargs``. ``trainable``:
    its LightningModule form, for a ``lightning.Trainer``; False: the plain torch module,
    enough to predict, which spares the Lightning import."""
    factory = METHODS.get(name)
    return (lightning_class(factory) if trainable else factory)(context, **kwargs)


__all__ = ["ClassificationMethod", "METHODS", "METHOD_MODULES", "ModelContext", "create_method", "lightning_class",
           "list_methods", "register_method"]
