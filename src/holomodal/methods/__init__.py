"""Training methods: LightningModules that compose encoders, fusion and heads."""

from __future__ import annotations

from typing import Any

from holomodal._registry import Registry
from holomodal.methods.base import ClassificationMethod, ModelContext

METHODS = Registry("method")
register_method = METHODS.register
list_methods = METHODS.list


def create_method(name: str, context: ModelContext, **kwargs: Any) -> ClassificationMethod:
    return METHODS.create(name, context, **kwargs)


from holomodal.methods import i2m2, late_fusion  # noqa: E402,F401  (registers)
from holomodal.methods import tip  # noqa: E402,F401  (registers)
from holomodal.methods import classical  # noqa: E402,F401  (registers gbdt, linear)
from holomodal.methods import ensemble  # noqa: E402,F401  (registers)
from holomodal.methods import semi_supervised  # noqa: E402,F401  (registers stil and its baselines)
from holomodal.methods import prompting  # noqa: E402,F401  (registers mmp, dcp, clip_baseline, clip_finetune)
from holomodal.methods import medst  # noqa: E402,F401  (registers)
from holomodal.methods import dynamic  # noqa: E402,F401  (registers)

__all__ = ["ClassificationMethod", "ModelContext", "create_method", "list_methods", "register_method"]
