"""DCP's two reference points on the same frozen-CLIP protocol.

``clip_baseline`` is the paper's "baseline": the CLIP frozen, the absent modality's feature
zero-filled, only the linear head trained. ``clip_finetune`` trains the whole CLIP with the
head (the same missing cases and stand-ins; give it a far smaller ``optim.lr``, e.g. 1e-5).
"""

from __future__ import annotations

from holomodal.methods import register_method
from holomodal.methods.prompting.base import PromptedCLIPMethod


@register_method("clip_baseline")
class CLIPBaseline(PromptedCLIPMethod):
    """Frozen CLIP, zero-filled missing features, a trainable linear head."""

    method_name = "clip_baseline"
    needs_prompts = False


@register_method("clip_finetune")
class CLIPFinetune(PromptedCLIPMethod):
    """Full fine-tuning: every CLIP parameter and the head are trained."""

    method_name = "clip_finetune"
    needs_prompts = False
    train_whole_backbone = True
