"""DCP: deep correlated prompting for missing modalities (Hu et al., NeurIPS 2024).

Each tower gets 36 prompt tokens, three kinds of 12, chosen by the sample's missing case:

* correlated prompts ``R_j`` for the first ``depth`` (6) blocks: the layer-0 pair comes from
  the initial prompts of both towers, ``R_0 = F_0([P^I ; P^T])``, and each deeper pair from
  the pair before it, ``R_j = F_j([R^I_{j-1} ; R^T_{j-1}])``: one generator per layer and per
  tower, LayerNorm -> Linear (1/16 bottleneck) -> GELU -> Linear (the released code's form);
* a modal-common prompt per case (12 x text width), projected into each tower by an MLP;
* dynamic prompts: one-head attention from 12 per-case queries over the tower's own input
  tokens at block 0 (image: CLS and patches after ``ln_pre``; text: token plus position
  embeddings, padding included).

Layout (spec 1.4.6): block 0 reads ``[R_0, common, dynamic, tower tokens]``; before blocks
1 .. depth-1 the first 12 positions are overwritten by ``R_j``, the other 24 prompt slots
carry what the previous block made of them; the image feature is pooled from the CLS token
at index 36, the text feature from the end-of-text token after dropping the 36 prompt
positions, under a 113 x 113 causal mask at CLIP's 77 tokens.

Trained: the prompts, generators, projections and attention, the fused head, and (as the
released code, ``train_output_layers``) CLIP's ``ln_post``, ``ln_final`` and image projection.
The dynamic queries are saved buffers, not re-drawn per run (the released code neither
saves nor trains them, so a reload drew other queries); ``learn_queries`` trains them.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from holomodal.errors import ConfigError
from holomodal.methods import register_method
from holomodal.methods.prompting.base import COMPLETE, MISSING_IMAGE, MISSING_TEXT, PromptedCLIPMethod

# which initial prompt each tower takes in each case: the "missing" one only where its own
# modality is absent
IMAGE_INIT = {COMPLETE: 0, MISSING_TEXT: 0, MISSING_IMAGE: 1}
TEXT_INIT = {COMPLETE: 0, MISSING_TEXT: 1, MISSING_IMAGE: 0}
OUTPUT_LAYERS = ("ln_post.weight", "ln_post.bias", "ln_final.weight", "ln_final.bias", "visual.proj")


def prompt_parameter(*shape: int) -> nn.Parameter:
    return nn.Parameter(torch.randn(*shape) * 0.02)


def correlated_generator(joint: int, out: int, reduction: int) -> nn.Sequential:
    return nn.Sequential(nn.LayerNorm(joint), nn.Linear(joint, joint // reduction), nn.GELU(),
                         nn.Linear(joint // reduction, out))


def common_projection(width: int, out: int, reduction: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(width, width // reduction), nn.GELU(), nn.Linear(width // reduction, out))


@register_method("dcp")
class DCP(PromptedCLIPMethod):
    """Deep correlated, dynamic and modal-common prompts on a frozen CLIP.

    Args:
        length: prompt tokens per tower, split equally among the three kinds (36).
        depth: blocks that receive correlated prompts, from the first (6).
        reduction: bottleneck ratio of the generators and projections (16).
        train_output_layers: also train ``ln_post``, ``ln_final`` and the image projection (True,
            as the released code; False: prompts and head only, as the paper says).
        learn_queries: train the dynamic prompts' queries (False: fixed random, saved).
        **kwargs: :class:`~holomodal.methods.prompting.base.PromptedCLIPMethod`'s.
    """

    method_name = "dcp"

    def __init__(self, context: Any, length: int = 36, depth: int = 6, reduction: int = 16,
                 train_output_layers: bool = True, learn_queries: bool = False, **kwargs: Any) -> None:
        if train_output_layers:
            self.trainable_backbone = OUTPUT_LAYERS
        super().__init__(context, **kwargs)
        if int(length) % 3 or int(length) < 3:
            raise ConfigError(f"dcp: length {length} must be a positive multiple of 3 (correlated, common, dynamic)")
        self.check_depth(int(depth))
        self.n, self.depth = int(length) // 3, int(depth)
        wi, wt = self.backbone.image_width, self.backbone.text_width
        r = int(reduction)
        self.image_init = prompt_parameter(2, self.n, wi)  # complete, missing
        self.text_init = prompt_parameter(2, self.n, wt)
        self.image_generators = nn.ModuleList(correlated_generator(wi + wt, wi, r) for _ in range(self.depth))
        self.text_generators = nn.ModuleList(correlated_generator(wi + wt, wt, r) for _ in range(self.depth))
        self.common = prompt_parameter(3, self.n, wt)  # one per case
        self.image_common = common_projection(wt, wi, r)
        self.text_common = common_projection(wt, wt, r)
        self.image_attention = nn.MultiheadAttention(wi, num_heads=1, batch_first=True)
        self.text_attention = nn.MultiheadAttention(wt, num_heads=1, batch_first=True)
        queries = {"image_queries": torch.randn(3, self.n, wi) * 0.02, "text_queries": torch.randn(3, self.n, wt) * 0.02}
        for name, value in queries.items():
            if learn_queries:
                setattr(self, name, nn.Parameter(value))
            else:
                self.register_buffer(name, value)
        self.image_init_index = torch.tensor([IMAGE_INIT[c] for c in range(3)])
        self.text_init_index = torch.tensor([TEXT_INIT[c] for c in range(3)])

    # ---- the prompts -----------------------------------------------------------------------
    def correlated_prompts(self) -> tuple[Tensor, Tensor]:
        """(depth, 3 cases, n, width) for the image and the text tower: all three cases at once,
        then gathered per sample (the released code recomputes them sample by sample)."""
        image = self.image_init[self.image_init_index.to(self.image_init.device)]
        text = self.text_init[self.text_init_index.to(self.text_init.device)]
        image_layers, text_layers = [], []
        for gen_image, gen_text in zip(self.image_generators, self.text_generators):
            joint = torch.cat([image, text], dim=-1)
            image, text = gen_image(joint), gen_text(joint)
            image_layers.append(image)
            text_layers.append(text)
        return torch.stack(image_layers), torch.stack(text_layers)

    def prompts(self, case: Tensor) -> dict[str, Tensor]:
        """Every sample's prompts but the dynamic ones: ``image_correlated`` (depth, B, n, wi),
        ``text_correlated``, ``image_common`` (B, n, wi), ``text_common``."""
        image, text = self.correlated_prompts()
        common = self.common[case]
        return {"image_correlated": image[:, case], "text_correlated": text[:, case],
                "image_common": self.image_common(common), "text_common": self.text_common(common)}

    def _tower(self, blocks: nn.ModuleList, tokens: Tensor, correlated: Tensor, common: Tensor, queries: Tensor,
               attention: nn.MultiheadAttention, causal: bool) -> Tensor:
        dynamic, _ = attention(queries.to(tokens.dtype), tokens, tokens, need_weights=False)
        n = self.n

        def before_block(i: int, x: Tensor) -> Tensor:
            if i == 0:
                return torch.cat([correlated[0].to(x.dtype), common.to(x.dtype), dynamic, x], dim=1)
            if i < self.depth:
                return torch.cat([correlated[i].to(x.dtype), x[:, n:]], dim=1)
            return x

        return self.run_tower(blocks, tokens, before_block, causal)

    def encode(self, pixels: Tensor, ids: Tensor, case: Tensor) -> tuple[Tensor, Tensor]:
        b, p = self.backbone, self.prompts(case)
        image = self._tower(b.image_blocks, b.image_tokens(pixels), p["image_correlated"], p["image_common"],
                            self.image_queries[case], self.image_attention, causal=False)
        text = self._tower(b.text_blocks, b.text_tokens(ids), p["text_correlated"], p["text_common"],
                           self.text_queries[case], self.text_attention, causal=True)
        return b.image_output(image, 3 * self.n), b.text_output(text, ids, 3 * self.n)
