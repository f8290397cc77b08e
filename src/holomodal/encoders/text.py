"""Text encoders: a small BERT from a transformers config, or a CLIP text tower (open_clip)."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from holomodal.encoders import register_encoder
from holomodal.encoders.base import Encoder


@register_encoder("text_transformer")
class TextTransformer(Encoder):
    """A BERT built from its config (random init); ``pretrained`` names a checkpoint to load with
    ``from_pretrained`` instead (from the local cache when offline). Output: the mean of the
    token states over the attention mask."""

    def __init__(
        self, input_spec: dict[str, Any], hidden_size: int = 64, layers: int = 2, heads: int = 2,
        intermediate_size: int = 128, pretrained: str | None = None,
    ) -> None:
        super().__init__()
        from transformers import AutoModel, BertConfig, BertModel

        if pretrained:
            self.model = AutoModel.from_pretrained(pretrained)
        else:
            config = BertConfig(
                vocab_size=int(input_spec["vocab_size"]), hidden_size=hidden_size, num_hidden_layers=layers,
                num_attention_heads=heads, intermediate_size=intermediate_size,
                max_position_embeddings=max(int(input_spec["max_length"]), 16), pad_token_id=int(input_spec.get("pad_id", 0)),
            )
            self.model = BertModel(config, add_pooling_layer=False)
        self.output_dim = int(self.model.config.hidden_size)

    def forward(self, inputs: dict[str, Tensor], present: Tensor, cell_missing: Tensor | None = None) -> Tensor:
        mask = inputs["attention_mask"]
        # an absent text has no tokens at all; one unmasked position keeps attention finite
        mask = mask.clone()
        mask[:, 0] = 1
        states = self.model(input_ids=inputs["input_ids"], attention_mask=mask).last_hidden_state
        weights = mask.unsqueeze(-1).to(states.dtype)
        return (states * weights).sum(1) / weights.sum(1)


@register_encoder("clip_text")
class CLIPTextEncoder(Encoder):
    """open_clip's text tower, built from one of its model configs (no weights unless
    ``pretrained`` names a tag); expects the ``clip`` tokenizer."""

    def __init__(self, input_spec: dict[str, Any], model_name: str = "RN50", pretrained: str | None = None, **text_cfg: Any) -> None:
        super().__init__()
        import open_clip
        from open_clip.model import _build_text_tower

        if pretrained:
            model = open_clip.create_model(model_name, pretrained=pretrained)
            self.tower = model
            self.output_dim = int(model.text_projection.shape[1])
            self._encode = model.encode_text
        else:
            cfg = open_clip.get_model_config(model_name)
            text = {**cfg["text_cfg"], "context_length": int(input_spec["max_length"]), **text_cfg}
            self.tower = _build_text_tower(cfg["embed_dim"], text)
            self.output_dim = int(cfg["embed_dim"])
            self._encode = self.tower

    def forward(self, inputs: dict[str, Tensor], present: Tensor, cell_missing: Tensor | None = None) -> Tensor:
        return self._encode(inputs["input_ids"])
