"""MMP: missing-aware prompts (Lee et al., CVPR 2023), ported from ViLT to CLIP.

One prompt set per missing case (complete, missing text, missing image), each ``depth``
layers of ``length`` tokens; the sample's set is chosen by its missing case. "Input"
insertion: before block ``i < depth`` the layer's prompts are prepended to the running
sequence, whose earlier prompt outputs stay, so it grows by ``length`` per layer (96 prompt
tokens after block 5 at the defaults). Prompts get no positional embedding; the image
feature is pooled from the CLS token behind them, the text feature from the end-of-text
token, under a causal mask sized to the sequence at every block.

MMP was published on the single-stream ViLT and no CLIP port is released, so the port makes
choices (addenda 2.3.9), which are options here:

* ``sides``: which towers get prompts. Default ``[image]``: 768-wide prompts at ViT-B/16 are
  3 x 6 x 16 x 768 = 221,184 parameters, the 0.2 M DCP's Table 5 lists for its MMP-on-CLIP;
  ``[image, text]`` adds the text tower's own set (147,456 at width 512).
* Initialisation as MMP's: zeros with one token of ones per case (complete token 0, missing
  image token 1, missing text token 2).
* Trained: the prompts and the fused linear head (DCP's head, in place of ViLT's pooler and
  MLP classifier), with the backbone frozen in eval mode (ViLT's frozen dropout stays in
  train mode in MMP; CLIP has none).
"""

from __future__ import annotations

from typing import Any, Sequence

import torch
from torch import Tensor, nn

from holomodal.errors import ConfigError
from holomodal.methods import register_method
from holomodal.methods.prompting.base import COMPLETE, MISSING_IMAGE, MISSING_TEXT, PromptedCLIPMethod

# the token MMP sets to ones in each case's prompts
INIT_TOKEN = {COMPLETE: 0, MISSING_IMAGE: 1, MISSING_TEXT: 2}


def missing_aware_prompts(depth: int, length: int, width: int) -> nn.Parameter:
    """(3 cases, depth, length, width), MMP's initialisation."""
    prompts = torch.zeros(3, depth, length, width)
    for case, token in INIT_TOKEN.items():
        prompts[case, :, token] = 1.0
    return nn.Parameter(prompts)


@register_method("mmp")
class MMP(PromptedCLIPMethod):
    """Missing-aware prompts on a frozen CLIP.

    Args:
        length: prompt tokens per layer (16).
        depth: layers that get prompts, from the first (6).
        sides: towers with prompts: ``[image]`` (default) or ``[image, text]``.
        **kwargs: :class:`~holomodal.methods.prompting.base.PromptedCLIPMethod`'s.
    """

    method_name = "mmp"

    def __init__(self, context: Any, length: int = 16, depth: int = 6, sides: Sequence[str] = ("image",),
                 **kwargs: Any) -> None:
        super().__init__(context, **kwargs)
        self.sides = list(sides)
        if not self.sides or set(self.sides) - {"image", "text"}:
            raise ConfigError(f"mmp: sides must be [image], [text] or [image, text], not {self.sides}")
        self.check_depth(int(depth))
        self.length, self.depth = int(length), int(depth)
        b = self.backbone
        self.image_prompts = missing_aware_prompts(self.depth, self.length, b.image_width) if "image" in self.sides else None
        self.text_prompts = missing_aware_prompts(self.depth, self.length, b.text_width) if "text" in self.sides else None

    def _prepend(self, prompts: Tensor) -> Any:
        def before_block(i: int, tokens: Tensor) -> Tensor:
            if i >= self.depth:
                return tokens
            return torch.cat([prompts[:, i].to(tokens.dtype), tokens], dim=1)

        return before_block

    def encode(self, pixels: Tensor, ids: Tensor, case: Tensor) -> tuple[Tensor, Tensor]:
        b = self.backbone
        inserted = self.depth * self.length
        if self.image_prompts is None:
            image = b.encode_image(pixels)
        else:
            tokens = self.run_tower(b.image_blocks, b.image_tokens(pixels), self._prepend(self.image_prompts[case]), causal=False)
            image = b.image_output(tokens, inserted)
        if self.text_prompts is None:
            text = b.encode_text(ids)
        else:
            tokens = self.run_tower(b.text_blocks, b.text_tokens(ids), self._prepend(self.text_prompts[case]), causal=True)
            text = b.text_output(tokens, ids, inserted)
        return image, text
