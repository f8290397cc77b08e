"""Text encoders: a small BERT from a transformers config, or a CLIP text tower (open_clip)."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from holomodal.encoders import register_encoder
from holomodal.encoders.base import Encoder, mask_absent, require
from holomodal.errors import ConfigError


@register_encoder("text_transformer")
class TextTransformer(Encoder):
    """A BERT encoder; output pooled over the attention mask.

    Args:
        input_spec: ``{"vocab_size": V, "max_length": L, "pad_id": 0}``.
        hidden_size, layers, heads, intermediate_size: the BERT config (random init).
        dropout: hidden and attention dropout of the BERT config.
        pooling: ``"mean"`` (token states averaged over the attention mask) or ``"cls"``
            (the first token's state).
        pretrained: a transformers checkpoint name or folder, loaded with
            ``AutoModel.from_pretrained`` instead of building from the config (from the local
            cache when offline); its tokenizer must then be the one the data was encoded with.
    """

    def __init__(
        self,
        input_spec: dict[str, Any],
        hidden_size: int = 64,
        layers: int = 2,
        heads: int = 2,
        intermediate_size: int = 128,
        dropout: float = 0.1,
        pooling: str = "mean",
        pretrained: str | None = None,
    ) -> None:
        super().__init__()
        from transformers import AutoModel, BertConfig, BertModel

        if pooling not in ("mean", "cls"):
            raise ConfigError(f"text_transformer: pooling must be 'mean' or 'cls', not '{pooling}'")
        self.pooling = pooling
        if pretrained:
            self.model = AutoModel.from_pretrained(pretrained)
            # the pooler head is never used here; left in place it would be an unused
            # parameter under DDP
            if getattr(self.model, "pooler", None) is not None:
                self.model.pooler = None
        else:
            require(input_spec, "vocab_size", "max_length", encoder="text_transformer")
            if hidden_size % heads:
                raise ConfigError(f"text_transformer: hidden_size {hidden_size} is not divisible by heads {heads}")
            config = BertConfig(
                vocab_size=int(input_spec["vocab_size"]),
                hidden_size=hidden_size,
                num_hidden_layers=layers,
                num_attention_heads=heads,
                intermediate_size=intermediate_size,
                hidden_dropout_prob=dropout,
                attention_probs_dropout_prob=dropout,
                max_position_embeddings=int(input_spec["max_length"]),
                # one segment only: a second token-type row would never receive a gradient
                type_vocab_size=1,
                pad_token_id=int(input_spec.get("pad_id", 0)),
            )
            self.model = BertModel(config, add_pooling_layer=False)
        self.output_dim = int(self.model.config.hidden_size)

    def forward_tokens(self, inputs: dict[str, Tensor], present: Tensor) -> tuple[Tensor, Tensor]:
        """Every position's last hidden state (B, L, H) and the attention mask it was run
        with (B, L; the first position always visible, see :meth:`forward`)."""
        ids = mask_absent(inputs["input_ids"], present)
        mask = mask_absent(inputs["attention_mask"], present)
        # an absent or empty text has no tokens at all; keeping the first position visible
        # keeps attention and the mean finite, and the output a constant of the zeroed input
        mask = torch.cat([torch.ones_like(mask[:, :1]), mask[:, 1:]], dim=1)
        return self.model(input_ids=ids, attention_mask=mask).last_hidden_state, mask

    def forward(self, inputs: dict[str, Tensor], present: Tensor, cell_missing: Tensor | None = None) -> Tensor:
        states, mask = self.forward_tokens(inputs, present)
        if self.pooling == "cls":
            return states[:, 0]
        weights = mask.unsqueeze(-1).to(states.dtype)
        return (states * weights).sum(1) / weights.sum(1)


@register_encoder("clip_text")
class CLIPTextEncoder(Encoder):
    """open_clip's text tower, built from one of its model configs.

    Without ``pretrained`` the tower is randomly initialised and sized by the config, with
    ``context_length`` and ``vocab_size`` taken from the input spec; ``text_cfg`` entries
    override the config (e.g. ``width=32, layers=1, heads=2`` for a tiny tower). With
    ``pretrained`` (an open_clip tag such as ``"openai"``) the full CLIP model is loaded and
    only its text weights are kept; the data must then use the ``clip`` tokenizer.

    Args:
        input_spec: ``{"vocab_size": V, "max_length": L, "pad_id": 0}``.
        model_name: an open_clip model config name (``"RN50"``, ``"ViT-B-32"``, ...).
        pretrained: an open_clip pretrained tag, or None for random init.
        embed_dim: output (projection) size; defaults to the config's ``embed_dim``.
        **text_cfg: overrides of the config's ``text_cfg`` (``width``, ``heads``, ``layers``,
            ``pool_type``, ...).
    """

    def __init__(
        self,
        input_spec: dict[str, Any],
        model_name: str = "RN50",
        pretrained: str | None = None,
        embed_dim: int | None = None,
        **text_cfg: Any,
    ) -> None:
        super().__init__()
        import open_clip
        from open_clip.model import _build_text_tower

        cfg = open_clip.get_model_config(model_name)
        if cfg is None:
            raise ConfigError(f"clip_text: unknown open_clip model config '{model_name}'")
        text = dict(cfg["text_cfg"])
        if not pretrained:
            require(input_spec, "vocab_size", "max_length", encoder="clip_text")
            text.update(context_length=int(input_spec["max_length"]), vocab_size=int(input_spec["vocab_size"]))
        text.update(text_cfg)
        out_dim = int(embed_dim or cfg["embed_dim"])
        self.tower: nn.Module = _build_text_tower(out_dim, text, quick_gelu=bool(cfg.get("quick_gelu", False)))
        if pretrained:
            full = open_clip.create_model(model_name, pretrained=pretrained)
            if hasattr(full, "text"):
                self.tower = full.text
            else:
                # plain CLIP keeps its text weights at top level under the tower's own names
                own = self.tower.state_dict()
                self.tower.load_state_dict({k: v for k, v in full.state_dict().items() if k in own})
            del full
        self.output_dim = int(getattr(self.tower, "output_dim", None) or out_dim)
        self.context_length = int(getattr(self.tower, "context_length", 0) or 0)

    def forward(self, inputs: dict[str, Tensor], present: Tensor, cell_missing: Tensor | None = None) -> Tensor:
        ids = mask_absent(inputs["input_ids"], present)
        if ids.shape[1] < self.context_length:
            # the tower's causal mask is sized for its full context; under a causal mask
            # trailing padding cannot change earlier positions, and argmax/eos pooling
            # still finds the end-of-text token
            ids = F.pad(ids, (0, self.context_length - ids.shape[1]), value=0)
        return self.tower(ids)
