"""Encoders, one file each, behind one registry and factory (timm's ``create_model`` style).

Every encoder maps one modality's tensors to ``(B, output_dim)`` and runs on every sample:
absent modalities arrive zeroed with ``present`` False, so no branch is ever skipped and DDP
needs no ``find_unused_parameters``.
"""

from __future__ import annotations

from typing import Any

from holomodal._registry import Registry
from holomodal.encoders.base import Encoder

ENCODERS = Registry("encoder")
register_encoder = ENCODERS.register
list_encoders = ENCODERS.list


def create_encoder(name: str, input_spec: dict[str, Any], **kwargs: Any) -> Encoder:
    return ENCODERS.create(name, input_spec, **kwargs)


from holomodal.encoders import audio, lenet, tabular_mlp, tabular_transformer, text, timeseries, timm_image  # noqa: E402,F401

__all__ = ["Encoder", "create_encoder", "list_encoders", "register_encoder"]
