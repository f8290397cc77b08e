"""What the prompt methods share: a frozen CLIP, the missing cases, and the fused head.

Every sample falls in one of DCP's and MMP's three missing cases::

    0 complete        real image + real text
    1 missing text    real image + the empty string
    2 missing image   the all-ones image (after normalisation) + real text

(a sample missing both is fed as case 2 with the empty string: both halves are zeroed, so
only the head's bias speaks for it). The two towers always run, on the stand-ins when a
modality is absent; a method changes how they run (:meth:`PromptedCLIPMethod.encode`). The
feature of an absent modality is then replaced by zeros, and one linear layer (weights
N(0, 0.02), bias 0) reads ``[image feature ; text feature]``.

The backbone stays frozen (``requires_grad`` off and in eval mode, so a batch-norm tower such
as RN50 keeps its statistics) except the parameters a method lists in
:attr:`PromptedCLIPMethod.trainable_backbone`; ``clip_finetune`` trains all of it.
"""

from __future__ import annotations

from typing import Any, Callable

import torch
from torch import Tensor, nn

from holomodal.backbones.clip import (
    CLIP_MEAN, CLIP_STD, CLIPBackbone, CLIPInputs, clip_columns, image_text_columns, resolve_backbone,
)
from holomodal.batch import Batch
from holomodal.errors import ConfigError
from holomodal.methods.base import ClassificationMethod, ModelContext

COMPLETE, MISSING_TEXT, MISSING_IMAGE = 0, 1, 2
CASES = ("complete", "missing_text", "missing_image")
# DCP's and MMP's optimiser: AdamW, 10 % linear warm-up then linear decay to 0 per step
PROMPT_OPTIM = {"name": "adamw", "lr": 1e-2, "weight_decay": 2e-2, "betas": (0.9, 0.98), "eps": 1e-8,
                "scheduler": "warmup_linear", "warmup_fraction": 0.1}


def missing_case(image_present: Tensor, text_present: Tensor) -> Tensor:
    """(B,) long: the missing case of every sample."""
    case = torch.full_like(image_present, COMPLETE, dtype=torch.long)
    case = torch.where(~text_present, torch.full_like(case, MISSING_TEXT), case)
    return torch.where(~image_present, torch.full_like(case, MISSING_IMAGE), case)


