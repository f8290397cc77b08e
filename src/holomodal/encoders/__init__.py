"""Encoders, one file each, behind one registry and factory (timm's ``create_model`` style).

``create_encoder(name, input_spec, **kwargs)`` builds an encoder from the input spec a
fitted preprocessor reports for its modality. Every encoder maps one modality's tensors
to ``(B, output_dim)`` and runs on every sample: absent modalities arrive zeroed with
``present`` False, so no branch is ever skipped and DDP needs no
``find_unused_parameters``.

Heavy libraries (timm, transformers, open_clip) are imported inside the encoders that
need them, so importing this package stays cheap.
"""

from __future__ import annotations

from typing import Any

from holomodal._registry import Registry
from holomodal.encoders.base import Encoder

ENCODERS = Registry("encoder")
register_encoder = ENCODERS.register
list_encoders = ENCODERS.list


def create_encoder(name: str, input_spec: dict[str, Any], **kwargs: Any) -> Encoder:
    return ENCODERS.create(name, dict(input_spec), **kwargs)


# imported for their registrations, after the registry they register into exists
from holomodal.encoders import (  # noqa: E402,F401
    audio,
    lenet,
    tabular_mlp,
    tabular_transformer,
    text,
    timeseries,
    timm_image,
)

__all__ = ["ENCODERS", "Encoder", "create_encoder", "list_encoders", "register_encoder"]
