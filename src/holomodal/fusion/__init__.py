"""Fusion modules: combine per-modality embeddings, aware of which modalities are present."""

from __future__ import annotations

from typing import Any

from holomodal._registry import Registry

FUSIONS = Registry("fusion")
register_fusion = FUSIONS.register
list_fusions = FUSIONS.list


def create_fusion(name: str, input_dims: dict[str, int], **kwargs: Any):
    return FUSIONS.create(name, input_dims, **kwargs)


from holomodal.fusion import concat  # noqa: E402,F401  (registers)
from holomodal.fusion import cross_attention  # noqa: E402,F401  (registers)