class PromptedCLIPMethod(ClassificationMethod):
    """A classifier on a (mostly) frozen CLIP with one image and one text column.

    Args:
        context: from the estimator.
        backbone: the CLIP (``holomodal.backbones.clip``): a model name, a mapping
            ``{model_name, overrides, weights}`` or a ``holomodal pretrain method=clip`` run folder.
            Default: the tiny CLIP with random weights.
        image, text: the columns read (default the only image and the only text column).
        optim: default AdamW lr 1e-2, weight decay 2e-2 (biases excepted), betas (0.9, 0.98),
            10 % warm-up then linear decay per step (DCP's recipe).
    """

    # backbone parameters a method trains, matched against the end of their names
    trainable_backbone: tuple[str, ...] = ()
    train_whole_backbone = False
    needs_prompts = True

    def __init__(self, context: ModelContext, backbone: Any = None, image: str | None = None, text: str | None = None,
                 optim: dict[str, Any] | None = None) -> None:
        super().__init__(context, {**PROMPT_OPTIM, **(optim or {})})
        name = type(self).method_name
        self.image, self.text = image_text_columns(context.modality_types, image, text, name)
        others = [m for m in context.modalities if m not in (self.image, self.text)]
        if others:
            raise ConfigError(f"method '{name}' reads one image and one text column; the data also has {others}: "
                              f"leave them out (data.ignore) or use another method")
        self.backbone_record = resolve_backbone(backbone)
        self.backbone = CLIPBackbone(self.backbone_record)
        if self.needs_prompts:
            self.backbone.require_promptable(name)
        spec = context.input_specs[self.image]
        self.inputs = CLIPInputs(spec["mean"], spec["std"])
        self._check_inputs(context)
        for pname, param in self.backbone.named_parameters():
            param.requires_grad_(self.train_whole_backbone or pname.endswith(self.trainable_backbone))
        if not self.train_whole_backbone:
            self.backbone.eval()
        self.head = nn.Linear(2 * self.backbone.embed_dim, 1 if self.is_regression else context.num_classes)
        nn.init.normal_(self.head.weight, std=0.02)
        nn.init.zeros_(self.head.bias)
        self._weights_loaded = False

    method_name = "prompted_clip"

    def _check_inputs(self, context: ModelContext) -> None:
        image, text = context.input_specs[self.image], context.input_specs[self.text]
        b = self.backbone
        if int(image.get("size", 0)) != b.image_size or int(image.get("channels", 3)) != 3:
            raise ConfigError(f"image column '{self.image}' is encoded at {image.get('size')} px x {image.get('channels')} "
                              f"channel(s); the backbone reads 3 x {b.image_size} px")
        if text.get("tokenizer") != "clip" or int(text.get("max_length", 0)) > b.context_length:
            raise ConfigError(f"text column '{self.text}' must use the CLIP tokenizer with at most {b.context_length} "
                              f"tokens (it has tokenizer {text.get('tokenizer')!r}, max_length {text.get('max_length')})")

    # ---- estimator hooks -----------------------------------------------------------------
    @classmethod
    def adopt_pretraining(cls, preprocessor: Any, model: dict[str, Any]) -> dict[str, Any]:
        """Before the model is built: encode the image and text columns as the backbone reads
        them (its image size, CLIP's pixel statistics, the CLIP tokenizer at its context
        length), whatever the schema said, and record the backbone resolved."""
        from holomodal.preprocessing import Preprocessor

        record = resolve_backbone(model.get("backbone"))
        types = {c.name: c.modality.value for c in preprocessor.schema.columns}
        image, text = image_text_columns(types, model.get("image"), model.get("text"), cls.method_name)
        schema = clip_columns(preprocessor.schema, record, image, text)
        fresh = Preprocessor(schema)
        # CLIP's pixel statistics need no pass over the data; the CLIP tokenizer needs no fitting
        fresh.processors[image].mean_, fresh.processors[image].std_ = list(CLIP_MEAN), list(CLIP_STD)
        for name in (image, text):
            preprocessor.processors[name] = fresh.processors[name]
        preprocessor.schema = schema
        return {**model, "backbone": record}

    def setup(self, stage: str) -> None:
        # before Lightning restores a resumed run, which then overwrites them with its own
        if stage == "fit" and not self._weights_loaded:
            self.backbone.load_weights()
            self._weights_loaded = True

    def train(self, mode: bool = True) -> "PromptedCLIPMethod":
        super().train(mode)
        if not self.train_whole_backbone:
            self.backbone.eval()
        return self

    # ---- the forward pass ------------------------------------------------------------------
    def encode(self, pixels: Tensor, ids: Tensor, case: Tensor) -> tuple[Tensor, Tensor]:
        """(image features, text features), each (B, embed_dim). Overridden by the prompt methods."""
        return self.backbone.encode_image(pixels), self.backbone.encode_text(ids)

    def run_tower(self, blocks: nn.ModuleList, tokens: Tensor, before_block: Callable[[int, Tensor], Tensor],
                  causal: bool) -> Tensor:
        """``tokens`` through ``blocks``; ``before_block(i, tokens)`` inserts or swaps prompts
        before block ``i``. A causal tower's mask is sized to the sequence as it is at each
        block, so prompts in front are seen by every text token and see only earlier prompts."""
        for i, block in enumerate(blocks):
            tokens = before_block(i, tokens)
            mask = self.backbone.causal_mask(tokens.shape[1], tokens.device) if causal else None
            tokens = self.backbone.run_block(block, tokens, mask)
        return tokens

    def check_depth(self, depth: int) -> None:
        layers = min(len(self.backbone.image_blocks), len(self.backbone.text_blocks))
        if not 1 <= depth <= layers:
            raise ConfigError(f"method '{self.method_name}': prompt depth {depth} must be from 1 to the towers' "
                              f"{layers} blocks")

    def features(self, batch: Batch) -> Tensor:
        image_present, text_present = batch.present[self.image], batch.present[self.text]
        case = missing_case(image_present, text_present)
        pixels = self.inputs.pixels(batch.inputs[self.image]["pixels"], image_present)
        ids = self.inputs.ids(batch.inputs[self.text]["input_ids"], text_present)
        if ids.shape[1] < self.backbone.context_length:
            ids = nn.functional.pad(ids, (0, self.backbone.context_length - ids.shape[1]))
        image, text = self.encode(pixels, ids, case)
        # the absent half is zero-filled, as DCP feeds its head (the towers ran on stand-ins)
        image = image * image_present.view(-1, 1).to(image.dtype)
        text = text * text_present.view(-1, 1).to(text.dtype)
        return torch.cat([image, text], dim=1)

    def forward(self, batch: Batch) -> Tensor:
        return self.head(self.features(batch).to(self.head.weight.dtype))

    def parameter_groups(self) -> list[dict[str, Any]]:
        """Weight decay on every trainable tensor but biases (DCP's groups: its no-decay
        patterns match only biases here)."""
        named = [(n, p) for n, p in self.named_parameters() if p.requires_grad]
        decay = float(self.optim_cfg.get("weight_decay", 0.0))
        return [{"params": [p for n, p in named if not n.endswith("bias")], "weight_decay": decay},
                {"params": [p for n, p in named if n.endswith("bias")], "weight_decay": 0.0}]

    @property
    def phase_name(self) -> str:
        trainable = sum(p.numel() for p in self.parameters() if p.requires_grad)
        where = self.backbone_record.get("weights") or "random weights"
        return f"{self.method_name} on CLIP '{self.backbone_record['model_name']}' ({where}): {trainable:,} trainable parameters"
